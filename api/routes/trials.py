"""``/api/v1/searches/{id}/trials``: a search's trials and their trained students.

Both are the owner's (or an admin's) only, open reads or not: trials carry structures and the
students are the owner's work. A 404 names the trial, never a server path or the storage.
"""

from __future__ import annotations

import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from fastapi.responses import FileResponse
from starlette.background import BackgroundTask

from api.deps import MAX_PAGE, OwnedSearchDep, ServicesDep, study_id_of
from api.schemas import (
    ErrorPublic,
    Page,
    TrialPublic,
    TrialStateName,
    json_bytes,
    json_response,
    trial_body,
    trial_columns,
)
from structsearch.errors import NotFound
from structsearch.service.readqueries import etag, trial_page

router = APIRouter(prefix="/searches/{search_id}/trials", tags=["trials"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorPublic, "description": "missing or invalid API key"},
    404: {"model": ErrorPublic, "description": "no such search (or not the caller's) or trial"},
    422: {"model": ErrorPublic},
}


#: A :class:`TrialPublic`'s fields, in order, and the ``ss_trials`` column each is read from.
_ITEM_COLUMNS = trial_columns(TrialPublic)


def trial_item(study: str, row: Any) -> dict[str, Any]:
    """A :class:`TrialPublic` as a plain dict, from a row's columns."""
    return trial_body(_ITEM_COLUMNS, study, row)


@router.get("", response_model=Page[TrialPublic], responses=_ERRORS)
def list_trials(
    search: OwnedSearchDep,
    services: ServicesDep,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description=f"page size, at most {MAX_PAGE}")] = 20,
    after: Annotated[
        int | None,
        Query(
            ge=-1,
            le=2**31 - 1,
            description="the trials after this number (the previous page's `next`); stable while trials are added",
        ),
    ] = None,
    offset: Annotated[int, Query(ge=0, le=10_000_000, description="trials to skip (when `after` is not given)")] = 0,
    state: Annotated[TrialStateName | None, Query(description="only trials in this state")] = None,
) -> Response:
    """Trials by number (warm-start copies included, marked by ``copied_from``), from the read model.

    Page with ``after`` (keyset: each trial exactly once, however many finish meanwhile);
    ``offset`` still works for a first look.
    """

    def make() -> bytes:
        page = trial_page(services.db, search, limit, after, offset, state.value if state else None)
        body = {
            "items": [trial_item(search.name, r) for r in page.rows],
            "total": page.total,
            "offset": offset if after is None else 0,
            "limit": limit,
            "next": page.next,
        }
        return json_bytes(body)

    key = ("trials", search.id, etag(search), limit, after, offset, state)
    return json_response(services.bodies.body(key, make))


@router.get(
    "/{number}/artifact",
    response_class=FileResponse,
    responses={
        200: {"content": {"application/zip": {}}, "description": "student.pt, spec.json, recipe.json and trial.json"},
        **_ERRORS,
    },
)
def download_artifact(search: OwnedSearchDep, services: ServicesDep, number: int) -> FileResponse:
    """The trained student of a trial as a zip: ``student.pt``, ``spec.json``, ``recipe.json``, ``trial.json``.

    Load it with ``structsearch.load(DIR)`` after unzipping. 404 when the trial was not trained
    (over budget, pruned) or its files are not on the API's artifact volume.
    """
    from structsearch.search.export import export_stored
    from structsearch.search.stored import StoredTrial

    study_id_of(search, services)  # a missing study is a 404 of ours, not a storage message
    stored = StoredTrial.open(search.name, number, services.reader.storage)
    artifact = Path(stored.attrs.artifact or "")
    root = services.settings.artifacts
    if not artifact.is_absolute() or not artifact.resolve().is_relative_to(root) or stored.saved() is None:
        raise NotFound(f"the files of trial {number} are not on this server's artifact volume")
    work = Path(tempfile.mkdtemp(prefix="structsearch-artifact-"))
    try:
        files = export_stored(stored, work / "student")
        archive = work / f"{search.name}-trial{number}.zip"
        with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for f in files:
                zf.write(f, arcname=f.name)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return FileResponse(
        archive,
        media_type="application/zip",
        filename=archive.name,
        background=BackgroundTask(shutil.rmtree, work, ignore_errors=True),
    )
