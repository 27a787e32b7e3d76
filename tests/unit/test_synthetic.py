"""Synthetic data: realistic CT series and multi-frame images that read back as written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

from bench.synthetic import ct_series, multiframe, new_uid, write_part10
from dicomcloud.dicom.parse import InstanceHeader, parse_instance
from dicomcloud.dicom.uids import validate_uid
from dicomcloud.errors import InvalidInput


def header(path: Path) -> InstanceHeader:
    """The identity the archive would read from the file: it is a complete object it accepts."""
    with path.open("rb") as stream:
        return parse_instance(stream).header


def test_ct_series_reads_back_as_one_realistic_series(tmp_path: Path) -> None:
    paths = []
    for index, ds in enumerate(ct_series(4, rows=64, columns=48, patient_id="P-9")):
        paths.append(tmp_path / f"{index}.dcm")
        write_part10(ds, paths[-1])
    images = [pydicom.dcmread(path) for path in paths]
    assert len({image.StudyInstanceUID for image in images}) == 1
    assert len({image.SeriesInstanceUID for image in images}) == 1
    assert len({image.SOPInstanceUID for image in images}) == 4
    assert [image.InstanceNumber for image in images] == [1, 2, 3, 4]
    steps = np.diff([float(image.ImagePositionPatient[2]) for image in images])
    assert np.allclose(np.abs(steps), float(images[0].SliceThickness))
    first = images[0]
    assert (first.Modality, first.SOPClassUID, first.PatientID) == ("CT", "1.2.840.10008.5.1.4.1.1.2", "P-9")
    assert (first.BitsAllocated, first.PixelRepresentation, first.RescaleIntercept) == (16, 1, -1024)
    assert list(first.ImageOrientationPatient) == [1, 0, 0, 0, 1, 0]
    assert len(first.PixelSpacing) == 2 and first.WindowWidth == 400
    assert first.file_meta.MediaStorageSOPInstanceUID == first.SOPInstanceUID
    assert first.pixel_array.shape == (64, 48) and first.pixel_array.dtype == np.int16
    assert header(paths[0]).series_instance_uid == first.SeriesInstanceUID


def test_given_study_and_series_uids_are_used() -> None:
    study, series = new_uid(), new_uid()
    ds = next(ct_series(1, rows=8, columns=8, study_uid=study, series_uid=series))
    assert (ds.StudyInstanceUID, ds.SeriesInstanceUID) == (study, series)


def test_pixels_depend_only_on_the_seed() -> None:
    def pixels(seed: int) -> list[np.ndarray]:
        return [ds.pixel_array for ds in ct_series(3, rows=32, columns=32, seed=seed)]

    first, again, other = pixels(5), pixels(5), pixels(6)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not np.array_equal(first[0], other[0])
    assert first[0].min() != first[0].max()
    hounsfield = first[0].astype(np.int32) - 1024
    assert hounsfield.min() <= -900 and hounsfield.max() >= 500


@pytest.mark.parametrize(
    ("charset", "name"),
    [
        ("GB18030", "王^小东"),
        ("ISO_IR 192", "Müller^Zoë=张^伟"),
        ("ISO_IR 100", "Buc^Jérôme"),
        ("\\ISO 2022 IR 87", "Yamada^Tarou=山田^太郎=やまだ^たろう"),
    ],
)
def test_patient_name_round_trips_in_its_character_set(tmp_path: Path, charset: str, name: str) -> None:
    write_part10(next(ct_series(1, rows=8, columns=8, patient_name=name, charset=charset)), tmp_path / "n.dcm")
    ds = pydicom.dcmread(tmp_path / "n.dcm")
    assert str(ds.PatientName) == name
    terms = charset.split("\\")
    assert ds.SpecificCharacterSet == (terms if len(terms) > 1 else charset)


def test_name_the_character_set_cannot_carry_is_refused() -> None:
    with pytest.raises(InvalidInput, match="cannot be encoded in ISO_IR 100"):
        next(ct_series(1, rows=8, columns=8, patient_name="王^小东", charset="ISO_IR 100"))


@pytest.mark.parametrize(
    "syntax",
    [
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
        DeflatedExplicitVRLittleEndian,
        ExplicitVRBigEndian,
        RLELossless,
        JPEGLSLossless,
        JPEG2000Lossless,
    ],
    ids=lambda syntax: syntax.name,
)
def test_each_transfer_syntax_carries_the_same_pixels(tmp_path: Path, syntax: str) -> None:
    reference = next(ct_series(1, rows=32, columns=32, seed=2)).pixel_array
    write_part10(next(ct_series(1, rows=32, columns=32, seed=2, transfer_syntax=syntax)), tmp_path / "s.dcm")
    ds = pydicom.dcmread(tmp_path / "s.dcm")
    assert ds.file_meta.TransferSyntaxUID == syntax
    assert np.array_equal(ds.pixel_array, reference)
    assert header(tmp_path / "s.dcm").transfer_syntax == syntax


def test_multiframe_has_its_frames_and_they_differ(tmp_path: Path) -> None:
    write_part10(multiframe(6, rows=40, columns=50, transfer_syntax=RLELossless), tmp_path / "mf.dcm")
    ds = pydicom.dcmread(tmp_path / "mf.dcm")
    frames = ds.pixel_array
    assert frames.shape == (6, 40, 50) and frames.dtype == np.uint8
    assert ds.NumberOfFrames == 6 and ds.FrameIncrementPointer == 0x00181063
    assert all(not np.array_equal(frames[0], frames[index]) for index in range(1, 6))
    assert header(tmp_path / "mf.dcm").sop_class_uid == "1.2.840.10008.5.1.4.1.1.7.2"


def test_new_uid_is_a_valid_fresh_uid() -> None:
    first, second = new_uid(), new_uid()
    assert first != second
    assert validate_uid(first) == first
