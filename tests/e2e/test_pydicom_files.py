"""Every valid, complete Part 10 file pydicom ships goes in over C-STORE and STOW-RS and comes back intact."""

from __future__ import annotations

import os
import subprocess
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom.dataset import Dataset

from .conftest import Archive
from .dicom_clients import STORESCU_PROPOSE, multipart_parts, pynetdicom_store, storescu, storescu_can_read, stow

pytestmark = pytest.mark.e2e

TEST_FILES = Path(os.path.dirname(pydicom.data.__file__)) / "test_files"
REQUIRED_UIDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")


def is_complete_part10(path: Path) -> bool:
    """The test's own verdict, independent of the archive's parser: dcmtk reads the whole file
    (pydicom tolerates truncation silently) and pydicom finds the file meta and the object's UIDs."""
    dcmdump = subprocess.run(["dcmdump", "-q", str(path)], capture_output=True, check=False)
    if dcmdump.returncode != 0:
        return False
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception:
        return False
    return "TransferSyntaxUID" in ds.file_meta and all(k in ds for k in REQUIRED_UIDS)


def all_test_files() -> list[Path]:
    return sorted(p for p in TEST_FILES.rglob("*") if p.is_file())


COMPLETE = [p for p in all_test_files() if is_complete_part10(p)]


def tenant_groups(files: list[Path]) -> list[list[Path]]:
    """Split files so no SOP Instance UID repeats within a group (pydicom ships one object in many syntaxes)."""
    groups: list[tuple[set[str], list[Path]]] = []
    for path in files:
        uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        for seen, members in groups:
            if uid not in seen:
                seen.add(uid)
                members.append(path)
                break
        else:
            groups.append(({uid}, [path]))
    return [members for _, members in groups]


@dataclass
class Loaded:
    archive: Archive
    tenant_of: dict[Path, tuple[str, str]]  # file -> (C-STORE tenant, STOW tenant)


@pytest.fixture(scope="module")
def loaded(archive_factory: Callable[..., Archive]) -> Loaded:
    groups = tenant_groups(COMPLETE)
    ae_tenants = {f"GROUP{i}": f"dimse{i}" for i in range(len(groups))}
    archive = archive_factory("pydicom-files", {"DICOMCLOUD_DIMSE__AE_TENANTS": _json(ae_tenants)})
    tenant_of: dict[Path, tuple[str, str]] = {}
    for i, group in enumerate(groups):
        by_syntax: dict[str, list[Path]] = defaultdict(list)
        for path in group:
            by_syntax[str(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)].append(path)
            tenant_of[path] = (f"dimse{i}", f"stow{i}")
        for syntax, paths in by_syntax.items():
            by_storescu = [p for p in paths if syntax in STORESCU_PROPOSE and storescu_can_read(p)]
            by_pynetdicom = [p for p in paths if p not in by_storescu]
            if by_storescu:
                result = storescu(archive.dimse_port, f"GROUP{i}", by_storescu, syntax)
                assert result.returncode == 0, result.stdout + result.stderr
            if by_pynetdicom:
                assert pynetdicom_store(archive.dimse_port, f"GROUP{i}", by_pynetdicom) == [0] * len(by_pynetdicom)
        response = stow(archive.dicomweb_url(f"stow{i}"), [p.read_bytes() for p in group])
        assert response.status_code == 200, response.text
    for i, group in enumerate(groups):
        archive.wait_indexed(len(group), f"dimse{i}")
        archive.wait_indexed(len(group), f"stow{i}")
    return Loaded(archive, tenant_of)


def _json(value: object) -> str:
    import json

    return json.dumps(value)


def _dataset_without_meta(ds: Dataset) -> dict[str, object]:
    """Elements and values, less what storescu rewrites on sending: file meta, the retired group
    lengths and Data Set Trailing Padding (FFFC,FFFC), which carries no meaning."""
    return {
        str(el.tag): el.value
        for el in ds
        if el.tag.group != 0x0002 and el.tag.element != 0x0000 and el.tag not in (0x7FE00010, 0xFFFCFFFC)
    }


def test_the_shipped_files_include_every_transfer_syntax_group() -> None:
    syntaxes = {str(pydicom.dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID) for p in COMPLETE}
    assert {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99",
            "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.70",
            "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"} <= syntaxes


@pytest.mark.parametrize("path", COMPLETE, ids=lambda p: str(p.relative_to(TEST_FILES)))
def test_c_store_then_qido_and_wado_return_the_same_object(loaded: Loaded, path: Path) -> None:
    original = pydicom.dcmread(path)
    tenant = loaded.tenant_of[path][0]
    client = loaded.archive.client(tenant)
    found = client.search_for_instances(search_filters={"SOPInstanceUID": str(original.SOPInstanceUID)})
    assert len(found) == 1
    assert found[0]["00080018"]["Value"] == [str(original.SOPInstanceUID)]
    retrieved = client.retrieve_instance(
        str(original.StudyInstanceUID), str(original.SeriesInstanceUID), str(original.SOPInstanceUID)
    )
    assert retrieved.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
    assert _dataset_without_meta(retrieved) == _dataset_without_meta(original)
    if "PixelData" in original:
        assert retrieved.PixelData == original.PixelData


@pytest.mark.parametrize("path", COMPLETE, ids=lambda p: str(p.relative_to(TEST_FILES)))
def test_stow_then_qido_and_wado_return_the_same_part10_bytes(loaded: Loaded, path: Path) -> None:
    original = pydicom.dcmread(path, stop_before_pixels=True)
    tenant = loaded.tenant_of[path][1]
    client = loaded.archive.client(tenant)
    found = client.search_for_instances(
        study_instance_uid=str(original.StudyInstanceUID),
        search_filters={"SOPInstanceUID": str(original.SOPInstanceUID)},
    )
    assert len(found) == 1
    url = (
        f"{loaded.archive.dicomweb_url(tenant)}/studies/{original.StudyInstanceUID}"
        f"/series/{original.SeriesInstanceUID}/instances/{original.SOPInstanceUID}"
    )
    response = httpx.get(url, headers={"Accept": 'multipart/related; type="application/dicom"'}, timeout=60)
    assert response.status_code == 200
    assert multipart_parts(response) == [path.read_bytes()]
    retrieved = client.retrieve_instance(
        str(original.StudyInstanceUID), str(original.SeriesInstanceUID), str(original.SOPInstanceUID)
    )
    assert retrieved.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
