"""OB/OD/OF/OL/OV/OW values against `dicomcloud up`: sent as DICOM JSON and bulk data (STOW-RS), read back with
dicomweb-client (metadata, bulk data): InlineBinary up to the bulk data threshold, BulkDataURI above, byte for byte."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from bench.synthetic import new_uid

from .conftest import Archive

pytestmark = pytest.mark.e2e

THRESHOLD = 1024  # storage.bulkdata_threshold's default
BOUNDARY = "binary-values"
# Each binary VR small and large (even lengths, as DICOM encodes every value).
VALUES = [
    ("ICCProfile", "OB", 16), ("FilterLookupTableData", "OD", 8 * 300), ("PointCoordinatesData", "OF", 12),
    ("VectorGridData", "OF", 4 * 500), ("LongPrimitivePointIndexList", "OL", 4 * 400), ("SelectorOVValue", "OV", 8),
    ("RedPaletteColorLookupTableData", "OW", 2 * 2000), ("GreenPaletteColorLookupTableData", "OW", 6),
]


def dataset() -> Dataset:
    rng = np.random.default_rng(11)
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.7", new_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = new_uid(), new_uid()
    for keyword, vr, size in VALUES:
        ds[keyword] = DataElement(keyword, vr, rng.integers(0, 256, size, dtype=np.uint8).tobytes())
    return ds


def test_binary_values_sent_as_json_and_bulk_data_come_back_byte_for_byte(archive: Archive) -> None:
    ds = dataset()
    sent: dict[str, bytes] = {}

    def bulk_uri(element: DataElement) -> str:
        sent[f"urn:bulk:{element.tag:08X}"] = element.value
        return f"urn:bulk:{element.tag:08X}"

    metadata = ds.to_json_dict(bulk_data_threshold=THRESHOLD, bulk_data_element_handler=bulk_uri)
    parts = [f"--{BOUNDARY}\r\nContent-Type: application/dicom+json\r\n\r\n{json.dumps([metadata])}".encode()]
    for location, value in sent.items():
        head = f"\r\n--{BOUNDARY}\r\nContent-Type: application/octet-stream\r\nContent-Location: {location}\r\n\r\n"
        parts.append(head.encode() + value)
    body = b"".join(parts) + f"\r\n--{BOUNDARY}--\r\n".encode()
    content_type = f'multipart/related; type="application/dicom+json"; boundary={BOUNDARY}'
    response = httpx.post(f"{archive.dicomweb_url()}/studies", content=body, headers={"Content-Type": content_type})
    assert response.status_code == 200, response.text

    client = archive.client()
    served = client.retrieve_instance_metadata(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    for keyword, vr, size in VALUES:
        tag = f"{tag_for_keyword(keyword):08X}"
        attribute = served[tag]
        assert attribute["vr"] == vr
        if size <= THRESHOLD:
            assert attribute == metadata[tag], keyword
        else:
            (value,) = client.retrieve_bulkdata(attribute["BulkDataURI"])
            assert value == sent[f"urn:bulk:{tag}"], keyword
