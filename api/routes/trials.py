"""``/api/v1/searches/{id}/trials``: a search's trials and their trained students."""

from __future__ import annotations

import heapq
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, status
from fastapi.responses import FileResponse
from optuna.trial import FrozenTrial
from starlette.background import BackgroundTask

from api.deps import PageDep, SearchDep, ServicesDep, read_access
from api.schemas import ErrorPublic, Page, TrialPublic, TrialStateName
from structsearch.search.results import record_of

router = APIRouter(prefix="/searches/{search_id}/trials", tags=["trials"], dependencies=[Depends(read_access)])

_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorPublic, "description": "no such search or trial"},
    422: {"model": ErrorPublic},
}


def trial_public(study: str, t: FrozenTrial) -> TrialPublic:
    r = record_of(study, t)
    return TrialPublic(
        **r.to_dict(),
        duplicate_of=r.duplicate_of,
        copied_from=r.copied_from,
        started_at=t.datetime_start,
        completed_at=t.datetime_complete,
    )


@router.get("", response_model=Page[TrialPublic], responses=_ERRORS)
def list_trials(
    search: SearchDep,
    services: ServicesDep,
    page: PageDep,
    state: Annotated[TrialStateName | None, Query(description="only trials in this state")] = None,
) -> Page[TrialPublic]:
    """Trials by number (warm-start copies included, marked by ``copied_from``)."""
    reader = services.reader
    if state in (TrialStateName.running, TrialStateName.waiting):
        trials = [t for t in reader.live(search.name) if t.state.name.lower() == state.value]
    else:
        trials = reader.finished(search.name).trials  # shared, sorted by number: never mutate
        if state is None:
            live = reader.live(search.name)
            if live:
                trials = list(heapq.merge(trials, sorted(live, key=lambda t: t.number), key=lambda t: t.number))
        else:
            trials = [t for t in trials if t.state.name.lower() == state.value]
    window = trials[page.offset : page.offset + page.limit]
    return Page(
        items=[trial_public(search.name, t) for t in window], total=len(trials), offset=page.offset, limit=page.limit
    )


@router.get(
    "/{number}/artifact",
    response_class=FileResponse,
    responses={
        200: {"content": {"application/zip": {}}, "description": "student.pt, spec.json, recipe.json and trial.json"},
        **_ERRORS,
    },
)
def download_artifact(search: SearchDep, services: ServicesDep, number: int) -> FileResponse:
    """The trained student of a trial as a zip: ``student.pt``, ``spec.json``, ``recipe.json``, ``trial.json``.

    Load it with ``structsearch.load(DIR)`` after unzipping. 404 when the trial was not trained
    (over budget, pruned) or its files are not on the API's artifact volume.
    """
    from structsearch.search.export import export_stored
    from structsearch.search.stored import StoredTrial

    stored = StoredTrial.open(search.name, number, services.reader.storage)
    artifact = Path(stored.attrs.artifact or "")
    root = services.settings.artifacts
    if not artifact.is_absolute() or not artifact.resolve().is_relative_to(root) or not artifact.is_dir():
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, f"the files of trial {number} are not on this server's artifact volume ({root})"
        )
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
