"""SingleFlight: concurrent calls with one key share one computation; errors reach every waiter."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from structsearch.service.singleflight import SingleFlight


def test_concurrent_calls_of_one_key_compute_once_and_later_calls_again() -> None:
    flight, calls, started = SingleFlight(), [], threading.Barrier(8)

    def compute() -> int:
        calls.append(1)
        time.sleep(0.3)  # the other callers arrive while this one computes
        return 42

    def call(_: int) -> int:
        started.wait()
        return flight.run("front", compute)

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(call, range(8))) == [42] * 8
    assert len(calls) == 1
    assert flight.run("front", compute) == 42 and len(calls) == 2  # done flights are not cached


def test_an_error_reaches_every_waiter() -> None:
    flight, started = SingleFlight(), threading.Barrier(4)

    def compute() -> int:
        time.sleep(0.3)
        raise ValueError("no front")

    def call(_: int) -> int:
        started.wait()
        return flight.run("front", compute)

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(call, i) for i in range(4)]
        for f in futures:
            with pytest.raises(ValueError, match="no front"):
                f.result()
