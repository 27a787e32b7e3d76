"""Done when: `dicomcloud import` pulls a whole archive from Orthanc (Debian's, with its DICOMweb plugin), over
DICOMweb (QIDO-RS, WADO-RS) and over DIMSE (C-FIND, then C-GET or C-MOVE to a storage SCP the import runs): every
instance arrives byte for byte (over DIMSE, which carries no File Meta Information, its dataset byte for byte) in
the transfer syntax Orthanc stores it in; an import interrupted half-way and run again fetches only what is
missing; the progress bar shows counts and rate, and the summary says each study was verified.
"""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pydicom
import pytest
from dicomweb_client import DICOMwebClient
from pydicom.data import get_testdata_file
from tests.unit.oidc import AUDIENCE, rsa_key, serve_issuer

from bench.synthetic import ct_series, write_part10

from .conftest import Archive, free_port
from .orthanc import Orthanc, running_orthanc

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

STUDIES = 3
PER_STUDY = 50
ORTHANC_AE = "ORTHANC"
AE_TITLE = "DICOMCLOUD"  # the import's own, from the default settings
PROGRESS = re.compile(r"studies \d+/\d+, instances (\d+)/(\d+) \((\d+) fetched, (\d+) already here, (\d+) failed\),"
                      r" [\d.]+ [KMGT]?B, ([\d.]+) instances/s, [\d.]+ [KMGT]?B/s, ETA ")


@dataclass
class Peer:
    orthanc: Orthanc
    dimse_port: int
    move_port: int  # where Orthanc sends our AE title's C-MOVEs
    files: dict[str, bytes]  # SOP Instance UID -> the file as sent to Orthanc


@pytest.fixture(scope="module")
def peer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Peer]:
    """Orthanc holding three studies of uncompressed CTs, the last with a JPEG Baseline instance too."""
    folder = tmp_path_factory.mktemp("orthanc-peer")
    dimse_port, move_port = free_port(), free_port()
    config = {
        "DicomWeb": {"Enable": True},
        "DicomServerEnabled": True,
        "DicomAet": ORTHANC_AE,
        "DicomPort": dimse_port,
        "DicomAlwaysAllowFind": True,
        "DicomAlwaysAllowGet": True,
        "DicomAlwaysAllowEcho": True,
        "DicomModalities": {"dicomcloud": [AE_TITLE, "127.0.0.1", move_port]},
    }
    files: dict[str, bytes] = {}
    with running_orthanc(folder, config) as orthanc:
        for number in range(STUDIES):
            for ds in ct_series(PER_STUDY, rows=256, columns=256, patient_id=f"PEER{number}", seed=number):
                path = folder / "upload.dcm"
                write_part10(ds, path)
                files[ds.SOPInstanceUID] = path.read_bytes()
        jpeg = pydicom.dcmread(get_testdata_file("SC_rgb_jpeg_dcmtk.dcm"))
        jpeg.StudyInstanceUID, jpeg.PatientID = ds.StudyInstanceUID, ds.PatientID
        jpeg.save_as(folder / "jpeg.dcm")
        files[jpeg.SOPInstanceUID] = (folder / "jpeg.dcm").read_bytes()
        for raw in files.values():
            assert httpx.post(f"{orthanc.url}/instances", content=raw, timeout=30).status_code == 200
        yield Peer(orthanc, dimse_port, move_port, files)


def dicomcloud_import(data: Path, *source: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "dicomcloud", "import", "--data", str(data), *source]
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, **(env or {})}
    )


def finish(process: subprocess.Popen[str]) -> tuple[int, str]:
    output, _ = process.communicate(timeout=600)
    return process.returncode, output


def stored(data: Path) -> dict[str, Path]:
    return {path.stem: path for path in (data / "storage").rglob("*.dcm") if "_" not in path.stem}


def dataset_bytes(raw: bytes) -> bytes:
    """A Part 10 file without its preamble and File Meta Information (group 0002, its length first)."""
    meta_length = int.from_bytes(raw[140:144], "little")
    return raw[144 + meta_length :]


def summary_counts(output: str) -> tuple[int, int, int]:
    match = re.search(r"instances?: (\d+) fetched .*?, (\d+) already here, (\d+) failed", output)
    assert match, output[-3000:]
    fetched, present, failed = map(int, match.groups())
    return fetched, present, failed


def test_import_from_dicomweb_is_byte_exact_and_an_interrupted_one_resumes_with_what_is_missing(
    peer: Peer, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    total = len(peer.files)
    source = ("--from-dicomweb", f"{peer.orthanc.url}/dicom-web", "--concurrency", "2")
    first = dicomcloud_import(data, *source)
    assert first.stdout is not None
    seen: list[str] = []
    for line in first.stdout:
        seen.append(line)
        progress = PROGRESS.search(line)
        if progress and int(progress.group(3)) >= 10:
            first.send_signal(signal.SIGINT)
            break
    code, rest = finish(first)
    output = "".join(seen) + rest
    assert code == 2, output[-3000:]
    assert "interrupted: import from" in output
    fetched_before, _, _ = summary_counts(output)
    assert 10 <= fetched_before < total, "the first run should be stopped half-way"
    assert len(stored(data)) == fetched_before

    code, output = finish(dicomcloud_import(data, *source))
    assert code == 0, output[-3000:]
    fetched, present, failed = summary_counts(output)
    assert (fetched, present, failed) == (total - fetched_before, fetched_before, 0)
    assert f"verified: {STUDIES} of {STUDIES} studies hold here every instance the peer has" in output
    progress_lines = [m for m in map(PROGRESS.search, output.splitlines()) if m]
    assert progress_lines and float(progress_lines[-1].group(6)) > 0, "the progress bar shows counts and a rate"

    here = stored(data)
    assert sorted(here) == sorted(peer.files)
    assert [uid for uid, raw in peer.files.items() if here[uid].read_bytes() != raw] == []


@pytest.mark.parametrize("retrieve", ["c-get", "c-move"])
def test_import_from_a_dimse_pacs_keeps_every_dataset_byte_for_byte_and_a_rerun_fetches_nothing(
    peer: Peer, tmp_path: Path, retrieve: str
) -> None:
    data = tmp_path / "data"
    source = ["--from-dimse", f"{ORTHANC_AE}@127.0.0.1:{peer.dimse_port}", "--concurrency", "4"]
    if retrieve == "c-move":
        source += ["--move-port", str(peer.move_port)]
    code, output = finish(dicomcloud_import(data, *source))
    assert code == 0, output[-3000:]
    assert summary_counts(output) == (len(peer.files), 0, 0)
    assert f"verified: {STUDIES} of {STUDIES} studies" in output
    here = stored(data)
    assert sorted(here) == sorted(peer.files)
    for uid, raw in peer.files.items():
        copy = here[uid].read_bytes()
        assert dataset_bytes(copy) == dataset_bytes(raw), uid
        syntax = pydicom.dcmread(here[uid], stop_before_pixels=True).file_meta.TransferSyntaxUID
        assert syntax == pydicom.dcmread(io.BytesIO(raw), stop_before_pixels=True).file_meta.TransferSyntaxUID

    code, output = finish(dicomcloud_import(data, *source))
    assert code == 0, output[-3000:]
    assert summary_counts(output) == (0, len(peer.files), 0), output[-3000:]


def test_import_from_a_dicomweb_peer_behind_oidc_sends_the_token_from_a_file_or_the_environment(
    archive_factory: Callable[..., Archive], tmp_path: Path
) -> None:
    with serve_issuer([rsa_key("peer-key")]) as issuer:
        auth = {"DICOMCLOUD_AUTH__ENABLED": "true", "DICOMCLOUD_AUTH__ISSUER": issuer.url}
        source = archive_factory("oidc-peer", env={**auth, "DICOMCLOUD_AUTH__AUDIENCE": AUDIENCE})
        token = issuer.token()  # tenant-a, read and write
        url = source.dicomweb_url("tenant-a")
        sent = list(ct_series(3, rows=64, columns=64, patient_id="OIDC", seed=7))
        DICOMwebClient(url=url, headers={"Authorization": f"Bearer {token}"}).store_instances(sent)
        there = stored(source.data)
        assert len(there) == len(sent)

        code, output = finish(dicomcloud_import(tmp_path / "without", "--from-dicomweb", url))
        assert code != 0 and "answered 401" in output and "--token-file" in output, output[-3000:]

        token_file = tmp_path / "token"
        token_file.write_text(token + "\n")
        runs = {
            "file": dicomcloud_import(tmp_path / "file", "--from-dicomweb", url, "--token-file", str(token_file)),
            "variable": dicomcloud_import(
                tmp_path / "variable", "--from-dicomweb", url, env={"DICOMCLOUD_IMPORT_TOKEN": token}
            ),
        }
        for name, run in runs.items():
            code, output = finish(run)
            assert code == 0, output[-3000:]
            assert summary_counts(output) == (len(sent), 0, 0), output[-3000:]
            assert token not in output
            here = stored(tmp_path / name)
            assert sorted(here) == sorted(there)
            assert all(pydicom.dcmread(here[uid]) == pydicom.dcmread(there[uid], force=True) for uid in there)


def test_import_from_an_orthanc_with_basic_authentication_reads_user_and_password_from_a_file(
    tmp_path: Path,
) -> None:
    files = {}
    (tmp_path / "orthanc").mkdir()
    with running_orthanc(tmp_path / "orthanc", {"DicomWeb": {"Enable": True}}, ("alice", "s3cret")) as orthanc:
        for ds in ct_series(2, rows=64, columns=64, patient_id="BASIC", seed=11):
            write_part10(ds, tmp_path / "upload.dcm")
            files[ds.SOPInstanceUID] = (tmp_path / "upload.dcm").read_bytes()
            sent = httpx.post(f"{orthanc.url}/instances", content=files[ds.SOPInstanceUID], auth=("alice", "s3cret"))
            assert sent.status_code == 200
        credentials = tmp_path / "credentials"
        credentials.write_text("alice:s3cret\n")
        source = ("--from-dicomweb", f"{orthanc.url}/dicom-web", "--basic-auth-file", str(credentials))
        code, output = finish(dicomcloud_import(tmp_path / "data", *source))
    assert code == 0, output[-3000:]
    assert "s3cret" not in output
    here = stored(tmp_path / "data")
    assert {uid: path.read_bytes() for uid, path in here.items()} == files
