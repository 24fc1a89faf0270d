"""``/api/v1/searches``: submit, list, describe and cancel searches.

Routes are plain ``def``: FastAPI runs them in its threadpool, which is where the blocking work
(``plan_search`` builds models and counts their cost, Optuna reads) belongs.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Response, status
from sqlalchemy import Row

from api.deps import KeyDep, OwnedSearchDep, PageDep, Services, ServicesDep
from api.schemas import (
    CandidatePublic,
    ErrorPublic,
    Page,
    SearchAccepted,
    SearchPublic,
    SearchStatusName,
    json_bytes,
    json_response,
    trial_body,
    trial_columns,
)
from structsearch.errors import NotFound
from structsearch.service.readqueries import etag
from structsearch.service.repository import BEST, SearchRepository
from structsearch.service.searches import COUNT_COLUMNS, cancel_search, submit_search
from structsearch.service.tables import SearchStatus

router = APIRouter(prefix="/searches", tags=["searches"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorPublic, "description": "missing or invalid API key"},
    404: {"model": ErrorPublic, "description": "no such search (or not the caller's)"},
    422: {"model": ErrorPublic, "description": "invalid input"},
}

EXAMPLE_SPEC = {
    "name": "digits-small",
    "teacher": {"model": "cifar_resnet20", "kwargs": {"num_classes": 10}, "train_epochs": 5},
    "data": {"train": "digits", "input_size": 8},
    "budget": {"flops": "50%"},
    "trials": 20,
    "proxy": {"steps": 60, "batch_size": 64},
}


#: A :class:`SearchPublic`'s fields, in order; its best trial's and the columns they are read from.
_FIELDS = list(SearchPublic.model_fields)
_BEST_COLUMNS = {name: BEST + col for name, col in trial_columns(CandidatePublic).items()}


def search_item(row: Row[Any]) -> dict[str, Any]:
    """A :class:`SearchPublic` as a plain dict, from a row of :meth:`SearchRepository.page` or
    :meth:`~SearchRepository.with_best` (the search's columns, its counts among them, and its
    best trial's): no study is read."""
    derived = {
        "trials": {name: getattr(row, col) for name, col in COUNT_COLUMNS.items()},
        "best": None if getattr(row, BEST + "number") is None else trial_body(_BEST_COLUMNS, row.name, row),
    }
    return {name: derived[name] if name in derived else getattr(row, name) for name in _FIELDS}


def _described(services: Services, search_id: uuid.UUID) -> bytes:
    with services.db.session() as s:
        row = SearchRepository(s).with_best(search_id)
    if row is None:
        raise NotFound(f"no search with id '{search_id}'")
    return json_bytes(search_item(row))


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=SearchAccepted,
    responses={
        **_ERRORS,
        413: {"model": ErrorPublic, "description": "request body too large"},
        429: {"model": ErrorPublic, "description": "the key is over a quota (active searches, trial-steps)"},
        503: {"model": ErrorPublic, "description": "the search could not be queued"},
    },
    openapi_extra={"x-study-spec": True},  # api.app points the request body at the StudySpec schema
)
def create_search(
    spec: Annotated[
        dict[str, Any],
        Body(
            description="a study spec (schema: StudySpec)",
            openapi_examples={
                "digits": {"summary": "a small search on the embedded digits data", "value": EXAMPLE_SPEC}
            },
        ),
    ],
    services: ServicesDep,
    key: KeyDep,
    response: Response,
) -> SearchAccepted:
    """Validate a study spec fully (models built, budgets checked) and queue its trials.

    Nothing is stored when the spec is rejected (422). The study is named after the spec; when
    that name is taken the search gets the name with a short suffix, and says so.
    """
    row = submit_search(
        spec, services.settings, services.db, services.reader, services.queue, key.id, quota_exempt=key.is_admin
    )
    renamed = row.name != row.requested_name
    url = f"/api/v1/searches/{row.id}"
    response.headers["Location"] = url
    message = f"search '{row.name}' queued with {row.trials_requested} trials"
    if renamed:
        message += f" (the name '{row.requested_name}' was taken, so the study is named '{row.name}')"
    return SearchAccepted(
        id=row.id,
        name=row.name,
        requested_name=row.requested_name,
        renamed=renamed,
        status=SearchStatusName(row.status),
        trials_requested=row.trials_requested,
        message=message,
        url=url,
    )


@router.get("", response_model=Page[SearchPublic], responses=_ERRORS)
def list_searches(
    services: ServicesDep,
    key: KeyDep,
    page: PageDep,
    status_: Annotated[
        SearchStatusName | None, Query(alias="status", description="only searches in this status")
    ] = None,
) -> Response:
    """The caller's searches (an admin key: everyone's), newest first, with their progress."""
    with services.db.session() as s:
        rows, total = SearchRepository(s).page(
            page.offset, page.limit, SearchStatus(status_.value) if status_ else None, owner=key
        )
    items = [search_item(r) for r in rows]
    return json_response(
        json_bytes({"items": items, "total": total, "offset": page.offset, "limit": page.limit, "next": None})
    )


@router.get("/{search_id}", response_model=SearchPublic, responses=_ERRORS)
def get_search(search: OwnedSearchDep, services: ServicesDep) -> Response:
    """Status, spec, trial counts and the best candidate so far (the owner's or an admin key)."""
    return json_response(
        services.bodies.body(("search", search.id, etag(search)), lambda: _described(services, search.id))
    )


@router.post("/{search_id}/cancel", response_model=SearchPublic, responses={**_ERRORS, 409: {"model": ErrorPublic}})
def cancel(search: OwnedSearchDep, services: ServicesDep) -> Response:
    """Start no new trials; running trials finish and are kept. 409 if the search already ended.

    The owner's key or an admin key only; any other key gets the 404 of an unknown search."""
    if cancel_search(services.db, services.queue, search.id) is None:
        raise NotFound(f"no search with id '{search.id}'")
    return json_response(_described(services, search.id))
