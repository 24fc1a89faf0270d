"""``GET /api/v1/searches/{id}/events``: a search's progress as server-sent events.

A UI or the CLI follows a search without polling the other routes: each trial row the read model
writes (a trial queued, started, completed, pruned or failed) is an ``event: trial`` whose data is
the trial as ``/trials`` lists it, and each status change an ``event: status``. The stream polls
``ss_trials`` by its change sequence (``ix_ss_trials_seq``) every ``events_poll_s`` seconds and is
bounded: it ends with ``event: end`` once the search is final (after the trials written up to
then), or after ``events_max_s``; a client reconnecting with ``Last-Event-ID`` (or ``?after=``)
resumes after the last change it saw. The owner's (or an admin's) only, like ``/trials``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query
from fastapi.responses import StreamingResponse
from pydantic_core import to_jsonable_python
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from api.deps import OwnedSearchDep, Services, ServicesDep
from api.routes.trials import trial_item
from api.schemas import ErrorPublic
from structsearch.service.tables import Search, SearchStatus, TrialRow

router = APIRouter(prefix="/searches/{search_id}", tags=["trials"])

#: Trial changes sent per poll at most (the rest follow at once, on the next poll).
BATCH = 500


def _event(kind: str, data: dict[str, Any], event_id: int | None = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {kind}\ndata: {json.dumps(data, default=str)}\n\n"


def _changes(services: Services, search: Search, after: int) -> tuple[list[TrialRow], Search | None]:
    """Trial rows changed after ``after`` (by change sequence), and the search row read after them."""
    with services.db.session() as s:
        rows = s.scalars(
            select(TrialRow)
            .where(TrialRow.search_id == search.id, TrialRow.seq > after)
            .order_by(TrialRow.seq)
            .limit(BATCH)
        ).all()
        return list(rows), s.get(Search, search.id)


async def _stream(services: Services, search: Search, after: int) -> AsyncIterator[str]:
    poll, until = services.settings.events_poll_s, time.monotonic() + services.settings.events_max_s
    status: str | None = None
    ending = False
    yield "retry: 2000\n\n"
    while True:
        rows, row = await run_in_threadpool(_changes, services, search, after)
        for r in rows:
            after = r.seq
            yield _event("trial", to_jsonable_python(trial_item(search.name, r)), after)
        if row is None:
            yield _event("end", {"reason": "the search is gone"}, after)
            return
        if row.status != status:
            status = row.status
            yield _event("status", {"status": row.status, "error": row.error, "trials": row.n_trials}, after)
        if len(rows) == BATCH:
            continue  # more changes are waiting
        if ending:  # one last look after the final status: trials written just before it
            yield _event("end", {"reason": f"the search is {status}"}, after)
            return
        if SearchStatus(status).final:
            ending = True
            continue
        if time.monotonic() >= until:
            yield _event("end", {"reason": "reconnect with Last-Event-ID to follow on"}, after)
            return
        await asyncio.sleep(poll)


@router.get(
    "/events",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "trial, status and end events"},
        401: {"model": ErrorPublic, "description": "missing or invalid API key"},
        404: {"model": ErrorPublic, "description": "no such search (or not the caller's)"},
        422: {"model": ErrorPublic},
    },
)
def events(
    search: OwnedSearchDep,
    services: ServicesDep,
    after: Annotated[
        int | None, Query(ge=0, le=2**63 - 1, description="resume after this event id (as Last-Event-ID)")
    ] = None,
    last_event_id: Annotated[
        int | None, Header(ge=0, le=2**63 - 1, description="the id of the last event received")
    ] = None,
) -> StreamingResponse:
    """Each trial change and status change of the search, as they happen (server-sent events)."""
    start = last_event_id if last_event_id is not None else (after or 0)
    return StreamingResponse(
        _stream(services, search, start),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
