"""The settings several HTTP workers run with, and the worker's name on each log line. The workers themselves
run in tests/e2e/test_http_workers.py; two workers' archives share a folder in test_read_your_writes.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

from dicomcloud.config import load_settings
from dicomcloud.errors import ServiceUnavailable
from dicomcloud.http_workers import HttpWorkers, share_safely, worker_count


def test_zero_workers_means_one_per_core_this_process_may_use() -> None:
    assert worker_count(load_settings(overrides={"http": {"workers": 0}}, environ={})) == len(os.sched_getaffinity(0))
    assert worker_count(load_settings(overrides={"http": {"workers": 3}}, environ={})) == 3
    with pytest.raises(ValueError, match=r"http\.workers"):
        load_settings(overrides={"http": {"workers": -1}}, environ={})


@pytest.mark.parametrize(
    ("workers", "cache", "ttl"),
    [(1, "memory", 30.0), (2, "memory", 0.0), (2, "redis", 30.0)],
)
def test_qido_results_are_cached_in_a_memory_cache_only_when_one_worker_serves(
    workers: int, cache: str, ttl: float
) -> None:
    settings = load_settings(
        overrides={"http": {"workers": workers}, "backends": {"cache": cache, "qido_cache_ttl": 30.0}}, environ={}
    )
    share_safely(settings)
    assert settings.backends.qido_cache_ttl == ttl


@pytest.mark.parametrize("log_format", ["plain", "json"])
def test_every_log_line_names_its_worker(log_format: str) -> None:
    """In a process of its own: logging is set up once per process."""
    script = (
        "import logging; from dicomcloud.logs import setup_logging;"
        f" setup_logging('INFO', {log_format!r}, worker='http-2');"
        " logging.getLogger('dicomcloud.test').info('served')"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    (line,) = run.stderr.splitlines()
    if log_format == "json":
        entry = json.loads(line)
        assert (entry["worker"], entry["message"]) == ("http-2", "served")
    else:
        assert line.endswith(" INFO    [http-2] dicomcloud.test: served")


def test_a_wado_server_is_not_ready_until_its_own_listener_serves() -> None:
    """The socket is bound before uvicorn listens on it: until then a client would be refused, so a stack
    that waited for /ready must not be told so."""
    settings = load_settings(environ={})
    server = SimpleNamespace(started=False)
    (check,) = HttpWorkers(settings, "plain", worker_count(settings)).checks(server)
    with pytest.raises(ServiceUnavailable, match="does not serve yet"):
        check.probe()
    server.started = True
    check.probe()
