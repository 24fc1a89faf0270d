"""structsearch's REST API (FastAPI). Build it with :func:`create_app`; serve it with
``structsearch serve`` (or ``uvicorn --factory api:create_app``)."""

from api.app import create_app

__all__ = ["create_app"]
