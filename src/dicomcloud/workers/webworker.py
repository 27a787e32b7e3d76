"""wado-webworker: keeps the stored series metadata documents in step with the index.

Requests never wait for it: a request composes the current document itself (archive/metadata.py).
This worker writes the composed document (and puts it in the shared cache), so that a cold request
or another server reads one object instead of every entry. Like the user's design asks, it scans
the index for series whose version is newer than their last written document.

Each round writes every stale series; a series whose build fails is logged and left out of the
following rounds for a growing pause (so one broken series neither spins the loop nor starves the
others), then tried again. A series this worker built less than REBUILD_SPACING ago waits, and a large
one longer: REBUILD_COST_FACTOR times the processor time its last build took. While modalities are still
sending, rewriting whole documents after every few instances would cost time quadratic in their size and
take the processor from the stores (a third of the process's time during 4 parallel associations, measured
with py-spy); this way rewriting a growing series costs at most 1/REBUILD_COST_FACTOR of a core.
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
REBUILD_COST_FACTOR = 50


class Webworker:
    def __init__(self, archive: Archive) -> None:
        self.archive = archive
        self.runtime = archive.runtime
        # Series -> (failures so far, monotonic time before which it is not retried).
        self._failed: dict[SeriesKey, tuple[int, float]] = {}
        # Series -> monotonic time before which this worker does not build it again.
        self._rebuild_after: dict[SeriesKey, float] = {}

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
        self._rebuild_after = {key: at for key, at in self._rebuild_after.items() if at > now}
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
            if retry_at > now or stale.key in self._rebuild_after:
                continue
            started = time.thread_time()
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
            spacing = max(REBUILD_SPACING, REBUILD_COST_FACTOR * (time.thread_time() - started))
            self._rebuild_after[stale.key] = time.monotonic() + spacing
            SERIES_METADATA_BUILDS.labels("built").inc()
            built += 1
        return built > 0
