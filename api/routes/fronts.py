"""``/pareto`` and ``/best`` of a search: the answers ``structsearch pareto`` and ``best`` give.

Both go through the search package's own functions (:func:`pareto_front`,
:func:`best_under_budget`), fed from the API's per-study cache of finished trials, so the CLI and
the API cannot disagree. The front is computed once per cache entry.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query

from api.deps import SearchDep, ServicesDep, read_access
from api.schemas import BaselineGainPublic, CandidatePublic, ErrorPublic, ParetoPublic, RecheckPublic
from structsearch.cost import parse_budget
from structsearch.search import best_under_budget
from structsearch.search.recheck import rechecks_from_attrs

router = APIRouter(prefix="/searches/{search_id}", tags=["results"], dependencies=[Depends(read_access)])

_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorPublic, "description": "no such search, or no candidate within the budget"},
    422: {"model": ErrorPublic},
}


@router.get("/pareto", response_model=ParetoPublic, responses=_ERRORS)
def pareto(
    search: SearchDep,
    services: ServicesDep,
    cost: Annotated[
        Literal["macs", "params", "latency", "memory"],
        Query(
            description="the cost axis of the front: MACs, params, measured latency (ms) or peak activation memory (bytes)"
        ),
    ] = "macs",
) -> ParetoPublic:
    """Feasible trained candidates not beaten on both score and cost, cheapest first."""
    front = services.reader.finished(search.name).front(cost)  # pareto_front(records), memoised
    storage = services.reader.storage
    attrs = storage.get_study_user_attrs(storage.get_study_id_from_name(search.name))
    rechecks = [RecheckPublic(**r.to_dict()) for r in rechecks_from_attrs(attrs)]
    gains = [BaselineGainPublic(**g.to_dict()) for g in services.reader.finished(search.name).gains()]
    return ParetoPublic(
        search_id=search.id,
        study=search.name,
        cost=cost,
        front=[CandidatePublic(**r.to_dict()) for r in front],
        recheck=rechecks,
        baselines=gains,
    )


@router.get("/best", response_model=CandidatePublic, responses=_ERRORS)
def best(
    search: SearchDep,
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
) -> CandidatePublic:
    """The highest-scoring trained candidate within the budget(s) (same as `structsearch best --study`).

    A malformed budget is a 422; a well-formed budget that no candidate meets is a 404 whose
    message names the nearest candidate.
    """
    texts = {"flops": budget_flops, "params": budget_params, "latency": budget_latency, "memory": budget_memory}
    if all(t is None for t in texts.values()):
        raise HTTPException(
            422, "give budget_flops, budget_params, budget_latency and/or budget_memory, e.g. ?budget_flops=300M"
        )
    for what, text in texts.items():
        if text is not None:
            parse_budget(text, what)  # BudgetError -> 422 (api.errors)
    record = best_under_budget(
        budget_flops,
        budget_params,
        study=search.name,
        budget_latency=budget_latency,
        budget_memory=budget_memory,
        storage=services.reader.storage,
        records_of=services.reader.records,
    )
    return CandidatePublic(**record.to_dict())
