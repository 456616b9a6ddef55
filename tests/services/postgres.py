"""A real PostgreSQL server for the tests: Debian's ``postgresql`` binaries, a private cluster on loopback.

Installed with apt-get when missing (as root; Debian's own "main" cluster is not created, so nothing else starts).
``initdb`` makes a throw-away cluster in a temporary folder, and ``postgres -D DIR`` runs in the foreground on
127.0.0.1 and a free port, its Unix socket in the same folder, durability switched off (a test server). PostgreSQL
refuses to run as root: as root, both run as the ``postgres`` OS user. Teardown stops the server by pid and
removes the folder. With ``BIGSEG_TEST_POSTGRES_URL=postgresql://USER:PASSWORD@HOST:PORT/DB`` (a role allowed to
create databases) the tests use that server instead of starting one.

Tests use the session-scoped fixture ``postgres``: ``from services.postgres import postgres  # noqa: F401``.
``postgres.url`` is a ``postgresql://`` URL of an empty database owned by the role ``bigseg``;
``postgres.fresh_database(name)`` gives the URL of another, new and empty, database.
"""
from __future__ import annotations

import glob
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from urllib.parse import quote, urlsplit, urlunsplit

import pytest

from services._process import free_ports, read_text, stop, wait_until

log = logging.getLogger(__name__)
START_TIMEOUT_S = 60.0
#: The role and the first database the tests get (the service's own names).
ROLE = DATABASE = "bigseg"
#: PostgreSQL's own administrator role inside the private cluster.
SUPERUSER = "postgres"
OS_USER = "postgres"
URL_ENV = "BIGSEG_TEST_POSTGRES_URL"
#: Debian's postgresql-common reads this folder before creating a cluster; it stops apt creating (and starting)
#: a system-wide "main" cluster on port 5432 beside ours.
NO_MAIN_CLUSTER = "/etc/postgresql-common/createcluster.d/bigseg-tests.conf"
#: A test server: no fsync, a small footprint, and nothing but loopback.
SERVER_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off", "shared_buffers": "32MB",
                   "max_connections": "100", "logging_collector": "off", "log_min_messages": "warning"}
DATABASE_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def postgres_binaries() -> str | None:
    """The bin folder of the newest PostgreSQL under /usr/lib/postgresql (Debian's layout), or None."""
    found = glob.glob("/usr/lib/postgresql/*/bin/postgres")
    if not found:
        return None
    newest = max(found, key=lambda p: int(re.sub(r"\D", "", p.split("/")[-3]) or 0))
    return os.path.dirname(newest)


def ensure_installed() -> str:
    """Install Debian's ``postgresql`` with apt-get (as root) unless it is there; returns its bin folder."""
    found = postgres_binaries()
    if found:
        return found
    if os.geteuid() != 0:
        pytest.skip("PostgreSQL (Debian package postgresql) is not installed and installing it needs root")
    os.makedirs(os.path.dirname(NO_MAIN_CLUSTER), exist_ok=True)
    with open(NO_MAIN_CLUSTER, "w") as f:
        f.write("# written by bigseg's tests: the tests start their own private clusters\n"
                "create_main_cluster = false\n")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    lock = ["-o", "DPkg::Lock::Timeout=600"]
    for args in (["update"], ["install", "-y", "--no-install-recommends", "postgresql"]):
        for attempt in range(10):  # another apt-get may hold the lists lock for a while
            proc = subprocess.run(["apt-get", *lock, *args], env=env, capture_output=True, text=True, check=False)
            if proc.returncode == 0:
                break
            if "lock" not in proc.stderr.lower() or attempt == 9:
                raise RuntimeError(f"apt-get {' '.join(args)} failed:\n{proc.stderr[-2000:]}")
            time.sleep(10)
    found = postgres_binaries()
    if found is None:
        raise RuntimeError("apt-get installed postgresql but /usr/lib/postgresql/*/bin/postgres is missing")
    return found


def with_database(url: str, database: str) -> str:
    """``url`` naming another database (same server, role and password)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + quote(database), parts.query, parts.fragment))


@dataclass
class Postgres:
    """A PostgreSQL server the tests may use: the URL of their database, and how to get more empty ones."""

    url: str = field(repr=False)
    #: URL of a role allowed to create and drop databases (the superuser of a private cluster).
    admin_url: str = field(repr=False)
    folder: str = ""
    process: subprocess.Popen | None = field(default=None, repr=False)
    log_path: str = ""
    created: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int | None:
        """The postmaster's pid (None for a server given by BIGSEG_TEST_POSTGRES_URL)."""
        return self.process.pid if self.process else None

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or 5432

    @property
    def owner(self) -> str:
        return urlsplit(self.url).username or ROLE

    def connect(self, url: str | None = None, **kwargs):
        """A psycopg connection to ``url`` (default: the tests' database)."""
        import psycopg
        return psycopg.connect(url or self.url, connect_timeout=5, **kwargs)

    def fresh_database(self, name: str | None = None) -> str:
        """Create an empty database ``name`` (a unique one when None) owned by the tests' role; returns its URL.
        A database of that name left by an earlier test is dropped first (its connections closed)."""
        from psycopg import sql
        name = name or f"bigseg_{uuid.uuid4().hex[:12]}"
        if not DATABASE_NAME.fullmatch(name):
            raise ValueError(f"database name {name!r}: use lowercase letters, digits and '_' (at most 63)")
        with self.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name),
                                                                     sql.Identifier(self.owner)))
        if name not in self.created:
            self.created.append(name)
        return with_database(self.url, name)

    def log_tail(self, n: int = 30) -> str:
        if not self.log_path or not os.path.exists(self.log_path):
            return ""
        return "".join(read_text(self.log_path).splitlines(keepends=True)[-n:])


def _as_server_user() -> dict:
    """Popen arguments that run a PostgreSQL program as the postgres OS user when we are root (it refuses root)."""
    return {"user": OS_USER, "group": OS_USER} if os.geteuid() == 0 else {}


def _owned_folder(path: str, mode: int) -> str:
    os.makedirs(path, mode=mode)
    os.chmod(path, mode)
    if os.geteuid() == 0:
        shutil.chown(path, OS_USER, OS_USER)
    return path


def _initdb(bindir: str, root: str, password: str) -> str:
    data = _owned_folder(os.path.join(root, "data"), 0o700)
    pwfile = os.path.join(root, "pwfile")
    fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(password + "\n")
    if os.geteuid() == 0:
        shutil.chown(pwfile, OS_USER, OS_USER)
    try:
        proc = subprocess.run([os.path.join(bindir, "initdb"), "-D", data, "-U", SUPERUSER, f"--pwfile={pwfile}",
                               "--auth=scram-sha-256", "--encoding=UTF8", "--locale=C", "--no-sync"],
                              cwd=root, capture_output=True, text=True, timeout=120, check=False,
                              **_as_server_user())
    finally:
        os.unlink(pwfile)
    if proc.returncode:
        raise RuntimeError(f"initdb failed ({proc.returncode}):\n{(proc.stdout + proc.stderr)[-2000:]}")
    return data


def _accepts_connections(admin_url: str, process: subprocess.Popen, log_path: str) -> bool:
    import psycopg
    if process.poll() is not None:
        raise RuntimeError(f"postgres exited with {process.returncode}:\n{read_text(log_path)[-2000:]}")
    try:
        with psycopg.connect(admin_url, connect_timeout=2):
            return True
    except psycopg.OperationalError:
        return False


def start() -> Postgres:
    """Install if needed, initdb a private cluster, start postgres on 127.0.0.1:<free port>, create the role
    ``bigseg`` (random password) and its database ``bigseg``; return once it accepts connections."""
    pytest.importorskip("psycopg", reason="psycopg is not installed: pip install 'psycopg[binary]'")
    bindir = ensure_installed()
    root = tempfile.mkdtemp(prefix="bigseg-postgres-")
    os.chmod(root, 0o755)  # the postgres OS user must reach its folders inside
    server = Postgres(url="", admin_url="", folder=root, log_path=os.path.join(root, "postgres.log"))
    try:
        admin_password, password = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
        data = _initdb(bindir, root, admin_password)
        sockets = _owned_folder(os.path.join(root, "sockets"), 0o755)
        (port,) = free_ports(1)
        settings = [arg for key, value in SERVER_SETTINGS.items() for arg in ("-c", f"{key}={value}")]
        with open(server.log_path, "wb") as logfile:
            server.process = subprocess.Popen(
                [os.path.join(bindir, "postgres"), "-D", data, "-k", sockets, "-h", "127.0.0.1", "-p", str(port),
                 *settings], cwd=root, stdout=logfile, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, **_as_server_user())
        server.admin_url = f"postgresql://{SUPERUSER}:{quote(admin_password)}@127.0.0.1:{port}/postgres"
        server.url = f"postgresql://{ROLE}:{quote(password)}@127.0.0.1:{port}/{DATABASE}"
        wait_until(lambda: _accepts_connections(server.admin_url, server.process, server.log_path),
                   START_TIMEOUT_S, "PostgreSQL", server.log_path, interval=0.1)
        from psycopg import sql
        with server.connect(server.admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(ROLE),
                                                                          sql.Literal(password)))
        server.fresh_database(DATABASE)
        return server
    except BaseException:
        shutdown(server)
        raise


def shutdown(server: Postgres) -> None:
    """Stop our server by pid (SIGINT: PostgreSQL's fast shutdown, which ends open sessions; then SIGTERM and
    SIGKILL to its process group) and remove its folder. For a server we did not start: drop the databases
    the tests created."""
    if server.process is None:
        _drop_created(server)
        return
    if server.process.poll() is None:
        try:
            os.kill(server.process.pid, signal.SIGINT)
            server.process.wait(15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    stop(server.process)
    shutil.rmtree(server.folder, ignore_errors=True)


def _drop_created(server: Postgres) -> None:
    import psycopg
    from psycopg import sql
    try:
        with server.connect(server.admin_url, autocommit=True) as conn:
            for name in server.created:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    except psycopg.Error as err:
        log.warning("dropping the test databases %s: %s", server.created, err)


def external(url: str) -> Postgres:
    """The server of ``BIGSEG_TEST_POSTGRES_URL``: its role must be allowed to create databases."""
    pytest.importorskip("psycopg", reason="psycopg is not installed: pip install 'psycopg[binary]'")
    if urlsplit(url).scheme not in ("postgresql", "postgres"):
        raise ValueError(f"{URL_ENV}={urlsplit(url).scheme}://...: give a postgresql://USER:PASSWORD@HOST:PORT/DB URL")
    server = Postgres(url=url, admin_url=url)
    server.url = server.fresh_database(f"bigseg_{uuid.uuid4().hex[:12]}")
    return server


@pytest.fixture(scope="session")
def postgres():
    """A PostgreSQL server for the session (see :class:`Postgres`): a private one on loopback, or the one of
    ``BIGSEG_TEST_POSTGRES_URL``."""
    url = os.environ.get(URL_ENV)
    server = external(url) if url else start()
    try:
        yield server
    finally:
        shutdown(server)
