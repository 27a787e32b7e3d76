"""Retrying a dependency that is down: exponential backoff, and one warning per outage.

A service loop that meets a transient failure (index or bus unreachable) waits and tries again. A
restart of PostgreSQL or a broker's failover fails every attempt for seconds; logging each attempt
would bury the one line that matters, so an `Outage` warns when it starts, stays quiet while it lasts
and says once how long it took when the dependency answers again.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

FIRST_DELAY = 0.2
MAX_DELAY = 10.0


@dataclass
class Outage:
    """The state of one dependency as a loop sees it: up, or down since some moment."""

    what: str
    log: logging.Logger
    first_delay: float = FIRST_DELAY
    max_delay: float = MAX_DELAY
    attempts: int = field(default=0, init=False)
    _since: float = field(default=0.0, init=False)

    @property
    def ongoing(self) -> bool:
        return self.attempts > 0

    def failed(self, error: BaseException, stop: threading.Event) -> None:
        """Record a failed attempt and wait the backoff (returns early when `stop` is set)."""
        if not self.ongoing:
            self._since = time.monotonic()
            self.log.warning("%s failed (%s); retrying with backoff until it succeeds", self.what, _describe(error))
            self.log.debug("%s failure", self.what, exc_info=error)
        self.attempts += 1
        stop.wait(self.delay())

    def delay(self) -> float:
        """The pause after the current number of failed attempts: doubling, capped."""
        return float(min(self.first_delay * 2 ** max(self.attempts - 1, 0), self.max_delay))

    def recovered(self) -> None:
        """Call after every success: ends an outage (logged once) and resets the backoff."""
        if self.ongoing:
            self.log.warning(
                "%s works again after %d failed attempts in %.1fs",
                self.what,
                self.attempts,
                time.monotonic() - self._since,
            )
            self.attempts = 0


def _describe(error: BaseException) -> str:
    message = getattr(error, "message", None) or str(error)
    return f"{type(error).__name__}: {message}"[:500]
