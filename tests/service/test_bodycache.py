"""The API's kept response bodies (:class:`api.bodycache.BodyCache`): bounded, LRU, one build per key."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from api.bodycache import BodyCache


def test_bodies_are_kept_by_key_within_the_byte_bound_least_recently_used_out() -> None:
    cache = BodyCache(max_bytes=10)
    builds: list[str] = []

    def make(text: str) -> Callable[[], bytes]:
        def build() -> bytes:
            builds.append(text)
            return text.encode()

        return build

    assert cache.body("a", make("aaaa")) == b"aaaa"
    assert cache.body("a", make("zzzz")) == b"aaaa"  # kept: not built again
    cache.body("b", make("bbbb"))
    cache.body("a", make("zzzz"))  # "a" used last: "b" goes first
    cache.body("c", make("cccc"))  # 12 bytes > 10
    assert len(cache) == 2 and cache.body("a", make("zzzz")) == b"aaaa"
    assert cache.body("b", make("BBBB")) == b"BBBB"  # was dropped, built again
    assert cache.body("big", make("x" * 11)) == b"x" * 11 and len(cache) <= 2  # over the bound: served, not kept
    assert builds == ["aaaa", "bbbb", "cccc", "BBBB", "x" * 11]


def test_concurrent_misses_of_one_key_build_it_once() -> None:
    cache = BodyCache()
    calls = 0

    def slow() -> bytes:
        nonlocal calls
        calls += 1
        time.sleep(0.2)
        return b"front"

    got: list[bytes] = []
    threads = [threading.Thread(target=lambda: got.append(cache.body("k", slow))) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == [b"front"] * 6 and calls == 1
