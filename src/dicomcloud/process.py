"""How a service process runs its threads and its memory: set once, before its threads start.

Each setting answers a measurement on the bench; see the constants.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping

# The GIL's switch interval (CPython's default is 5 ms). A thread woken by a socket or a queue
# (pynetdicom's reactor and association threads, the event loop handing STOW chunks to a worker)
# waits up to this long for the GIL while another thread computes; a C-STORE makes many such
# hand-offs, so at 5 ms one busy thread (indexing, metadata documents) cut C-STORE throughput 3x
# and three busy threads 10x.
SWITCH_INTERVAL = 0.0005
# glibc's malloc gives each thread that allocates an arena of its own (up to 8 per core) and keeps
# what is freed in it: with the HTTP thread pool, the SCP's and the workers' threads, RSS grew with
# the thread count rather than the live data. Two arenas, as threaded Python servers commonly run;
# a MALLOC_ARENA_MAX in the environment wins.
MALLOC_ARENAS = 2
M_ARENA_MAX = -8  # glibc malloc.h
# Even so, after a bulk load or large responses half of the main arena was free but resident (49 of
# 102 MB): glibc returns only the top of its heap by itself. malloc_trim gives back every free page.
TRIM_INTERVAL = 10.0
# pymalloc keeps a 1 MiB arena while any object in it lives. The background work builds large transient
# graphs (a 3,000-instance series document is 80-120 MB of dicts) among objects that stay (caches, paths,
# bookkeeping): after the bench's import the webworker held 108 arenas with 39 MB in use, and the trim above
# cannot reach them. Its processes take their objects from glibc's malloc, whose free pages the trim gives
# back (the webworker after that import: 183 MB resident, 131 MB this way, for 13% more processor time).
# Serving processes keep pymalloc: a request's many small objects are cheaper from it.
BACKGROUND_ENVIRONMENT = {"PYTHONMALLOC": "malloc"}
# `up`'s background worker runs what no acknowledgement and no request waits for (series documents, the
# warehouse, transcoding: a store is indexed and announced before it is answered), so it yields the processor
# to the serving processes and to an import: on 2 cores its document builds took a share of both during the
# bench's import and its viewer load right after an ingest. It catches up when they are idle.
BACKGROUND_NICENESS = 10


def cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def tune_service_process() -> None:
    sys.setswitchinterval(SWITCH_INTERVAL)
    limit_malloc_arenas()
    if _libc("malloc_trim") is not None:
        threading.Thread(target=_release_free_memory_forever, name="malloc-trim", daemon=True).start()


def freeze_startup_heap() -> None:
    """Called once a service process has built what it serves with (its modules, the archive's adapters, the
    web app): those objects live as long as the process, so they leave the cyclic garbage collector's view
    (gc.freeze). A full collection stops every thread of the process while it walks what it views; on the
    viewer's frame load it took 30-130 ms of processor time with the 65,000-120,000 startup objects in view, and
    1-12 ms without them, which is what requests and caches made since."""
    gc.collect()
    gc.freeze()


def limit_malloc_arenas() -> bool:
    """Cap glibc's malloc arenas for this process; False where that is not glibc or already set."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    mallopt = _libc("mallopt")
    return mallopt is not None and bool(mallopt(M_ARENA_MAX, MALLOC_ARENAS))


def release_free_memory() -> None:
    """Hand the pages malloc holds free back to the system (glibc only)."""
    trim = _libc("malloc_trim")
    if trim is not None:
        trim(0)


@contextlib.contextmanager
def environment_of_children(extra: Mapping[str, str]) -> Iterator[None]:
    """`extra` in os.environ while a child process is started (multiprocessing's spawn passes the parent's
    environment on, and an interpreter reads PYTHONMALLOC before any of our code runs)."""
    saved = {name: os.environ.get(name) for name in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _release_free_memory_forever() -> None:
    while True:
        time.sleep(TRIM_INTERVAL)
        release_free_memory()


def _libc(name: str) -> Callable[..., int] | None:
    function: Callable[..., int] | None = getattr(ctypes.CDLL(None), name, None)
    return function
