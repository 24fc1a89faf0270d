"""Per-key quotas: how much work one API key may have outstanding at once.

Two limits, both over the key's active (queued or running) searches, both 429 when a new search
would pass them:

* ``max_active_searches_per_key`` searches at once;
* ``max_trial_steps_per_key`` trial-steps: remaining trials x ``proxy.steps`` summed over those
  searches, where a search's remaining trials are those requested minus its own finished ones
  (complete or pruned; warm-start copies do not count, failed ones are run again). A search that
  is nearly done holds little of the quota, so its key can queue the next one. The finished
  trials are the read model's counts on the search row (``n_own_complete + n_pruned``: warm
  start copies only complete trials, so every pruned one is the search's own), not a count of
  Optuna's tables; a read-model write that failed leaves them low until the next job's
  catch-up, which holds more of the quota, never less.

Admin keys are exempt: the operator's own key must be able to run anything the service's
per-search caps allow. Anonymous submissions do not exist (submitting needs a key).

The check runs twice: before planning (so an over-quota request costs nothing), and again inside
the transaction that inserts the search, under a per-key advisory lock (PostgreSQL), so two
concurrent submissions of one key cannot both slip under the limit.
"""

from __future__ import annotations

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from structsearch.errors import TooMany
from structsearch.search.spec import StudySpec
from structsearch.service.settings import ServiceSettings
from structsearch.service.tables import ACTIVE_STATUSES, Search

#: Namespace of the advisory locks taken here (first half of the two-int lock key).
_LOCK_SPACE = 0x5351  # "SQ"


def trial_steps(spec: StudySpec) -> int:
    """The training a search asks for, in trial-steps."""
    return spec.trials * spec.proxy.steps


def check_quota(session: Session, api_key_id: int | None, spec: StudySpec, settings: ServiceSettings) -> None:
    """Raise :class:`TooMany` when ``spec`` would put the key over a quota; ``api_key_id`` None
    means exempt (an admin key). On PostgreSQL the key's advisory lock is taken first and held
    until the session's transaction ends, so insert the search in that same transaction."""
    if api_key_id is None:
        return
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:space, :key)"), {"space": _LOCK_SPACE, "key": api_key_id})
    active = [s.value for s in ACTIVE_STATUSES]
    rows = session.execute(
        select(Search.trials_requested, Search.n_own_complete + Search.n_pruned, Search.spec).where(
            Search.api_key_id == api_key_id, Search.status.in_(active)
        )
    ).all()
    limit = settings.max_active_searches_per_key
    if len(rows) + 1 > limit:
        raise TooMany(
            f"this key already has {len(rows)} active searches, the most it may have "
            f"(STRUCTSEARCH_MAX_ACTIVE_SEARCHES_PER_KEY={limit}); wait for one to end or cancel one"
        )
    queued = sum(
        max(0, trials - finished) * int((spec_json or {}).get("proxy", {}).get("steps", 0))
        for trials, finished, spec_json in rows
    )
    wanted, cap = trial_steps(spec), settings.max_trial_steps_per_key
    if queued + wanted > cap:
        raise TooMany(
            f"this search asks for {wanted:,} trial-steps (trials x proxy.steps) and the remaining trials of this "
            f"key's active searches hold {queued:,}; the limit per key is {cap:,} (STRUCTSEARCH_MAX_TRIAL_STEPS_PER_KEY)"
        )
