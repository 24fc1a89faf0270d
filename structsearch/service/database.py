"""Engine and sessions for the service's own tables: one :class:`Database` per process.

Sessions come from one context manager (:meth:`Database.session`): commit on success, roll back
on any exception, always close -- the shape Optuna's RDB storage uses, so no caller handles
transactions by hand.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote, urlencode

from pydantic_core import from_json
from sqlalchemy import create_engine, event, exc, make_url, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, configure_mappers, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection, QueuePool


def libpq_url(url: str) -> str:
    """``postgresql+psycopg://u:p@h/db`` -> ``postgresql://u:p@h/db``, each part percent-encoded.

    What libpq clients want: procrastinate's connector, and psycopg2-based tools such as
    optuna-dashboard (whose image only has psycopg2). SQLAlchemy's own rendering leaves a space in
    a user name or password as is, which libpq refuses; every part percent-encoded is read back
    the same by libpq and by SQLAlchemy, whatever the password holds (spaces, quotes, ``@ / % :``).
    """
    u = make_url(url)
    if not u.drivername.startswith("postgresql"):
        return url
    auth = ""
    if u.username is not None:
        auth = _part(u.username) + ("" if u.password is None else ":" + _part(str(u.password))) + "@"
    host = f"[{u.host}]" if u.host and ":" in u.host else (u.host or "")
    port = f":{u.port}" if u.port is not None else ""
    database = "/" + _part(u.database) if u.database else ""
    pairs = [(k, v) for k, vs in u.query.items() for v in ((vs,) if isinstance(vs, str) else vs)]
    query = "?" + urlencode(pairs, quote_via=quote) if pairs else ""
    return f"postgresql://{auth}{host}{port}{database}{query}"


def _part(text: str) -> str:
    return quote(text, safe="")


#: A pooled connection idle longer than this is pinged before use (see :func:`_ping_when_idle`).
PING_IDLE_S = 5.0


def _ping_when_idle(engine: Engine) -> None:
    """Ping a connection on checkout only when it sat in the pool over :data:`PING_IDLE_S`.

    So a worker or API that outlives a database restart gets fresh connections (a failed ping
    makes the pool replace the connection), without SQLAlchemy's ``pool_pre_ping`` round trip
    before every unit of work: a connection used moments ago is live (the worker's read-model
    writes come back to back; its trial's guard queries the database every few seconds). The
    pool is LIFO, so the connection handed out is the one used last.
    """

    @event.listens_for(engine, "connect")
    @event.listens_for(engine, "checkin")
    def used(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        record.info["used_at"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def ping(dbapi_connection: Any, record: ConnectionPoolEntry, proxy: PoolProxiedConnection) -> None:
        if time.monotonic() - record.info.get("used_at", float("-inf")) <= PING_IDLE_S:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as e:  # any failure: the pool discards it and checks out another
            raise exc.DisconnectionError(str(e)) from e


class Database:
    """The service's engine (created lazily by SQLAlchemy: no connection until first use)."""

    def __init__(self, url: str) -> None:
        self.url = url
        # JSON columns (specs) parsed by pydantic-core's parser, about twice as fast as json.loads:
        # a page of 100 searches parses 200 specs
        self.engine: Engine = create_engine(url, pool_use_lifo=True, json_deserializer=from_json)
        _ping_when_idle(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A unit of work: committed when the block ends, rolled back when it raises."""
        session = self._sessions()
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def ping(self) -> None:
        """Raise unless the database answers (``/readyz``)."""
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def warm(self, tables: Sequence[str] = ()) -> None:
        """Open the pool's connections now, all at once (then returned to the pool), so that the
        first concurrent requests of a fresh process do not each wait for a connection to be made;
        on each, read ``tables``' catalog entries (a new connection's first query of a table took
        1-2 ms more for them)."""
        configure_mappers()
        conns = []
        try:
            pool = self.engine.pool
            for _ in range(pool.size() if isinstance(pool, QueuePool) else 1):
                conns.append(self.engine.connect())
                conns[-1].execute(text("SELECT 1"))
                for table in tables:
                    conns[-1].execute(text(f"SELECT 1 FROM {table} LIMIT 0"))
        finally:
            for conn in conns:
                conn.close()

    def dispose(self) -> None:
        self.engine.dispose()
