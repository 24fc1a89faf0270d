"""``/healthz`` (the process answers) and ``/readyz`` (the database answers and is migrated).

Both are unauthenticated (probes carry no key), so they say ready or not and nothing more: why
the database is not ready (its host, its user, the driver's message) goes to the server log.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from api.deps import ServicesDep
from api.errors import error_response
from api.schemas import ErrorPublic, HealthPublic
from structsearch.errors import one_line
from structsearch.search.storage import hide_secrets

router = APIRouter(tags=["health"])

log = logging.getLogger("structsearch.api")

NOT_READY = "not ready; the server log says why"


@router.get("/healthz", response_model=HealthPublic)
def healthz() -> HealthPublic:
    """Liveness: no database access, so a slow database does not get the API restarted."""
    return HealthPublic(status="ok")


@router.get("/readyz", response_model=HealthPublic, responses={503: {"model": ErrorPublic}})
def readyz(services: ServicesDep) -> HealthPublic | JSONResponse:
    """Readiness: the database is reachable and `structsearch db upgrade` has been run."""
    from structsearch.service.migrations import current_revision, head_revision

    url = services.settings.database_url
    try:
        services.db.ping()
        revision = current_revision(services.db.engine)
    except Exception as e:  # noqa: BLE001 - any driver error means "not ready"
        log.warning("not ready: database unreachable: %s", hide_secrets(one_line(e), url))
        return error_response(503, NOT_READY)
    head = head_revision(url)
    if revision != head:
        log.warning("not ready: database schema at %s, expected %s: run `structsearch db upgrade`", revision, head)
        return error_response(503, NOT_READY)
    return HealthPublic(status="ready", database="ok", schema_revision=revision)
