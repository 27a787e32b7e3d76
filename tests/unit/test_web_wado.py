"""WADO-RS (PS3.18 10.4): instances, metadata, frames and bulk data, with their negotiation; DELETE."""

from __future__ import annotations

import dataclasses
import threading
import time
from io import BufferedReader, BytesIO
from pathlib import Path

import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from pydicom.data import get_testdata_file
from pydicom.encaps import generate_frames
from pydicom.uid import UID
from support import CountingStorage, counted, stored_keys
from test_web_app import DICOM_MULTIPART, multipart_bodies, part10, stow, stow_all

from bench.synthetic import ct_series, multiframe, new_uid
from dicomcloud.archive.core import Archive
from dicomcloud.archive.keys import derived_key, entry_key, original_key
from dicomcloud.archive.retrieve import StoredInstance
from dicomcloud.dicom.codecs import TRANSCODE_TARGETS
from dicomcloud.dicom.uids import DEFAULT_FRAME_SYNTAX
from dicomcloud.errors import NotFound
from dicomcloud.ports.index import InstanceLocation
from dicomcloud.web import wado, zero_copy
from dicomcloud.web.multipart import MultipartParser, PartData, PartStart

pytest_plugins = ["test_web_app"]

EXPLICIT_LE = "1.2.840.10008.1.2.1"
RLE = "1.2.840.10008.1.2.5"
OCTET_MULTIPART = 'multipart/related; type="application/octet-stream"'


def instance_url(ds: pydicom.Dataset, tenant: str = "") -> str:
    prefix = f"/{tenant}/dicom-web" if tenant else "/dicom-web"
    return f"{prefix}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"


@pytest.fixture
def series(client: TestClient, tmp_path: Path) -> list[pydicom.Dataset]:
    datasets = list(ct_series(3, rows=32, columns=32))  # Pixel Data over the 1 KiB bulk data threshold
    stow_all(client, datasets, tmp_path)
    return datasets


@pytest.fixture
def native_mf(client: TestClient, tmp_path: Path) -> pydicom.Dataset:
    ds = multiframe(10, rows=16, columns=16)
    stow_all(client, [ds], tmp_path)
    return ds


@pytest.fixture
def rle_mf(client: TestClient, tmp_path: Path) -> pydicom.Dataset:
    ds = multiframe(4, rows=16, columns=16, transfer_syntax=RLE)
    stow_all(client, [ds], tmp_path)
    return ds


@pytest.fixture
def wide_mf(client: TestClient, tmp_path: Path) -> pydicom.Dataset:
    """Large enough for OpenJPEG's default resolution levels (it refuses 16 x 16)."""
    ds = multiframe(3, rows=64, columns=64, transfer_syntax=RLE)
    stow_all(client, [ds], tmp_path)
    return ds


def key_of(ds: pydicom.Dataset, tenant: str = "default") -> str:
    return original_key(tenant, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)


def stored_bytes(archive: Archive, ds: pydicom.Dataset) -> bytes:
    return archive.runtime.storage.read(key_of(ds))


# ---------------------------------------------------------------------------------------------------
# Instances


def test_a_study_is_every_stored_file_as_is(
    client: TestClient, archive: Archive, series: list[pydicom.Dataset]
) -> None:
    response = client.get(f"/dicom-web/studies/{series[0].StudyInstanceUID}", headers={"Accept": DICOM_MULTIPART})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(DICOM_MULTIPART)
    parts = multipart_bodies(response)
    assert [body for _, body in parts] == [stored_bytes(archive, ds) for ds in series]
    headers = parts[0][0]
    assert headers["content-type"] == f"application/dicom; transfer-syntax={EXPLICIT_LE}"
    assert int(headers["content-length"]) == len(parts[0][1])
    assert int(response.headers["content-length"]) == len(response.content)


def test_files_larger_than_a_piece_are_sent_whole(
    client: TestClient, archive: Archive, series: list[pydicom.Dataset], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(zero_copy, "COPY_PIECE", 1000)
    response = client.get(f"/dicom-web/studies/{series[0].StudyInstanceUID}", headers={"Accept": DICOM_MULTIPART})
    assert [body for _, body in multipart_bodies(response)] == [stored_bytes(archive, ds) for ds in series]
    assert int(response.headers["content-length"]) == len(response.content)


def test_a_file_that_changes_size_while_sent_aborts_the_response(
    client: TestClient,
    archive: Archive,
    series: list[pydicom.Dataset],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The announced Content-Length is kept or the response fails: never a body that parses but is wrong."""
    sized = archive.retrieve.stored
    storage = archive.runtime.storage

    def truncated_after_sizing(locations: list[InstanceLocation], target: str | None) -> list[StoredInstance]:
        stored = sized(locations, target)
        for instance in stored:
            storage.write(instance.key, storage.read(instance.key)[:100])
        return stored

    monkeypatch.setattr(archive.retrieve, "stored", truncated_after_sizing)
    # The status line is out already: the app can only fail the stream (Starlette says so to the test client).
    with pytest.raises(RuntimeError, match="response already started"):
        client.get(instance_url(series[0]), headers={"Accept": DICOM_MULTIPART})
    assert "changed size while being sent; response aborted" in caplog.text


def test_a_series_longer_than_the_read_ahead_is_every_file_in_order(
    client: TestClient, archive: Archive, series: list[pydicom.Dataset], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(archive.runtime.storage, "remote", True)  # read ahead as from an object store
    monkeypatch.setattr(wado, "READ_AHEAD", 1)
    monkeypatch.setattr(zero_copy, "COPY_PIECE", 1000)
    response = client.get(f"/dicom-web/studies/{series[0].StudyInstanceUID}", headers={"Accept": DICOM_MULTIPART})
    assert [body for _, body in multipart_bodies(response)] == [stored_bytes(archive, ds) for ds in series]


def test_a_series_response_abandoned_part_way_closes_every_stream_it_read_ahead(
    archive: Archive, series: list[pydicom.Dataset]
) -> None:
    retrieve = archive.retrieve
    stored = retrieve.stored(retrieve.instances("default", series[0].StudyInstanceUID), None)
    storage = CountingStorage(archive.runtime.storage)
    storage.remote = True  # read ahead as from an object store
    opened: list[BufferedReader] = []
    every_one_opening = threading.Barrier(len(stored), timeout=30)  # none is cancelled before it starts

    def open_and_keep(key: str) -> BufferedReader:
        handle = archive.runtime.storage.open(key)
        opened.append(handle)
        every_one_opening.wait()
        return handle

    storage.open = open_and_keep  # type: ignore[method-assign]
    pieces = wado._multipart_pieces(storage, stored, [b"--head\r\n"] * len(stored), b"--end--")
    next(pieces)
    pieces.close()
    deadline = time.monotonic() + 30
    while not (len(opened) == len(stored) and all(handle.closed for handle in opened)):
        assert time.monotonic() < deadline, f"{sum(not h.closed for h in opened)} of {len(opened)} streams open"
        time.sleep(0.01)


def test_instances_on_an_object_store_are_sized_and_framed_without_reading_any_object(
    archive: Archive, series: list[pydicom.Dataset]
) -> None:
    """On an object store, whether an original has its preamble comes from its metadata entry: a retrieve sends its
    first byte after reading only the series document, never the objects themselves."""
    counting_archive, storage = counted(archive)
    storage.remote = True
    locations = counting_archive.retrieve.instances("default", series[0].StudyInstanceUID)
    stored = counting_archive.retrieve.stored(locations, None)
    assert [instance.prefix for instance in stored] == [b""] * len(series)
    assert storage.originals_read() == []


def stow_without_preamble(client: TestClient, tmp_path: Path) -> tuple[pydicom.Dataset, bytes]:
    """An instance sent as some senders do: its file meta group first, no preamble, no DICM."""
    ds = next(ct_series(1, rows=8, columns=8))
    without_preamble = part10(ds, tmp_path)[128:].removeprefix(b"DICM")
    assert stow(client, [without_preamble]).status_code == 200
    return ds, without_preamble


def test_an_entry_from_before_the_preamble_was_recorded_has_the_original_tell(
    client: TestClient, archive: Archive, tmp_path: Path
) -> None:
    ds, _ = stow_without_preamble(client, tmp_path)
    location = archive.retrieve.instance("default", ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    entry = archive.metadata.entry(location)
    assert entry is not None and entry.has_preamble is False
    older = dataclasses.replace(entry, has_preamble=None)
    instance = archive.retrieve._stored(location, None, older)
    assert instance.prefix == b"\0" * 128 + b"DICM"


def test_a_series_and_an_instance_are_served(client: TestClient, series: list[pydicom.Dataset]) -> None:
    ds = series[1]
    whole = client.get(f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}")
    assert len(multipart_bodies(whole)) == 3
    one = client.get(instance_url(ds), headers={"Accept": DICOM_MULTIPART})
    (only,) = multipart_bodies(one)
    assert pydicom.dcmread(BytesIO(only[1])).SOPInstanceUID == ds.SOPInstanceUID


def test_the_stream_parses_with_our_own_parser_in_small_chunks(
    client: TestClient, archive: Archive, series: list[pydicom.Dataset]
) -> None:
    response = client.get(f"/dicom-web/studies/{series[0].StudyInstanceUID}")
    boundary = response.headers["content-type"].split("boundary=")[1]
    parser = MultipartParser(boundary)
    bodies: list[bytearray] = []
    for i in range(0, len(response.content), 1000):
        for event in parser.feed(response.content[i : i + 1000]):
            if isinstance(event, PartStart):
                bodies.append(bytearray())
            elif isinstance(event, PartData):
                bodies[-1] += event.data
    parser.finish()
    assert [bytes(b) for b in bodies] == [stored_bytes(archive, ds) for ds in series]


@pytest.mark.parametrize(
    "accept",
    [
        f"{DICOM_MULTIPART}; transfer-syntax=*",
        f"{DICOM_MULTIPART}; transfer-syntax={EXPLICIT_LE}",
        "*/*",
        "multipart/related",
        f"image/jpeg, {DICOM_MULTIPART}; q=0.5",
    ],
)
def test_acceptable_dicom_accepts_get_the_stored_files(
    client: TestClient, series: list[pydicom.Dataset], accept: str
) -> None:
    response = client.get(instance_url(series[0]), headers={"Accept": accept})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(DICOM_MULTIPART)


def test_a_transfer_syntax_without_an_encoder_is_406(client: TestClient, series: list[pydicom.Dataset]) -> None:
    accept = f"{DICOM_MULTIPART}; transfer-syntax=1.2.840.10008.1.2.4.57"
    response = client.get(instance_url(series[0]), headers={"Accept": accept})
    assert response.status_code == 406
    assert EXPLICIT_LE in response.json()["error"]


def test_bare_application_dicom_gets_the_single_file(
    client: TestClient, archive: Archive, series: list[pydicom.Dataset]
) -> None:
    response = client.get(instance_url(series[0]), headers={"Accept": "application/dicom"})
    assert response.status_code == 200
    assert response.headers["content-type"] == f"application/dicom; transfer-syntax={EXPLICIT_LE}"
    assert response.content == stored_bytes(archive, series[0])


def test_a_file_stored_without_preamble_is_served_as_complete_part10(
    client: TestClient, archive: Archive, tmp_path: Path
) -> None:
    ds, without_preamble = stow_without_preamble(client, tmp_path)
    assert stored_bytes(archive, ds) == without_preamble
    for accept in (DICOM_MULTIPART, "application/dicom"):
        response = client.get(instance_url(ds), headers={"Accept": accept})
        body = multipart_bodies(response)[0][1] if accept == DICOM_MULTIPART else response.content
        assert body == b"\0" * 128 + b"DICM" + without_preamble
        assert int(response.headers["content-length"]) == len(response.content)
        assert pydicom.dcmread(BytesIO(body)).SOPInstanceUID == ds.SOPInstanceUID
    headers = multipart_bodies(client.get(instance_url(ds)))[0][0]
    assert int(headers["content-length"]) == 132 + len(without_preamble)


def test_an_instance_under_the_wrong_series_is_not_found(client: TestClient, series: list[pydicom.Dataset]) -> None:
    ds = series[0]
    url = f"/dicom-web/studies/{ds.StudyInstanceUID}/series/1.2.3/instances/{ds.SOPInstanceUID}"
    assert client.get(url).status_code == 404


# ---------------------------------------------------------------------------------------------------
# Metadata


def test_series_metadata_is_dicom_json_with_bulkdata_uris_on_this_host(
    client: TestClient, series: list[pydicom.Dataset]
) -> None:
    ds = series[0]
    response = client.get(f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/metadata")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/dicom+json"
    documents = response.json()
    assert [d["00080018"]["Value"][0] for d in documents] == [d.SOPInstanceUID for d in series]
    uri = documents[0]["7FE00010"]["BulkDataURI"]
    assert uri.startswith(f"http://archive.test/dicom-web/studies/{ds.StudyInstanceUID}/")


def test_study_metadata_joins_its_series(client: TestClient, tmp_path: Path) -> None:
    first = list(ct_series(2, rows=8, columns=8))
    second = list(ct_series(1, rows=8, columns=8, study_uid=first[0].StudyInstanceUID))
    stow_all(client, first + second, tmp_path)
    documents = client.get(f"/dicom-web/studies/{first[0].StudyInstanceUID}/metadata").json()
    assert sorted(d["00080018"]["Value"][0] for d in documents) == sorted(d.SOPInstanceUID for d in first + second)


def test_instance_metadata_is_one_object_in_an_array(client: TestClient, series: list[pydicom.Dataset]) -> None:
    documents = client.get(f"{instance_url(series[2])}/metadata").json()
    assert [d["00080018"]["Value"][0] for d in documents] == [series[2].SOPInstanceUID]


def test_metadata_of_an_unknown_series_or_instance_is_not_found(
    client: TestClient, series: list[pydicom.Dataset]
) -> None:
    ds = series[0]
    assert client.get(f"/dicom-web/studies/{ds.StudyInstanceUID}/series/9.9/metadata").status_code == 404
    url = f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/9.9/metadata"
    assert client.get(url).status_code == 404


def test_metadata_base_follows_the_tenant_prefix(client: TestClient, tmp_path: Path) -> None:
    ds = next(ct_series(1, rows=32, columns=32))
    stow_all(client, [ds], tmp_path, tenant="radiology")
    (document,) = client.get(f"{instance_url(ds, 'radiology')}/metadata").json()
    assert document["7FE00010"]["BulkDataURI"].startswith("http://archive.test/radiology/dicom-web/studies/")


@pytest.mark.parametrize("syntax", [RLE, "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.90"])
def test_an_instance_in_another_lossless_syntax_is_transcoded_then_cached_beside_the_original(
    client: TestClient, archive: Archive, series: list[pydicom.Dataset], syntax: str
) -> None:
    ds = series[0]
    original = stored_bytes(archive, ds)
    accept = f"{DICOM_MULTIPART}; transfer-syntax={syntax}"
    response = client.get(instance_url(ds), headers={"Accept": accept})
    assert response.status_code == 200
    ((headers, body),) = multipart_bodies(response)
    assert headers["content-type"] == f"application/dicom; transfer-syntax={syntax}"
    served = pydicom.dcmread(BytesIO(body))
    assert served.file_meta.TransferSyntaxUID == syntax
    assert np.array_equal(served.pixel_array, ds.pixel_array)
    assert stored_bytes(archive, ds) == original
    assert archive.runtime.storage.read(derived_key(key_of(ds), syntax)) == body
    again = client.get(instance_url(ds), headers={"Accept": f"application/dicom; transfer-syntax={syntax}"})
    assert again.content == body


def test_a_compressed_instance_is_served_uncompressed_on_request(client: TestClient, rle_mf: pydicom.Dataset) -> None:
    accept = f"{DICOM_MULTIPART}; transfer-syntax={EXPLICIT_LE}"
    response = client.get(f"/dicom-web/studies/{rle_mf.StudyInstanceUID}", headers={"Accept": accept})
    assert response.status_code == 200
    ((headers, body),) = multipart_bodies(response)
    assert headers["content-type"] == f"application/dicom; transfer-syntax={EXPLICIT_LE}"
    assert np.array_equal(pydicom.dcmread(BytesIO(body)).pixel_array, rle_mf.pixel_array)


def test_lossy_compressed_pixels_are_not_served_in_a_lossless_compressed_syntax(
    client: TestClient, archive: Archive, tmp_path: Path
) -> None:
    source = get_testdata_file("SC_rgb_jpeg_dcmtk.dcm")  # JPEG Baseline
    assert isinstance(source, str)
    ds = pydicom.dcmread(source)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = UID(new_uid()), UID(new_uid())
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = UID(new_uid())
    stow_all(client, [ds], tmp_path)
    for accept in (f"{DICOM_MULTIPART}; transfer-syntax={RLE}", f"application/dicom; transfer-syntax={RLE}"):
        assert client.get(instance_url(ds), headers={"Accept": accept}).status_code == 406, accept
    jls = 'multipart/related; type="image/jls"'
    assert client.get(f"{instance_url(ds)}/frames/1", headers={"Accept": jls}).status_code == 406
    assert archive.runtime.storage.size(derived_key(key_of(ds), RLE)) is None


def test_pixels_once_lossy_compressed_are_not_served_in_a_lossless_compressed_syntax(
    client: TestClient, archive: Archive, tmp_path: Path
) -> None:
    """Stored uncompressed, but Lossy Image Compression says 01: the file's content decides, and no copy is kept."""
    ds = next(ct_series(1, rows=32, columns=32))
    ds.LossyImageCompression = "01"
    stow_all(client, [ds], tmp_path)
    response = client.get(instance_url(ds), headers={"Accept": f"{DICOM_MULTIPART}; transfer-syntax={RLE}"})
    assert response.status_code == 406
    assert "lossy" in response.json()["error"]
    assert archive.runtime.storage.size(derived_key(key_of(ds), RLE)) is None
    assert client.get(instance_url(ds), headers={"Accept": DICOM_MULTIPART}).status_code == 200


# ---------------------------------------------------------------------------------------------------
# Frames


def test_frames_default_to_uncompressed_octet_stream_in_the_requested_order(
    client: TestClient, native_mf: pydicom.Dataset
) -> None:
    size = 16 * 16
    response = client.get(f"{instance_url(native_mf)}/frames/5,2,9", headers={"Accept": OCTET_MULTIPART})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(OCTET_MULTIPART)
    parts = multipart_bodies(response)
    assert [body for _, body in parts] == [native_mf.PixelData[(n - 1) * size : n * size] for n in (5, 2, 9)]
    assert parts[0][0]["content-type"] == f"application/octet-stream; transfer-syntax={EXPLICIT_LE}"


def test_compressed_frames_are_served_as_stored_for_any_type(client: TestClient, rle_mf: pydicom.Dataset) -> None:
    expected = list(generate_frames(rle_mf.PixelData, number_of_frames=4))
    for accept in ('multipart/related; type="*/*"', f"{OCTET_MULTIPART}; transfer-syntax=*"):
        response = client.get(f"{instance_url(rle_mf)}/frames/1,4", headers={"Accept": accept})
        assert response.status_code == 200, accept
        parts = multipart_bodies(response)
        assert [body for _, body in parts] == [expected[0], expected[3]]
        assert parts[0][0]["content-type"] == f"image/dicom-rle; transfer-syntax={RLE}"


def test_compressed_frames_are_decoded_for_plain_octet_stream(client: TestClient, rle_mf: pydicom.Dataset) -> None:
    response = client.get(f"{instance_url(rle_mf)}/frames/2", headers={"Accept": OCTET_MULTIPART})
    assert response.status_code == 200
    ((headers, body),) = multipart_bodies(response)
    assert headers["content-type"] == f"application/octet-stream; transfer-syntax={EXPLICIT_LE}"
    assert body == rle_mf.pixel_array[1].astype(np.uint8).tobytes()


def test_compressed_frames_in_their_own_media_type(client: TestClient, rle_mf: pydicom.Dataset) -> None:
    accept = f'multipart/related; type="image/dicom-rle"; transfer-syntax={RLE}'
    assert client.get(f"{instance_url(rle_mf)}/frames/1", headers={"Accept": accept}).status_code == 200
    jpeg_xl = 'multipart/related; type="image/jxl"'  # no encoder
    assert client.get(f"{instance_url(rle_mf)}/frames/1", headers={"Accept": jpeg_xl}).status_code == 406


@pytest.mark.parametrize(("media_type", "default"), sorted(DEFAULT_FRAME_SYNTAX.items()))
def test_a_frame_media_type_alone_means_its_default_syntax_when_the_codecs_make_it(
    client: TestClient, wide_mf: pydicom.Dataset, media_type: str, default: str
) -> None:
    """PS3.18 Table 8.7.3-5's default of each frame media type, served whenever dicom/codecs.py can encode it."""
    accept = f'toto, multipart/related; type="{media_type}"'
    response = client.get(f"{instance_url(wide_mf)}/frames/1", headers={"Accept": accept})
    if default in TRANSCODE_TARGETS:
        assert response.status_code == 200
        ((headers, _),) = multipart_bodies(response)
        assert headers["content-type"] == f"{media_type}; transfer-syntax={default}"
    else:
        assert response.status_code == 406


@pytest.mark.parametrize(
    ("media_type", "syntax"),
    [
        ("image/dicom-rle", RLE),
        ("image/jls", "1.2.840.10008.1.2.4.80"),
        ("image/jls", "1.2.840.10008.1.2.4.81"),
        ("image/jp2", "1.2.840.10008.1.2.4.90"),
        ("image/jp2", "1.2.840.10008.1.2.4.91"),
        ("image/jpeg", "1.2.840.10008.1.2.4.70"),
        ("image/jphc", "1.2.840.10008.1.2.4.201"),
        ("image/jphc", "1.2.840.10008.1.2.4.202"),
    ],
)
def test_frames_requested_in_each_encodable_syntax_decode_to_the_original_pixels(
    client: TestClient, wide_mf: pydicom.Dataset, media_type: str, syntax: str
) -> None:
    accept = f'multipart/related; type="{media_type}"; transfer-syntax={syntax}'
    response = client.get(f"{instance_url(wide_mf)}/frames/2,3", headers={"Accept": accept})
    assert response.status_code == 200
    parts = multipart_bodies(response)
    assert parts[0][0]["content-type"] == f"{media_type}; transfer-syntax={syntax}"
    for (_, body), number in zip(parts, (2, 3), strict=True):
        ds = pydicom.Dataset()
        for keyword in ("Rows", "Columns", "SamplesPerPixel", "BitsAllocated", "BitsStored", "HighBit"):
            setattr(ds, keyword, wide_mf.get(keyword))
        ds.PixelRepresentation = wide_mf.PixelRepresentation
        ds.PhotometricInterpretation = wide_mf.PhotometricInterpretation
        ds.file_meta = pydicom.dataset.FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = syntax
        ds.PixelData = pydicom.encaps.encapsulate([body])
        difference = np.abs(ds.pixel_array.astype(int) - wide_mf.pixel_array[number - 1].astype(int))
        assert difference.max() <= (
            2 if syntax.endswith(".81") else 0 if syntax.endswith((".5", ".80", ".90")) else 255
        )


def test_a_frame_media_type_without_transfer_syntax_means_its_lossless_default(
    client: TestClient, wide_mf: pydicom.Dataset
) -> None:
    response = client.get(
        f"{instance_url(wide_mf)}/frames/1", headers={"Accept": 'multipart/related; type="image/jls"'}
    )
    assert response.status_code == 200
    assert multipart_bodies(response)[0][0]["content-type"] == "image/jls; transfer-syntax=1.2.840.10008.1.2.4.80"


def test_a_frame_of_an_instance_replaced_after_it_was_served_is_the_new_one(client: TestClient, tmp_path: Path) -> None:
    """The frame index a process keeps is dropped with its series' version: the new instance's frame is larger."""
    (ds,) = ct_series(1, rows=16, columns=16)
    stow_all(client, [ds], tmp_path)
    url = f"{instance_url(ds)}/frames/1"
    assert multipart_bodies(client.get(url, headers={"Accept": OCTET_MULTIPART}))[0][1] == ds.PixelData
    (larger,) = ct_series(1, rows=32, columns=32, study_uid=ds.StudyInstanceUID, series_uid=ds.SeriesInstanceUID)
    larger.SOPInstanceUID = larger.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    stow_all(client, [larger], tmp_path)
    assert multipart_bodies(client.get(url, headers={"Accept": OCTET_MULTIPART}))[0][1] == larger.PixelData


@pytest.mark.parametrize("remote_index", [False, True])
def test_a_frame_source_is_kept_for_the_event_loop_only_over_a_local_index(
    archive: Archive, client: TestClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, remote_index: bool
) -> None:
    """What a frame request may answer without a worker thread: the source kept for the series' current version,
    known from a local index; a remote one is never asked from the event loop. Either way the frames are the same."""
    monkeypatch.setattr(archive.runtime.index, "remote", remote_index)
    (ds,) = ct_series(1, rows=16, columns=16)
    stow_all(client, [ds], tmp_path)
    uids = (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    url = f"{instance_url(ds)}/frames/1"
    assert archive.retrieve.kept_frame_source("default", *uids) is None
    for _ in range(2):
        assert multipart_bodies(client.get(url, headers={"Accept": OCTET_MULTIPART}))[0][1] == ds.PixelData
        kept = archive.retrieve.kept_frame_source("default", *uids)
        assert (kept is None) == remote_index
    stow_all(client, [next(ct_series(1, rows=16, columns=16, study_uid=uids[0], series_uid=uids[1]))], tmp_path)
    assert archive.retrieve.kept_frame_source("default", *uids) is None  # the series has a new version
    if not remote_index:
        with pytest.raises(NotFound):
            archive.retrieve.kept_frame_source("default", uids[0], "1.2.3.4", uids[2])


def test_a_frame_beyond_the_last_is_not_found(client: TestClient, native_mf: pydicom.Dataset) -> None:
    assert client.get(f"{instance_url(native_mf)}/frames/11").status_code == 404


@pytest.mark.parametrize("frames", ["0", "1,x", "1,,2", "-1", "１"])
def test_a_malformed_frame_list_is_a_bad_request(client: TestClient, native_mf: pydicom.Dataset, frames: str) -> None:
    assert client.get(f"{instance_url(native_mf)}/frames/{frames}").status_code == 400


def test_frames_of_an_instance_without_pixel_data_are_not_found(client: TestClient, tmp_path: Path) -> None:
    ds = next(ct_series(1, rows=8, columns=8))
    del ds.PixelData
    stow_all(client, [ds], tmp_path)
    assert client.get(f"{instance_url(ds)}/frames/1").status_code == 404


# ---------------------------------------------------------------------------------------------------
# Bulk data


def test_bulkdata_uri_from_metadata_returns_the_value(client: TestClient, native_mf: pydicom.Dataset) -> None:
    (document,) = client.get(f"{instance_url(native_mf)}/metadata").json()
    uri = document["7FE00010"]["BulkDataURI"].removeprefix("http://archive.test")
    response = client.get(uri, headers={"Accept": f"{OCTET_MULTIPART}; transfer-syntax=*"})
    assert response.status_code == 200
    ((headers, body),) = multipart_bodies(response)
    assert body == native_mf.PixelData
    assert headers["content-location"] == document["7FE00010"]["BulkDataURI"]


def test_bulkdata_with_a_hostile_tag_path_is_rejected(client: TestClient, native_mf: pydicom.Dataset) -> None:
    response = client.get(f"{instance_url(native_mf)}/bulkdata/../../etc/passwd")
    assert response.status_code in (400, 404)
    assert client.get(f"{instance_url(native_mf)}/bulkdata/7FE00010x").status_code == 400


def test_bulkdata_in_another_media_type_is_406(client: TestClient, native_mf: pydicom.Dataset) -> None:
    response = client.get(f"{instance_url(native_mf)}/bulkdata/7FE00010", headers={"Accept": "application/json"})
    assert response.status_code == 406


# ---------------------------------------------------------------------------------------------------
# DELETE


def test_deleting_an_instance_removes_file_and_listing(
    client: TestClient, archive: Archive, series: list[pydicom.Dataset]
) -> None:
    ds = series[0]
    assert archive.runtime.storage.size(key_of(ds)) is not None
    assert client.delete(instance_url(ds)).status_code == 204
    assert archive.runtime.storage.size(key_of(ds)) is None
    assert client.get(instance_url(ds)).status_code == 404
    metadata = client.get(f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/metadata").json()
    assert [d["00080018"]["Value"][0] for d in metadata] == [d.SOPInstanceUID for d in series[1:]]


def test_deleting_a_study_forgets_it(client: TestClient, archive: Archive, series: list[pydicom.Dataset]) -> None:
    study = series[0].StudyInstanceUID
    assert client.delete(f"/dicom-web/studies/{study}").status_code == 204
    assert client.get("/dicom-web/studies").json() == []
    assert client.get(f"/dicom-web/studies/{study}/metadata").status_code == 404
    assert stored_keys(archive) == []
    assert client.delete(f"/dicom-web/studies/{study}").status_code == 404


def test_deleting_an_instance_also_removes_its_metadata_entry_and_derived_copies(
    client: TestClient, archive: Archive, series: list[pydicom.Dataset]
) -> None:
    ds, kept = series[0], series[1]
    storage = archive.runtime.storage
    for instance in (ds, kept):
        accept = f"application/dicom; transfer-syntax={RLE}"
        assert client.get(instance_url(instance), headers={"Accept": accept}).status_code == 200
    assert storage.size(derived_key(key_of(ds), RLE)) is not None
    assert storage.size(entry_key(key_of(ds))) is not None
    assert client.delete(instance_url(ds)).status_code == 204
    assert [key for key in storage.list("") if ds.SOPInstanceUID + "." in key or ds.SOPInstanceUID + "_" in key] == []
    assert storage.size(derived_key(key_of(kept), RLE)) is not None, "another instance's copy stays"
    assert storage.size(entry_key(key_of(kept))) is not None


def test_stored_then_retrieved_through_a_tenant(client: TestClient, tmp_path: Path) -> None:
    ds = next(ct_series(1, rows=8, columns=8))
    raw = part10(ds, tmp_path)
    stow_all(client, [ds], tmp_path, tenant="radiology")
    (only,) = multipart_bodies(client.get(instance_url(ds, "radiology")))
    assert only[1] == raw
