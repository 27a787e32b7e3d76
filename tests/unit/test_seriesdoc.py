"""The series metadata document: instance entries made by parsing, ordered, serialized and served per base URL."""

from __future__ import annotations

import json
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from dicomcloud.dicom.parse import parse_instance
from dicomcloud.dicom.seriesdoc import BASE_PLACEHOLDER, DOCUMENT_FORMAT, InstanceEntry, SeriesDocument, with_base
from dicomcloud.errors import InvalidInput, NotFound

TEST_FILES = Path(pydicom.data.__file__).parent / "test_files"


def _entry(path: Path) -> InstanceEntry:
    with path.open("rb") as stream:
        return parse_instance(stream).entry


# --- the document -----------------------------------------------------------------------------


def _series(tmp_path: Path, numbers: list[int | None]) -> tuple[SeriesDocument, list[str]]:
    """A series of CT_small copies with the given Instance Numbers, indexed into a document."""
    study_uid, series_uid = generate_uid(), generate_uid()
    entries: dict[str, InstanceEntry] = {}
    sops: list[str] = []
    for i, number in enumerate(numbers):
        ds = pydicom.dcmread(TEST_FILES / "CT_small.dcm")
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        if number is None:
            del ds.InstanceNumber
        else:
            ds.InstanceNumber = number
        path = tmp_path / f"{i}.dcm"
        ds.save_as(path)
        entry = _entry(path)
        entries[entry.sop_instance_uid] = entry
        sops.append(entry.sop_instance_uid)
    doc = SeriesDocument("t1", study_uid, series_uid, version=3, instances=entries)
    return doc, sops


def test_document_round_trips_through_bytes(tmp_path: Path) -> None:
    doc, _ = _series(tmp_path, [2, 1])
    rle = _entry(TEST_FILES / "SC_rgb_rle_2frame.dcm")
    assert rle.frame_index is not None and rle.frame_index.frames
    doc.instances[rle.sop_instance_uid] = rle
    again = SeriesDocument.from_bytes(doc.to_bytes())
    assert again == doc
    assert again.instances[rle.sop_instance_uid].frame_index == rle.frame_index


def test_metadata_body_orders_by_instance_number_and_substitutes_the_base(tmp_path: Path) -> None:
    doc, sops = _series(tmp_path, [3, None, 1, 2])
    base = "http://host:8080/t1/dicom-web"
    body = with_base(doc.metadata_array(), base)
    assert BASE_PLACEHOLDER.encode() not in body
    objects = json.loads(body)
    assert [o.get("00200013", {}).get("Value", [None])[0] for o in objects] == [1, 2, 3, None]
    uri = objects[0]["7FE00010"]["BulkDataURI"]
    assert (
        uri == f"{base}/studies/{doc.study_instance_uid}/series/{doc.series_instance_uid}"
        f"/instances/{sops[2]}/bulkdata/7FE00010"
    )


def test_metadata_body_serves_each_base_from_one_document(tmp_path: Path) -> None:
    doc, _ = _series(tmp_path, [1])
    first = json.loads(with_base(doc.metadata_array(), "http://a/dicom-web"))
    second = json.loads(with_base(doc.metadata_array(), 'http://b/"x"/dicom-web/'))
    assert first[0]["7FE00010"]["BulkDataURI"].startswith("http://a/dicom-web/studies/")
    assert second[0]["7FE00010"]["BulkDataURI"].startswith('http://b/"x"/dicom-web/studies/')


def test_instance_metadata_body_is_an_array_of_one(tmp_path: Path) -> None:
    doc, sops = _series(tmp_path, [1, 2])
    objects = json.loads(doc.instance_metadata_body(sops[1], "http://h/dicom-web"))
    assert len(objects) == 1 and objects[0]["00080018"]["Value"] == [sops[1]]
    with pytest.raises(NotFound):
        doc.instance_metadata_body("1.2.3", "http://h/dicom-web")


def test_from_bytes_refuses_a_malformed_document() -> None:
    for raw in (b"{", b"{}", b'{"format": 99}', b'{"format": %d, "instances": [{}]}' % DOCUMENT_FORMAT):
        with pytest.raises(InvalidInput):
            SeriesDocument.from_bytes(raw)


def test_from_bytes_refuses_a_document_of_another_format(tmp_path: Path) -> None:
    doc, _ = _series(tmp_path, [1])
    older = {**json.loads(doc.to_bytes()), "format": DOCUMENT_FORMAT - 1}
    with pytest.raises(InvalidInput, match="format"):
        SeriesDocument.from_bytes(json.dumps(older).encode())


# --- the instance entry -----------------------------------------------------------------------


def test_instance_entry_round_trips_through_bytes_without_a_file_path() -> None:
    entry = _entry(TEST_FILES / "SC_rgb_rle_2frame.dcm")
    assert InstanceEntry.from_bytes(entry.to_bytes()) == entry
    assert "file_path" not in json.loads(entry.to_bytes())


def test_instance_entry_metadata_json_is_its_dicom_json() -> None:
    entry = _entry(TEST_FILES / "CT_small.dcm")
    assert json.loads(entry.metadata_json) == entry.metadata


def test_instance_entry_from_bytes_refuses_a_damaged_or_other_format_entry() -> None:
    raw = _entry(TEST_FILES / "CT_small.dcm").to_bytes()
    older = {**json.loads(raw), "format": DOCUMENT_FORMAT - 1}
    for damaged in (b"{", b"{}", raw[: len(raw) // 2], json.dumps(older).encode(), b"[]"):
        with pytest.raises(InvalidInput):
            InstanceEntry.from_bytes(damaged)
