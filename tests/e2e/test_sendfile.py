"""Frames and instances sent from their files by sendfile (web/zero_copy.py), against the real server: the same
bytes the copying path writes, on kept-alive and pipelined connections, to a client too slow for the socket
buffer; frames whose stored form needs a change (deflated, decoded) still take the copying path."""

from __future__ import annotations

import gzip
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx
import numpy as np
import pydicom
import pytest
from pydicom.encaps import generate_frames
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, RLELossless

from bench.synthetic import ct_series, multiframe, write_part10
from dicomcloud.web.multipart import write_multipart

from .conftest import Archive
from .dicom_clients import stow

pytestmark = pytest.mark.e2e

STORED = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
UNCOMPRESSED = 'multipart/related; type="application/octet-stream"'
ANY = 'multipart/related; type="*/*"'
DICOM_PARTS = 'multipart/related; type="application/dicom"'


@dataclass(frozen=True)
class Stored:
    archive: Archive
    ct: pydicom.Dataset  # one 512 x 512 16-bit frame, the last element of its file
    cine: pydicom.Dataset  # 48 native frames of 512 x 512 bytes: 12 MB, three times the largest socket buffer
    rle: pydicom.Dataset
    deflated: pydicom.Dataset
    files: dict[str, bytes]  # by SOP Instance UID, as stored


@pytest.fixture(scope="module")
def stored(archive_factory: Callable[..., Archive], tmp_path_factory: pytest.TempPathFactory) -> Stored:
    archive = archive_factory("sendfile")
    folder = tmp_path_factory.mktemp("sendfile")
    (ct,) = ct_series(1)
    cine = multiframe(48, rows=512, columns=512, study_uid=ct.StudyInstanceUID)
    rle = multiframe(4, rows=64, columns=64, transfer_syntax=RLELossless)
    (deflated,) = ct_series(1, rows=64, columns=64, transfer_syntax=DeflatedExplicitVRLittleEndian)
    files = {}
    for ds in (ct, cine, rle, deflated):
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        write_part10(ds, path)
        files[ds.SOPInstanceUID] = path.read_bytes()
    assert stow(archive.dicomweb_url(), list(files.values())).status_code == 200
    return Stored(archive, ct, cine, rle, deflated, files)


def frames_path(ds: pydicom.Dataset, frames: str) -> str:
    return (
        f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}/frames/{frames}"
    )


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def boundary(self) -> str:
        return self.headers["content-type"].rpartition("boundary=")[2].strip('"')


def request(path: str, accept: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: archive\r\nAccept: {accept}\r\n\r\n".encode()


def read_answer(sock: socket.socket, pending: bytearray) -> Answer:
    """One HTTP/1.1 response with a Content-Length off `sock`; what follows it stays in `pending`."""
    while b"\r\n\r\n" not in pending:
        pending += receive(sock)
    head, _, rest = bytes(pending).partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value for name, value in (line.split(": ", 1) for line in lines)}
    assert "transfer-encoding" not in headers, headers
    length = int(headers["content-length"])
    pending[:] = rest
    while len(pending) < length:
        pending += receive(sock)
    body = bytes(pending[:length])
    del pending[:length]
    return Answer(int(status_line.split()[1]), headers, body)


def receive(sock: socket.socket) -> bytes:
    data = sock.recv(1 << 20)
    assert data, "the server closed the connection"
    return data


def connect(archive: Archive, receive_buffer: int | None = None) -> socket.socket:
    sock = socket.socket()
    if receive_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.settimeout(60)
    sock.connect(("127.0.0.1", archive.http_port))
    return sock


def copied(answer: Answer, part_type: str, frames: list[bytes]) -> bytes:
    """What the copying path writes for `frames` (web/multipart.py), with the answer's boundary."""
    return b"".join(write_multipart([({"Content-Type": part_type}, [frame]) for frame in frames], answer.boundary))


def native_frame(ds: pydicom.Dataset, number: int) -> bytes:
    size = int(ds.Rows) * int(ds.Columns) * int(ds.BitsAllocated) // 8
    return bytes(ds.PixelData[(number - 1) * size : number * size])


NATIVE_PART = f"application/octet-stream; transfer-syntax={ExplicitVRLittleEndian}"


def test_a_frame_ending_its_file_is_byte_identical_to_the_copied_answer(stored: Stored) -> None:
    with connect(stored.archive) as sock:
        sock.sendall(request(frames_path(stored.ct, "1"), STORED))
        answer = read_answer(sock, bytearray())
    assert answer.status == 200
    assert answer.body == copied(answer, NATIVE_PART, [bytes(stored.ct.PixelData)])


def test_frames_of_a_multiframe_instance_in_the_asked_order_are_the_copied_answer(stored: Stored) -> None:
    with connect(stored.archive) as sock:
        sock.sendall(request(frames_path(stored.cine, "48,1,17"), STORED))
        answer = read_answer(sock, bytearray())
    expected = [native_frame(stored.cine, number) for number in (48, 1, 17)]
    assert answer.body == copied(answer, NATIVE_PART, expected)


def test_compressed_frames_as_stored_are_their_fragments(stored: Stored) -> None:
    with connect(stored.archive) as sock:
        sock.sendall(request(frames_path(stored.rle, "4,2"), ANY))
        answer = read_answer(sock, bytearray())
    fragments = list(generate_frames(stored.rle.PixelData, number_of_frames=4))
    rle_part = f"image/dicom-rle; transfer-syntax={RLELossless}"
    assert answer.body == copied(answer, rle_part, [fragments[3], fragments[1]])


def test_frames_that_need_a_change_take_the_copying_path(stored: Stored) -> None:
    """A deflated file has no frame offsets, and a decoded frame is not in the file: both are still answered."""
    deflated, decoded = (
        httpx.get(f"{stored.archive.base_url}{frames_path(ds, frame)}", headers={"Accept": accept}, timeout=60)
        for ds, frame, accept in ((stored.deflated, "1", STORED), (stored.rle, "3", UNCOMPRESSED))
    )
    assert deflated.status_code == decoded.status_code == 200
    assert deflated.content == copied(Answer(200, dict(deflated.headers), b""), NATIVE_PART,
                                      [bytes(stored.deflated.PixelData)])  # fmt: skip
    assert decoded.content == copied(Answer(200, dict(decoded.headers), b""), NATIVE_PART,
                                     [stored.rle.pixel_array[2].astype(np.uint8).tobytes()])  # fmt: skip


def test_pipelined_requests_on_one_connection_are_answered_in_order(stored: Stored) -> None:
    missing = frames_path(stored.ct, "1").replace(stored.ct.SOPInstanceUID, "1.2.3.4")
    asked = [frames_path(stored.cine, "2"), missing, frames_path(stored.ct, "1"), frames_path(stored.cine, "3")]
    with connect(stored.archive) as sock:
        sock.sendall(b"".join(request(path, STORED) for path in asked))
        pending = bytearray()
        answers = [read_answer(sock, pending) for _ in asked]
        sock.sendall(request(frames_path(stored.cine, "4"), STORED))  # and the connection is still kept alive
        answers.append(read_answer(sock, pending))
    assert [answer.status for answer in answers] == [200, 404, 200, 200, 200]
    frames = [native_frame(stored.cine, 2), None, bytes(stored.ct.PixelData), native_frame(stored.cine, 3),
              native_frame(stored.cine, 4)]  # fmt: skip
    for answer, frame in zip(answers, frames, strict=True):
        if frame is not None:
            assert answer.body == copied(answer, NATIVE_PART, [frame])


def test_a_client_slower_than_the_socket_buffer_gets_every_byte_then_its_next_answer(stored: Stored) -> None:
    """12 MB of frames to a client that reads nothing for a while: the server's sendfile meets a full socket
    and waits; the pipelined request behind it is answered after the last byte."""
    everything = ",".join(str(number) for number in range(1, 49))
    with connect(stored.archive, receive_buffer=4096) as sock:
        sock.sendall(request(frames_path(stored.cine, everything), STORED))
        sock.sendall(request(frames_path(stored.ct, "1"), STORED))
        time.sleep(1.0)
        pending = bytearray()
        large = read_answer(sock, pending)
        small = read_answer(sock, pending)
    assert large.body == copied(large, NATIVE_PART, [native_frame(stored.cine, n) for n in range(1, 49)])
    assert small.body == copied(small, NATIVE_PART, [bytes(stored.ct.PixelData)])


def test_the_bytes_sent_from_files_are_counted_in_the_metrics(stored: Stored) -> None:
    def frame_bytes() -> float:
        with connect(stored.archive) as sock:
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: archive\r\n\r\n")
            text = read_answer(sock, bytearray()).body.decode()
        return sum(
            float(line.rpartition(" ")[2])
            for line in text.splitlines()
            if line.startswith("dicomcloud_http_response_bytes_total{") and "/frames/{frames}" in line
        )

    before = frame_bytes()
    with connect(stored.archive) as sock:
        sock.sendall(request(frames_path(stored.ct, "1"), STORED))
        answer = read_answer(sock, bytearray())
    assert frame_bytes() - before == len(answer.body)


def test_an_instance_and_a_study_are_their_stored_files(stored: Stored) -> None:
    ct, cine = stored.ct, stored.cine
    instance = frames_path(ct, "").removesuffix("/frames/")
    study = f"/dicom-web/studies/{ct.StudyInstanceUID}"
    with connect(stored.archive) as sock:
        sock.sendall(request(instance, "application/dicom") + request(study, DICOM_PARTS))
        pending = bytearray()
        single, multipart = read_answer(sock, pending), read_answer(sock, pending)
    assert single.body == stored.files[ct.SOPInstanceUID]
    assert multipart_parts(multipart) == sorted([stored.files[ct.SOPInstanceUID], stored.files[cine.SOPInstanceUID]])


def multipart_parts(answer: Answer) -> list[bytes]:
    """The part bodies, sorted, each checked against its Content-Length."""
    bodies = []
    for raw in answer.body.split(f"--{answer.boundary}".encode())[1:-1]:
        head, _, body = raw[2:-2].partition(b"\r\n\r\n")
        length = next(int(line.split(b": ")[1]) for line in head.split(b"\r\n") if line.startswith(b"Content-Length"))
        assert len(body) == length
        bodies.append(body)
    return sorted(bodies)


def test_on_a_zero_copy_connection_json_is_gzipped_and_frames_are_sent_from_their_file(stored: Stored) -> None:
    """The gzip layer around the zero-copy send (web/zero_copy.py GZipAroundZeroCopy), request after request on one
    connection: each answer compressed or not by its own media type."""
    ct = stored.ct
    metadata = f"/dicom-web/studies/{ct.StudyInstanceUID}/series/{ct.SeriesInstanceUID}/metadata"
    gzipped = "\r\nAccept-Encoding: gzip\r\n\r\n"
    frame, json = request(frames_path(ct, "1"), STORED), request(metadata, "application/dicom+json")
    with connect(stored.archive) as sock:
        sock.sendall(frame.replace(b"\r\n\r\n", gzipped.encode()) + json.replace(b"\r\n\r\n", gzipped.encode()))
        pending = bytearray()
        first, second = read_answer(sock, pending), read_answer(sock, pending)
        sock.sendall(frame)
        third = read_answer(sock, pending)
    assert "content-encoding" not in first.headers and first.body.replace(first.boundary.encode(), b"") == (
        third.body.replace(third.boundary.encode(), b"")
    )
    assert first.body == copied(first, NATIVE_PART, [native_frame(ct, 1)])
    assert second.headers["content-encoding"] == "gzip"
    assert gzip.decompress(second.body).startswith(b"[")
