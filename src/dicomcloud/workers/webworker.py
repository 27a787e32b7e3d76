"""wado-webworker: keeps the stored series metadata documents in step with the index.

Requests never wait for it: a request composes the current document itself (archive/metadata.py).
This worker writes the composed document (and puts it in the shared cache), so that a cold request
or another server reads one object instead of every entry. Like the user's design asks, it scans
the index for series whose version is newer than their last written document.

Each round writes every stale series; a series whose build fails is logged and left out of the
following rounds for a growing pause (so one broken series neither spins the loop nor starves the
others), then tried again. A series this worker built less than REBUILD_SPACING ago waits: while a
modality is still sending it, rewriting the whole document after every few instances would cost
time quadratic in its size.
"""

from __future__ import annotations

import logging
import threading
import time

from dicomcloud.archive.core import Archive
from dicomcloud.metrics import SERIES_METADATA_BUILDS
from dicomcloud.ports.index import SeriesKey

log = logging.getLogger(__name__)

BATCH = 100
MAX_BACKOFF = 300.0
REBUILD_SPACING = 2.0


class Webworker:
    def __init__(self, archive: Archive) -> None:
        self.archive = archive
        self.runtime = archive.runtime
        # Series -> (failures so far, monotonic time before which it is not retried).
        self._failed: dict[SeriesKey, tuple[int, float]] = {}
        # Series -> monotonic time of this worker's last build of it, for REBUILD_SPACING.
        self._built_at: dict[SeriesKey, float] = {}

    def run(self, stop: threading.Event) -> None:
        interval = self.runtime.settings.workers.webworker_interval
        while not stop.is_set():
            try:
                busy = self.run_once(stop)
            except Exception:
                # The index itself failed; a service loop outlives that and tries again.
                log.exception("listing stale series failed")
                busy = False
            if not busy:
                stop.wait(interval)

    def run_once(self, stop: threading.Event | None = None) -> bool:
        """Build the stale series due now; True if at least one was built (there may be more)."""
        interval = self.runtime.settings.workers.webworker_interval
        now = time.monotonic()
        self._built_at = {key: at for key, at in self._built_at.items() if now - at < REBUILD_SPACING}
        built = 0
        limit = BATCH + len(self._failed)
        stale_list = self.runtime.index.stale_series(limit)
        if len(stale_list) < limit:
            # A complete list: series no longer stale (deleted, or built elsewhere) need no memory.
            current = {stale.key for stale in stale_list}
            self._failed = {key: value for key, value in self._failed.items() if key in current}
        for stale in stale_list:
            if stop is not None and stop.is_set():
                break
            failures, retry_at = self._failed.get(stale.key, (0, 0.0))
            if retry_at > now or stale.key in self._built_at:
                continue
            try:
                self.archive.metadata.consolidate(stale.key)
            except Exception:
                # One series' failure (unreadable file, storage error) must not stop the others.
                failures += 1
                SERIES_METADATA_BUILDS.labels("failed").inc()
                pause = min(MAX_BACKOFF, interval * 2**failures)
                self._failed[stale.key] = (failures, time.monotonic() + pause)
                log.exception("building the metadata of %s failed (%d); retry in %.1fs", stale.key, failures, pause)
                continue
            self._failed.pop(stale.key, None)
            self._built_at[stale.key] = time.monotonic()
            SERIES_METADATA_BUILDS.labels("built").inc()
            built += 1
        return built > 0
