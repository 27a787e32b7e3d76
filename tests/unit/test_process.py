"""Service-process memory settings (glibc, the garbage collector): each is checked in a child, since it is
process-wide."""

from __future__ import annotations

import os
import subprocess
import sys

from dicomcloud.process import BACKGROUND_ENVIRONMENT, environment_of_children

RELEASE = """
import os
from dicomcloud.process import release_free_memory

def rss_mb():
    for line in open(f"/proc/{os.getpid()}/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) // 1024

# 200 MB of malloc'd objects, the middle half freed: the hole sits below live data, so glibc cannot
# give it back by shrinking its heap's top.
objects = [bytes(2000) + bytes([n % 256]) for n in range(100_000)]
del objects[25_000:75_000]
before = rss_mb()
release_free_memory()
print(before - rss_mb())
"""


def child(code: str, **environment: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"} | environment
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout


def test_service_processes_cap_glibc_malloc_arenas_unless_the_operator_did() -> None:
    check = "from dicomcloud.process import limit_malloc_arenas; print(limit_malloc_arenas())"
    assert child(check).strip() == "True"
    assert child(check, MALLOC_ARENA_MAX="4").strip() == "False"


def test_free_memory_held_by_malloc_goes_back_to_the_system() -> None:
    released_mb = int(child(RELEASE))
    assert released_mb > 50, f"only {released_mb} MB released of ~100 MB freed"


FREEZE = """
import gc
from dicomcloud.archive.core import Archive
from dicomcloud.process import freeze_startup_heap
from dicomcloud.web.app import create_app

before = len(gc.get_objects())
freeze_startup_heap()
print(before, len(gc.get_objects()), gc.get_freeze_count())
"""


def test_what_a_service_built_before_serving_is_out_of_the_collectors_view() -> None:
    before, viewed, frozen = map(int, child(FREEZE).split())
    assert before > 20_000, "the web app and the archive's modules make tens of thousands of objects"
    assert viewed < 100
    assert frozen >= before * 0.9


SCATTERED = """
import os
from dicomcloud.process import release_free_memory

def rss_mb():
    for line in open(f"/proc/{os.getpid()}/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) // 1024

# A large transient build of small objects (a series document's dicts), one in 200 kept by a cache.
objects = [{"number": n, "text": str(n)} for n in range(500_000)]
kept = objects[::200]
del objects
before = rss_mb()
release_free_memory()
print(before - rss_mb())
"""


def test_the_background_processes_give_back_what_a_large_build_freed_among_survivors() -> None:
    """pymalloc keeps an arena while one object in it lives; the background processes' allocator does not."""
    assert int(child(SCATTERED, PYTHONMALLOC="pymalloc")) < 20
    assert int(child(SCATTERED, **BACKGROUND_ENVIRONMENT)) > 80


def test_a_child_is_started_with_the_environment_asked_and_the_parent_keeps_its_own() -> None:
    os.environ.pop("DICOMCLOUD_TEST_ONLY", None)
    show = [sys.executable, "-c", "import os; print(os.environ.get('DICOMCLOUD_TEST_ONLY'))"]
    with environment_of_children({"DICOMCLOUD_TEST_ONLY": "child"}):
        shown = subprocess.run(show, capture_output=True, text=True, check=True).stdout
    assert shown.strip() == "child"
    assert "DICOMCLOUD_TEST_ONLY" not in os.environ
