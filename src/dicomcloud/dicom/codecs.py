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

Transcoding (`transcode`, `encode_frame`) starts from those same decoded pixels and encodes them with
pydicom's encoders (RLE in pure Python, JPEG-LS with pyjpegls, JPEG 2000 with pylibjpeg-openjpeg;
the gdcm plugin is avoided for encoding because it aborts the process on some inputs). Lossy
targets use fixed parameters, which set the tolerance a client can expect:
- JPEG-LS Near-Lossless: NEAR=2, so every sample is within 2 of the original;
- JPEG 2000 (irreversible): one quality layer at 80 dB PSNR requested; observed PSNR over pydicom's
  test files is at least 40 dB relative to the Bits Stored range.
Pixels that were lossy compressed once (a lossy syntax, or Lossy Image Compression "01") are never
put in a lossless compressed syntax: that would claim a fidelity the data has lost. Decompressing
them to a native syntax is allowed (Lossy Image Compression stays "01"). The SOP Instance UID is
kept in every case: a derived file is another encoding of the same instance, not a new instance.
"""

from __future__ import annotations

import contextlib
import io
from typing import Any, BinaryIO

import numpy as np
import pydicom
from pydicom.filewriter import dcmwrite
from pydicom.pixels.encoders.base import get_encoder
from pydicom.pixels.utils import pack_bits, pixel_array
from pydicom.uid import UID

from dicomcloud.dicom.uids import DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN, TransferSyntax
from dicomcloud.errors import CannotConvert, InvalidInput, NotFound

RLE_LOSSLESS = "1.2.840.10008.1.2.5"
JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"
JPEG_LS_NEAR_LOSSLESS = "1.2.840.10008.1.2.4.81"
JPEG_2000_LOSSLESS = "1.2.840.10008.1.2.4.90"
JPEG_2000 = "1.2.840.10008.1.2.4.91"

# What this archive can produce, and each encoder's fixed options (see the module docstring).
_ENCODER_OPTIONS: dict[str, dict[str, Any]] = {
    RLE_LOSSLESS: {"encoding_plugin": "pydicom"},
    JPEG_LS_LOSSLESS: {},
    JPEG_LS_NEAR_LOSSLESS: {"jls_error": 2},
    JPEG_2000_LOSSLESS: {},
    JPEG_2000: {"j2k_psnr": [80.0]},
}
TRANSCODE_TARGETS = frozenset({EXPLICIT_VR_LITTLE_ENDIAN, *_ENCODER_OPTIONS})
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
    """Frame `number` decoded by pydicom's default processing (YBR as RGB, native byte order); NotFound when out
    of range, CannotConvert when no decoder reads it."""
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
            arr = pixel_array(pydicom.dcmread(stream, force=True), index=number - 1)
        except _DECODE_ERRORS as exc:
            raise CannotConvert(f"cannot decode frame {number}: {exc}") from exc
    return arr


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
        arr = ds.pixel_array
    except _DECODE_ERRORS as exc:
        raise InvalidInput(f"cannot decode the pixels of {source_syntax}: {exc}") from exc
    _set_native_pixels(ds, arr)
    try:
        if target_syntax != EXPLICIT_VR_LITTLE_ENDIAN:
            options = dict(_ENCODER_OPTIONS[target_syntax])
            plugin = options.pop("encoding_plugin", "")
            ds.compress(
                target_syntax,
                arr,
                encoding_plugin=plugin,
                encapsulate_ext=_number_of_frames(ds) > 1,
                generate_instance_uid=False,
                **options,
            )
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
    if target_syntax == EXPLICIT_VR_LITTLE_ENDIAN:
        return decode_frame(stream, number, max_decoded_bytes=max_decoded_bytes)
    arr = frame_array(stream, header, number)
    photometric = str(header.get("PhotometricInterpretation", "MONOCHROME2"))
    options = dict(_ENCODER_OPTIONS[target_syntax])
    options.pop("encoding_plugin", None)
    try:
        encoded = get_encoder(target_syntax).encode(
            arr,
            encoding_plugin="pydicom" if target_syntax == RLE_LOSSLESS else "",
            rows=int(header.Rows),
            columns=int(header.Columns),
            samples_per_pixel=int(header.get("SamplesPerPixel") or 1),
            bits_allocated=int(header.BitsAllocated),
            bits_stored=int(header.get("BitsStored") or header.BitsAllocated),
            pixel_representation=int(header.get("PixelRepresentation") or 0),
            photometric_interpretation="RGB" if photometric in _DECODED_AS_RGB else photometric,
            number_of_frames=1,
            planar_configuration=0,
            **options,
        )
    except _DECODE_ERRORS as exc:
        raise CannotConvert(f"cannot encode frame {number} as {target_syntax}: {exc}") from exc
    return bytes(encoded)
