"""A generated 200-instance CT series and a multi-frame object through C-STORE, metadata and frames."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from pydicom.encaps import generate_frames

from bench.synthetic import ct_series, multiframe, write_part10

from .conftest import AE_TITLE, Archive
from .dicom_clients import multipart_parts, storescu

pytestmark = pytest.mark.e2e

CT_COUNT = 200


@pytest.fixture(scope="module")
def ct_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("ct")
    paths = []
    for i, ds in enumerate(ct_series(CT_COUNT, rows=128, columns=128, patient_id="GEN-CT", seed=7)):
        path = folder / f"ct{i:03d}.dcm"
        write_part10(ds, path)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def multiframe_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("mf") / "multiframe.dcm"
    write_part10(multiframe(12, rows=64, columns=64), path)
    return path


@pytest.fixture(scope="module")
def stored(archive: Archive, ct_files: list[Path], multiframe_file: Path) -> Archive:
    result = storescu(archive.dimse_port, AE_TITLE, [*ct_files, multiframe_file], "1.2.840.10008.1.2.1")
    assert result.returncode == 0, result.stdout + result.stderr
    first = pydicom.dcmread(ct_files[0], stop_before_pixels=True)
    archive.wait_indexed(CT_COUNT, SeriesInstanceUID=str(first.SeriesInstanceUID))
    mf = pydicom.dcmread(multiframe_file, stop_before_pixels=True)
    archive.wait_indexed(1, SOPInstanceUID=str(mf.SOPInstanceUID))
    return archive


def expected_json(ds: pydicom.Dataset, element: pydicom.DataElement) -> dict[str, Any]:
    """pydicom's own Annex F rendering of one element, for field-by-field comparison."""
    return ds.to_json_dict(bulk_data_threshold=1024, bulk_data_element_handler=lambda _: "bulk")[
        f"{element.tag:08X}"
    ]


def assert_annex_f_equal(ours: dict[str, Any], theirs: dict[str, Any], tag: str) -> None:
    assert ours["vr"] == theirs["vr"], tag
    if "BulkDataURI" in theirs or "InlineBinary" in theirs:
        assert "BulkDataURI" in ours or "InlineBinary" in ours, tag
        return
    if theirs["vr"] == "SQ":
        assert len(ours.get("Value", [])) == len(theirs.get("Value", [])), tag
        for item_ours, item_theirs in zip(ours.get("Value", []), theirs.get("Value", []), strict=True):
            assert set(item_ours) == set(item_theirs), tag
            for key in item_theirs:
                assert_annex_f_equal(item_ours[key], item_theirs[key], f"{tag}/{key}")
        return
    assert ours.get("Value") == theirs.get("Value"), tag
    for value in ours.get("Value", []):
        if theirs["vr"] in ("IS", "DS", "US", "SS", "UL", "SL", "FL", "FD"):
            assert isinstance(value, int | float), f"{tag} must be a JSON number"
        if theirs["vr"] == "PN":
            assert isinstance(value, dict) and set(value) <= {"Alphabetic", "Ideographic", "Phonetic"}


def test_series_metadata_is_annex_f_json_field_by_field(stored: Archive, ct_files: list[Path]) -> None:
    first = pydicom.dcmread(ct_files[0], stop_before_pixels=True)
    url = f"{stored.dicomweb_url()}/studies/{first.StudyInstanceUID}/series/{first.SeriesInstanceUID}/metadata"
    response = httpx.get(url, headers={"Accept": "application/dicom+json"}, timeout=60)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/dicom+json")
    documents = response.json()
    assert len(documents) == CT_COUNT
    by_uid = {doc["00080018"]["Value"][0]: doc for doc in documents}
    for path in ct_files:
        ds = pydicom.dcmread(path)
        ours = by_uid[str(ds.SOPInstanceUID)]
        theirs = ds.to_json_dict(bulk_data_threshold=1024, bulk_data_element_handler=lambda _: "bulk")
        assert set(ours) == set(theirs)
        for tag, value in theirs.items():
            assert_annex_f_equal(ours[tag], value, tag)
        assert ours["7FE00010"]["BulkDataURI"].startswith(stored.dicomweb_url())


def test_instances_are_ordered_by_instance_number_in_metadata(stored: Archive, ct_files: list[Path]) -> None:
    first = pydicom.dcmread(ct_files[0], stop_before_pixels=True)
    url = f"{stored.dicomweb_url()}/studies/{first.StudyInstanceUID}/series/{first.SeriesInstanceUID}/metadata"
    numbers = [doc["00200013"]["Value"][0] for doc in httpx.get(url, timeout=60).json()]
    assert numbers == sorted(numbers)


def test_qido_counts_the_generated_series(stored: Archive, ct_files: list[Path]) -> None:
    first = pydicom.dcmread(ct_files[0], stop_before_pixels=True)
    studies = stored.client().search_for_studies(search_filters={"PatientID": "GEN-CT"})
    assert len(studies) == 1
    assert studies[0]["00201208"]["Value"] == [CT_COUNT]
    series = stored.client().search_for_series(str(first.StudyInstanceUID))
    assert [s["00201209"]["Value"] for s in series] == [[CT_COUNT]]


def test_frames_match_pydicom_frame_bytes(stored: Archive, ct_files: list[Path], multiframe_file: Path) -> None:
    client = stored.client()
    for path in [ct_files[0], ct_files[-1], multiframe_file]:
        ds = pydicom.dcmread(path)
        frames = int(ds.get("NumberOfFrames") or 1)
        numbers = list(range(1, frames + 1))
        got = client.retrieve_instance_frames(
            str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID), numbers
        )
        if ds.file_meta.TransferSyntaxUID.is_compressed:
            expected = list(generate_frames(ds.PixelData, number_of_frames=frames))
        else:
            size = len(ds.PixelData) // frames
            expected = [ds.PixelData[i * size:(i + 1) * size] for i in range(frames)]
        assert got == expected


def test_a_frame_list_returns_the_requested_frames_in_order(stored: Archive, multiframe_file: Path) -> None:
    ds = pydicom.dcmread(multiframe_file)
    size = len(ds.PixelData) // int(ds.NumberOfFrames)
    url = (
        f"{stored.dicomweb_url()}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}/frames/5,2,9"
    )
    response = httpx.get(url, headers={"Accept": 'multipart/related; type="application/octet-stream"'}, timeout=60)
    assert response.status_code == 200
    assert multipart_parts(response) == [ds.PixelData[(n - 1) * size:n * size] for n in (5, 2, 9)]


def test_a_frame_beyond_the_last_is_not_found(stored: Archive, multiframe_file: Path) -> None:
    ds = pydicom.dcmread(multiframe_file, stop_before_pixels=True)
    url = (
        f"{stored.dicomweb_url()}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}/frames/{int(ds.NumberOfFrames) + 1}"
    )
    response = httpx.get(url, headers={"Accept": 'multipart/related; type="application/octet-stream"'}, timeout=60)
    assert response.status_code == 404
