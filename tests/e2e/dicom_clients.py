"""Real clients as users run them: dcmtk's storescu, dcmsend and pynetdicom for C-STORE, dcmtk's findscu,
getscu and movescu for query/retrieve, raw STOW-RS bodies."""

from __future__ import annotations

import secrets
import struct
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import httpx
import pydicom
from pynetdicom import AE

# storescu's option that proposes exactly this transfer syntax; the others go through pynetdicom.
STORESCU_PROPOSE = {
    "1.2.840.10008.1.2": "-xi",
    "1.2.840.10008.1.2.1": "-xe",
    "1.2.840.10008.1.2.2": "-xb",
    "1.2.840.10008.1.2.1.99": "-xd",
    "1.2.840.10008.1.2.5": "-xr",
    "1.2.840.10008.1.2.4.50": "-xy",
    "1.2.840.10008.1.2.4.51": "-xx",
    "1.2.840.10008.1.2.4.70": "-xs",
    "1.2.840.10008.1.2.4.80": "-xt",
    "1.2.840.10008.1.2.4.81": "-xu",
    "1.2.840.10008.1.2.4.90": "-xv",
    "1.2.840.10008.1.2.4.91": "-xw",
}


def storescu(
    port: int,
    called_ae: str,
    files: Sequence[Path],
    transfer_syntax: str,
    calling_ae: str = "TESTSCU",
    debug: bool = False,
) -> subprocess.CompletedProcess[str]:
    """Send files that share one transfer syntax with dcmtk, proposing only that syntax; `debug` has storescu
    print each response's status detail (Error Comment among them)."""
    command = [
        "storescu", "-d" if debug else "-v", "-aet", calling_ae, "-aec", called_ae,
        "-R", STORESCU_PROPOSE[transfer_syntax],
        "127.0.0.1", str(port), *map(str, files),
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)


def dcmsend(port: int, called_ae: str, files: Sequence[Path]) -> subprocess.CompletedProcess[str]:
    """Send files with dcmtk's dcmsend as it is usually run: its own proposals (a context per SOP class and
    file syntax, native fallbacks), conversion where the peer accepts another syntax, a summary at the end."""
    command = ["dcmsend", "-v", "-aec", called_ae, "127.0.0.1", str(port), *map(str, files)]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)


def storescu_can_read(path: Path) -> bool:
    """storescu refuses files whose SOP Class/Instance UID dcmtk cannot read as UI (e.g. stored as UN)."""
    dump = subprocess.run(
        ["dcmdump", "-q", "+P", "0008,0016", "+P", "0008,0018", str(path)],
        capture_output=True, text=True, check=False,
    ).stdout
    return dump.count(") UI ") == 2


def _query_retrieve_keys(model: str, level: str, keys: Mapping[str, str]) -> list[str]:
    """dcmtk's -P/-S model option and one -k per key, Query/Retrieve Level first."""
    arguments = ["-P" if model == "patient" else "-S", "-k", f"QueryRetrieveLevel={level}"]
    for keyword, value in keys.items():
        arguments += ["-k", f"{keyword}={value}" if value else keyword]
    return arguments


def findscu(
    port: int,
    called_ae: str,
    model: str,
    level: str,
    keys: Mapping[str, str],
    folder: Path,
    calling_ae: str = "TESTSCU",
) -> tuple[list[pydicom.Dataset], subprocess.CompletedProcess[str]]:
    """C-FIND with dcmtk; the response identifiers (extracted to files in `folder`) in order."""
    folder.mkdir(parents=True, exist_ok=True)
    command = [
        "findscu", "-v", "-aet", calling_ae, "-aec", called_ae, "-X", "-od", str(folder),
        *_query_retrieve_keys(model, level, keys), "127.0.0.1", str(port),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    return [pydicom.dcmread(path) for path in sorted(folder.glob("rsp*.dcm"))], result


def getscu(
    port: int,
    called_ae: str,
    model: str,
    level: str,
    keys: Mapping[str, str],
    folder: Path,
    *options: str,
    calling_ae: str = "TESTSCU",
) -> subprocess.CompletedProcess[str]:
    """C-GET with dcmtk, writing what it receives bit-preserving (+B) into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    command = [
        "getscu", "-v", "-aet", calling_ae, "-aec", called_ae, "+B", "-od", str(folder), *options,
        *_query_retrieve_keys(model, level, keys), "127.0.0.1", str(port),
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)


def movescu(
    port: int, called_ae: str, destination: str, model: str, level: str, keys: Mapping[str, str]
) -> subprocess.CompletedProcess[str]:
    """C-MOVE with dcmtk to the AE title `destination` (verbose: the statuses are in the output)."""
    command = [
        "movescu", "-v", "-aet", "TESTSCU", "-aec", called_ae, "-aem", destination,
        *_query_retrieve_keys(model, level, keys), "127.0.0.1", str(port),
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)


def pynetdicom_store(port: int, called_ae: str, files: Iterable[Path], calling_ae: str = "TESTSCU") -> list[int]:
    """Send each file in its own transfer syntax over one association; the C-STORE statuses."""
    datasets = [pydicom.dcmread(path) for path in files]
    ae = AE(ae_title=calling_ae)
    wanted = {(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for ds in datasets}
    for sop_class, syntax in sorted(wanted):
        ae.add_requested_context(sop_class, syntax)
    assoc = ae.associate("127.0.0.1", port, ae_title=called_ae)
    assert assoc.is_established, "association refused"
    try:
        statuses = []
        for ds in datasets:
            status = assoc.send_c_store(ds)
            statuses.append(int(status.Status) if status else -1)
        return statuses
    finally:
        assoc.release()


def stow_body(parts: Sequence[bytes], boundary: str | None = None) -> tuple[bytes, str]:
    """A multipart/related body of application/dicom parts and its Content-Type."""
    boundary = boundary or f"stow-{secrets.token_hex(8)}"
    chunks = []
    for part in parts:
        chunks.append(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode())
        chunks.append(part)
        chunks.append(b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f'multipart/related; type="application/dicom"; boundary={boundary}'


def stow(url: str, parts: Sequence[bytes], study_uid: str | None = None) -> httpx.Response:
    body, content_type = stow_body(parts)
    target = f"{url}/studies/{study_uid}" if study_uid else f"{url}/studies"
    return httpx.post(
        target,
        content=body,
        headers={"Content-Type": content_type, "Accept": "application/dicom+json"},
        timeout=300,
    )


def dataset_bytes(part10: bytes) -> bytes:
    """The encoded dataset after the File Meta Information (its group length tells where that ends)."""
    assert part10[128:132] == b"DICM" and part10[132:136] == b"\x02\x00\x00\x00"
    (meta_length,) = struct.unpack("<I", part10[140:144])
    return part10[144 + meta_length :]


def multipart_parts(response: httpx.Response) -> list[bytes]:
    """Split a multipart/related response into part bodies (test-side, independent of the server's code)."""
    content_type = response.headers["content-type"]
    boundary = next(
        param.split("=", 1)[1].strip('"')
        for param in content_type.split(";")
        if param.strip().lower().startswith("boundary=")
    )
    delimiter = b"--" + boundary.encode()
    body = response.content
    parts = []
    for chunk in body.split(b"\r\n" + delimiter)[:-1]:
        if chunk.startswith(delimiter):
            chunk = chunk[len(delimiter):]
        header_end = chunk.index(b"\r\n\r\n")
        parts.append(chunk[header_end + 4:])
    return parts


RETRIEVE_URL = "00081190"


def written_urls(client: httpx.Client, ds: pydicom.Dataset, raw: bytes) -> dict[str, str]:
    """Each kind of URL the archive writes, as `client` (pointed at some way in) receives it."""
    body, content_type = stow_body([raw])
    stored = client.post("/dicom-web/studies", content=body, headers={"Content-Type": content_type})
    assert stored.status_code == 200, stored.text
    found = client.get("/dicom-web/instances", params={"SOPInstanceUID": ds.SOPInstanceUID}).json()
    metadata = client.get(f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/metadata").json()
    redirect = client.get("/dicom-web/studies/", follow_redirects=False)
    return {
        "STOW RetrieveURL": stored.json()[RETRIEVE_URL]["Value"][0],
        "QIDO RetrieveURL": found[0][RETRIEVE_URL]["Value"][0],
        "BulkDataURI": metadata[0]["7FE00010"]["BulkDataURI"],
        "Location": redirect.headers["location"],
    }
