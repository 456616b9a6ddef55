"""The job service under faults, for real: a runner SIGKILLed mid-segment, the server SIGKILLed mid-job and restarted,
cancels while queued, segmenting and stitching, and retries that resume: every outcome is checked against the labels
of one direct ``bigseg.segment`` run (array-equal), on SQLite and PostgreSQL."""
from __future__ import annotations

import os
import shutil
import signal
import time

import numpy as np
import psutil
import pytest
import zarr
from services.bigseg_server import database, events_of, job_body, server, start_server  # noqa: F401
from services.postgres import postgres  # noqa: F401

import bigseg
from bigseg.synthetic import nuclei, write_ome_zarr

pytestmark = [pytest.mark.service, pytest.mark.faults]
#: 144 blocks of 32^3: long enough (segment ~6 s, stitch ~3 s on 2 workers) to act in the middle of a stage.
SHAPE, BLOCK = (32, 384, 384), [32, 32, 32]
N_BLOCKS = 12 * 12


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The test image and the labels ``bigseg.segment`` writes for it, run directly once."""
    folder = tmp_path_factory.mktemp("reference")
    image, _ = nuclei(SHAPE, seed=11)
    path = write_ome_zarr(str(folder / "image.zarr"), image, "zyx", tuple(BLOCK))
    direct = shutil.copytree(path, folder / "direct.zarr")
    result = bigseg.segment(str(direct), "watershed", name="nuclei", diameter=8, block=BLOCK, workers=2)
    return path, zarr.open_group(result.labels, mode="r")["0"][...]


def body(image: str) -> dict:
    return {**job_body(image, diameter=8), "blocks": {"shape": BLOCK}}


def place(reference, server, name="image.zarr") -> str:
    root = server.roots[0].rsplit(":", 1)[0]
    return str(shutil.copytree(reference[0], os.path.join(root, name)))


def stage(job: dict, name: str) -> dict:
    return next(s for s in job["progress"]["stages"] if s["name"] == name)


def segmenting(job: dict, least: int = 8) -> bool:
    return job["progress"]["stage"] == "segment" and least <= stage(job, "segment")["done"] < N_BLOCKS - 16


def assert_labels(job: dict, reference) -> None:
    assert job["status"] == "succeeded", job["error"]
    np.testing.assert_array_equal(zarr.open_group(job["result"]["labels"], mode="r")["0"][...], reference[1])


def assert_not_published(image: str) -> None:
    """An unfinished output is invisible to ome-zarr's reader: no label image, no table."""
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Reader
    assert not any(node.load(Label) for node in Reader(parse_url(image))())
    assert not os.path.exists(os.path.join(image, "labels", "nuclei", "measurements.parquet"))


def states_of(server, job_id: str) -> list[str]:
    return [e["data"]["to"] for e in events_of(server, job_id) if e["kind"] == "state"]


def test_a_killed_runner_is_requeued_and_resumes(server, reference):
    image = place(reference, server)
    job = server.submit(body(image))
    running = server.wait(job["id"], "running", check=segmenting)
    pid = server.runner_pid(job["id"])
    os.kill(pid, signal.SIGKILL)  # as the OOM killer would: the runner alone, its workers orphaned
    done = server.wait(job["id"], {"succeeded", "failed"}, timeout=180)
    assert states_of(server, job["id"]) == ["queued", "starting", "running", "interrupted", "queued", "starting",
                                            "running", "succeeded"]
    assert done["attempt"] == 2 and server.runner_pid(job["id"]) != pid
    assert done["result"]["resumed"]["segment"] >= stage(running, "segment")["done"] > 0
    assert_labels(done, reference)
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_a_killed_server_leaves_its_jobs_running_and_the_next_one_adopts_them(server, reference):
    image = place(reference, server)
    job = server.submit(body(image))
    server.wait(job["id"], "running", check=segmenting)
    pid = server.runner_pid(job["id"])
    server.stop(signal.SIGKILL)
    time.sleep(1.5)
    assert psutil.Process(pid).status() != psutil.STATUS_ZOMBIE  # the runner outlives its server
    server.start()
    done = server.wait(job["id"], {"succeeded", "failed"}, timeout=180)
    assert states_of(server, job["id"]) == ["queued", "starting", "running", "succeeded"]  # never interrupted
    assert done["attempt"] == 1 and server.runner_pid(job["id"]) == pid
    assert_labels(done, reference)


def test_cancel_while_queued_segmenting_and_stitching_then_retry(start_server, database, reference):
    server = start_server(database, runners=1)
    first, second = (place(reference, server, name) for name in ("first.zarr", "second.zarr"))
    a = server.submit(body(first))
    b = server.submit(body(second))
    with server.http() as c:
        # queued: canceled at once, never started
        server.wait(a["id"], "running")
        assert c.get(f"/jobs/{b['id']}").json()["status"] == "queued"
        assert c.post(f"/jobs/{b['id']}/cancel").json()["status"] == "canceled"
        assert states_of(server, b["id"]) == ["queued", "canceled"] and server.runner_pid(b["id"]) is None

        # segmenting: canceling, then canceled within a block's time; nothing published
        server.wait(a["id"], "running", check=segmenting)
        t0 = time.monotonic()
        assert c.post(f"/jobs/{a['id']}/cancel").json()["status"] == "canceling"
        canceled = server.wait(a["id"], "canceled", timeout=60)
        assert time.monotonic() - t0 < 10 and canceled["error"]["kind"] == "canceled"
        assert_not_published(first)
        assert c.post(f"/jobs/{a['id']}/cancel").json()["status"] == "canceled"  # idempotent

        # stitching: retry the first job (it resumes the finished blocks), cancel it in the stitch stage
        assert c.post(f"/jobs/{a['id']}/retry").json()["status"] == "queued"
        stitching = server.wait(a["id"], "running", check=lambda j: j["progress"]["stage"] == "stitch")
        assert stage(stitching, "segment")["resumed"] > 0
        c.post(f"/jobs/{a['id']}/cancel")
        server.wait(a["id"], "canceled", timeout=60)
        assert_not_published(first)
        started = [e["data"]["stage"] for e in events_of(server, a["id"]) if e["kind"] == "StageStarted"]
        assert "relabel" not in started[started.index("stitch", 1):]  # it stopped in the stitch stage

        # a retry finishes it, identical to the direct run
        assert c.post(f"/jobs/{a['id']}/retry").status_code == 202
        done = server.wait(a["id"], {"succeeded", "failed"}, timeout=180)
        assert done["attempt"] == 3 and done["result"]["resumed"]["segment"] == N_BLOCKS
        assert_labels(done, reference)


def test_a_runner_that_ignores_a_cancel_is_killed_after_the_grace_period(start_server, database, reference):
    server = start_server(database, cancel_grace="2s")
    image = place(reference, server)
    job = server.submit(body(image))
    server.wait(job["id"], "running", check=segmenting)
    pid = server.runner_pid(job["id"])
    os.kill(pid, signal.SIGSTOP)  # a runner stuck in native code: it cannot see the cancel
    with server.http() as c:
        assert c.post(f"/jobs/{job['id']}/cancel").json()["status"] == "canceling"
    done = server.wait(job["id"], "canceled", timeout=60)
    assert done["error"]["kind"] == "canceled"
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert_not_published(image)


def test_startup_errors_are_one_line(start_server, database, tmp_path):
    import subprocess
    import sys
    if not database.startswith("sqlite"):
        pytest.skip("port and database checks do not depend on the database kind")
    running = start_server(database)
    port = running.url.rsplit(":", 1)[1]
    for args, words in [
        (["--port", port, "--data-dir", str(tmp_path / "second")], f"port {port}"),
        (["--port", "0", "--data-dir", str(tmp_path / "third"), "--database", str(tmp_path / "no" / "such" / "x.db")],
         "cannot open the database"),
        (["--port", "0", "--data-dir", str(tmp_path / "fourth"), "--database",
          "postgresql://u:secret@127.0.0.1:1/db"], "cannot open the database"),
        (["--port", "0", "--data-dir", str(tmp_path / "fifth"), "--root", "/x:rx"], "mode"),
    ]:
        proc = subprocess.run([sys.executable, "-m", "bigseg", "serve", *args], capture_output=True, text=True,
                              timeout=60)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        assert proc.stderr.startswith("bigseg: error: ") and proc.stderr.count("\n") == 1, proc.stderr
        assert words in proc.stderr and "secret" not in proc.stderr


def test_a_runner_dying_on_its_last_attempt_fails_the_job(start_server, database, reference):
    server = start_server(database, max_attempts=1)
    job = server.submit(body(place(reference, server)))
    server.wait(job["id"], "running", check=segmenting)
    os.kill(server.runner_pid(job["id"]), signal.SIGKILL)
    failed = server.wait(job["id"], "failed", timeout=60)
    assert failed["error"]["kind"] == "system" and "died 1 time(s)" in failed["error"]["message"]
    assert states_of(server, job["id"])[-3:] == ["running", "interrupted", "failed"]
