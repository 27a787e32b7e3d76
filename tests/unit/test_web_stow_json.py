"""STOW-RS of metadata and bulk data (PS3.18 10.5.1.2.2), and OB/OD/OF/OL/OV/OW values round-tripped through it and
WADO-RS: InlineBinary up to the bulk data threshold, BulkDataURI above it, the bytes exactly as sent."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from test_web_app import multipart_bodies, part10, stow

from bench.synthetic import new_uid
from dicomcloud.archive.core import Archive

pytest_plugins = ["test_web_app"]

THRESHOLD = 1024  # storage.bulkdata_threshold's default
BOUNDARY = "json-bulk-1"
JSON_MULTIPART = f'multipart/related; type="application/dicom+json"; boundary={BOUNDARY}'
# One attribute of each binary VR, small (inline) or large (bulk data), some inside a sequence item; even lengths,
# as DICOM encodes every value (an odd one gets its padding byte).
BINARY_VALUES = {
    "ICCProfile": ("OB", 8),
    "FilterLookupTableData": ("OD", 3 * 8),
    "VectorGridData": ("OF", 600 * 4),
    "LongPrimitivePointIndexList": ("OL", 5 * 4),
    "SelectorOVValue": ("OV", 300 * 8),
    "RedPaletteColorLookupTableData": ("OW", 8),
    "GreenPaletteColorLookupTableData": ("OW", 1000 * 2),
}


def image_with_binary_values() -> Dataset:
    rng = np.random.default_rng(7)
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID = new_uid(), new_uid(), new_uid()
    ds.PatientName, ds.Modality = "Binary^Values", "OT"
    ds.Rows = ds.Columns = 32
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = rng.integers(0, 4096, (32, 32), dtype="<u2").tobytes()
    ds["PixelData"].VR = "OW"
    for keyword, (vr, size) in BINARY_VALUES.items():
        ds[keyword] = DataElement(keyword, vr, rng.integers(0, 256, size, dtype=np.uint8).tobytes())
    nested = Dataset()
    nested.add_new(0x00660022, "OD", rng.integers(0, 256, 200 * 8, dtype=np.uint8).tobytes())  # DoublePointCoordinates
    nested.add_new(0x00660016, "OF", rng.integers(0, 256, 4 * 4, dtype=np.uint8).tobytes())  # PointCoordinatesData
    ds.SurfacePointsSequence = [nested]
    return ds


def metadata_and_bulk(ds: Dataset) -> tuple[dict[str, object], dict[str, bytes]]:
    """The test's own DICOM JSON of `ds` (pydicom's encoder) and the bulk data its BulkDataURIs name."""
    bulk: dict[str, bytes] = {}

    def uri(element: DataElement) -> str:
        location = f"https://client.test/{ds.SOPInstanceUID}/bulk/{len(bulk)}"
        bulk[location] = element.value
        return location

    return ds.to_json_dict(bulk_data_threshold=THRESHOLD, bulk_data_element_handler=uri), bulk


def json_body(metadata: list[object], bulk: dict[str, bytes], bulk_type: str = "application/octet-stream") -> bytes:
    chunks = [f"--{BOUNDARY}\r\nContent-Type: application/dicom+json\r\n\r\n".encode(), json.dumps(metadata).encode()]
    for location, value in bulk.items():
        head = f"\r\n--{BOUNDARY}\r\nContent-Type: {bulk_type}\r\nContent-Location: {location}\r\n\r\n"
        chunks += [head.encode(), value]
    chunks.append(f"\r\n--{BOUNDARY}--\r\n".encode())
    return b"".join(chunks)


def stow_json(client: TestClient, body: bytes) -> dict[str, object]:
    response = client.post("/dicom-web/studies", content=body, headers={"Content-Type": JSON_MULTIPART})
    assert response.status_code in (200, 202, 400, 409), response.text
    answer: dict[str, object] = response.json()
    return answer


def instance_path(ds: Dataset) -> str:
    return f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"


def binary_attributes(attributes: dict[str, dict[str, object]], path: str = "") -> dict[str, dict[str, object]]:
    """Every binary attribute by tag path, sequences entered."""
    found: dict[str, dict[str, object]] = {}
    for tag, attribute in attributes.items():
        if attribute["vr"] == "SQ":
            for index, item in enumerate(attribute.get("Value", [])):
                found |= binary_attributes(item, f"{path}{tag}/{index}/")
        elif "InlineBinary" in attribute or "BulkDataURI" in attribute:
            found[path + tag] = attribute
    return found


def bulk_bytes(client: TestClient, uri: str) -> bytes:
    response = client.get(uri, headers={"Accept": 'multipart/related; type="application/octet-stream"'})
    assert response.status_code == 200
    ((_, value),) = multipart_bodies(response)
    return value


def assert_served_as_sent(client: TestClient, ds: Dataset, sent: dict[str, object], bulk: dict[str, bytes]) -> None:
    response = client.get(instance_path(ds) + "/metadata")
    assert response.status_code == 200
    (served,) = response.json()
    sent_binary = binary_attributes(sent)
    served_binary = binary_attributes(served)
    assert set(served_binary) == set(sent_binary)
    for path, attribute in sent_binary.items():
        here = served_binary[path]
        assert here["vr"] == attribute["vr"], path
        if "InlineBinary" in attribute:
            assert here == attribute, path
        else:
            assert "BulkDataURI" in here, path
            assert bulk_bytes(client, str(here["BulkDataURI"])) == bulk[str(attribute["BulkDataURI"])], path


def test_binary_values_round_trip_through_stow_json_and_wado(client: TestClient) -> None:
    ds = image_with_binary_values()
    metadata, bulk = metadata_and_bulk(ds)
    sent = binary_attributes(metadata).values()
    assert {a["vr"] for a in sent if "InlineBinary" in a} >= {"OB", "OD", "OL", "OW"}
    assert {a["vr"] for a in sent if "BulkDataURI" in a} >= {"OD", "OF", "OV", "OW"}
    answer = stow_json(client, json_body([metadata], bulk))
    assert "00081198" not in answer
    assert_served_as_sent(client, ds, metadata, bulk)
    retrieved = client.get(instance_path(ds), headers={"Accept": "application/dicom"})
    assert retrieved.status_code == 200
    assert_same_values(ds, pydicom.dcmread(pydicom.filebase.DicomBytesIO(retrieved.content)))


def assert_same_values(expected: Dataset, actual: Dataset) -> None:
    for element in expected:
        if element.VR == "SQ":
            assert len(actual[element.tag].value) == len(element.value)
            for want, got in zip(element.value, actual[element.tag].value, strict=True):
                assert_same_values(want, got)
        else:
            assert actual[element.tag].value == element.value, element.keyword


def test_binary_values_of_a_part10_stow_are_inline_or_bulk_by_size(client: TestClient, tmp_path: Path) -> None:
    ds = image_with_binary_values()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    assert stow(client, [part10(ds, tmp_path)]).status_code == 200
    metadata, bulk = metadata_and_bulk(ds)
    assert_served_as_sent(client, ds, metadata, bulk)


def test_an_instance_whose_bulk_data_is_missing_fails_alone_and_named(client: TestClient, archive: Archive) -> None:
    complete, broken = image_with_binary_values(), image_with_binary_values()
    complete_metadata, complete_bulk = metadata_and_bulk(complete)
    broken_metadata, _ = metadata_and_bulk(broken)
    answer = stow_json(client, json_body([complete_metadata, broken_metadata], complete_bulk))
    (failure,) = answer["00081198"]["Value"]
    assert failure["00081155"]["Value"] == [broken.SOPInstanceUID]
    assert failure["00081197"]["Value"] == [0xC000]
    assert len(answer["00081199"]["Value"]) == 1


@pytest.mark.parametrize("bulk_type", ["image/jpeg", "application/dicom"])
def test_bulk_data_that_is_not_octet_stream_fails_the_instance(client: TestClient, bulk_type: str) -> None:
    ds = image_with_binary_values()
    metadata, bulk = metadata_and_bulk(ds)
    answer = stow_json(client, json_body([metadata], bulk, bulk_type))
    (failure,) = answer["00081198"]["Value"]
    assert failure["00081155"]["Value"] == [ds.SOPInstanceUID]
