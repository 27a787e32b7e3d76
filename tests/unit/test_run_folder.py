"""The run folder of a service of several processes (src/dicomcloud/run_folder.py): metric values made after
it live in its files whatever was imported before, a process started with its environment adds to them,
`/metrics` serves the sum (a gauge its last value), and the folder is gone when the service's process
ends. Each case runs in a fresh interpreter: the choice of where metric values live is made once per
process."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from dicomcloud.run_folder import METRICS_FOLDER, RUN_FOLDER, share_between_processes

SRC = Path(__file__).resolve().parents[2] / "src"

ANOTHER_PROCESS = """
from dicomcloud.metrics import HTTP_REQUESTS
HTTP_REQUESTS.labels("GET", "/dicom-web/studies", "200").inc(2)
"""


def run(script: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    for name in (RUN_FOLDER, METRICS_FOLDER):
        env.pop(name, None)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], env=env, capture_output=True, text=True, timeout=120
    )


def test_a_service_of_one_process_makes_no_folder() -> None:
    assert share_between_processes(1) is None
    assert RUN_FOLDER not in os.environ and METRICS_FOLDER not in os.environ


def test_metrics_serves_the_sum_of_every_process_and_the_folder_ends_with_the_service() -> None:
    done = run(f"""
        import subprocess, sys
        from dicomcloud.ops import metrics_text  # prometheus_client imported before the folder exists
        from dicomcloud.run_folder import share_between_processes
        folder = share_between_processes(2)
        from dicomcloud.metrics import CONSUMER_LAG, HTTP_REQUESTS, TRANSCODE_FAILURES
        HTTP_REQUESTS.labels("GET", "/dicom-web/studies", "200").inc()
        TRANSCODE_FAILURES.inc()
        CONSUMER_LAG.labels("wado-consumer", "storage").set(9)
        CONSUMER_LAG.labels("wado-consumer", "storage").set(7)
        subprocess.run([sys.executable, "-c", {ANOTHER_PROCESS!r}], check=True)
        print(folder)
        print(metrics_text().decode())
    """)
    assert done.returncode == 0, done.stderr
    folder, text = done.stdout.split("\n", 1)
    assert 'dicomcloud_http_requests_total{method="GET",route="/dicom-web/studies",status="200"} 3.0' in text
    assert "dicomcloud_transcode_failures_total 1.0" in text
    assert 'dicomcloud_consumer_lag{group="wado-consumer",topic="storage"} 7.0' in text, "a gauge: its last value"
    assert "process_" not in text, "only the archive's metrics: process_* would describe one process"
    assert not Path(folder).exists()


def test_the_folder_comes_before_any_metric_value() -> None:
    done = run("""
        import dicomcloud.metrics
        from dicomcloud.run_folder import share_between_processes
        share_between_processes(2)
    """)
    assert done.returncode != 0
    assert "the run folder comes after metric values were made" in done.stderr
