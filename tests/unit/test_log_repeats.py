"""Repeated warnings of one request are summarised in one line with a count; warnings an attacker can
repeat across requests (refused connections) are throttled."""

from __future__ import annotations

import contextvars
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import support
from fastapi.testclient import TestClient
from test_web_app import stow_body

from dicomcloud.logs import RepeatFilter, ThrottledWarnings, repeats_summarised
from dicomcloud.web.app import create_app

PARTS = 500


class Collected(logging.Handler):
    """A handler as setup_logging installs one (with the repeat filter), keeping the lines it would write."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.addFilter(RepeatFilter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def collected() -> Iterator[Collected]:
    handler = Collected()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)


def test_a_stow_of_many_refused_parts_logs_a_few_lines_and_a_count(tmp_path: Path, collected: Collected) -> None:
    archive = support.make_archive(tmp_path / "data")
    try:
        with TestClient(create_app(archive), base_url="http://archive.test") as client:
            body, content_type = stow_body([b"not DICOM %d" % n for n in range(PARTS)])
            response = client.post("/dicom-web/studies", content=body, headers={"Content-Type": content_type})
            assert response.status_code == 400
    finally:
        archive.close()
    refused = [line for line in collected.lines if "not stored" in line]
    assert len(refused) == 4, refused
    assert refused[-1].startswith(f"{PARTS - 3} more like this in POST /dicom-web/studies: STOW default: instance")


def test_repeats_are_counted_per_unit_of_work_and_across_its_threads(collected: Collected) -> None:
    log = logging.getLogger("dicomcloud.test")
    with repeats_summarised("job 1"):
        # Threads that run in a copy of the context, as anyio's worker threads do.
        workers = [
            threading.Thread(target=contextvars.copy_context().run, args=(log.warning, "part %d refused", n))
            for n in range(10)
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        log.warning("something else")
    with repeats_summarised("job 2"):
        log.warning("part %d refused", 99)
    assert len([line for line in collected.lines if line.startswith("part ")]) == 4
    assert "7 more like this in job 1: part" in "\n".join(collected.lines)
    assert collected.lines[-1] == "part 99 refused"
    assert "something else" in collected.lines


def test_warnings_outside_a_unit_of_work_are_all_logged(collected: Collected) -> None:
    for n in range(10):
        logging.getLogger("dicomcloud.test").warning("free %d", n)
    assert len(collected.lines) == 10


def test_throttled_warnings_log_the_first_then_one_line_per_interval_with_the_count(collected: Collected) -> None:
    throttled = ThrottledWarnings(logging.getLogger("dicomcloud.test"), interval=3600)
    for n in range(100):
        throttled.warning("429", "HTTP 429 to %s", f"192.0.2.{n}")
    assert collected.lines == ["HTTP 429 to 192.0.2.0"]
    throttled.interval = 0
    throttled.warning("429", "HTTP 429 to %s", "192.0.2.200")
    assert collected.lines[-1].startswith("HTTP 429 to 192.0.2.200 (and 99 more like it in the last")
