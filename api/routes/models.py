"""``GET /api/v1/models``: the model families structsearch can search."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from api.deps import PageDep, read_access
from api.schemas import FamilyPublic, Page

router = APIRouter(prefix="/models", tags=["models"], dependencies=[Depends(read_access)])


@router.get("", response_model=Page[FamilyPublic])
def list_models(page: PageDep) -> Page[FamilyPublic]:
    """Registered family adapters with example timm names (same as `structsearch models`)."""
    from structsearch.space import list_families

    fams = [FamilyPublic(family=f.name, description=f.description, examples=list(f.examples)) for f in list_families()]
    return Page(
        items=fams[page.offset : page.offset + page.limit], total=len(fams), offset=page.offset, limit=page.limit
    )
