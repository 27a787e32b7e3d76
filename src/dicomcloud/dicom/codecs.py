"""Frame decoding, transcoding, and the media types frames travel in.

Decoded frames follow pydicom's default processing, which is also what a transcoded Explicit VR
Little Endian dataset would hold (PS3.18 8.7.3.5: a frame in an uncompressed syntax is described by
the dataset as it would be after transcoding, PS3.5 8.2 for the decompressed Photometric
Interpretation):

- YBR_FULL and YBR_FULL_422 are converted to RGB (native YBR_FULL_422 cannot be stored without its
  subsampling, and lossy JPEG decoders yield RGB), so the transcoded dataset says RGB;
- samples are interleaved (Planar Configuration 0) and little endian;
- Bits Allocated 1 stays bit-packed, from bit 0 of the frame's first byte, as native frames are encoded.

JPEG 2000 YBR_RCT/YBR_ICT come out RGB from the decoder already; MONOCHROME and PALETTE COLOR
are left as they are.

Transcoding (`transcode`, `encode_frame`) starts from those same decoded pixels and encodes each frame with
the encoder that takes the target (`TRANSCODE_TARGETS` lists them; negotiation reads it):
- pydicom's encoders for RLE (pylibjpeg-rle: 15 ms for a 512 x 512 12-bit frame where pydicom's pure Python
  takes 120), JPEG-LS (pyjpegls) and JPEG 2000 (pylibjpeg-openjpeg, faster than imagecodecs' build of the same
  OpenJPEG: 76 against 103 ms); the gdcm plugin is avoided for encoding because it aborts the process on some inputs;
- imagecodecs for what pydicom cannot encode: JPEG Baseline (8-bit), Extended (12-bit) and Lossless SV1 (2-16
  bits) with libjpeg-turbo, HTJ2K lossless, RPCL and lossy with OpenJPH;
- Deflated Explicit VR Little Endian re-encodes the whole dataset (its frames are the decoded pixels).
Lossy targets use fixed parameters, which set the tolerance a client can expect:
- JPEG-LS Near-Lossless: NEAR=2, so every sample is within 2 of the original;
- JPEG 2000 (irreversible): one quality layer at 80 dB PSNR requested; observed PSNR over pydicom's
  test files is at least 40 dB relative to the Bits Stored range;
- HTJ2K (irreversible): quantisation step 0.005 of the Bits Stored range, at least 40 dB likewise;
- JPEG Baseline / Extended: quality 90 (colour as YBR_FULL_422), at least 30 dB likewise.
A lossy target sets Lossy Image Compression "01" and appends its ratio and method to Lossy Image Compression
Ratio / Method (PS3.3 C.7.6.1.1.5). Pixels that were lossy compressed once (a lossy syntax, or Lossy Image
Compression "01") are never put in a lossless compressed syntax: that would claim a fidelity the data has lost.
Decompressing them to a native syntax is allowed (Lossy Image Compression stays "01"). The SOP Instance UID is
kept in every case: a derived file is another encoding of the same instance, not a new instance.
"""

from __future__ import annotations

import contextlib
import io
import itertools
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, BinaryIO

import imagecodecs
import numpy as np
import pydicom
from pydicom.encaps import encapsulate, encapsulate_extended, generate_frames
from pydicom.filewriter import dcmwrite
from pydicom.multival import MultiValue
from pydicom.pixels.encoders.base import get_encoder
from pydicom.pixels.utils import pack_bits, pixel_array
from pydicom.uid import UID

from dicomcloud.dicom.uids import DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN, TransferSyntax
from dicomcloud.errors import CannotConvert, InvalidInput, NotFound

RLE_LOSSLESS = "1.2.840.10008.1.2.5"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_EXTENDED = "1.2.840.10008.1.2.4.51"
JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"
JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"
JPEG_LS_NEAR_LOSSLESS = "1.2.840.10008.1.2.4.81"
JPEG_2000_LOSSLESS = "1.2.840.10008.1.2.4.90"
JPEG_2000 = "1.2.840.10008.1.2.4.91"
HTJ2K_LOSSLESS = "1.2.840.10008.1.2.4.201"
HTJ2K_LOSSLESS_RPCL = "1.2.840.10008.1.2.4.202"
HTJ2K = "1.2.840.10008.1.2.4.203"

# JPEG (ISO 10918-1) quality of the lossy JPEG targets, libjpeg's 1-100 scale.
JPEG_QUALITY = 90
# HTJ2K irreversible quantisation step, as a fraction of the Bits Stored range (OpenJPH's qstep).
HTJ2K_QSTEP = 0.005


@dataclass(frozen=True)
class FrameFormat:
    """What an encoder needs to know of a decoded frame (after pydicom's processing: YBR comes out RGB)."""

    rows: int
    columns: int
    samples_per_pixel: int
    bits_allocated: int
    bits_stored: int
    pixel_representation: int
    photometric_interpretation: str

    @classmethod
    def of(cls, header: pydicom.Dataset) -> FrameFormat:
        photometric = str(header.get("PhotometricInterpretation", "MONOCHROME2"))
        bits_allocated = int(header.BitsAllocated)
        return cls(
            rows=int(header.Rows),
            columns=int(header.Columns),
            samples_per_pixel=int(header.get("SamplesPerPixel") or 1),
            bits_allocated=bits_allocated,
            bits_stored=int(header.get("BitsStored") or bits_allocated),
            pixel_representation=int(header.get("PixelRepresentation") or 0),
            photometric_interpretation="RGB" if photometric in _DECODED_AS_RGB else photometric,
        )


def _pydicom_encoder(syntax: str, plugin: str = "", **options: Any) -> Callable[[np.ndarray, FrameFormat], bytes]:
    """An encoder of pydicom's, with the plugin named or the first available one."""

    def encode(frame: np.ndarray, fmt: FrameFormat) -> bytes:
        one_frame = {"number_of_frames": 1, "planar_configuration": 0, **asdict(fmt)}
        return bytes(get_encoder(syntax).encode(frame, encoding_plugin=plugin, **one_frame, **options))

    return encode


def _native_order(frame: np.ndarray) -> np.ndarray:
    """The frame contiguous and in the machine's byte order (a big endian object's pixels come out big endian)."""
    return np.ascontiguousarray(frame, dtype=frame.dtype.newbyteorder("="))


def _unsigned(frame: np.ndarray, fmt: FrameFormat) -> np.ndarray:
    """The frame's stored bit patterns as unsigned integers, which is what JPEG codes (PS3.5 8.2.1)."""
    if not fmt.pixel_representation:
        return np.ascontiguousarray(frame)
    width = np.dtype(f"u{frame.dtype.itemsize}")
    return np.ascontiguousarray(frame.view(width) & width.type(2**fmt.bits_stored - 1))


def _jpeg_encoder(lossless: bool, most_bits: int) -> Callable[[np.ndarray, FrameFormat], bytes]:
    """JPEG with libjpeg-turbo (imagecodecs): lossy DCT up to 8 or 12 bits, or lossless process 14 with the first
    predictor (selection value 1) up to 16 bits."""

    def encode(frame: np.ndarray, fmt: FrameFormat) -> bytes:
        frame = _native_order(frame)
        if fmt.bits_stored > most_bits or fmt.samples_per_pixel not in (1, 3) or fmt.bits_allocated not in (8, 16):
            shape = f"{fmt.bits_stored}-bit, {fmt.samples_per_pixel}-sample"
            raise CannotConvert(f"{shape} pixels exceed this JPEG process")
        if not lossless and fmt.pixel_representation:
            raise CannotConvert("lossy JPEG codes unsigned samples only")
        bits = fmt.bits_stored if lossless else (8 if fmt.bits_stored <= 8 else 12)
        data = _unsigned(frame, fmt).astype(np.uint8 if bits <= 8 else np.uint16)
        colour = fmt.samples_per_pixel == 3
        if lossless:
            space = "RGB" if colour else None  # no colour transform: lossless means the RGB samples themselves
            return bytes(
                imagecodecs.jpeg8_encode(
                    data, lossless=True, predictor=1, bitspersample=bits, colorspace=space, outcolorspace=space
                )
            )
        subsampling = "422" if colour else None
        return bytes(imagecodecs.jpeg8_encode(data, level=JPEG_QUALITY, bitspersample=bits, subsampling=subsampling))

    return encode


def _htj2k_encoder(reversible: bool, rpcl: bool = False) -> Callable[[np.ndarray, FrameFormat], bytes]:
    """HTJ2K (ISO 15444-15) with OpenJPH (imagecodecs), whose progression order is RPCL; the RPCL options add the
    TLM marker segment and a tile-part per resolution. Colour is coded without a component transform."""

    def encode(frame: np.ndarray, fmt: FrameFormat) -> bytes:
        if fmt.bits_allocated not in (8, 16) or fmt.samples_per_pixel not in (1, 3):
            raise CannotConvert(f"HTJ2K takes 8- or 16-bit samples, one or three, not {fmt.bits_allocated}-bit")
        data = _native_order(frame)
        options: dict[str, Any] = {"reversible": reversible}
        if not reversible:
            # qstep is a fraction of the sample type's range; Bits Stored may use less of it.
            options["level"] = HTJ2K_QSTEP / 2 ** (8 * data.dtype.itemsize - fmt.bits_stored)
        if rpcl:
            options |= {"tlm": True, "tilepart": 1}
        return bytes(imagecodecs.htj2k_encode(data, **options))

    return encode


@dataclass(frozen=True)
class _Target:
    encode: Callable[[np.ndarray, FrameFormat], bytes]
    # PS3.3 C.7.6.1.1.5.1 Lossy Image Compression Method of a lossy target; None for a lossless one.
    lossy_method: str | None = None
    # The Photometric Interpretation of the encoded pixels, when the encoder changes it (PS3.5 8.2.1).
    colour: str | None = None


# What this archive can encode frames into, each with its encoder and fixed options (see the module docstring).
_TARGETS: dict[str, _Target] = {
    RLE_LOSSLESS: _Target(_pydicom_encoder(RLE_LOSSLESS, "pylibjpeg")),
    JPEG_BASELINE: _Target(_jpeg_encoder(False, 8), "ISO_10918_1", "YBR_FULL_422"),
    JPEG_EXTENDED: _Target(_jpeg_encoder(False, 12), "ISO_10918_1", "YBR_FULL_422"),
    JPEG_LOSSLESS_SV1: _Target(_jpeg_encoder(True, 16)),
    JPEG_LS_LOSSLESS: _Target(_pydicom_encoder(JPEG_LS_LOSSLESS)),
    JPEG_LS_NEAR_LOSSLESS: _Target(_pydicom_encoder(JPEG_LS_NEAR_LOSSLESS, jls_error=2), "ISO_14495_1"),
    JPEG_2000_LOSSLESS: _Target(_pydicom_encoder(JPEG_2000_LOSSLESS)),
    JPEG_2000: _Target(_pydicom_encoder(JPEG_2000, j2k_psnr=[80.0]), "ISO_15444_1"),
    HTJ2K_LOSSLESS: _Target(_htj2k_encoder(True)),
    HTJ2K_LOSSLESS_RPCL: _Target(_htj2k_encoder(True, rpcl=True)),
    HTJ2K: _Target(_htj2k_encoder(False), "ISO_15444_15"),
}
# Every transfer syntax an instance or frame can be served in on request; negotiation (web/) reads this.
TRANSCODE_TARGETS = frozenset({EXPLICIT_VR_LITTLE_ENDIAN, DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN, *_TARGETS})
# Targets whose frames are the decoded pixels themselves.
_UNCOMPRESSED_TARGETS = frozenset({EXPLICIT_VR_LITTLE_ENDIAN, DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN})
# Retired JPEG processes libjpeg-turbo decodes: Extended 3 & 5, Spectral Selection 6-9, Full Progression 10-13.
RETIRED_JPEG = frozenset(f"1.2.840.10008.1.2.4.{process}" for process in (52, 53, 54, 55, 56))
# Photometric Interpretations that decode to RGB (module docstring).
_DECODED_AS_RGB = frozenset({"YBR_FULL", "YBR_FULL_422", "YBR_RCT", "YBR_ICT", "YBR_PARTIAL_420"})

# What pydicom raises when it has no decoder for the data, or the data is not what the header says.
_DECODE_ERRORS = (NotImplementedError, RuntimeError, ValueError, AttributeError, KeyError, TypeError)


def decode_frame(stream: BinaryIO, number: int, *, max_decoded_bytes: int | None = None) -> bytes:
    """Frame `number` (1-based) as Explicit VR Little Endian native bytes; see the module docstring."""
    header = _read_header(stream)
    check_decoded_size(header, max_decoded_bytes)
    arr = frame_array(stream, header, number)
    if header.get("BitsAllocated") == 1:
        return pack_bits(arr, pad=False)
    return np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()


def decoded_frame_size(header: pydicom.Dataset) -> int:
    """Bytes one frame takes decoded: rows x columns x samples per pixel x bytes per sample."""
    try:
        rows, columns = int(header.get("Rows") or 0), int(header.get("Columns") or 0)
        samples, bits = int(header.get("SamplesPerPixel") or 1), int(header.get("BitsAllocated") or 8)
    except (TypeError, ValueError):
        return 0
    return rows * columns * samples * ((bits + 7) // 8)


def check_decoded_size(header: pydicom.Dataset, max_decoded_bytes: int | None) -> None:
    """CannotConvert, before anything is decoded, when a frame is larger decoded than `max_decoded_bytes`."""
    size = decoded_frame_size(header)
    if max_decoded_bytes is not None and size > max_decoded_bytes:
        raise CannotConvert(
            f"a frame of this instance is {size} bytes decoded, more than the {max_decoded_bytes} decoded for one "
            "request (limits.max_decoded_frame_bytes); ask for it as stored"
        )


def _read_header(stream: BinaryIO) -> pydicom.Dataset:
    stream.seek(0)
    try:
        return pydicom.dcmread(stream, stop_before_pixels=True, force=True)
    except (ValueError, EOFError, OSError) as exc:
        raise InvalidInput(f"unreadable DICOM header: {exc}") from exc


def frame_array(stream: BinaryIO, header: pydicom.Dataset, number: int) -> np.ndarray:
    """Frame `number` decoded by pydicom's default processing (YBR as RGB, native byte order), or by libjpeg-turbo
    for the retired JPEG processes; NotFound when out of range, CannotConvert when no decoder reads it."""
    frames = _number_of_frames(header)
    if not 1 <= number <= frames:
        raise NotFound(f"frame {number} is out of range 1-{frames}")
    meta = getattr(header, "file_meta", None)
    transfer_syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    arr = None
    if transfer_syntax and transfer_syntax != DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
        # Straight from the file, reading only this frame; pydicom's file reader expects a
        # well-formed Pixel Data header, so a file it cannot follow is read whole below.
        with contextlib.suppress(*_DECODE_ERRORS):
            stream.seek(0)
            arr = pixel_array(stream, index=number - 1)
    if arr is None:
        try:
            stream.seek(0)
            ds = pydicom.dcmread(stream, force=True)
            retired = transfer_syntax in RETIRED_JPEG
            arr = _retired_jpeg_frame(ds, number) if retired else pixel_array(ds, index=number - 1)
        except _DECODE_ERRORS as exc:
            raise CannotConvert(f"cannot decode frame {number}: {exc}") from exc
    return arr


def _retired_jpeg_frame(ds: pydicom.Dataset, number: int) -> np.ndarray:
    """Frame `number` of a retired JPEG process (which pydicom has no decoder for) decoded by libjpeg-turbo, which
    reads the extended, spectral selection and full progression processes, YCbCr as RGB."""
    frames = _number_of_frames(ds)
    bitstream = next(itertools.islice(generate_frames(ds.PixelData, number_of_frames=frames), number - 1, None))
    try:
        arr = np.asarray(imagecodecs.jpeg8_decode(bitstream))
    except imagecodecs.Jpeg8Error as exc:
        raise ValueError(f"libjpeg-turbo cannot decode it: {exc}") from exc
    signed = int(ds.get("PixelRepresentation") or 0) == 1
    return arr.view(arr.dtype.str.replace("u", "i")) if signed else arr


def _all_frames(ds: pydicom.Dataset) -> np.ndarray:
    """Every frame, as `ds.pixel_array` gives them (one frame without the frame axis)."""
    meta = getattr(ds, "file_meta", None)
    if meta is None or meta.get("TransferSyntaxUID") not in RETIRED_JPEG:
        return np.asarray(ds.pixel_array)
    frames = [_retired_jpeg_frame(ds, number) for number in range(1, _number_of_frames(ds) + 1)]
    return frames[0] if len(frames) == 1 else np.stack(frames)


def _number_of_frames(header: pydicom.Dataset) -> int:
    try:
        number = int(header.get("NumberOfFrames") or 1)
    except (TypeError, ValueError):
        return 1
    return max(number, 1)


def check_transcodable(source_syntax: str, target_syntax: str, lossy_content: bool = False) -> None:
    """Raise CannotConvert unless pixels stored in `source_syntax` may be served in `target_syntax`."""
    if target_syntax not in TRANSCODE_TARGETS:
        raise CannotConvert(f"no encoder for transfer syntax {target_syntax}")
    target = TransferSyntax(target_syntax)
    if (lossy_content or TransferSyntax(source_syntax).is_lossy) and target.is_compressed and not target.is_lossy:
        raise CannotConvert(f"lossy compressed pixels cannot be served as lossless {target_syntax}")


def transcode(stream: BinaryIO, target_syntax: str) -> bytes:
    """The instance in `stream` as a Part 10 file in `target_syntax`; the stored object is untouched.

    Raises CannotConvert when the conversion is not allowed or no encoder takes these pixels, and
    InvalidInput when the file cannot be read or decoded.
    """
    try:
        stream.seek(0)
        ds = pydicom.dcmread(stream, force=True)
    except (ValueError, EOFError, OSError) as exc:
        raise InvalidInput(f"unreadable DICOM file: {exc}") from exc
    meta = getattr(ds, "file_meta", None)
    source_syntax = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    if not source_syntax:
        raise InvalidInput("the file names no transfer syntax")
    if "PixelData" not in ds:
        raise InvalidInput("the instance has no Pixel Data to transcode")
    check_transcodable(source_syntax, target_syntax, ds.get("LossyImageCompression") == "01")
    try:
        arr = _all_frames(ds)
    except _DECODE_ERRORS as exc:
        raise InvalidInput(f"cannot decode the pixels of {source_syntax}: {exc}") from exc
    fmt = FrameFormat.of(ds)
    _set_native_pixels(ds, arr)
    try:
        if target_syntax == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
            ds.file_meta.TransferSyntaxUID = UID(target_syntax)
        elif target_syntax != EXPLICIT_VR_LITTLE_ENDIAN:
            frames = arr if _number_of_frames(ds) > 1 else arr[np.newaxis]
            _encapsulate(ds, [_TARGETS[target_syntax].encode(frame, fmt) for frame in frames], target_syntax)
        buffer = io.BytesIO()
        dcmwrite(buffer, ds, enforce_file_format=True)
    except _DECODE_ERRORS as exc:
        raise CannotConvert(f"cannot encode these pixels as {target_syntax}: {exc}") from exc
    return buffer.getvalue()


def _set_native_pixels(ds: pydicom.Dataset, arr: np.ndarray) -> None:
    """Make `ds` an Explicit VR Little Endian dataset holding `arr`, as described in the docstring."""
    for _ in ds.iterall():  # convert every raw element while the original encoding is still known
        pass
    if ds.get("PhotometricInterpretation") in _DECODED_AS_RGB:
        ds.PhotometricInterpretation = "RGB"
    if int(ds.get("SamplesPerPixel") or 1) > 1:
        ds.PlanarConfiguration = 0
    bits_allocated = int(ds.BitsAllocated)
    if bits_allocated == 1:
        ds.PixelData = pack_bits(arr)
    else:
        ds.PixelData = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()
    ds["PixelData"].VR = "OB" if bits_allocated <= 8 else "OW"
    ds.file_meta.TransferSyntaxUID = UID(EXPLICIT_VR_LITTLE_ENDIAN)
    ds.set_original_encoding(False, True)


def encode_frame(stream: BinaryIO, number: int, target_syntax: str, *, max_decoded_bytes: int | None = None) -> bytes:
    """Frame `number` (1-based) as a `target_syntax` bitstream, or native bytes for Explicit VR LE."""
    header = _read_header(stream)
    check_decoded_size(header, max_decoded_bytes)
    meta = getattr(header, "file_meta", None)
    source_syntax = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    check_transcodable(source_syntax, target_syntax, header.get("LossyImageCompression") == "01")
    if target_syntax in _UNCOMPRESSED_TARGETS:
        return decode_frame(stream, number, max_decoded_bytes=max_decoded_bytes)
    arr = frame_array(stream, header, number)
    try:
        return _TARGETS[target_syntax].encode(arr, FrameFormat.of(header))
    except _DECODE_ERRORS as exc:
        raise CannotConvert(f"cannot encode frame {number} as {target_syntax}: {exc}") from exc


def _encapsulate(ds: pydicom.Dataset, encoded: list[bytes], target_syntax: str) -> None:
    """Put `encoded` frames into `ds` as `target_syntax` (an extended offset table for several frames, as pydicom
    does), with the colour the encoder coded and, for a lossy target, Lossy Image Compression "01" and this
    step's ratio and method appended to the history (PS3.3 C.7.6.1.1.5)."""
    target = _TARGETS[target_syntax]
    decoded = len(ds.PixelData)
    if len(encoded) > 1:
        ds.PixelData, ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths = encapsulate_extended(encoded)
    else:
        ds.PixelData = encapsulate(encoded)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    if target.colour is not None and int(ds.get("SamplesPerPixel") or 1) == 3:
        ds.PhotometricInterpretation = target.colour
    if target.lossy_method is not None:
        ratio = decoded / max(sum(len(frame) for frame in encoded), 1)
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionRatio = [*_history(ds, "LossyImageCompressionRatio"), f"{ratio:.4g}"[:16]]
        ds.LossyImageCompressionMethod = [*_history(ds, "LossyImageCompressionMethod"), target.lossy_method]
    ds.file_meta.TransferSyntaxUID = UID(target_syntax)


def _history(ds: pydicom.Dataset, keyword: str) -> list[Any]:
    """The values of a multi-valued attribute as a list ([] when absent)."""
    value = ds.get(keyword)
    if value is None or value == "":
        return []
    return list(value) if isinstance(value, list | tuple | MultiValue) else [value]
