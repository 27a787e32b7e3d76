"""Patient names in GB18030, ISO_IR 192 and ISO 2022 IR 87 survive C-STORE -> QIDO -> metadata."""

from __future__ import annotations

from pathlib import Path

import httpx
import pydicom
import pytest

from bench.synthetic import ct_series, write_part10

from .conftest import AE_TITLE, Archive
from .dicom_clients import storescu

pytestmark = pytest.mark.e2e

NAMES = {
    "GB18030": "王^小东=王^小东",
    "ISO_IR 192": "Müller^Zoë=张^伟",
    "\\ISO 2022 IR 87": "Yamada^Tarou=山田^太郎=やまだ^たろう",
}


def pn_groups(name: str) -> dict[str, str]:
    keys = ("Alphabetic", "Ideographic", "Phonetic")
    return {key: group for key, group in zip(keys, name.split("="), strict=False) if group}


@pytest.mark.parametrize("charset", list(NAMES), ids=lambda c: c.strip("\\").replace(" ", "_"))
def test_patient_name_round_trips(archive: Archive, tmp_path: Path, charset: str) -> None:
    name = NAMES[charset]
    patient_id = f"CHARSET-{charset.strip(chr(92)).replace(' ', '')}"
    ds = next(ct_series(1, rows=16, columns=16, patient_name=name, patient_id=patient_id, charset=charset))
    path = tmp_path / "name.dcm"
    write_part10(ds, path)
    assert pydicom.dcmread(path).PatientName == name
    result = storescu(archive.dimse_port, AE_TITLE, [path], "1.2.840.10008.1.2.1")
    assert result.returncode == 0, result.stdout + result.stderr
    archive.wait_indexed(1, PatientID=patient_id)

    studies = archive.client().search_for_studies(search_filters={"PatientID": patient_id})
    assert studies[0]["00100010"]["Value"] == [pn_groups(name)]

    url = f"{archive.dicomweb_url()}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/metadata"
    metadata = httpx.get(url, timeout=30).json()
    assert metadata[0]["00100010"]["Value"] == [pn_groups(name)]
    assert charset.split("\\")[-1] in metadata[0]["00080005"]["Value"]
