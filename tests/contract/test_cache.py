"""The cache port's promises: values come back until deleted, evicted or expired; never a wrong value."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import pytest

from dicomcloud.adapters.redis_cache import RedisCache
from dicomcloud.errors import ServiceUnavailable
from dicomcloud.ports.cache import Cache
from dicomcloud.stack.servers import start_redis


def test_get_returns_what_was_set(cache: Cache) -> None:
    cache.set("series:1.2.3", b"document")
    assert cache.get("series:1.2.3") == b"document"


def test_get_of_an_unknown_key_is_none(cache: Cache) -> None:
    assert cache.get("never-set") is None


def test_set_replaces_the_value(cache: Cache) -> None:
    cache.set("k", b"old")
    cache.set("k", b"new")
    assert cache.get("k") == b"new"


def test_delete_removes_every_key_given_and_ignores_unknown_ones(cache: Cache) -> None:
    cache.set("a", b"1")
    cache.set("b", b"2")
    cache.set("c", b"3")
    cache.delete("a", "b", "never-set")
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == (None, None, b"3")


def test_value_expires_after_its_ttl(cache: Cache) -> None:
    cache.set("short", b"x", ttl=0.05)
    cache.set("forever", b"y")
    time.sleep(0.3)
    assert cache.get("short") is None
    assert cache.get("forever") == b"y"


def test_setting_a_value_without_ttl_clears_the_previous_ttl(cache: Cache) -> None:
    cache.set("k", b"x", ttl=0.05)
    cache.set("k", b"y")
    time.sleep(0.3)
    assert cache.get("k") == b"y"


def test_concurrent_readers_and_writers_only_ever_see_values_that_were_set(cache: Cache) -> None:
    seen: list[bytes | None] = []

    def worker(n: int) -> None:
        for i in range(300):
            key = f"k{i % 7}"
            cache.set(key, key.encode() * (n + 1))
            seen.append(cache.get(key))
            cache.delete(f"k{(i + 3) % 7}")

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for value in seen:
        assert value is None or value.replace(value[:2], b"") == b""


def test_least_recently_used_values_are_evicted_first_once_the_bytes_are_exceeded(
    bounded_cache_factory: Callable[[int], Cache],
) -> None:
    cache = bounded_cache_factory(100)
    cache.set("a", b"a" * 40)
    cache.set("b", b"b" * 40)
    assert cache.get("a") is not None
    cache.set("c", b"c" * 40)
    assert cache.get("b") is None
    assert cache.get("a") == b"a" * 40
    assert cache.get("c") == b"c" * 40


def test_a_value_larger_than_the_cache_is_not_kept_and_evicts_nothing(
    bounded_cache_factory: Callable[[int], Cache],
) -> None:
    cache = bounded_cache_factory(100)
    cache.set("small", b"s" * 10)
    cache.set("huge", b"h" * 101)
    assert cache.get("huge") is None
    assert cache.get("small") == b"s" * 10


def test_redis_down_means_misses_and_no_errors_and_recovers_when_it_returns(
    tmp_path_factory: pytest.TempPathFactory, caplog: pytest.LogCaptureFixture
) -> None:
    server = start_redis(tmp_path_factory.mktemp("redis-down"))
    cache = RedisCache(server.url)
    try:
        cache.set("k", b"v")
        assert cache.get("k") == b"v"
        server.stop()
        with caplog.at_level(logging.WARNING, logger="dicomcloud.adapters.redis_cache"):
            for _ in range(3):
                assert cache.get("k") is None
                cache.set("k", b"w", ttl=10)
                cache.delete("k", "other")
        assert len(caplog.records) == 1
        server = start_redis(server.folder, port=server.port)
        cache.set("k", b"back")
        assert cache.get("k") == b"back"
    finally:
        cache.close()
        server.stop()


def test_ping_answers_while_the_cache_is_reachable(cache: Cache) -> None:
    cache.ping()


def test_ping_says_when_redis_is_down_and_answers_again_when_it_returns(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    server = start_redis(tmp_path_factory.mktemp("redis-ping"))
    cache = RedisCache(server.url)
    try:
        cache.ping()
        server.stop()
        with pytest.raises(ServiceUnavailable):
            cache.ping()
        server = start_redis(server.folder, port=server.port)
        cache.ping()
    finally:
        cache.close()
        server.stop()
