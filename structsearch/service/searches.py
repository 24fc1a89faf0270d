"""Submitting, describing and cancelling searches: what the REST API's search routes do.

Submission order, so that a rejected spec leaves nothing behind:

1. :func:`~structsearch.service.admission.admit_spec` (structure, paths inside data roots,
   allowed kwargs, work ceilings, model size on the meta device) and
   :func:`~structsearch.search.context.plan_search` (unknown model, budget below the smallest
   student), the latter in a memory- and time-limited child process
   (:mod:`~structsearch.service.planning`). Both only read; any error is the client's and stores
   nothing.
   Then the key's quotas (:mod:`~structsearch.service.quotas`; 429 over them).
2. Claim a unique study name: the spec's own, or with ``-<6 hex of the id>`` appended when a
   search or an Optuna study (e.g. from the CLI) already uses it. The response says so.
3. Insert the ``ss_searches`` row (``queued``), create the Optuna study (attributes, warm start
   from earlier searches of the same key with the same teacher/data/proxy: never from another
   owner's), and queue one job per trial. If either of the last two fails (database trouble), the
   row is marked failed with a fixed reason (the log has the error).
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict

from structsearch.errors import CancelRefused, NameTaken, SubmitFailed
from structsearch.search.spec import StudySpec
from structsearch.service.admission import WorkLimits, admit_spec
from structsearch.service.database import Database
from structsearch.service.planning import PlanningChild
from structsearch.service.public_errors import STORAGE_ERROR, log_error, public_error
from structsearch.service.queue import JobQueue
from structsearch.service.quotas import check_quota
from structsearch.service.readmodel import TrialSync
from structsearch.service.repository import SearchRepository
from structsearch.service.settings import ServiceSettings
from structsearch.service.studies import StudyReader
from structsearch.service.tables import ACTIVE_STATUSES, Search, SearchStatus

NAME_MAX = 100

log = logging.getLogger("structsearch.api")


#: :class:`TrialCounts`' fields and the ``ss_searches`` column each is read from (the read model
#: keeps them on the search's row).
COUNT_COLUMNS = {
    "requested": "trials_requested",
    "complete": "n_own_complete",
    "pruned": "n_pruned",
    "running": "n_running",
    "waiting": "n_waiting",
    "failed": "n_failed",
    "trained": "n_trained",
    "over_budget": "n_over_budget",
    "copied": "n_copied",
}


class TrialCounts(BaseModel):
    """Trials of a search's own (warm-start copies are counted apart, in ``copied``); the API's
    ``TrialCountsPublic`` is this model."""

    model_config = ConfigDict(frozen=True)

    requested: int
    complete: int
    pruned: int
    running: int
    waiting: int
    failed: int
    trained: int
    over_budget: int
    copied: int


def submit_search(
    data: Any,
    settings: ServiceSettings,
    db: Database,
    reader: StudyReader,
    queue: JobQueue,
    api_key_id: int | None = None,
    quota_exempt: bool = False,
) -> Search:
    """Validate, store and queue a search (see the module docstring); blocking, seconds.

    ``quota_exempt``: the key's quotas (:mod:`~structsearch.service.quotas`) do not apply (admin keys).
    """
    spec = admit_spec(
        data, settings.data_roots, settings.max_trials, settings.max_synthesis_work, WorkLimits.from_settings(settings)
    )
    quota_key = None if quota_exempt else api_key_id
    with db.session() as s:  # early, so an over-quota request costs no planning; again at insert
        check_quota(s, quota_key, spec, settings)
    with PlanningChild(spec, settings.database_url, settings.planning_memory_mb, settings.planning_timeout_s) as child:
        child.planned()
        search_id = uuid.uuid4()
        row = _claim_name(db, reader, search_id, spec, api_key_id, settings, quota_key)
        try:
            with db.session() as s:  # warm start only from the submitting key's own searches
                own = SearchRepository(s).names_owned_by(api_key_id)
            child.open_study(row.name, sorted(own))
            record_study(db, reader, row)
            queue.defer_trials(str(search_id), spec.trials)
        except Exception as e:
            log_error(log, f"search {search_id} could not be queued", e, settings.database_url)
            reason = f"could not queue the search: {public_error(e, STORAGE_ERROR)}"
            with db.session() as s:
                SearchRepository(s).transition(search_id, SearchStatus.failed, ACTIVE_STATUSES, error=reason)
            raise SubmitFailed(reason) from e
    return row


def _claim_name(
    db: Database,
    reader: StudyReader,
    search_id: uuid.UUID,
    spec: StudySpec,
    api_key_id: int | None,
    settings: ServiceSettings,
    quota_key: int | None,
) -> Search:
    candidates = [spec.name, f"{spec.name[: NAME_MAX - 7]}-{search_id.hex[:6]}"]
    for name in candidates:
        if _optuna_study_exists(reader, name):
            continue
        row = Search(
            id=search_id,
            name=name,
            requested_name=spec.name,
            spec=spec.with_overrides(name=name).model_dump(mode="json"),
            status=SearchStatus.queued.value,
            trials_requested=spec.trials,
            api_key_id=api_key_id,
        )
        try:
            with db.session() as s:  # the quota check and the insert in one transaction, under the key's lock
                check_quota(s, quota_key, spec, settings)
                SearchRepository(s).add(row)
            return row
        except NameTaken:
            continue
    raise SubmitFailed(f"could not find a free study name for '{spec.name}'")


def _optuna_study_exists(reader: StudyReader, name: str) -> bool:
    try:
        reader.storage.get_study_id_from_name(name)
    except KeyError:
        return False
    return True


def cancel_search(db: Database, queue: JobQueue, search_id: uuid.UUID) -> Search | None:
    """Cancel a search: no new trials start, running ones stop at their next step. None when it does not exist."""
    with db.session() as s:
        repo = SearchRepository(s)
        row = repo.get(search_id)
        if row is None:
            return None
        if not repo.transition(search_id, SearchStatus.cancelled, ACTIVE_STATUSES, error="cancelled by request"):
            s.refresh(row)
            raise CancelRefused(
                f"search {search_id} is already {row.status}; only queued or running searches can be cancelled"
            )
    queue.cancel_queued(str(search_id))
    with db.session() as s:
        return SearchRepository(s).get(search_id)


def record_study(db: Database, reader: StudyReader, row: Search) -> None:
    """Put a new study's trials (enqueued baselines, warm-start copies) in the read model."""
    study_id = reader.study_id(row.name)
    if study_id is not None:
        sync = TrialSync(db, reader.storage, row.id, study_id)
        sync.safely(sync.catch_up)
