"""Generated DICOM data for tests and benchmarks: realistic headers, deterministic pixels.

Pixel content depends only on `seed` (numpy's default generator); UIDs are fresh on every
call so that repeated runs never collide in an archive.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from pydicom.charset import convert_encodings, decode_bytes, encode_string
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)

from dicomcloud.errors import InvalidInput

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MULTIFRAME_GRAYSCALE_BYTE_SC_STORAGE = "1.2.840.10008.5.1.4.1.1.7.2"
_NATIVE_SYNTAXES = {ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian}
_STUDY_DATE, _STUDY_TIME = "20240102", "101500"
_FRAME_TIME_TAG = 0x00181063


def new_uid() -> str:
    return str(generate_uid())


def _charset_terms(charset: str) -> list[str]:
    return charset.split("\\")


def _check_encodable(name: str, charset: str) -> None:
    """Refuse a patient name the character set cannot carry, rather than writing '?' for it."""
    encodings = convert_encodings(_charset_terms(charset))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        round_trip = decode_bytes(encode_string(name, encodings), encodings, {0x5E, 0x3D})
    if round_trip != name:
        raise InvalidInput(f"patient name {name!r} cannot be encoded in {charset}")


def _base(
    sop_class_uid: str,
    modality: str,
    *,
    patient_name: str,
    patient_id: str,
    study_uid: str,
    series_uid: str,
    charset: str,
) -> Dataset:
    """Patient, study, series, equipment and SOP common modules."""
    _check_encodable(patient_name, charset)
    terms = _charset_terms(charset)
    ds = Dataset()
    ds.SpecificCharacterSet = terms if len(terms) > 1 else terms[0]
    ds.SOPClassUID = sop_class_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = _STUDY_DATE
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = _STUDY_TIME
    ds.AccessionNumber = "SYN0001"
    ds.Modality = modality
    ds.Manufacturer = "dicomcloud"
    ds.InstitutionName = "Synthetic Hospital"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = f"Synthetic {modality}"
    ds.SeriesDescription = f"Synthetic {modality} series"
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    return ds


def _set_pixels(ds: Dataset, pixels: NDArray[np.integer], transfer_syntax: str) -> None:
    """Pixel Data and file meta for `transfer_syntax`, compressing when the syntax asks for it."""
    syntax = UID(transfer_syntax)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta.ImplementationVersionName = "DICOMCLOUD_SYN"
    if syntax in _NATIVE_SYNTAXES:
        big_endian = syntax == ExplicitVRBigEndian
        ds.PixelData = pixels.astype(pixels.dtype.newbyteorder(">" if big_endian else "<")).tobytes()
        ds["PixelData"].VR = "OW" if ds.BitsAllocated > 8 else "OB"
        ds.file_meta.TransferSyntaxUID = syntax
    elif syntax.is_compressed:
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.compress(syntax, pixels)
    else:
        raise InvalidInput(f"cannot generate pixel data in transfer syntax {transfer_syntax}")


def _phantom(rows: int, columns: int, z: float, rng: np.random.Generator) -> NDArray[np.int16]:
    """An axial slice in Hounsfield units: air, an elliptic body, lungs, spine and an organ
    whose size changes with z."""
    y, x = np.mgrid[-1.0 : 1.0 : rows * 1j, -1.0 : 1.0 : columns * 1j]
    hu = np.full((rows, columns), -1000.0)
    hu[(x / 0.85) ** 2 + (y / 0.65) ** 2 <= 1] = 40.0
    for side in (-0.4, 0.4):
        hu[((x - side) / 0.25) ** 2 + ((y + 0.05) / 0.35) ** 2 <= 1] = -850.0
    hu[x**2 + (y - 0.45) ** 2 <= 0.12**2] = 700.0
    organ = 0.12 + 0.06 * np.sin(z / 15.0)
    hu[(x + 0.1) ** 2 + (y - 0.1) ** 2 <= organ**2] = 120.0
    body = hu > -1000
    hu[body] += rng.normal(0.0, 12.0, int(body.sum()))
    slice_hu: NDArray[np.int16] = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)
    return slice_hu


def ct_series(
    count: int,
    *,
    rows: int = 512,
    columns: int = 512,
    patient_name: str = "Synthetic^CT",
    patient_id: str = "SYN-CT",
    study_uid: str | None = None,
    series_uid: str | None = None,
    charset: str = "ISO_IR 192",
    transfer_syntax: str = ExplicitVRLittleEndian,
    seed: int = 0,
) -> Iterator[Dataset]:
    """`count` axial CT images of one series: 16-bit signed, stored value = HU + 1024."""
    study_uid = study_uid or new_uid()
    series_uid = series_uid or new_uid()
    frame_of_reference = new_uid()
    rng = np.random.default_rng(seed)
    spacing, thickness = 350.0 / columns, 2.5
    for index in range(count):
        z = -index * thickness
        ds = _base(
            CT_IMAGE_STORAGE,
            "CT",
            patient_name=patient_name,
            patient_id=patient_id,
            study_uid=study_uid,
            series_uid=series_uid,
            charset=charset,
        )
        ds.SOPInstanceUID = new_uid()
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.AcquisitionDateTime = _STUDY_DATE + _STUDY_TIME
        ds.BodyPartExamined = "CHEST"
        ds.SliceThickness = thickness
        ds.KVP = 120
        ds.FrameOfReferenceUID = frame_of_reference
        ds.PositionReferenceIndicator = ""
        ds.InstanceNumber = index + 1
        ds.AcquisitionNumber = 1
        ds.ImagePositionPatient = [-columns * spacing / 2, -rows * spacing / 2, z]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.SliceLocation = z
        ds.PixelSpacing = [round(spacing, 6), round(spacing, 6)]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = rows, columns
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation = 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
        ds.WindowCenter, ds.WindowWidth = 40, 400
        _set_pixels(ds, _phantom(rows, columns, z, rng) + 1024, transfer_syntax)
        yield ds


def multiframe(
    frames: int,
    *,
    rows: int = 256,
    columns: int = 256,
    patient_name: str = "Synthetic^MF",
    patient_id: str = "SYN-MF",
    study_uid: str | None = None,
    series_uid: str | None = None,
    charset: str = "ISO_IR 192",
    transfer_syntax: str = ExplicitVRLittleEndian,
    seed: int = 0,
) -> Dataset:
    """A Multi-frame Grayscale Byte Secondary Capture image: a bright disc moving frame by frame."""
    ds = _base(
        MULTIFRAME_GRAYSCALE_BYTE_SC_STORAGE,
        "OT",
        patient_name=patient_name,
        patient_id=patient_id,
        study_uid=study_uid or new_uid(),
        series_uid=series_uid or new_uid(),
        charset=charset,
    )
    ds.SOPInstanceUID = new_uid()
    ds.InstanceNumber = 1
    ds.ConversionType = "WSD"
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.NumberOfFrames = frames
    ds.FrameIncrementPointer = _FRAME_TIME_TAG
    ds.FrameTime = 40.0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelRepresentation = 0
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:columns]
    background = (x * 96 // max(columns - 1, 1)).astype(np.float64)
    cine = np.empty((frames, rows, columns), dtype=np.uint8)
    for frame in range(frames):
        angle = 2 * np.pi * frame / max(frames, 1)
        cx, cy = columns / 2 + columns / 4 * np.cos(angle), rows / 2 + rows / 4 * np.sin(angle)
        image = background + rng.normal(0.0, 4.0, (rows, columns))
        image[(x - cx) ** 2 + (y - cy) ** 2 <= (min(rows, columns) / 8) ** 2] = 230.0
        cine[frame] = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    _set_pixels(ds, cine, transfer_syntax)
    return ds


def write_part10(ds: Dataset, path: Path) -> None:
    """A Part 10 file (preamble, DICM, file meta) in the dataset's own transfer syntax."""
    ds.save_as(path, enforce_file_format=True)
