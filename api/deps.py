"""Dependencies of the routes, as ``Annotated`` aliases (the full-stack-fastapi-template shape).

The per-process services live on ``app.state.services``, built by :func:`api.app.create_app`
from its settings; nothing here is a module global.

Who may see what: a search belongs to the key that submitted it. Its spec, trials, students and
cancel are for that key or an admin key (:data:`OwnedSearchDep`); its front and best are too,
unless the service runs with open reads (:data:`ResultSearchDep`). Anyone else gets the 404 of
an unknown id.
"""

from __future__ import annotations

import itertools
import uuid
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Query, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.bodycache import BodyCache
from api.middleware import STATE_KEY
from structsearch.errors import NotFound
from structsearch.service import readqueries
from structsearch.service.apikeys import authenticate_for
from structsearch.service.database import Database
from structsearch.service.queue import JobQueue
from structsearch.service.repository import ApiKeyRepository, SearchRepository
from structsearch.service.settings import ServiceSettings
from structsearch.service.studies import StudyReader
from structsearch.service.tables import ApiKey, FrontRow, Search, SearchStatus, TrialRow, utcnow

MAX_PAGE = 100


#: The tables requests read (the service's and Optuna's study attributes), warmed on each connection.
_READ_TABLES = (*(t.__tablename__ for t in (Search, TrialRow, FrontRow, ApiKey)), "studies", "study_user_attributes")


@dataclass
class Services:
    """Everything a request may use; created once per app, connections opened lazily."""

    settings: ServiceSettings
    db: Database
    reader: StudyReader
    queue: JobQueue
    bodies: BodyCache

    @classmethod
    def from_settings(cls, settings: ServiceSettings) -> Services:
        db = Database(settings.database_url)
        return cls(
            settings=settings, db=db, reader=StudyReader(db), queue=JobQueue(settings.database_url), bodies=BodyCache()
        )

    def warm(self) -> None:
        """Open the database connections and run the requests' read paths once (API-key lookup,
        search rows and pages, the read model's queries; for a search that does not exist), so
        a fresh process's first requests cost what its later ones do."""
        self.db.warm(_READ_TABLES)
        nowhere = uuid.UUID(int=0)
        for search_id in (None, nowhere):  # no such key: the lookup runs, nothing is touched
            authenticate_for(self.db, "", search_id)
        with self.db.session() as s:
            ApiKeyRepository(s).touch(0, utcnow(), utcnow())  # no key 0: compiled, nothing written
            repo = SearchRepository(s)
            repo.get(nowhere)
            repo.with_best(nowhere)
            for status_, owner in itertools.product((None, SearchStatus.running), (None, ApiKey(id=0))):
                repo.page(0, 1, status_, owner)
        self.reader.study_id("")  # no such study (not remembered)
        readqueries.warm_up(self.db)

    def close(self) -> None:
        self.queue.close()
        self.reader.close()
        self.db.dispose()


async def get_services(request: Request) -> Services:
    # async: FastAPI runs a plain def dependency on its thread pool, a hop per request for a lookup
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]

_bearer = HTTPBearer(auto_error=False, description="An API key from `structsearch apikey create`")
BearerDep = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


_MISSING_KEY = "missing API key: send the header 'Authorization: Bearer <key>'"


def _unauthorized(message: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, message, headers={"WWW-Authenticate": "Bearer"})


def optional_key(request: Request, services: ServicesDep, credentials: BearerDep) -> ApiKey | None:
    """The caller's API key, None when the request sends none; 401 when it sends an unusable one."""
    return _key_and_search(request, services, credentials, None)[0]


def _key_and_search(
    request: Request, services: Services, credentials: HTTPAuthorizationCredentials | None, search_id: uuid.UUID | None
) -> tuple[ApiKey | None, Search | None]:
    """The caller's key (as :func:`optional_key`) and the search ``search_id`` (None: not asked,
    or none such), read together: one statement when both are looked up.

    A write's key was already checked, before its body was read, by :class:`api.middleware.WriteAuth`.
    """
    found = getattr(request.state, STATE_KEY, None)
    if isinstance(found, ApiKey) or credentials is None:
        key = found if isinstance(found, ApiKey) else None
        if search_id is None:
            return key, None
        with services.db.session() as s:
            return key, SearchRepository(s).get(search_id)
    key, search = (
        authenticate_for(services.db, credentials.credentials, search_id) if credentials.credentials else (None, None)
    )
    if key is None:
        raise _unauthorized("invalid, revoked or expired API key")
    return key, search


OptionalKeyDep = Annotated[ApiKey | None, Depends(optional_key)]


def require_key(key: OptionalKeyDep) -> ApiKey:
    """The caller's API key; 401 when it is missing, malformed, unknown, revoked or expired."""
    if key is None:
        raise _unauthorized(_MISSING_KEY)
    return key


KeyDep = Annotated[ApiKey, Depends(require_key)]


def read_access(services: ServicesDep, key: OptionalKeyDep) -> ApiKey | None:
    """Public listings (``/models``) need a key unless the service is configured with open reads."""
    if services.settings.open_reads:
        return key
    return require_key(key)


@dataclass(frozen=True)
class PageParams:
    offset: int
    limit: int


async def page_params(
    offset: Annotated[int, Query(ge=0, le=10_000_000, description="items to skip")] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description=f"page size, at most {MAX_PAGE}")] = 20,
) -> PageParams:
    return PageParams(offset, limit)


PageDep = Annotated[PageParams, Depends(page_params)]


def _search(
    search_id: str,
    request: Request,
    services: Services,
    credentials: HTTPAuthorizationCredentials | None,
    anyones: bool,
) -> Search:
    """The search named in the path, if the caller's key may see it (``anyones``: any caller may,
    though a key sent is still checked).

    Unknown ids, malformed ids and other owners' searches get the same 404, so a key cannot tell
    whether someone else's search exists.
    """
    missing = NotFound(f"no search with id {search_id[:64]!r}")  # repr: one line, whatever was sent
    try:
        sid: uuid.UUID | None = uuid.UUID(search_id)
    except ValueError:
        sid = None  # still a 401 first for a key that is missing or unusable
    key, row = _key_and_search(request, services, credentials, sid)
    if not anyones and key is None:
        raise _unauthorized(_MISSING_KEY)
    if row is None or (not anyones and key is not None and not key.owns(row)):
        raise missing
    return row


def owned_search(search_id: str, request: Request, services: ServicesDep, credentials: BearerDep) -> Search:
    """The search in the path, for its owner's key or an admin key only (its spec, trials,
    students; cancelling it)."""
    return _search(search_id, request, services, credentials, anyones=False)


def result_search(search_id: str, request: Request, services: ServicesDep, credentials: BearerDep) -> Search:
    """The search in the path for its fronts and bests: anyone's when the service has open reads
    (a key sent is still checked); otherwise as :func:`owned_search`."""
    return _search(search_id, request, services, credentials, anyones=services.settings.open_reads)


OwnedSearchDep = Annotated[Search, Depends(owned_search)]
ResultSearchDep = Annotated[Search, Depends(result_search)]


def study_id_of(search: Search, services: Services) -> int:
    """Optuna's id of the search's study; 404 when there is none (its submission failed before
    creating it). Checked here so that no storage message -- which would name other owners'
    studies -- answers for it."""
    sid = services.reader.study_id(search.name)
    if sid is None:
        raise NotFound(f"search {search.id} has no study: its submission failed")
    return sid
