"""The benchmark's quick mode runs end to end against both archives and reports every operation.

It asserts what the bench produced, never how fast anything was.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
# Every operation the bench reports, by name, and the servers it compares.
ORTHANC = ("dicomcloud", "orthanc")
NGINX = ("dicomcloud", "nginx")
FLOOR = ("floor", "orthanc")
OPERATIONS = {
    "cstore_ingest": ORTHANC,
    "cstore_parallel": ORTHANC,
    "stow_rs": ORTHANC,
    "stow_rs_parallel": ORTHANC,
    "cstore_floor": FLOOR,
    "cstore_parallel_floor": FLOOR,
    "stow_rs_floor": FLOOR,
    "stow_rs_parallel_floor": FLOOR,
    "stow_rs_queryable": ORTHANC,
    "metadata_while_writing": ORTHANC,
    "metadata_complete_after_write": ORTHANC,
    "bulk_import": ORTHANC,
    "bulk_import_floor": FLOOR,
    "qido_studies_patientid": ORTHANC,
    "qido_studies_date_modality": ORTHANC,
    "qido_instances_series": ORTHANC,
    "metadata_series_cold": ORTHANC,
    "metadata_series_warm": ORTHANC,
    "frame_single": ORTHANC,
    "frame_multiframe": ORTHANC,
    "instance_retrieve": ORTHANC,
    "series_retrieve": ORTHANC,
    "series_retrieve_nginx": NGINX,
    "viewer_frames_after_ingest": ORTHANC,
    "viewer_frames_settled": ORTHANC,
    "viewer_frames_nginx": NGINX,
    "study_stream_rss": ORTHANC,
}
VIEWER_LOADS = ("viewer_frames_after_ingest", "viewer_frames_settled", "viewer_frames_nginx")


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    out = tmp_path_factory.mktemp("bench-out")
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(out), "--work", str(out / "work")],
        cwd=REPO, capture_output=True, text=True, timeout=540, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / "results.txt").read_text().strip()
    assert not (out / "work").exists()
    results: dict[str, object] = json.loads((out / "results.json").read_text())
    return results


def _number(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def test_quick_bench_reports_every_operation_for_both_servers(quick_results: dict[str, object]) -> None:
    operations = {op["name"]: op for op in quick_results["operations"]}  # type: ignore[attr-defined]
    assert set(operations) == set(OPERATIONS)
    for name, op in operations.items():
        assert tuple(op["servers"]) == OPERATIONS[name]
        for server in OPERATIONS[name]:
            measured = op["servers"][server]
            assert measured["samples_s"], (name, server)
            assert all(_number(s) for s in measured["samples_s"]), (name, server)
            assert _number(measured["median_s"]) and _number(measured["p90_s"]), (name, server)
            assert _number(measured["throughput"]), (name, server)
        assert _number(op["ratio"]), name


def test_quick_bench_samples_server_memory_while_streaming_and_idle_after(quick_results: dict[str, object]) -> None:
    (stream,) = [op for op in quick_results["operations"] if op["name"] == "study_stream_rss"]  # type: ignore[attr-defined]
    for server in ORTHANC:
        assert _number(stream["servers"][server]["rss_peak_bytes"])
        assert _number(stream["servers"][server]["rss_idle_after_bytes"])
        assert stream["servers"][server]["bytes"] > 0


def test_quick_bench_viewer_loads_report_a_rate_and_the_latency_percentiles(quick_results: dict[str, object]) -> None:
    operations = {op["name"]: op for op in quick_results["operations"]}  # type: ignore[attr-defined]
    for name in VIEWER_LOADS:
        for server, measured in operations[name]["servers"].items():
            assert measured["throughput_unit"] == "frames/s", (name, server)
            assert len(measured["samples_s"]) == 99, (name, server)  # percentiles 1 to 99
            assert measured["median_s"] <= measured["p90_s"] <= measured["p99_s"], (name, server)


def test_quick_bench_servers_return_the_same_search_results(quick_results: dict[str, object]) -> None:
    counts = quick_results["result_counts"]
    assert counts
    for name, by_server in counts.items():  # type: ignore[attr-defined]
        assert by_server["dicomcloud"] == by_server["orthanc"] > 0, name


# What `--s3` compares (the object-storage targets): the same archive on S3 and on the local filesystem.
S3_TARGETS = {
    "cstore_ingest": "thrpt >= 0.7x",
    "stow_rs": "thrpt >= 0.7x",
    "frame_single": "p50 <= +2 ms",
    "frame_multiframe": "p50 <= +2 ms",
    "instance_retrieve": "-",
    "series_retrieve": "thrpt >= 0.7x",
    "study_stream_rss": "RSS +< 100 MB",
    # The store's floor: the same targets for the Storage port alone.
    "storage_commit_one": "thrpt >= 0.7x",
    "storage_commit_batch": "thrpt >= 0.7x",
    "storage_frame_read": "p50 <= +2 ms",
    "storage_series_read": "thrpt >= 0.7x",
}


def test_quick_s3_bench_prints_the_s3_to_filesystem_ratios_next_to_the_targets(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    out = tmp_path_factory.mktemp("bench-s3-out")
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--s3", "--out", str(out), "--work", str(out / "work")],
        cwd=REPO, capture_output=True, text=True, timeout=540, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    operations = {op["name"]: op for op in results["operations"]}
    assert {name: op["target"]["text"] for name, op in operations.items()} == S3_TARGETS
    for name, op in operations.items():
        assert set(op["servers"]) == {"s3", "fs"}, name
        assert all(_number(op["servers"][server]["median_s"]) for server in ("s3", "fs")), name
        assert _number(op["ratio"]), name
    header, _, *rows = done.stdout.strip().splitlines()
    assert "ratio s3/fs" in header and "target" in header
    assert {row.split("|")[0].strip() for row in rows if "|" in row} == set(S3_TARGETS)


@pytest.mark.stack
def test_quick_scale_bench_loads_both_indexes_and_compares_ingest_and_every_qido_request(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    out = tmp_path_factory.mktemp("bench-scale-out")
    # Its own work folder (under the system temp dir): the PostgreSQL it starts must reach it when run as root.
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--scale", "--quick", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=540, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "scale.json").read_text())
    queries = ("qido_studies_patientid", "qido_studies_date_modality", "qido_studies_name_limit100",
               "qido_studies_name_limit1000")  # fmt: skip
    operations = {op["name"]: op for op in results["operations"]}
    expected = {f"scale_{index}_{row}" for index in ("sqlite", "postgres") for row in ("ingest", *queries)}
    assert set(operations) == expected
    for name, op in operations.items():
        servers = ("dicomcloud", "empty index") if name.endswith("_ingest") else ("dicomcloud", "orthanc")
        assert set(op["servers"]) == set(servers), name
        for server in servers:
            assert _number(op["servers"][server]["median_s"]) and _number(op["servers"][server]["throughput"])
        assert _number(op["ratio"]), name
    assert set(results["load_seconds"]) == {"sqlite", "postgres"}
    for name, counts in results["result_counts"].items():
        assert counts["dicomcloud"] > 0 and counts["orthanc"] > 0, name
        if name.endswith("_limit100"):  # 500 of the quick load's studies match
            assert counts["dicomcloud"] == 100, name
    assert "scale_postgres_qido_studies_name_limit100: p95" in done.stdout
