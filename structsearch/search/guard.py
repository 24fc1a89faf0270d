"""Stopping a running trial from outside its training loop: a deadline, or a stop request.

Optuna's trial heartbeat and procrastinate's worker heartbeat run in their own threads, so a trial
whose training loop runs far too long still looks alive to both. A :class:`TrialGuard` is the
trial's own clock: the objective starts it when the trial begins and checks it between the trial's
phases, and the KD proxy checks it at every optimizer step. :meth:`TrialGuard.check` raises once
the deadline has passed or a stop was asked for (a cancelled search, a job abort); the trial then
fails like any failed trial (Optuna marks it FAIL and stops its heartbeat).

The check is cooperative: a call that never returns (a deadlocked kernel) is not interrupted; such
a trial holds its worker until an operator kills the process, and is then retried through Optuna's
stale-heartbeat path like any killed worker's trial.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field


class TrialInterrupted(Exception):
    """A trial stopped by its guard. Not a project error: the search itself goes on (or was cancelled).

    The message is the project's own (no exception text of anyone else), so it may be stored.
    """


class DeadlinePassed(TrialInterrupted):
    """The trial ran past its deadline (a hung or far too slow candidate)."""


class StopRequested(TrialInterrupted):
    """Someone asked the trial to stop (its search was cancelled, its job aborted)."""


@dataclass
class TrialGuard:
    """Deadline and stop request of one trial (or of one trial at a time, restarted per trial)."""

    #: Seconds a trial may run from :meth:`start`; ``None``: no deadline.
    deadline_s: float | None = None
    #: Why the trial should stop now (``None``: it should not); may query a database.
    stop_reason: Callable[[], str | None] = lambda: None
    #: :attr:`stop_reason` is asked at most this often (the check runs at every training step).
    ask_every_s: float = 2.0
    clock: Callable[[], float] = time.monotonic
    #: The trial being guarded (set by :meth:`start`), so the caller knows whether a trial ran.
    trial_number: int | None = field(default=None, init=False)
    _started: float | None = field(default=None, init=False, repr=False)
    _asked: float = field(default=float("-inf"), init=False, repr=False)

    def start(self, trial_number: int) -> None:
        """The trial begins now: its deadline counts from here."""
        self.trial_number, self._started, self._asked = trial_number, self.clock(), float("-inf")

    def remaining(self) -> float | None:
        """Seconds left before the deadline (``None``: no deadline or not started)."""
        if self.deadline_s is None or self._started is None:
            return None
        return self.deadline_s - (self.clock() - self._started)

    def check(self) -> None:
        """Raise :class:`DeadlinePassed` or :class:`StopRequested` when the trial must stop."""
        left = self.remaining()
        if left is not None and left < 0:
            raise DeadlinePassed(f"passed its deadline of {self.deadline_s:.0f} s")
        now = self.clock()
        if now - self._asked >= self.ask_every_s:
            self._asked = now
            reason = self.stop_reason()
            if reason:
                raise StopRequested(reason)
