"""Guards that run before a request's body is read: the key of a write, and the body's size.

FastAPI reads and parses a route's JSON body before it resolves the route's dependencies, so with
the key checked by a dependency only, anyone could make the API read and parse a body (anonymous
malformed JSON got a 422, not a 401), of any size. These two ASGI middlewares run first:

* :class:`WriteAuth`: a write (any method but GET, HEAD and OPTIONS) without a valid key is a 401
  before one byte of its body is read. The key it found is left in the request's state, so the
  route's dependency does not look it up again.
* :class:`BodyLimit`: a body over ``max_body_bytes`` is a 413: at once when ``Content-Length``
  says so, and while streaming (a chunked body has no length) as soon as the count passes it.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import HTTPException
from sqlalchemy.exc import OperationalError
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from structsearch.service.apikeys import authenticate

#: Where a key found by :class:`WriteAuth` is kept (``request.state.api_key``).
STATE_KEY = "api_key"
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


async def _reply(send: Send, status_code: int, detail: str, headers: dict[str, str] | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status_code, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


class WriteAuth:
    """401 for a write without a usable ``Authorization: Bearer <key>``, before the body is read."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in READ_METHODS:
            await self.app(scope, receive, send)
            return
        challenge = {"WWW-Authenticate": "Bearer"}
        scheme, _, token = (_header(scope, b"authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            await _reply(send, 401, "missing API key: send the header 'Authorization: Bearer <key>'", challenge)
            return
        services = scope["app"].state.services
        try:
            key = await run_in_threadpool(authenticate, services.db, token.strip())
        except OperationalError:
            await _reply(send, 503, "database unavailable; try again shortly")
            return
        if key is None:
            await _reply(send, 401, "invalid, revoked or expired API key", challenge)
            return
        scope.setdefault("state", {})[STATE_KEY] = key
        await self.app(scope, receive, send)


class BodyLimit:
    """413 for a request body over ``max_bytes``, declared or streamed."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _too_large(self) -> str:
        return f"request body over {self.max_bytes} bytes (setting STRUCTSEARCH_MAX_BODY_BYTES)"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _header(scope, b"content-length")
        if declared is not None and (not declared.strip().isdigit() or int(declared) > self.max_bytes):
            await _reply(send, 413, self._too_large())
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message: dict[str, Any] = dict(await receive())
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:  # FastAPI passes an HTTPException from reading the body through
                    raise HTTPException(413, self._too_large())
            return message

        await self.app(scope, counted, send)
