"""Odd real-life files (tests/e2e/corpus.py: what pydicom, pydicom-data and pynetdicom ship), each in one STOW-RS
against `dicomcloud up`: never a 5xx; a stored one comes back byte-exact (a bare dataset behind the Part 10 header
it lacked) with valid DICOM JSON metadata and, when pydicom decodes its pixels, a rendered image; a refused one
gets a 4xx naming the SOP Instance UID it carries."""

from __future__ import annotations

import base64
import io
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from PIL import Image
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian

from bench.synthetic import new_uid

from .conftest import Archive
from .corpus import corpus_files
from .dicom_clients import multipart_parts, stow

pytestmark = pytest.mark.e2e

FILES = corpus_files()

# PS3.5 Table 6.2-1; how each VR's values travel in DICOM JSON (PS3.18 F.2.3).
_BINARY_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "UN"}
_INTEGER_VRS = {"SL", "SS", "UL", "US"}
_FLOAT_VRS = {"FL", "FD"}
_TEXT_VRS = {"AE", "AS", "CS", "DA", "DT", "LO", "LT", "SH", "ST", "TM", "UC", "UI", "UR", "UT"}
_VRS = _BINARY_VRS | _INTEGER_VRS | _FLOAT_VRS | _TEXT_VRS | {"AT", "DS", "IS", "PN", "SQ", "SV", "UV"}
_TAG = re.compile(r"[0-9A-F]{8}")


def file_id(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"


def read(path: Path, **options: Any) -> pydicom.Dataset | None:
    """The test's own reading of a file: pydicom with force, or None when even that fails."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return pydicom.dcmread(path, force=True, **options)
        except Exception:  # the file is odd enough that pydicom gives up: the test knows nothing of it
            return None


def sop_instance_uid(path: Path) -> str | None:
    ds = read(path, stop_before_pixels=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = ds.get("SOPInstanceUID") if ds is not None else None
    return str(value).strip("\x00 ") or None if isinstance(value, str) else None


def decodes(path: Path) -> bool:
    ds = read(path)
    if ds is None or "PixelData" not in ds:
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds.pixel_array  # noqa: B018 - decoding is the question
        except Exception:  # no decoder or broken pixels: pydicom does not decode it
            return False
    return True


def tenant_groups(files: list[Path]) -> dict[Path, str]:
    """A tenant per file so that no SOP Instance UID repeats within one (pydicom ships objects in many syntaxes)."""
    seen: list[set[str]] = []
    tenant: dict[Path, str] = {}
    for path in files:
        uid = sop_instance_uid(path) or path.name
        index = next((i for i, uids in enumerate(seen) if uid not in uids), len(seen))
        if index == len(seen):
            seen.append(set())
        seen[index].add(uid)
        tenant[path] = f"corpus{index}"
    return tenant


def check_dicom_json(dataset: Any, where: str = "") -> None:
    """PS3.18 Annex F: an object of attributes by tag; each has a VR and at most one of Value, BulkDataURI,
    InlineBinary, with values of the VR's JSON type."""
    assert isinstance(dataset, dict), where
    for tag, attribute in dataset.items():
        here = f"{where}/{tag}"
        assert _TAG.fullmatch(tag), here
        assert isinstance(attribute, dict) and attribute.get("vr") in _VRS, here
        vr = attribute["vr"]
        assert set(attribute) <= {"vr", "Value", "BulkDataURI", "InlineBinary"}, here
        assert len(set(attribute) - {"vr"}) <= 1, here
        if "InlineBinary" in attribute:
            assert vr in _BINARY_VRS, here
            base64.b64decode(attribute["InlineBinary"], validate=True)
        if "BulkDataURI" in attribute:
            assert vr in _BINARY_VRS and isinstance(attribute["BulkDataURI"], str), here
        if "Value" in attribute:
            values = attribute["Value"]
            assert vr not in _BINARY_VRS and isinstance(values, list) and values, here
            for value in values:
                check_value(vr, value, here)


def check_value(vr: str, value: Any, where: str) -> None:
    if vr == "SQ":
        check_dicom_json(value, where)
    elif value is None:
        return
    elif vr == "PN":
        assert isinstance(value, dict) and set(value) <= {"Alphabetic", "Ideographic", "Phonetic"}, where
        assert all(isinstance(group, str) for group in value.values()), where
    elif vr in _INTEGER_VRS:
        assert isinstance(value, int), where
    elif vr in _FLOAT_VRS:
        assert isinstance(value, int | float) or value in ("NaN", "Infinity", "-Infinity"), where
    elif vr in ("SV", "UV"):
        assert isinstance(value, int) or (isinstance(value, str) and value.lstrip("-").isdigit()), where
    elif vr in ("IS", "DS"):
        assert isinstance(value, int | float | str), where  # text keeps a value that is no number (F.2.3)
    elif vr == "AT":
        assert isinstance(value, str) and _TAG.fullmatch(value), where
    else:
        assert isinstance(value, str), where


@dataclass
class Sent:
    archive: Archive
    tenant: dict[Path, str]
    responses: dict[Path, httpx.Response]


@pytest.fixture(scope="module")
def sent(archive_factory: Callable[..., Archive]) -> Sent:
    archive = archive_factory("real-life-files")
    tenant = tenant_groups(FILES)
    responses = {path: stow(archive.dicomweb_url(tenant[path]), [path.read_bytes()]) for path in FILES}
    return Sent(archive, tenant, responses)


def test_the_corpus_holds_at_least_a_hundred_files() -> None:
    assert len(FILES) >= 100


@pytest.mark.parametrize("path", FILES, ids=file_id)
def test_a_real_life_file_is_stored_exactly_or_refused_by_name(sent: Sent, path: Path) -> None:
    response = sent.responses[path]
    assert response.status_code in (200, 400), response.text
    answer = response.json()
    check_dicom_json(answer)
    if response.status_code != 200:
        (failure,) = answer["00081198"]["Value"]
        assert failure["00081197"]["Value"] == [0xC000], failure
        uid = sop_instance_uid(path)
        if uid is not None:
            assert failure["00081155"]["Value"] == [uid]
        return
    (stored,) = answer["00081199"]["Value"]
    instance_url = stored["00081190"]["Value"][0]
    retrieved = httpx.get(instance_url, headers={"Accept": 'multipart/related; type="application/dicom"'}, timeout=60)
    assert retrieved.status_code == 200
    (served,) = multipart_parts(retrieved)
    sent = path.read_bytes()
    if sent[128:132] == b"DICM" or sent.startswith(b"\x02\x00"):
        assert served == sent
    else:  # a bare dataset: served as the Part 10 file it lacked the header of, its own bytes untouched
        assert served[128:132] == b"DICM" and served.endswith(sent)
        assert pydicom.dcmread(io.BytesIO(served)).SOPInstanceUID == sop_instance_uid(path)
    metadata = httpx.get(f"{instance_url}/metadata", headers={"Accept": "application/dicom+json"}, timeout=60)
    assert metadata.status_code == 200
    (attributes,) = metadata.json()
    check_dicom_json(attributes)
    if decodes(path):
        rendered = httpx.get(f"{instance_url}/frames/1/rendered", headers={"Accept": "image/png"}, timeout=60)
        assert rendered.status_code == 200, rendered.text
        image = Image.open(io.BytesIO(rendered.content))
        assert image.format == "PNG" and image.width > 0


def test_a_frame_of_an_enhanced_multi_frame_object_renders_with_its_own_and_a_requested_window(sent: Sent) -> None:
    (path,) = [p for p in FILES if p.name == "eCT_Supplemental.dcm"]
    (stored,) = sent.responses[path].json()["00081199"]["Value"]
    frame = f"{stored['00081190']['Value'][0]}/frames/2/rendered"
    images = [
        httpx.get(frame, params=params, headers={"Accept": "image/png"}, timeout=60)
        for params in ({}, {"window": "40,400,linear"}, {"window": "40,400,sigmoid"})
    ]
    assert [response.status_code for response in images] == [200, 200, 200]
    assert len({response.content for response in images}) == 3


# Odd objects as bug reports describe them, made here since no package ships them.
def _made(**raw: tuple[str, bytes]) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.7", new_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = new_uid(), new_uid()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    for keyword, (vr, value) in raw.items():
        tag = Tag(keyword)
        ds[tag] = RawDataElement(tag, vr, len(value), value, 0, False, True)  # written as is: odd lengths stay
    return ds


def _nested(depth: int) -> Dataset:
    ds = _made()
    inner = Dataset()
    inner.CodeValue = "LEAF"
    for _ in range(depth):
        outer = Dataset()
        outer.ContentSequence = [inner]
        inner = outer
    ds.ContentSequence = inner.ContentSequence
    return ds


def _binary_values() -> Dataset:
    ds = _made()
    for keyword, vr, size in (("FilterLookupTableData", "OD", 16), ("DoublePointCoordinatesData", "OD", 4000),
                              ("VectorGridData", "OF", 3000), ("PointCoordinatesData", "OF", 12),
                              ("LongPrimitivePointIndexList", "OL", 2000), ("SelectorOVValue", "OV", 8),
                              ("ExtendedOffsetTableLengths", "OV", 1600)):
        ds[keyword] = DataElement(keyword, vr, bytes(range(256)) * (size // 256) + bytes(size % 256))
    return ds


def _private() -> Dataset:
    ds = _made()
    block = ds.private_block(0x0099, "ODD VENDOR", create=True)
    block.add_new(0x01, "OB", b"\x01" * 5000)
    block.add_new(0x02, "UN", b"\x02" * 3000)
    block.add_new(0x03, "LO", "x" * 64)
    ds.add_new(0x00991010, "UN", b"\xfe\xff")  # private element without a creator
    return ds


MADE: dict[str, Callable[[], Dataset]] = {
    "sequences nested 100 deep": lambda: _nested(100),
    "invalid UTF-8 and control characters in PN, backslashes in LO": lambda: _made(
        SpecificCharacterSet=("CS", b"ISO_IR 192"), PatientName=("PN", b"\xff\xfe\x00X^Y\x1b="),
        StudyDescription=("LO", b"a\\b\\c"),
    ),
    "an unknown character set": lambda: _made(
        SpecificCharacterSet=("CS", b"ISO_IR 999 "), PatientName=("PN", b"M\xfcller")
    ),
    "odd value lengths": lambda: _made(Modality=("CS", b"O"), InstitutionName=("LO", b"abc")),
    "a non-conformant SOP Instance UID": lambda: _made(SOPInstanceUID=("UI", b"dccc9599087131742838cc1162a630fe")),
    "OD, OF, OL and OV values on both sides of the bulk data threshold": _binary_values,
    "private tags with and without their creator, longer than the threshold": _private,
}


@pytest.mark.parametrize("name", MADE)
def test_an_odd_made_object_is_stored_exactly_with_valid_metadata(
    archive: Archive, tmp_path: Path, name: str
) -> None:
    path = tmp_path / "odd.dcm"
    MADE[name]().save_as(path, enforce_file_format=True)
    response = stow(archive.dicomweb_url(), [path.read_bytes()])
    assert response.status_code == 200, response.text
    (stored,) = response.json()["00081199"]["Value"]
    instance_url = stored["00081190"]["Value"][0]
    retrieved = httpx.get(instance_url, headers={"Accept": 'multipart/related; type="application/dicom"'}, timeout=60)
    assert multipart_parts(retrieved) == [path.read_bytes()]
    metadata = httpx.get(f"{instance_url}/metadata", timeout=60)
    assert metadata.status_code == 200
    (attributes,) = metadata.json()
    check_dicom_json(attributes)
