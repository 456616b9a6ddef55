"""The ``postgres`` fixture gives a real PostgreSQL: its role can create and use tables in its own database, the
server listens on loopback only, and ``fresh_database`` gives new, empty databases."""
from __future__ import annotations

import os
import subprocess
from urllib.parse import urlsplit

import pytest

from services.postgres import ROLE, postgres  # noqa: F401

psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed: pip install 'psycopg[binary]'")


def tables(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        return [r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]


def test_the_role_creates_and_reads_a_table_in_its_own_database(postgres):  # noqa: F811
    parts = urlsplit(postgres.url)
    assert parts.scheme == "postgresql" and parts.password
    with psycopg.connect(postgres.url) as conn:
        user, database = conn.execute("SELECT current_user, current_database()").fetchone()
        conn.execute("CREATE TABLE fixture_smoke (id integer PRIMARY KEY, name text NOT NULL)")
        conn.cursor().executemany("INSERT INTO fixture_smoke VALUES (%s, %s)", [(1, "queued"), (2, "running")])
        conn.commit()
    with psycopg.connect(postgres.url) as conn:     # a second session sees the committed rows
        rows = conn.execute("SELECT id, name FROM fixture_smoke ORDER BY id").fetchall()
        conn.execute("DROP TABLE fixture_smoke")
        conn.commit()
    assert (user, database) == (parts.username, parts.path.lstrip("/"))
    assert rows == [(1, "queued"), (2, "running")]


def test_a_wrong_password_is_refused(postgres):  # noqa: F811
    parts = urlsplit(postgres.url)
    wrong = postgres.url.replace(f":{parts.password}@", ":not-the-password@")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(wrong, connect_timeout=5)


def test_fresh_database_is_new_and_empty(postgres):  # noqa: F811
    with psycopg.connect(postgres.url) as conn:
        conn.execute("CREATE TABLE left_behind (x integer)")
        conn.commit()
    try:
        first = postgres.fresh_database("fixture_fresh")
        assert urlsplit(first).path == "/fixture_fresh" and tables(first) == []
        with psycopg.connect(first) as conn:
            conn.execute("CREATE TABLE jobs (id text)")
            conn.commit()
        assert tables(first) == ["jobs"]
        again = postgres.fresh_database("fixture_fresh")    # the same name again: empty again
        assert again == first and tables(again) == []
        unique = postgres.fresh_database()
        assert unique not in (first, postgres.url) and tables(unique) == []
        assert tables(postgres.url) == ["left_behind"]       # the session's database is untouched
    finally:
        with psycopg.connect(postgres.url) as conn:
            conn.execute("DROP TABLE left_behind")
            conn.commit()
    with pytest.raises(ValueError, match="lowercase letters"):
        postgres.fresh_database("Robert'); DROP TABLE x;--")


def listening_addresses(pid: int) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket the process ``pid`` listens on, as `ss` reports them."""
    out = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True, check=True, timeout=30).stdout
    found = set()
    for line in out.splitlines():
        if f"pid={pid}," in line:
            address, _, port = line.split()[3].rpartition(":")
            found.add((address.strip("[]"), int(port)))
    return found


def test_the_server_listens_on_loopback_only(postgres):  # noqa: F811
    if postgres.pid is None:
        pytest.skip("BIGSEG_TEST_POSTGRES_URL names a server these tests did not start")
    assert listening_addresses(postgres.pid) == {("127.0.0.1", postgres.port)}
    sockets = os.listdir(os.path.join(postgres.folder, "sockets"))
    assert f".s.PGSQL.{postgres.port}" in sockets         # its Unix socket is in its own folder, not /run
    assert urlsplit(postgres.url).hostname == "127.0.0.1" and urlsplit(postgres.url).username == ROLE
