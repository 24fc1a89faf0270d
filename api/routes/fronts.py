"""``/pareto``, ``/best`` and ``/finetune`` of a search: the answers ``structsearch pareto`` and ``best`` give.

They are read from the service's read model (``ss_trials``; :mod:`structsearch.service.readqueries`),
indexed queries that give the search package's own answers (:func:`pareto_front`,
:func:`best_under_budget`), so the CLI and the API cannot disagree, and no request reads Optuna's
trials. ``/pareto`` and ``/best`` carry a weak ETag (the search's trial count, last trial and
status change, and the study attributes shown): a poller sending ``If-None-Match`` gets a 304
until a trial changes, and each process keeps their bodies by the same tag (:mod:`api.bodycache`).
They are the owner's (or an admin's), or anyone's when the service runs with
``STRUCTSEARCH_OPEN_READS``: a front names structures and scores, not the spec's paths.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query, Response

from api.deps import ResultSearchDep, ServicesDep, study_id_of
from api.schemas import (
    BaselineGainPublic,
    CandidatePublic,
    ErrorPublic,
    FinetunePublic,
    ParetoPublic,
    RecheckPublic,
    json_response,
)
from structsearch.search.recheck import rechecks_from_attrs
from structsearch.search.results import check_budgets
from structsearch.service import readqueries

router = APIRouter(prefix="/searches/{search_id}", tags=["results"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorPublic, "description": "missing or invalid API key (unless the service has open reads)"},
    404: {
        "model": ErrorPublic,
        "description": "no such search (or not the caller's), or no candidate within the budget",
    },
    422: {"model": ErrorPublic},
}
_CACHED: dict[int | str, dict[str, Any]] = {
    **_ERRORS,
    304: {"description": "not modified since the response with the ETag sent in If-None-Match"},
}
IfNoneMatch = Annotated[str | None, Header(description="an ETag of an earlier response: 304 while it still holds")]


def _tagged(tag: str, if_none_match: str | None, body: Callable[[], bytes]) -> Response:
    """A 304 when the client's copy (``If-None-Match``) is current, else ``body()``; with the ETag
    either way, to be revalidated each time (trials finish any moment)."""
    headers = {"ETag": tag, "Cache-Control": "no-cache"}
    if if_none_match is not None and tag in {t.strip() for t in if_none_match.split(",")}:
        return Response(status_code=304, headers=headers)
    return json_response(body(), headers)


@router.get("/pareto", response_model=ParetoPublic, responses=_CACHED)
def pareto(
    search: ResultSearchDep,
    services: ServicesDep,
    cost: Annotated[
        Literal["macs", "params", "latency", "memory"],
        Query(
            description="the cost axis of the front: MACs, params, measured latency (ms) or peak activation memory (bytes)"
        ),
    ] = "macs",
    if_none_match: IfNoneMatch = None,
) -> Any:
    """Feasible trained candidates not beaten on both score and cost, cheapest first."""
    study_id_of(search, services)
    attrs = readqueries.result_attrs(services.db, search)
    tag = readqueries.etag(search, attrs)

    def make() -> bytes:
        front = readqueries.pareto(services.db, search, cost)
        return (
            ParetoPublic(
                search_id=search.id,
                study=search.name,
                cost=cost,
                front=[CandidatePublic(**r.to_dict()) for r in front],
                recheck=[RecheckPublic(**r.to_dict()) for r in rechecks_from_attrs(attrs)],
                baselines=[BaselineGainPublic(**g.to_dict()) for g in readqueries.gains(services.db, search)],
            )
            .model_dump_json()
            .encode()
        )

    return _tagged(tag, if_none_match, lambda: services.bodies.body(("pareto", search.id, tag, cost), make))


@router.get("/best", response_model=CandidatePublic, responses=_CACHED)
def best(
    search: ResultSearchDep,
    services: ServicesDep,
    budget_flops: Annotated[
        str | None, Query(max_length=32, description="MACs budget: 300M, 1.2G or 60% (of the teacher)")
    ] = None,
    budget_params: Annotated[str | None, Query(max_length=32, description="params budget: 2M, 850k or 60%")] = None,
    budget_latency: Annotated[
        str | None,
        Query(max_length=32, description="latency budget against each trial's measured latency: 5ms, 800us or 60%"),
    ] = None,
    budget_memory: Annotated[
        str | None, Query(max_length=32, description="peak activation memory budget: 50MB, 64MiB or 60%")
    ] = None,
    if_none_match: IfNoneMatch = None,
) -> Any:
    """The highest-scoring trained candidate within the budget(s) (same as `structsearch best --study`).

    A malformed budget is a 422; a well-formed budget that no candidate meets is a 404 whose
    message names the nearest candidate.
    """
    texts = {"flops": budget_flops, "params": budget_params, "latency": budget_latency, "memory": budget_memory}
    check_budgets(  # BudgetError -> 422 (api.errors)
        texts, "give budget_flops, budget_params, budget_latency and/or budget_memory, e.g. ?budget_flops=300M"
    )
    study_id_of(search, services)
    tag = readqueries.etag(search)  # the teacher figures of percentage budgets never change

    def make() -> bytes:
        return (
            CandidatePublic(**readqueries.best_within(services.db, search, texts).to_dict()).model_dump_json().encode()
        )

    return _tagged(tag, if_none_match, lambda: services.bodies.body(("best", search.id, tag, *texts.values()), make))


@router.get("/finetune", response_model=list[FinetunePublic], responses=_ERRORS)
def finetune(search: ResultSearchDep, services: ServicesDep) -> list[FinetunePublic]:
    """Students of this search fine-tuned to completion (`structsearch finetune`), by trial."""
    study_id_of(search, services)
    stored = readqueries.result_attrs(services.db, search).get(readqueries.FINETUNE_ATTR) or {}
    return [
        FinetunePublic(trial=int(trial), **entry) for trial, entry in sorted(stored.items(), key=lambda kv: int(kv[0]))
    ]
