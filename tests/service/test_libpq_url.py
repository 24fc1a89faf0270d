"""A database password may hold any character: the libpq form of the URL still connects (issue 13).

The queue's connector, migrations' role setup and the dashboard turn the SQLAlchemy URL into a
libpq one. SQLAlchemy leaves a space as is, and libpq refuses it. Checked against the real
PostgreSQL, with the password really checked: the test cluster trusts every login, so for the
length of the test one ``pg_hba.conf`` line makes it ask this role for its password.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import create_engine, make_url, text

from structsearch.service.database import libpq_url
from tests.service.conftest import Postgres

PASSWORD = "p w\"'@/%:?#&=+x y"


@pytest.fixture
def role(postgres: Postgres) -> Iterator[tuple[str, bool]]:
    """A login role with :data:`PASSWORD`; True when the cluster checks its password."""
    name = f"pw_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(libpq_url(postgres.url), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(name), sql.Literal(PASSWORD)))
        hba = Path(conn.execute("SHOW hba_file").fetchone()[0])
        try:
            original = hba.read_text()
            hba.write_text(
                f"host all {name} 127.0.0.1/32 scram-sha-256\nhost all {name} ::1/128 scram-sha-256\n{original}"
            )
            conn.execute("SELECT pg_reload_conf()")
            checked = True
        except OSError:  # a server elsewhere: the URL is still parsed and used, the password not checked
            checked = False
    try:
        yield name, checked
    finally:
        with psycopg.connect(libpq_url(postgres.url), autocommit=True) as conn:
            if checked:
                hba.write_text(original)
                conn.execute("SELECT pg_reload_conf()")
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


def test_a_password_with_spaces_quotes_and_url_characters_connects(postgres: Postgres, role: tuple[str, bool]) -> None:
    name, checked = role
    url = make_url(postgres.url).set(username=name, password=PASSWORD).render_as_string(hide_password=False)
    conninfo = libpq_url(url)
    with psycopg.connect(conninfo, connect_timeout=10) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (name,)
    assert make_url(conninfo).password == PASSWORD  # SQLAlchemy reads the same URL back (the dashboard's use)
    engine = create_engine(make_url(conninfo).set(drivername="postgresql+psycopg"))
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT current_user")).scalar() == name
    finally:
        engine.dispose()
    if checked:  # the password was really checked: a wrong one is refused
        wrong = make_url(url).set(password=PASSWORD + "!").render_as_string(hide_password=False)
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(libpq_url(wrong), connect_timeout=10).close()
