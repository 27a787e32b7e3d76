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
# Every operation the bench reports, by name.
OPERATIONS = {
    "cstore_ingest",
    "stow_rs",
    "stow_rs_queryable",
    "metadata_while_writing",
    "metadata_complete_after_write",
    "qido_studies_patientid",
    "qido_studies_date_modality",
    "qido_instances_series",
    "metadata_series_cold",
    "metadata_series_warm",
    "frame_single",
    "frame_multiframe",
    "instance_retrieve",
    "series_retrieve",
    "study_stream_rss",
}


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
    assert set(operations) == OPERATIONS
    for name, op in operations.items():
        for server in ("dicomcloud", "orthanc"):
            measured = op["servers"][server]
            assert measured["samples_s"], (name, server)
            assert all(_number(s) for s in measured["samples_s"]), (name, server)
            assert _number(measured["median_s"]) and _number(measured["p90_s"]), (name, server)
            assert _number(measured["throughput"]), (name, server)
        assert _number(op["ratio"]), name


def test_quick_bench_samples_server_memory_while_streaming(quick_results: dict[str, object]) -> None:
    (stream,) = [op for op in quick_results["operations"] if op["name"] == "study_stream_rss"]  # type: ignore[attr-defined]
    for server in ("dicomcloud", "orthanc"):
        assert _number(stream["servers"][server]["rss_peak_bytes"])
        assert stream["servers"][server]["bytes"] > 0


def test_quick_bench_servers_return_the_same_search_results(quick_results: dict[str, object]) -> None:
    counts = quick_results["result_counts"]
    assert counts
    for name, by_server in counts.items():  # type: ignore[attr-defined]
        assert by_server["dicomcloud"] == by_server["orthanc"] > 0, name
