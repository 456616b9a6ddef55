"""A Dask cluster deployed by hand, as an admin would: ``dask scheduler`` and ``dask worker`` from their CLIs.

The scheduler listens on 127.0.0.1 (free port, dashboard on a free loopback port) and writes a scheduler file;
one ``dask worker`` process starts 2 single-threaded workers from that file (each behind a nanny, which
restarts a worker that dies). Workers inherit PYTHONPATH, so they import the checkout under test.

Tests use the session-scoped fixture ``dask_cli``: ``from services.dask_cli import dask_cli  # noqa: F401``.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import dataclass

import pytest

from services._process import read_text, stop, wait_until

START_TIMEOUT_S = 60.0
WORKERS = 2


def dask_command() -> list[str]:
    """The ``dask`` CLI beside this interpreter (``python -m dask`` if the script is not there)."""
    script = os.path.join(sysconfig.get_path("scripts"), "dask")
    return [script] if os.access(script, os.X_OK) else [sys.executable, "-m", "dask"]


@dataclass
class DaskCLI:
    """A running hand-started cluster: its address and scheduler file, and the processes behind it."""

    address: str
    scheduler_file: str
    folder: str
    scheduler: subprocess.Popen
    workers: subprocess.Popen
    n_workers: int = WORKERS


def start() -> DaskCLI:
    folder = tempfile.mkdtemp(prefix="bigseg-dask-cli-")
    sfile = os.path.join(folder, "scheduler.json")
    dask = dask_command()
    sched_log, work_log = os.path.join(folder, "scheduler.log"), os.path.join(folder, "workers.log")
    with open(sched_log, "w") as log:
        scheduler = subprocess.Popen([*dask, "scheduler", "--host", "127.0.0.1", "--port", "0",
                                      "--dashboard-address", "127.0.0.1:0", "--scheduler-file", sfile],
                                     cwd=folder, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    workers = None
    try:
        wait_until(lambda: scheduler.poll() is not None or os.path.exists(sfile), START_TIMEOUT_S,
                   "dask scheduler", sched_log)
        if scheduler.poll() is not None:
            raise RuntimeError("dask scheduler exited:\n" + read_text(sched_log)[-3000:])
        with open(work_log, "w") as log:
            workers = subprocess.Popen([*dask, "worker", "--scheduler-file", sfile, "--nworkers", str(WORKERS),
                                        "--nthreads", "1", "--memory-limit", "2GiB", "--host", "127.0.0.1",
                                        "--dashboard-address", "127.0.0.1:0", "--local-directory", folder],
                                       cwd=folder, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        address = json.loads(read_text(sfile))["address"]
        from distributed import Client
        with Client(address, timeout="30s") as client:
            client.wait_for_workers(WORKERS, timeout=START_TIMEOUT_S)
        return DaskCLI(address=address, scheduler_file=sfile, folder=folder, scheduler=scheduler, workers=workers)
    except BaseException:
        stop(workers)
        stop(scheduler)
        shutil.rmtree(folder, ignore_errors=True)
        raise


def shutdown(cluster: DaskCLI) -> None:
    """Stop the workers, then the scheduler, by pid (each leads its own process group)."""
    stop(cluster.workers, timeout=20)
    stop(cluster.scheduler, timeout=20)
    shutil.rmtree(cluster.folder, ignore_errors=True)


@pytest.fixture(scope="session")
def dask_cli():
    """A hand-started scheduler with 2 workers on loopback: ``.address``, ``.scheduler_file``."""
    cluster = start()
    try:
        yield cluster
    finally:
        shutdown(cluster)
