"""``bigseg serve`` as a real server process for the tests: its own data dir, a free loopback port, stopped by pid.

Fixtures:
- ``database``: the database URL of one test's server, parametrised: a SQLite file, and a fresh database on the
  real PostgreSQL of :mod:`services.postgres` (so every test that uses ``server`` runs against both);
- ``server``: a started :class:`Server` with ``database``, the test's ``tmp_path/data`` as its only root (rw);
- ``start_server``: a factory for tests that need other settings, a restart, or several servers.

Runner processes are found through the jobs' ``runner_pid`` and stopped by pid (their process group) at teardown.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

import httpx
import pytest
import yaml

from services._process import free_ports, read_text, stop, wait_until
from services.postgres import postgres  # noqa: F401 - the fixture ``database`` requests it by name

#: Settings every test server gets unless the test overrides them: quick heartbeats and cancel escalation,
#: and a local cluster of 2 single-threaded workers per job (CI has 2 cores).
TEST_SETTINGS = {"heartbeat": 1, "cancel-grace": "15s", "runners": 2,
                 "profiles": {"local": {"kind": "local", "workers": 2}}}
START_TIMEOUT_S = 60.0


@dataclass
class Server:
    """A running ``bigseg serve`` and what the tests need to talk to it."""

    url: str
    data_dir: str
    database: str
    roots: list[str]
    log: str
    proc: subprocess.Popen | None = None
    args: list[str] = field(default_factory=list)

    @property
    def api(self) -> str:
        return self.url + "/api/v1"

    @property
    def token(self) -> str:
        return read_text(os.path.join(self.data_dir, "token")).strip()

    def http(self, token: str | None = "admin") -> httpx.Client:
        """An HTTP client for the API; ``token="admin"`` sends the admin's, ``None`` none."""
        headers = {}
        if token is not None:
            headers["Authorization"] = f"Bearer {self.token if token == 'admin' else token}"
        return httpx.Client(base_url=self.api, headers=headers, timeout=60)

    def job(self, job_id: str) -> dict:
        with self.http() as c:
            r = c.get(f"/jobs/{job_id}")
            r.raise_for_status()
            return r.json()

    def wait(self, job_id: str, statuses, timeout: float = 120.0, check=None) -> dict:
        """Poll the job until its status is one of ``statuses`` (and ``check(job)`` holds); fail with the job's
        log after ``timeout`` seconds."""
        statuses = {statuses} if isinstance(statuses, str) else set(statuses)
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if job["status"] in statuses and (check is None or check(job)):
                return job
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} is {job['status']} after {timeout:.0f} s, not "
                                     f"{sorted(statuses)}; progress {job['progress']}; log:\n{self.job_log(job_id)}")
            time.sleep(0.1)

    def job_log(self, job_id: str) -> str:
        path = os.path.join(self.data_dir, "jobs", job_id, "job.log")
        return read_text(path)[-4000:] if os.path.exists(path) else "(no log)"

    def submit(self, body: dict, token: str | None = "admin") -> dict:
        with self.http(token) as c:
            r = c.post("/jobs", json=body)
            assert r.status_code == 201, r.text
            return r.json()

    def runner_pid(self, job_id: str) -> int | None:
        """The job's runner pid, as the server recorded it (read from the database directly)."""
        from bigseg.service.db import Store
        store = Store(self.database)
        try:
            return store.job(job_id)["runner_pid"]
        finally:
            store.dispose()

    def start(self) -> "Server":
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [_repo(), os.environ.get("PYTHONPATH")]))}
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "bigseg", "serve", *self.args], stdout=out,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                         start_new_session=True)
        wait_until(self._healthy, START_TIMEOUT_S, "bigseg serve", self.log)
        return self

    def _healthy(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"bigseg serve exited with {self.proc.returncode}:\n{read_text(self.log)[-3000:]}")
        try:
            return httpx.get(self.api + "/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the server (SIGKILL: as a crash would); its runners keep running."""
        if self.proc is None or self.proc.poll() is not None:
            return
        if sig == signal.SIGKILL:
            self.proc.kill()
            self.proc.wait(10)
        else:
            stop(self.proc, timeout=15)

    def stop_runners(self) -> None:
        """SIGKILL every runner process group this server's jobs recorded."""
        from bigseg.service.db import Store
        store = Store(self.database)
        try:
            for job in store.jobs(limit=10_000)[0]:
                if job["runner_pid"]:
                    try:
                        os.killpg(job["runner_pid"], signal.SIGKILL)
                    except (ProcessLookupError, PermissionError):
                        pass
        finally:
            store.dispose()


def _repo() -> str:
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request, tmp_path) -> str:
    """A new, empty database for one test's server: SQLite, then PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'service.db'}"
    return request.getfixturevalue("postgres").fresh_database()


@pytest.fixture
def start_server(tmp_path):
    """``start_server(database, roots=None, models=(), **settings) -> Server``: a server in ``tmp_path``
    (several calls share the data dir unless ``data_dir`` is given); all are stopped at teardown."""
    started: list[Server] = []

    def start(database: str, roots: list[str] | None = None, models=(), data_dir: str | None = None,
              port: int | None = None, **settings) -> Server:
        data_dir = data_dir or str(tmp_path / "service")
        roots = roots if roots is not None else [f"{tmp_path / 'data'}:rw"]
        os.makedirs(tmp_path / "data", exist_ok=True)
        config = os.path.join(str(tmp_path), f"service-{len(started)}.yaml")
        with open(config, "w") as f:
            yaml.safe_dump({**TEST_SETTINGS, **{k.replace("_", "-"): v for k, v in settings.items()},
                            "roots": roots, "models": list(models)}, f)
        port = port or free_ports(1)[0]
        server = Server(url=f"http://127.0.0.1:{port}", data_dir=data_dir, database=database, roots=roots,
                        log=os.path.join(str(tmp_path), f"serve-{len(started)}.log"),
                        args=["--port", str(port), "--data-dir", data_dir, "--database", database, "--config",
                              config])
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()
    for server in started:
        server.stop_runners()


@pytest.fixture
def server(start_server, database) -> Server:
    return start_server(database)


def job_body(image: str, **method) -> dict:
    """A JSON job body: watershed on ``image`` with ``method`` parameters (e.g. ``diameter=8``)."""
    name = method.pop("label", "nuclei")
    return {"input": {"url": image}, "method": {"name": "watershed", **method}, "output": {"name": name}}


def events_of(server: Server, job_id: str) -> list[dict]:
    with server.http() as c:
        return c.get(f"/jobs/{job_id}/events").json()["events"]


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]
