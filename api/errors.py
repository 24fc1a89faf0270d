"""Every error is ``{"detail": "<one line>"}`` with a fitting status; bad input is never a 500.

* HTTP errors raised by routes and dependencies keep their status and headers;
* request validation (path, query, JSON syntax) -> 422 with the first problems on one line;
* :class:`StructsearchError` escaping a route -> the status its class carries (422 for input the
  user must fix, :class:`~structsearch.errors.NotFound` 404, ``Conflict`` 409, ``Unavailable`` 503);
* the database unreachable (connection errors) -> 503, so clients and proxies retry;
* anything else -> 500 ``internal error`` (logged with its traceback; a bug).
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from structsearch.errors import StructsearchError, one_line
from structsearch.search.storage import hide_secrets

log = logging.getLogger("structsearch.api")


def error_response(status_code: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The error body; line breaks squeezed, as a message may quote what a client sent."""
    return JSONResponse({"detail": " ".join(detail.split())}, status_code=status_code, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        return error_response(exc.status_code, detail, getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, one_line(exc))

    @app.exception_handler(StructsearchError)
    async def structsearch_error(request: Request, exc: StructsearchError) -> JSONResponse:
        return error_response(exc.status, str(exc))

    @app.exception_handler(OperationalError)
    async def database_down(request: Request, exc: OperationalError) -> JSONResponse:
        log.warning(
            "database unavailable on %s %s: %s",
            request.method,
            request.url.path,
            hide_secrets(one_line(exc.orig or exc), request.app.state.settings.database_url),
        )
        return error_response(503, "database unavailable; try again shortly")

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal error; the server log has the details")
