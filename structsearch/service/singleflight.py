"""One computation for concurrent identical requests in a process (a "single flight").

A cold API process that gets eight requests for the same missing result at once would compute
it eight times, each slower for sharing the CPU with the others; here the first caller computes
and the others wait for its answer (or its exception).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from typing import Any


class SingleFlight:
    """Calls of :meth:`run` with equal keys while one is in flight share its result. Thread-safe
    (FastAPI runs plain ``def`` routes on a thread pool)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._flights: dict[Hashable, Future[Any]] = {}

    def run(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        with self._lock:
            flight = self._flights.get(key)
            leader = flight is None
            if flight is None:
                flight = self._flights[key] = Future()
        if not leader:
            return flight.result()
        try:
            result = compute()
        except BaseException as e:
            flight.set_exception(e)
            raise
        else:
            flight.set_result(result)
            return result
        finally:
            with self._lock:
                del self._flights[key]
