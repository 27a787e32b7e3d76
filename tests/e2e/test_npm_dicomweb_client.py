"""The `dicomweb-client` npm package that OHIF is built on, run with Node against `dicomcloud up`:
a study stored through its STOW-RS, then found, described and retrieved through its QIDO-RS and WADO-RS calls.

Each call is one run of npm_dicomweb_client.cjs (the package and xhr2 from the npm cache, at the versions
`./dev` pins); this side checks what the client resolved to against the files it sent.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.encaps import generate_frames
from pydicom.uid import JPEGLSLossless

from bench.synthetic import ct_series, multiframe, new_uid, write_part10
from dicomcloud.stack.servers import OHIF_DIST

from .conftest import Archive

pytestmark = pytest.mark.e2e

DRIVER = Path(__file__).with_name("npm_dicomweb_client.cjs")
NODE_MODULES = OHIF_DIST.parents[1] / "node_modules"
PATIENT_ID = "NPM-DICOMWEB-CLIENT"


@dataclass
class Sent:
    """What the client stored: two CT slices, a native multi-frame image and a JPEG-LS one, in one study."""

    files: dict[str, Path]  # SOP Instance UID -> the file sent
    ct: list[pydicom.Dataset]
    native: pydicom.Dataset
    jpeg_ls: pydicom.Dataset

    @property
    def study(self) -> str:
        return str(self.native.StudyInstanceUID)


def call(archive: Archive, out: Path, method: str, options: dict[str, Any], **job: Any) -> dict[str, Any]:
    """One dicomweb-client call through the driver; what it resolved to (binary parts as files in `out`)."""
    assert (NODE_MODULES / "dicomweb-client").is_dir(), f"dicomweb-client is not in {NODE_MODULES}: run ./dev test"
    out.mkdir(parents=True, exist_ok=True)
    parts_folder = tempfile.mkdtemp(prefix=f"{method}-", dir=out)
    request = {"url": archive.dicomweb_url(), "method": method, "options": options, "out": parts_folder, **job}
    done = subprocess.run(
        ["node", str(DRIVER), json.dumps(request)],
        capture_output=True, text=True, env={**os.environ, "NODE_PATH": str(NODE_MODULES)}, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    assert report["ok"], report
    return report


def uids(ds: pydicom.Dataset) -> dict[str, str]:
    return {
        "studyInstanceUID": str(ds.StudyInstanceUID),
        "seriesInstanceUID": str(ds.SeriesInstanceUID),
        "sopInstanceUID": str(ds.SOPInstanceUID),
    }


def parts(report: dict[str, Any]) -> list[bytes]:
    return [Path(part).read_bytes() for part in report["parts"]]


@pytest.fixture(scope="module")
def sent(archive: Archive, tmp_path_factory: pytest.TempPathFactory) -> Sent:
    """The study, stored in one storeInstances call (whose body ends in NUL padding after the close delimiter)."""
    folder = tmp_path_factory.mktemp("npm-dicomweb-client")
    study = new_uid()
    ct = list(ct_series(2, rows=64, columns=64, study_uid=study, patient_id=PATIENT_ID))
    native = multiframe(4, rows=32, columns=48, study_uid=study, patient_id=PATIENT_ID)
    jpeg_ls = multiframe(3, rows=32, columns=48, study_uid=study, patient_id=PATIENT_ID, transfer_syntax=JPEGLSLossless)
    files = {}
    for ds in [*ct, native, jpeg_ls]:
        files[str(ds.SOPInstanceUID)] = folder / f"{ds.SOPInstanceUID}.dcm"
        write_part10(ds, files[str(ds.SOPInstanceUID)])
    stored = call(archive, folder, "storeInstances", {}, files=[str(path) for path in files.values()])
    response = json.loads(stored["text"])
    assert "00081198" not in response, response
    assert {item["00081155"]["Value"][0] for item in response["00081199"]["Value"]} == set(files)
    return Sent(files, ct, native, jpeg_ls)


def test_its_searches_find_what_it_stored(archive: Archive, sent: Sent, tmp_path: Path) -> None:
    studies = call(archive, tmp_path, "searchForStudies", {"queryParams": {"PatientID": PATIENT_ID}})["json"]
    assert [study["0020000D"]["Value"] for study in studies] == [[sent.study]]
    assert studies[0]["00201208"]["Value"] == [len(sent.files)]
    series = call(archive, tmp_path, "searchForSeries", {"studyInstanceUID": sent.study})["json"]
    expected_series = {str(ds.SeriesInstanceUID) for ds in (sent.ct[0], sent.native, sent.jpeg_ls)}
    assert {s["0020000E"]["Value"][0] for s in series} == expected_series
    instances = call(
        archive, tmp_path, "searchForInstances",
        {"studyInstanceUID": sent.study, "queryParams": {"includefield": "AvailableTransferSyntaxUID"}},
    )["json"]  # fmt: skip
    syntaxes = {i["00080018"]["Value"][0]: i["00083002"]["Value"][0] for i in instances}
    assert set(syntaxes) == set(sent.files)
    assert syntaxes[str(sent.jpeg_ls.SOPInstanceUID)] == JPEGLSLossless
    ct_series_uid = str(sent.ct[0].SeriesInstanceUID)
    ct = call(
        archive, tmp_path, "searchForInstances", {"studyInstanceUID": sent.study, "seriesInstanceUID": ct_series_uid}
    )["json"]
    assert {i["00080018"]["Value"][0] for i in ct} == {str(ds.SOPInstanceUID) for ds in sent.ct}


def test_its_study_and_series_metadata_describe_every_instance(archive: Archive, sent: Sent, tmp_path: Path) -> None:
    metadata = call(archive, tmp_path, "retrieveStudyMetadata", {"studyInstanceUID": sent.study})["json"]
    by_sop = {instance["00080018"]["Value"][0]: instance for instance in metadata}
    assert set(by_sop) == set(sent.files)
    assert by_sop[str(sent.native.SOPInstanceUID)]["00280008"]["Value"] == [4]
    assert by_sop[str(sent.jpeg_ls.SOPInstanceUID)]["00280008"]["Value"] == [3]
    ct_series_uids = {"studyInstanceUID": sent.study, "seriesInstanceUID": str(sent.ct[0].SeriesInstanceUID)}
    series = call(archive, tmp_path, "retrieveSeriesMetadata", ct_series_uids)["json"]
    assert {instance["00080018"]["Value"][0] for instance in series} == {str(ds.SOPInstanceUID) for ds in sent.ct}


def test_frames_as_it_asks_for_them_by_default_are_the_native_pixels(
    archive: Archive, sent: Sent, tmp_path: Path
) -> None:
    frame_length = sent.native.Rows * sent.native.Columns
    native = call(archive, tmp_path, "retrieveInstanceFrames", {**uids(sent.native), "frameNumbers": [2, 4]})
    assert parts(native) == [
        sent.native.PixelData[frame_length : 2 * frame_length],
        sent.native.PixelData[3 * frame_length : 4 * frame_length],
    ]
    decoded = call(archive, tmp_path, "retrieveInstanceFrames", {**uids(sent.jpeg_ls), "frameNumbers": [1, 3]})
    assert parts(decoded) == [sent.jpeg_ls.pixel_array[0].tobytes(), sent.jpeg_ls.pixel_array[2].tobytes()]


@pytest.mark.parametrize(
    "media_type", [("application/octet-stream", "*"), ("image/jls", JPEGLSLossless)], ids=["any-syntax", "jpeg-ls"]
)
def test_compressed_frames_come_as_stored(
    archive: Archive, sent: Sent, tmp_path: Path, media_type: tuple[str, str]
) -> None:
    options = {
        **uids(sent.jpeg_ls),
        "frameNumbers": [1, 3],
        "mediaTypes": [{"mediaType": media_type[0], "transferSyntaxUID": media_type[1]}],
    }
    report = call(archive, tmp_path, "retrieveInstanceFrames", options)
    stored = list(generate_frames(sent.jpeg_ls.PixelData, number_of_frames=3))
    assert parts(report) == [stored[0], stored[2]]


def test_a_retrieved_instance_is_the_file_it_sent(archive: Archive, sent: Sent, tmp_path: Path) -> None:
    ct = sent.ct[0]
    (instance,) = parts(call(archive, tmp_path, "retrieveInstance", uids(ct)))
    assert instance == sent.files[str(ct.SOPInstanceUID)].read_bytes()


@pytest.mark.parametrize("singlepart", ["", "bulkdata,video"], ids=["multipart", "singlepart-as-ohif"])
def test_bulk_data_at_the_metadata_uri(archive: Archive, sent: Sent, tmp_path: Path, singlepart: str) -> None:
    ct = sent.ct[1]
    metadata = call(archive, tmp_path, "retrieveInstanceMetadata", uids(ct))["json"]
    uri = metadata[0]["7FE00010"]["BulkDataURI"]
    report = call(archive, tmp_path, "retrieveBulkData", {"BulkDataURI": uri}, client={"singlepart": singlepart})
    assert parts(report) == [ct.PixelData]
