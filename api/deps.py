"""Dependencies of the routes, as ``Annotated`` aliases (the full-stack-fastapi-template shape).

The per-process services live on ``app.state.services``, built by :func:`api.app.create_app`
from its settings; nothing here is a module global.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Query, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from structsearch.errors import NotFound
from structsearch.service.apikeys import authenticate
from structsearch.service.database import Database
from structsearch.service.queue import JobQueue
from structsearch.service.repository import SearchRepository
from structsearch.service.settings import ServiceSettings
from structsearch.service.studies import StudyReader
from structsearch.service.tables import ApiKey, Search

MAX_PAGE = 100


@dataclass
class Services:
    """Everything a request may use; created once per app, connections opened lazily."""

    settings: ServiceSettings
    db: Database
    reader: StudyReader
    queue: JobQueue

    @classmethod
    def from_settings(cls, settings: ServiceSettings) -> Services:
        return cls(
            settings=settings,
            db=Database(settings.database_url),
            reader=StudyReader(settings.database_url, settings.study_cache_size),
            queue=JobQueue(settings.database_url),
        )

    def close(self) -> None:
        self.queue.close()
        self.reader.close()
        self.db.dispose()


def get_services(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]

_bearer = HTTPBearer(auto_error=False, description="An API key from `structsearch apikey create`")
BearerDep = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def _unauthorized(message: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, message, headers={"WWW-Authenticate": "Bearer"})


def require_key(services: ServicesDep, credentials: BearerDep) -> ApiKey:
    """The caller's API key; 401 when it is missing, malformed, unknown or revoked."""
    if credentials is None or not credentials.credentials:
        raise _unauthorized("missing API key: send the header 'Authorization: Bearer <key>'")
    key = authenticate(services.db, credentials.credentials)
    if key is None:
        raise _unauthorized("invalid or revoked API key")
    return key


def read_access(services: ServicesDep, credentials: BearerDep) -> ApiKey | None:
    """Reads need a key only when the service is configured with closed reads."""
    if services.settings.open_reads:
        return None
    return require_key(services, credentials)


WriterDep = Annotated[ApiKey, Depends(require_key)]


@dataclass(frozen=True)
class PageParams:
    offset: int
    limit: int


def page_params(
    offset: Annotated[int, Query(ge=0, le=10_000_000, description="items to skip")] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description=f"page size, at most {MAX_PAGE}")] = 20,
) -> PageParams:
    return PageParams(offset, limit)


PageDep = Annotated[PageParams, Depends(page_params)]


def get_search(search_id: str, services: ServicesDep) -> Search:
    """The search named in the path; 404 for unknown (or malformed) ids."""
    try:
        sid = uuid.UUID(search_id)
    except ValueError:
        raise NotFound(f"no search with id '{search_id}'") from None
    with services.db.session() as s:
        row = SearchRepository(s).get(sid)
    if row is None:
        raise NotFound(f"no search with id '{search_id}'")
    return row


SearchDep = Annotated[Search, Depends(get_search)]
