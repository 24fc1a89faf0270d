"""``/healthz`` (the process answers) and ``/readyz`` (the database answers and is migrated)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from api.deps import ServicesDep
from api.errors import error_response
from api.schemas import ErrorPublic, HealthPublic
from structsearch.errors import one_line

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=HealthPublic)
def healthz() -> HealthPublic:
    """Liveness: no database access, so a slow database does not get the API restarted."""
    return HealthPublic(status="ok")


@router.get("/readyz", response_model=HealthPublic, responses={503: {"model": ErrorPublic}})
def readyz(services: ServicesDep) -> HealthPublic | JSONResponse:
    """Readiness: the database is reachable and `structsearch db upgrade` has been run."""
    from structsearch.service.migrations import current_revision, head_revision

    try:
        services.db.ping()
        revision = current_revision(services.db.engine)
    except Exception as e:  # noqa: BLE001 - any driver error means "not ready"
        return error_response(503, f"database unreachable: {one_line(e)}")
    head = head_revision(services.settings.database_url)
    if revision != head:
        return error_response(
            503, f"database schema at {revision or 'nothing'}, expected {head}: run `structsearch db upgrade`"
        )
    return HealthPublic(status="ready", database="ok", schema_revision=revision)
