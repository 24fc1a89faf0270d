"""What a worker does when a trial goes wrong: retry it later, and give up only after N in a row.

A trial that raises anything but a project error (CUDA out of memory on one candidate, a full
disk, the database restarting, a trial stopped by its deadline) fails *that trial*: Optuna marks
it FAIL, which does not count toward the search's ``trials`` (only complete, pruned and running own
trials do), and its job raises :class:`TrialFailed`, which :class:`TrialRetry` puts back in the
queue with exponential backoff; the retried job runs a new trial. The search fails only once
``max_consecutive_failures`` of its trials failed in a row (:func:`failures_in_a_row`), with a
one-line message naming the failure's type -- never the exception's text, which may carry
paths, hosts or passwords; the details go to the worker's log.

A failure before any trial started (the database unreachable while the job sets up) has no trial
to count; the job's own attempts count instead.

Each trial also gets a deadline (:func:`trial_deadline`), enforced at every training step by a
:class:`~structsearch.search.guard.TrialGuard`: Optuna's heartbeat keeps beating for a hung loop,
so only the trial itself can notice it ran too long.
"""

from __future__ import annotations

from collections.abc import Iterable

from optuna.trial import FrozenTrial, TrialState
from procrastinate import BaseRetryStrategy, RetryDecision
from procrastinate.jobs import Job

from structsearch.search.record import FAILURE_ATTR, TrialAttrs

#: Seconds per proxy step assumed before any trial of a search has been timed: a small CNN on a
#: CPU; GPUs are 10-100x faster, so the first deadlines are generous there.
ASSUMED_STEP_S = 1.0
#: No derived deadline is shorter than this (startup, measurement and evaluation are not steps).
MIN_DEADLINE_S = 600.0
#: A trial may take this many times the proxy's expected training time.
DEADLINE_FACTOR = 10.0


class HandedBack(Exception):
    """The worker is stopping before this job started a trial, or waited long enough for other
    workers' trials; the job goes back to the queue (not a failure)."""


class TrialFailed(Exception):
    """A trial (or the job around it) failed for a reason that may pass; the job is retried later.

    The message is the project's own: the failure's type and how many in a row.
    """


class TrialRetry(BaseRetryStrategy):
    """The trial job's retry strategy: handed-back jobs at once, failed ones with backoff.

    ``wait_s * 2**attempts`` seconds (attempts: the job's earlier runs), at most ``max_wait_s``;
    none after ``max_attempts`` runs. Any other exception ends the job (the job has already marked
    its search failed when that was the right thing to do).
    """

    def __init__(self, wait_s: float = 5.0, max_wait_s: float = 300.0, max_attempts: int = 20) -> None:
        self.wait_s, self.max_wait_s, self.max_attempts = wait_s, max_wait_s, max_attempts

    def backoff(self, attempts: int) -> float:
        """Seconds before the retry of a job that has run ``attempts + 1`` times."""
        return min(self.max_wait_s, self.wait_s * 2.0 ** min(attempts, 30))

    def get_retry_decision(self, *, exception: BaseException, job: Job) -> RetryDecision | None:
        if isinstance(exception, HandedBack):
            return RetryDecision(retry_in={"seconds": 0})
        if isinstance(exception, TrialFailed) and job.attempts + 1 < self.max_attempts:
            return RetryDecision(retry_in={"milliseconds": round(self.backoff(job.attempts) * 1000)})
        return None


def failures_in_a_row(trials: Iterable[FrozenTrial]) -> tuple[int, str | None]:
    """``(count, last failure)``: how many of the most recently finished trials failed in a row.

    Trials are taken in the order they finished; a complete or pruned trial ends the run. A failed
    trial without :data:`~structsearch.search.record.FAILURE_ATTR` did not raise: its worker died
    and Optuna failed it for its stale heartbeat (and queued its parameters again), so it neither
    counts nor ends the run. Warm-start copies are not the search's own and are skipped.
    """
    finished = sorted(
        (t for t in trials if t.state.is_finished() and t.datetime_complete is not None),
        key=lambda t: t.datetime_complete,  # type: ignore[arg-type,return-value]
        reverse=True,
    )
    count, last = 0, None
    for t in finished:
        if t.user_attrs.get("copied_from") is not None:
            continue
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
            break
        failure = t.user_attrs.get(FAILURE_ATTR)
        if t.state == TrialState.FAIL and failure is not None:
            count += 1
            last = last or str(failure)
    return count, last


def trial_deadline(configured: float | None, steps: int, trials: Iterable[FrozenTrial]) -> float:
    """Seconds a trial of a search with ``steps`` proxy steps may run (see the module docstring).

    ``configured`` (the ``trial_deadline_s`` setting) wins; otherwise ``max(MIN_DEADLINE_S,
    DEADLINE_FACTOR x steps x step time)``, the step time being the slowest measured on the search's
    trained trials (their proxy seconds include evaluation), else :data:`ASSUMED_STEP_S`.
    """
    if configured is not None:
        return configured
    per_step = [
        rec.proxy_seconds / rec.proxy_steps
        for t in trials
        if t.state == TrialState.COMPLETE
        and (rec := TrialAttrs.read(t)).proxy_seconds is not None
        and rec.proxy_steps
        and rec.duplicate_of is None
    ]
    step_s = max(per_step, default=ASSUMED_STEP_S)
    return max(MIN_DEADLINE_S, DEADLINE_FACTOR * steps * step_s)


def failure_message(count: int, failure: str) -> str:
    """The search's stored error once it gives up (one line, the project's own words)."""
    return f"trial failed {count} time{'' if count == 1 else 's'} in a row: {failure}"
