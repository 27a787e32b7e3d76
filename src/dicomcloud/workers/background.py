"""An archive's background work: the bus workers (consumer, warehouse loader, transcoder) and the webworker,
each a run function taking a stop Event, and the threads that run them in one process.

`dicomcloud up` runs them beside its listeners when it is one process, and in a process of their own when it
is several (service_workers.py), so no serving process shares its interpreter lock or its memory with them;
the stack runs each as a service of its own (cli.py)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dicomcloud.archive.core import Archive
    from dicomcloud.workers.loop import Batching, Handler

log = logging.getLogger(__name__)

JOIN_TIMEOUT = 30.0
# The services that are background work (`background_work`), each a command of its own in the stack.
SERVICES = ("consumer", "loader", "transcoder", "webworker")
Run = Callable[[threading.Event], None]


def bus_loop(archive: Archive, handler: Handler, batching: Batching | None = None) -> Run:
    """The run function of `handler` bound to the one bus loop (workers/loop.py)."""
    from dicomcloud.workers.loop import Batching, BusLoop

    workers = archive.settings.workers
    loop = BusLoop(
        archive.runtime.bus,
        handler,
        batching or Batching(workers.consumer_batch),
        workers.consumer_poll_timeout,
    )
    return loop.run


def bus_workers(archive: Archive) -> dict[str, Run]:
    """Every bus worker by service name: the consumer, the warehouse loader and the transcoder."""
    from dicomcloud.workers import loader
    from dicomcloud.workers.consumer import StorageEventConsumer
    from dicomcloud.workers.transcoder import Transcoder

    return {
        "consumer": bus_loop(archive, StorageEventConsumer(archive)),
        "loader": bus_loop(archive, loader.Loader(archive), loader.batching(archive.settings)),
        "transcoder": bus_loop(archive, Transcoder(archive)),
    }


def background_work(archive: Archive) -> dict[str, Run]:
    """The bus workers and the webworker, by name."""
    from dicomcloud.workers.webworker import Webworker

    return {**bus_workers(archive), "webworker": Webworker(archive).run}


def start_thread(name: str, run: Run, stop: threading.Event) -> threading.Thread:
    thread = threading.Thread(target=run, args=(stop,), name=name, daemon=True)
    thread.start()
    return thread


def start_background_work(archive: Archive, stop: threading.Event) -> list[threading.Thread]:
    """Each of `background_work` in a thread of its own, until `stop` is set."""
    return [start_thread(name, run, stop) for name, run in background_work(archive).items()]


def join(threads: Sequence[threading.Thread]) -> None:
    """Wait for threads told to stop; one that does not stop in time is named in the log and left."""
    for thread in threads:
        thread.join(JOIN_TIMEOUT)
        if thread.is_alive():
            log.warning("%s did not stop within %.0fs", thread.name, JOIN_TIMEOUT)
