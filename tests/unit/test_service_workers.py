"""The settings and options several worker processes run with, what each process serves, its readiness, and the
worker's name on each log line. The workers themselves run in tests/e2e/test_http_workers.py and
tests/e2e/test_dimse_workers.py; two workers' archives share a folder in test_read_your_writes.py, two SCPs
one listening socket in test_storescp.py."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from types import SimpleNamespace

import pytest

from dicomcloud.cli import build_parser, overrides_from
from dicomcloud.config import load_settings
from dicomcloud.errors import ServiceUnavailable
from dicomcloud.service_workers import (
    BACKGROUND,
    Listeners,
    ServiceWorkers,
    process_counts,
    worker_count,
    worker_name,
)


@pytest.mark.parametrize("section", ["http", "dimse"])
def test_zero_workers_means_one_per_core_this_process_may_use(section: str) -> None:
    settings = load_settings(overrides={section: {"workers": 0}}, environ={})
    assert worker_count(getattr(settings, section).workers) == len(os.sched_getaffinity(0))
    settings = load_settings(overrides={section: {"workers": 3}}, environ={})
    assert worker_count(getattr(settings, section).workers) == 3
    with pytest.raises(ValueError, match=rf"{section}\.workers"):
        load_settings(overrides={section: {"workers": -1}}, environ={})


def test_by_default_both_ports_are_served_by_one_process_per_core() -> None:
    settings = load_settings(environ={})
    cores = len(os.sched_getaffinity(0))
    assert process_counts(settings, "up") == {"http": cores, "dimse": cores}
    assert process_counts(settings, "server") == {"http": cores}
    assert process_counts(settings, "storescp") == {"dimse": cores}


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["up", "--workers", "2"], {"http": {"workers": 2}, "dimse": {"workers": 2}}),
        (["up", "--workers", "0"], {"http": {"workers": 0}, "dimse": {"workers": 0}}),
        (["server", "--workers", "3"], {"http": {"workers": 3}}),
        (["storescp", "--workers", "3"], {"dimse": {"workers": 3}}),
        (["storescp"], {}),
    ],
)
def test_the_workers_option_sets_the_workers_of_what_the_command_serves(
    argv: list[str], expected: dict[str, dict[str, int]]
) -> None:
    assert overrides_from(build_parser().parse_args(argv)) == expected


def test_the_workers_option_is_for_serving_commands_only() -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["consumer", "--workers", "2"])


def test_process_k_serves_http_up_to_the_http_workers_and_dimse_up_to_the_dimse_workers() -> None:
    with socket.socket() as http, socket.socket() as dimse:
        settings = load_settings(environ={})
        workers = ServiceWorkers(settings, "plain", http=2, dimse=3)
        assert workers.processes == 3
        sockets = Listeners(http, dimse)
        assert sockets.of_worker(2, workers.http, workers.dimse) == Listeners(http, dimse)
        assert sockets.of_worker(3, workers.http, workers.dimse) == Listeners(None, dimse)
        assert Listeners(None, dimse).of_worker(2, 1, 2) == Listeners(None, dimse)
        assert ServiceWorkers(settings, "plain", http=1).processes == 1
        assert ServiceWorkers(settings, "plain", dimse=4).processes == 4


def test_the_background_work_has_a_process_of_its_own_only_beside_several_serving_ones() -> None:
    settings = load_settings(environ={})
    assert ServiceWorkers(settings, "plain", http=2, dimse=2, background=True).background
    assert ServiceWorkers(settings, "plain", http=1, dimse=2, background=True).background
    assert not ServiceWorkers(settings, "plain", http=1, dimse=1, background=True).background
    assert not ServiceWorkers(settings, "plain", http=2, dimse=2).background
    assert worker_name(BACKGROUND, 1) == worker_name(BACKGROUND, 3) == "background"
    assert worker_name(2, 3) == "worker-2"
    assert worker_name(1, 1) == ""


@pytest.mark.parametrize("log_format", ["plain", "json"])
def test_every_log_line_names_its_worker(log_format: str) -> None:
    """In a process of its own: logging is set up once per process."""
    script = (
        "import logging; from dicomcloud.logs import setup_logging;"
        f" setup_logging('INFO', {log_format!r}, worker='worker-2');"
        " logging.getLogger('dicomcloud.test').info('served')"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    (line,) = run.stderr.splitlines()
    if log_format == "json":
        entry = json.loads(line)
        assert (entry["worker"], entry["message"]) == ("worker-2", "served")
    else:
        assert line.endswith(" INFO    [worker-2] dicomcloud.test: served")


def test_a_service_is_not_ready_until_its_own_listeners_serve() -> None:
    """The sockets are bound before their servers listen on them: until then a client would be refused (HTTP)
    or left waiting (DIMSE), so a stack that waited for /ready must not be told so."""
    settings = load_settings(environ={})
    server = SimpleNamespace(started=False)
    scp = SimpleNamespace(serving=False, port=11112)
    http_check, dimse_check = ServiceWorkers(settings, "plain", http=1, dimse=1).checks(http=server, scp=scp)  # type: ignore[arg-type]
    with pytest.raises(ServiceUnavailable, match="does not serve yet"):
        http_check.probe()
    with pytest.raises(ServiceUnavailable, match="does not serve"):
        dimse_check.probe()
    server.started = True
    scp.serving = True
    http_check.probe()
    dimse_check.probe()
