"""``/pareto`` and ``/best`` of a search: the answers ``structsearch pareto`` and ``best`` give.

Both go through the search package's own functions (:func:`pareto_front`,
:func:`best_under_budget`), fed from the API's per-study cache of finished trials, so the CLI and
the API cannot disagree. The front is computed once per cache entry.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, status

from api.deps import SearchDep, ServicesDep, read_access
from api.schemas import CandidatePublic, ErrorPublic, ParetoPublic
from structsearch.cost import parse_budget
from structsearch.errors import StructsearchError
from structsearch.search import best_under_budget

router = APIRouter(prefix="/searches/{search_id}", tags=["results"], dependencies=[Depends(read_access)])

_ERRORS = {404: {"model": ErrorPublic, "description": "no such search, or no candidate within the budget"}, 422: {"model": ErrorPublic}}


@router.get("/pareto", response_model=ParetoPublic, responses=_ERRORS)
def pareto(
    search: SearchDep,
    services: ServicesDep,
    cost: Annotated[Literal["macs", "params"], Query(description="the cost axis of the front")] = "macs",
) -> ParetoPublic:
    """Feasible trained candidates not beaten on both score and cost, cheapest first."""
    front = services.reader.finished(search.name).front(cost)  # pareto_front(records), memoised
    return ParetoPublic(search_id=search.id, study=search.name, cost=cost, front=[CandidatePublic(**r.to_dict()) for r in front])


@router.get("/best", response_model=CandidatePublic, responses=_ERRORS)
def best(
    search: SearchDep,
    services: ServicesDep,
    budget_flops: Annotated[str | None, Query(max_length=32, description="MACs budget: 300M, 1.2G or 60% (of the teacher)")] = None,
    budget_params: Annotated[str | None, Query(max_length=32, description="params budget: 2M, 850k or 60%")] = None,
) -> CandidatePublic:
    """The highest-scoring trained candidate within the budget(s) (same as `structsearch best --study`).

    A malformed budget is a 422; a well-formed budget that no candidate meets is a 404 whose
    message names the nearest candidate.
    """
    if budget_flops is None and budget_params is None:
        raise HTTPException(422, "give budget_flops and/or budget_params, e.g. ?budget_flops=300M")
    for text, what in ((budget_flops, "flops"), (budget_params, "params")):
        if text is not None:
            parse_budget(text, what)  # BudgetError -> 422 (api.errors)
    try:
        record = best_under_budget(
            budget_flops, budget_params, study=search.name, storage=services.reader.storage, records_of=services.reader.records
        )
    except StructsearchError as e:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(e)) from None
    return CandidatePublic(**record.to_dict())
