"""Engine and sessions for the service's own tables: one :class:`Database` per process.

Sessions come from one context manager (:meth:`Database.session`): commit on success, roll back
on any exception, always close -- the shape Optuna's RDB storage uses, so no caller handles
transactions by hand.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import quote, urlencode

from sqlalchemy import create_engine, make_url, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker


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


class Database:
    """The service's engine (created lazily by SQLAlchemy: no connection until first use)."""

    def __init__(self, url: str) -> None:
        self.url = url
        # pre-ping: a worker or API that outlives a database restart gets fresh connections.
        self.engine: Engine = create_engine(url, pool_pre_ping=True)
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

    def dispose(self) -> None:
        self.engine.dispose()
