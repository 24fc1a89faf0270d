"""Response bodies of a search's reads, kept in each API process by the search's version.

A search's front, best candidate, trial pages and summary change only when one of its trials or
its status does, and the ``ss_searches`` row every such request loads anyway (to check who may
read it) says when: :func:`structsearch.service.readqueries.etag` (trial count, last trial
change, last status change), the same value the ETag carries. Pollers and dashboards ask the
same questions between two trial completions, seconds to minutes apart; answering each from SQL
rows again cost 1-3 ms of CPU per request, which at 8 requests in flight on 2 cores was most of
the p99. So a body is built once per (route, search, parameters, version) and then served from
memory until the version moves, in every process on its own (nothing to invalidate: a new
version is a new key).

Only bodies a caller was already allowed to read are looked up (the route's dependency checked
the key first), and a body never depends on who asks. Bounded by bytes, least recently used out.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable

from structsearch.service.singleflight import SingleFlight

#: Default bound of one process's cache: a few thousand fronts or a few hundred 100-trial pages.
DEFAULT_MAX_BYTES = 32 << 20


class BodyCache:
    """Bytes by key, at most ``max_bytes`` of them; thread-safe (sync routes run in a thread pool)."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self._bodies: OrderedDict[Hashable, bytes] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()
        self._building = SingleFlight()

    def body(self, key: Hashable, make: Callable[[], bytes]) -> bytes:
        """The body kept under ``key``, else ``make()`` (kept unless it alone is over the bound).

        Requests missing the same key at once share one ``make()`` (the others wait for it): a
        fresh process's first burst of identical requests builds each body once.
        """
        with self._lock:
            found = self._bodies.get(key)
            if found is not None:
                self._bodies.move_to_end(key)
                return found
        return self._building.run(key, lambda: self._keep(key, make()))

    def _keep(self, key: Hashable, made: bytes) -> bytes:
        if len(made) <= self.max_bytes:
            with self._lock:
                old = self._bodies.pop(key, None)
                self._size += len(made) - (len(old) if old is not None else 0)
                self._bodies[key] = made
                while self._size > self.max_bytes:
                    _, dropped = self._bodies.popitem(last=False)
                    self._size -= len(dropped)
        return made

    def __len__(self) -> int:
        return len(self._bodies)
