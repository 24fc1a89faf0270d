"""Seeded runs that leave the caller's random streams alone and never interleave across threads."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch

#: torch's global generator is one per process: two seeded runs in threads of one process would
#: interleave their draws (dropout, a new head's or an adapter's initial weights) and neither would
#: be reproducible. Holding this lock for the whole run keeps "same seed, same result" true.
_GLOBAL_RNG = threading.RLock()


@contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Run the block with torch's global generator seeded to ``seed`` and restored afterwards.

    The state is forked (``torch.random.fork_rng``, CUDA's too when ``device`` is a GPU), so the
    caller's streams continue as if the block had not run; the process-wide lock serialises seeded
    blocks of different threads (re-entrant: a seeded run may call another).
    """
    with _GLOBAL_RNG, torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield
