"""The service's database: users, jobs and their events, in SQLite (WAL) or PostgreSQL, via SQLAlchemy Core.

Portable on purpose: JSON as text, times as epoch seconds, one partial unique index (one active job per output)
that both dialects support. Every status change is a compare-and-set (``UPDATE ... WHERE status IN (allowed)``)
that writes its ``state`` event in the same transaction, so the events are the job's history.
"""
from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from bigseg.errors import BigsegError, first_line
from bigseg.service import states

#: Version of the tables below; a database of a newer version is refused.
SCHEMA_VERSION = 1

metadata = sa.MetaData()
users = sa.Table(
    "users", metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("admin", sa.Boolean, nullable=False, default=False),
    sa.Column("roots_json", sa.Text, nullable=False, default="[]"),
    sa.Column("limits_json", sa.Text, nullable=False, default="{}"),
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("disabled", sa.Boolean, nullable=False, default=False),
)
jobs = sa.Table(
    "jobs", metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("owner", sa.String(64), nullable=False),
    sa.Column("title", sa.Text, nullable=False, default=""),
    sa.Column("tags_json", sa.Text, nullable=False, default="[]"),
    sa.Column("spec_json", sa.Text, nullable=False),
    sa.Column("output_url", sa.Text, nullable=False),
    sa.Column("profile", sa.String(64), nullable=False),
    sa.Column("priority", sa.Integer, nullable=False, default=0),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False, default=1),
    sa.Column("max_attempts", sa.Integer, nullable=False, default=3),
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("queued", sa.Float),
    sa.Column("started", sa.Float),
    sa.Column("finished", sa.Float),
    sa.Column("cancel_requested", sa.Float),
    sa.Column("heartbeat", sa.Float),
    sa.Column("runner_pid", sa.Integer),
    sa.Column("runner_started", sa.Float),
    sa.Column("progress_json", sa.Text),
    sa.Column("result_json", sa.Text),
    sa.Column("error_json", sa.Text),
    sa.Column("dashboard", sa.Text),
)
sa.Index("jobs_one_active_per_output", jobs.c.output_url, unique=True,
         sqlite_where=jobs.c.status.in_(states.ACTIVE), postgresql_where=jobs.c.status.in_(states.ACTIVE))
sa.Index("jobs_queue", jobs.c.status, jobs.c.priority, jobs.c.created)
sa.Index("jobs_owner", jobs.c.owner, jobs.c.created)
events = sa.Table(
    "events", metadata,
    sa.Column("seq", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("job_id", sa.String(40), nullable=False, index=True),
    sa.Column("ts", sa.Float, nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("data_json", sa.Text, nullable=False),
)
meta = sa.Table(
    "meta", metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

_JSON = {"tags_json": "tags", "spec_json": "spec", "progress_json": "progress", "result_json": "result",
         "error_json": "error", "roots_json": "roots", "limits_json": "limits"}


class DatabaseError(BigsegError):
    """The service's database cannot be used."""


class OutputBusy(BigsegError):
    """Another active job writes the same output."""


@dataclass
class Transition:
    """What a compare-and-set status change did: whether it happened and the state it found."""

    ok: bool
    found: str | None


def engine_url(url: str) -> str:
    """SQLAlchemy's URL for a database URL or a SQLite file path (``postgresql://`` uses psycopg 3)."""
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    if "://" in url:
        return url
    return f"sqlite:///{url}"


def redact(url: str) -> str:
    """A database URL without its password (for messages and logs)."""
    try:
        return sa.engine.make_url(engine_url(url)).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparsable URL is shown without anything after the scheme
        return url.split("://", 1)[0] + "://..."


class Store:
    """The jobs, events and users of one service; safe to share between threads and processes."""

    def __init__(self, url: str):
        self.url = url
        self.engine = _engine(url)
        self._writer = self.engine.execution_options(write=True)

    def _write(self):
        """A write transaction (SQLite: ``BEGIN IMMEDIATE``)."""
        return self._writer.begin()

    # --- schema ---------------------------------------------------------------------------------------
    def create(self) -> Store:
        """Create the tables when the database is new; refuse a database of a newer schema. Returns self."""
        try:
            with self._write() as con:
                metadata.create_all(con)
                found = con.execute(sa.select(meta.c.value).where(meta.c.key == "schema_version")).scalar()
                if found is None:
                    con.execute(meta.insert().values(key="schema_version", value=str(SCHEMA_VERSION)))
                    con.execute(meta.insert().values(key="instance", value=secrets.token_hex(8)))
        except sa.exc.SQLAlchemyError as err:
            raise DatabaseError(f"cannot open the database {redact(self.url)}: {_first_line(err)}; check the "
                                "--database URL, that the server runs and that you may write there") from None
        if int(found or SCHEMA_VERSION) > SCHEMA_VERSION:
            raise DatabaseError(f"the database {redact(self.url)} has schema version {found}, newer than this "
                                f"bigseg's {SCHEMA_VERSION}; upgrade bigseg (pip install -U 'bigseg[service]')")
        return self

    # --- users ----------------------------------------------------------------------------------------
    def add_user(self, name: str, token_hash: str, admin: bool = False, roots: list[str] = (),
                 limits: dict | None = None) -> None:
        try:
            with self._write() as con:
                con.execute(users.insert().values(name=name, token_hash=token_hash, admin=admin,
                                                  roots_json=json.dumps(list(roots)),
                                                  limits_json=json.dumps(limits or {}), created=time.time(),
                                                  disabled=False))
        except sa.exc.IntegrityError:
            raise BigsegError(f"user '{name}' exists already; revoke it first or choose another name") from None

    def update_user(self, name: str, **values) -> bool:
        with self._write() as con:
            return con.execute(users.update().where(users.c.name == name).values(**_encoded(values))).rowcount > 0

    def user_by_token_hash(self, token_hash: str) -> dict | None:
        with self.engine.connect() as con:
            row = con.execute(sa.select(users).where(users.c.token_hash == token_hash,
                                                     users.c.disabled.is_(False))).mappings().first()
        return _plain(row)

    def user(self, name: str) -> dict | None:
        with self.engine.connect() as con:
            return _plain(con.execute(sa.select(users).where(users.c.name == name)).mappings().first())

    def users(self) -> list[dict]:
        with self.engine.connect() as con:
            return [_plain(r) for r in con.execute(sa.select(users).order_by(users.c.name)).mappings()]

    # --- jobs -----------------------------------------------------------------------------------------
    def insert_job(self, owner: str, spec: dict, output_url: str, profile: str, *, title: str = "",
                   tags: Iterable[str] = (), priority: int = 0, max_attempts: int = 3) -> str:
        """A new queued job; :class:`OutputBusy` when an active job writes ``output_url``."""
        now = time.time()
        job_id = new_job_id(now)
        try:
            with self._write() as con:
                con.execute(jobs.insert().values(
                    id=job_id, owner=owner, title=title, tags_json=json.dumps(list(tags)), spec_json=json.dumps(spec),
                    output_url=output_url, profile=profile, priority=priority, status=states.QUEUED, attempt=1,
                    max_attempts=max_attempts, created=now, queued=now))
                _event(con, job_id, "state", {"from": None, "to": states.QUEUED, "reason": "submitted"}, now)
        except sa.exc.IntegrityError:
            raise OutputBusy(f"{output_url} is the output of another active job; wait for it, cancel it, or choose "
                             "another output.name / output.url") from None
        return job_id

    def job(self, job_id: str) -> dict | None:
        with self.engine.connect() as con:
            return _plain(con.execute(sa.select(jobs).where(jobs.c.id == job_id)).mappings().first())

    def jobs(self, *, owner: str | None = None, statuses: Iterable[str] = (), tag: str | None = None,
             limit: int = 50, offset: int = 0) -> tuple[list[dict], int]:
        """Jobs newest first, and how many match in all."""
        where = []
        if owner is not None:
            where.append(jobs.c.owner == owner)
        if statuses:
            where.append(jobs.c.status.in_(list(statuses)))
        if tag:
            where.append(jobs.c.tags_json.contains(json.dumps(tag)))
        with self.engine.connect() as con:
            total = con.execute(sa.select(sa.func.count()).select_from(jobs).where(*where)).scalar()
            rows = con.execute(sa.select(jobs).where(*where).order_by(jobs.c.created.desc(), jobs.c.id.desc())
                               .limit(limit).offset(offset)).mappings()
            return [_plain(r) for r in rows], int(total)

    def jobs_in(self, statuses: Iterable[str]) -> list[dict]:
        """Jobs in ``statuses``, in queue order (priority, then age)."""
        with self.engine.connect() as con:
            rows = con.execute(sa.select(jobs).where(jobs.c.status.in_(list(statuses)))
                               .order_by(jobs.c.priority.desc(), jobs.c.created, jobs.c.id)).mappings()
            return [_plain(r) for r in rows]

    def count_by(self, *columns: str) -> list[tuple]:
        """``(value, ..., count)`` rows of the jobs grouped by ``columns``."""
        cols = [jobs.c[c] for c in columns]
        with self.engine.connect() as con:
            return [tuple(r) for r in con.execute(sa.select(*cols, sa.func.count()).group_by(*cols))]

    def transition(self, job_id: str, to: str, reason: str = "", **values) -> Transition:
        """Move the job to ``to`` if its state allows it (see :mod:`bigseg.service.states`), setting ``values``
        (``progress``/``result``/``error``/``tags`` are JSON-encoded) and recording a ``state`` event, atomically."""
        allowed = states.allowed_from(to)
        now = time.time()
        values = _encoded(values)
        if to in states.TERMINAL:
            values.setdefault("finished", now)
        with self._write() as con:
            found = con.execute(sa.select(jobs.c.status).where(jobs.c.id == job_id)).scalar()
            if found not in allowed:
                return Transition(False, found)
            done = con.execute(jobs.update().where(jobs.c.id == job_id, jobs.c.status == found)
                               .values(status=to, **values)).rowcount
            if not done:  # changed between the read and the update
                found = con.execute(sa.select(jobs.c.status).where(jobs.c.id == job_id)).scalar()
                return Transition(False, found)
            _event(con, job_id, "state", {"from": found, "to": to, "reason": reason}, now)
        return Transition(True, found)

    def update(self, job_id: str, *, only_if: Iterable[str] = (), **values) -> bool:
        """Set ``values`` on a job (in one of ``only_if`` states when given); no event."""
        query = jobs.update().where(jobs.c.id == job_id)
        if only_if:
            query = query.where(jobs.c.status.in_(list(only_if)))
        with self._write() as con:
            return con.execute(query.values(**_encoded(values))).rowcount > 0

    # --- events ---------------------------------------------------------------------------------------
    def add_events(self, job_id: str, items: Iterable[tuple[str, dict]], **job_values) -> None:
        """Append events (``(kind, data)``) and optionally update the job row, in one transaction."""
        now = time.time()
        with self._write() as con:
            for kind, data in items:
                _event(con, job_id, kind, data, now)
            if job_values:
                con.execute(jobs.update().where(jobs.c.id == job_id).values(**_encoded(job_values)))

    def events(self, job_id: str, after: int = 0, limit: int = 1000) -> list[dict]:
        with self.engine.connect() as con:
            rows = con.execute(sa.select(events).where(events.c.job_id == job_id, events.c.seq > after)
                               .order_by(events.c.seq).limit(limit)).mappings()
            return [{"seq": r["seq"], "ts": r["ts"], "kind": r["kind"], "data": json.loads(r["data_json"])}
                    for r in rows]

    def dispose(self) -> None:
        self.engine.dispose()


def new_job_id(now: float | None = None) -> str:
    """A readable, time-ordered id: ``j20261125-193012-4f2a9c``."""
    return time.strftime("j%Y%m%d-%H%M%S-", time.gmtime(now or time.time())) + secrets.token_hex(3)


def _engine(url: str) -> sa.Engine:
    target = engine_url(url)
    if target.startswith("sqlite"):
        eng = sa.create_engine(target, connect_args={"timeout": 30, "check_same_thread": False})

        @sa.event.listens_for(eng, "connect")
        def _pragmas(dbapi_con, _record):
            dbapi_con.isolation_level = None  # transactions are begun below, not by the driver
            cur = dbapi_con.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        @sa.event.listens_for(eng, "begin")
        def _begin(con):
            # a write transaction takes the write lock first: read-then-write cannot fail on a lock upgrade
            con.exec_driver_sql("BEGIN IMMEDIATE" if con.get_execution_options().get("write") else "BEGIN")
        return eng
    try:
        return sa.create_engine(target, pool_pre_ping=True, pool_size=5, max_overflow=10)
    except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError, ImportError) as err:
        raise DatabaseError(f"cannot use the database {redact(url)}: {_first_line(err)}; give sqlite:///PATH or "
                            "postgresql://USER:PASSWORD@HOST/DB (pip install 'bigseg[postgres]')") from None


def _event(con, job_id: str, kind: str, data: dict, ts: float) -> None:
    con.execute(events.insert().values(job_id=job_id, ts=ts, kind=kind, data_json=json.dumps(data)))


def _encoded(values: dict) -> dict:
    out = {}
    for key, value in values.items():
        column = key + "_json" if key + "_json" in _JSON else key
        out[column] = json.dumps(value) if column in _JSON and value is not None else value
    return out


def _plain(row) -> dict | None:
    """A row as a dict with its JSON columns decoded (``spec_json`` -> ``spec``)."""
    if row is None:
        return None
    out: dict[str, Any] = {}
    for key, value in dict(row).items():
        if key in _JSON:
            out[_JSON[key]] = json.loads(value) if value else None
        else:
            out[key] = value
    return out


def _first_line(err: BaseException) -> str:
    """The database driver's own message when SQLAlchemy wraps one."""
    return first_line(getattr(err, "orig", None) or err)
