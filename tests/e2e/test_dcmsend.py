"""dcmtk's dcmsend stores into `dicomcloud up` with its own negotiation: one presentation context per
SOP class and file transfer syntax, the file's syntax first and the native ones as fallbacks. The archive
accepts each file's own syntax, so dcmsend sends compressed and deflated files as they are, and WADO-RS returns
every one of them byte-exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGLSLossless,
    RLELossless,
)

from bench.synthetic import ct_series, multiframe, new_uid, write_part10

from .conftest import AE_TITLE, Archive
from .dicom_clients import dataset_bytes, dcmsend, multipart_parts

pytestmark = pytest.mark.e2e

# The syntaxes dcmsend proposes first for a file in them: sent as they are.
AS_THEY_ARE = [ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, RLELossless, JPEGLSLossless]
# dcmsend proposes Explicit VR Little Endian first for these, and converts them to it itself.
CONVERTED_BY_DCMSEND = [ImplicitVRLittleEndian, ExplicitVRBigEndian]


@dataclass
class Sent:
    files: dict[str, Path]  # transfer syntax -> the file dcmsend sent
    output: str  # dcmsend's log


@pytest.fixture(scope="module")
def sent(archive: Archive, tmp_path_factory: pytest.TempPathFactory) -> Sent:
    """A CT slice in each native syntax and a multi-frame image in each compressed one, all in one dcmsend run."""
    folder = tmp_path_factory.mktemp("dcmsend")
    study = new_uid()
    files = {}
    for syntax in [*AS_THEY_ARE, *CONVERTED_BY_DCMSEND]:
        if syntax.is_compressed:
            ds = multiframe(3, rows=32, columns=32, study_uid=study, transfer_syntax=syntax)
        else:
            (ds,) = ct_series(1, rows=32, columns=32, study_uid=study, transfer_syntax=syntax)
        files[str(syntax)] = folder / f"{syntax}.dcm"
        write_part10(ds, files[str(syntax)])
    result = dcmsend(archive.dimse_port, AE_TITLE, list(files.values()))
    assert result.returncode == 0, result.stdout + result.stderr
    return Sent(files, result.stdout + result.stderr)


def retrieved_as_stored(archive: Archive, path: Path) -> bytes:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    response = httpx.get(
        f"{archive.dicomweb_url()}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}",
        headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
    )
    assert response.status_code == 200, response.text
    (part10,) = multipart_parts(response)
    return part10


def test_dcmsend_stores_every_file(sent: Sent) -> None:
    assert f"with status SUCCESS  : {len(sent.files)}" in sent.output, sent.output


@pytest.mark.parametrize("syntax", AS_THEY_ARE, ids=lambda syntax: syntax.name)
def test_a_file_in_a_syntax_dcmsend_proposes_first_comes_back_byte_exact(
    archive: Archive, sent: Sent, syntax: str
) -> None:
    part10 = retrieved_as_stored(archive, sent.files[syntax])
    assert pydicom.dcmread(pydicom.filebase.DicomBytesIO(part10)).file_meta.TransferSyntaxUID == syntax
    assert dataset_bytes(part10) == dataset_bytes(sent.files[syntax].read_bytes())


@pytest.mark.parametrize("syntax", CONVERTED_BY_DCMSEND, ids=lambda syntax: syntax.name)
def test_a_file_dcmsend_converts_is_stored_as_it_sent_it(archive: Archive, sent: Sent, syntax: str) -> None:
    original = pydicom.dcmread(sent.files[syntax])
    stored = pydicom.dcmread(pydicom.filebase.DicomBytesIO(retrieved_as_stored(archive, sent.files[syntax])))
    assert stored.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert (stored.pixel_array == original.pixel_array).all()
