"""The FastAPI application factory: ``create_app(settings)``.

Everything the app needs is built here from the settings and kept on ``app.state`` -- no module
globals, no connection at import or construction time (engines, the Optuna storage and the queue
connect on first use), so importing the app or building it in a test needs no database.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from api.deps import Services
from api.errors import install_error_handlers
from api.middleware import BodyLimit, WriteAuth
from api.routes import events, fronts, health, models, searches, trials
from structsearch.service.settings import ServiceSettings

API_PREFIX = "/api/v1"

log = logging.getLogger("structsearch.api")


def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    """Build the API for ``settings`` (default: from the environment)."""
    settings = settings or ServiceSettings()
    services = Services.from_settings(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # A fresh process's first requests cost what later ones do: FastAPI builds each route's
        # dependencies on its first match (~30 ms for the first request; the OpenAPI document
        # builds them all), and the requests' queries are compiled and their connections opened.
        app.openapi()
        try:
            services.warm()
        except Exception:  # the API still starts: /readyz reports the database, requests retry it
            log.warning("could not warm up the database connections at startup", exc_info=True)
        # Everything imported so far (torch, timm, optuna: ~500k objects) lives as long as the
        # process; frozen, the collector stops walking it: each full collection took ~260 ms,
        # landing on whichever requests were running (the p99 of every endpoint). No full
        # collection first: it costs as much again at every start (in the test suite, ~0.45 s per
        # app: a quarter of the API tests' time), and all it would free is the little garbage that
        # imports leave in cycles, which stays frozen until shutdown instead.
        gc.freeze()
        try:
            yield
        finally:
            gc.unfreeze()  # collectable again (a test process builds many apps)
            services.close()

    app = FastAPI(
        title="structsearch",
        version="1",
        summary="Find the best compact student of a timm teacher under a MACs (budget key `flops`), params, latency or memory budget.",
        description=(
            "Submit a study spec; workers score candidate students with short knowledge-distillation runs; "
            "read the Pareto front and the best student within a budget, and download it. "
            "Submitting and cancelling need an API key (`Authorization: Bearer <key>`, from `structsearch apikey create`)."
        ),
        lifespan=lifespan,
    )
    app.state.services = services
    app.state.settings = settings
    install_error_handlers(app)
    # Outermost first: a write's key, then the body's size, both before the body is read.
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(WriteAuth)
    app.include_router(health.router)
    for router in (searches.router, trials.router, fronts.router, events.router, models.router):
        app.include_router(router, prefix=API_PREFIX)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]  # FastAPI's documented schema override
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, with the search body described by the StudySpec JSON schema.

    The route takes the spec as a plain JSON object and validates it with ``parse_study_spec``
    (the same code as the CLI, with the same one-line messages); the schema is for readers and
    client generators.
    """
    if app.openapi_schema:
        return app.openapi_schema
    from structsearch.search.spec import StudySpec

    doc = get_openapi(
        title=app.title, version=app.version, summary=app.summary, description=app.description, routes=app.routes
    )
    spec_schema = StudySpec.model_json_schema(ref_template="#/components/schemas/{model}")
    components = doc.setdefault("components", {}).setdefault("schemas", {})
    components.update(spec_schema.pop("$defs", {}))
    components["StudySpec"] = spec_schema
    for methods in doc.get("paths", {}).values():
        for op in methods.values():
            if isinstance(op, dict) and op.pop("x-study-spec", False):
                content = op["requestBody"]["content"]["application/json"]
                content["schema"] = {"$ref": "#/components/schemas/StudySpec"}
    app.openapi_schema = doc
    return doc
