"""The Python client and the service verbs of the CLI against a real ``bigseg serve`` (a subprocess on loopback,
SQLite): a job sent through either gives the labels and table of ``bigseg.segment`` run here on a copy of the
image; cancel, retry and every error are one line."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import zarr

import bigseg
from bigseg.client import Client, JobError, ServiceError
from bigseg.engine import events as ev
from bigseg.errors import InputError, JobCancelled
from bigseg.synthetic import nuclei, write_ome_zarr
from services._process import free_ports
from services.bigseg_server import start_server  # noqa: F401 - fixture

pytestmark = pytest.mark.service

SHAPE, CHUNKS, DIAMETER = (32, 128, 128), (16, 64, 64), 10
BLOCK = (32, 64, 64)  # 4 blocks (the default would be one: a block of at least 4 halos is the whole image)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A synthetic image segmented here with ``bigseg.segment``: (folder of fresh copies, labels, table)."""
    root = tmp_path_factory.mktemp("client")
    image, _ = nuclei(SHAPE, seed=5)
    write_ome_zarr(root / "original.zarr", image, "zyx", CHUNKS)
    here = shutil.copytree(root / "original.zarr", root / "here.zarr")
    result = bigseg.segment(str(here), "watershed", name="nuclei", diameter=DIAMETER, block=BLOCK, workers=2)
    return root, read_labels(result.labels), pd.read_parquet(result.table)


@pytest.fixture
def image(reference, tmp_path):
    """A fresh copy of the reference image under the test's data folder (the server's root)."""
    return str(shutil.copytree(reference[0] / "original.zarr", tmp_path / "data" / "image.zarr"))


@pytest.fixture
def service(start_server, tmp_path):  # noqa: F811 - the fixture imported above
    return start_server(f"sqlite:///{tmp_path / 'service.db'}")


def read_labels(url: str) -> np.ndarray:
    return zarr.open_group(url, mode="r")["0"][...]


def cli_env() -> dict:
    """This checkout first on the path; no token or URL from the environment (the tests pass them)."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if k not in ("BIGSEG_TOKEN", "BIGSEG_URL")}
    return {**env, "PYTHONPATH": os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")]))}


def cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """``python -m bigseg ARGS``. Tokens are passed as ``--token=T``: a token may begin with '-'."""
    return subprocess.run([sys.executable, "-m", "bigseg", *args], capture_output=True, text=True, timeout=timeout,
                          env=cli_env(), check=False)


def cli_on_terminal(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """The CLI with its stderr on a pseudo-terminal (where progress bars are drawn); stderr read back as text."""
    import fcntl
    import pty
    import struct
    import termios
    import threading
    main, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # tqdm draws nothing on a 0x0 one
    chunks: list[bytes] = []

    def read() -> None:
        while True:
            try:
                data = os.read(main, 65536)
            except OSError:  # EIO: the terminal's last writer has gone
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        proc = subprocess.run([sys.executable, "-m", "bigseg", *args], stdout=subprocess.PIPE, stderr=child,
                              text=True, timeout=timeout, env=cli_env(), check=False)
    finally:
        os.close(child)
        reader.join(10)
        os.close(main)
    proc.stderr = b"".join(chunks).decode(errors="replace").replace("\r\n", "\n")
    return proc


def wait_for(check, what: str, why=lambda: "", timeout: float = 60):
    """``check()``'s first truthy value; fails after ``timeout`` s, or at once when it is False, with ``why()``."""
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert value is not False and time.monotonic() < deadline, f"{what}: not there; {why()}"
        time.sleep(0.1)
    return value


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert len(lines) == 1 and lines[0].startswith("bigseg: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def test_client_job_waits_for_the_result_of_segment(service, image, reference):
    _, labels, table = reference
    client = Client(service.url, service.token)
    seen = ev.EventLog()
    job = client.submit(image, "watershed", name="nuclei", diameter=DIAMETER, block=BLOCK, title="client test",
                        tags=["t1"])
    assert job.status in ("queued", "starting") and job.data["title"] == "client test" and job.data["tags"] == ["t1"]
    result = job.wait(timeout=180, progress=seen)

    assert isinstance(result, bigseg.SegmentResult) and job.status == "succeeded"
    assert result.labels == os.path.join(image, "labels", "nuclei")
    np.testing.assert_array_equal(read_labels(result.labels), labels)
    pd.testing.assert_frame_equal(pd.read_parquet(result.table), table)
    assert result.objects == int(labels.max()) == len(table) > 10
    assert os.path.isfile(result.qc) and result.blocks == job.data["result"]["blocks"] > 1
    kinds = [type(e).__name__ for e in seen.events]
    assert kinds[0] == "Message" and "JobStarted" in kinds and "JobFinished" in kinds
    finished = next(e for e in seen.events if isinstance(e, ev.JobFinished))
    assert finished.summary["objects"] == result.objects
    assert next(e.stage for e in seen.events if isinstance(e, ev.StageStarted)) == "segment"

    assert [j.id for j in client.jobs(tag="t1")] == [job.id]
    assert client.jobs(status="running,queued") == []
    log = "".join(client.logs(job.id))
    assert log and log == "".join(job.logs(follow=True))
    seqs = [e["seq"] for e in client.events(job.id)]
    assert seqs == sorted(seqs) and [e["seq"] for e in client.events(job.id, after=seqs[-2])] == seqs[-1:]
    assert service.token not in repr(client) and service.token not in repr(job)


def test_client_takes_url_and_token_from_the_environment(service, monkeypatch, tmp_path):
    monkeypatch.setenv("BIGSEG_URL", service.url)
    monkeypatch.delenv("BIGSEG_TOKEN", raising=False)
    monkeypatch.setenv("BIGSEG_DATA_DIR", service.data_dir)  # the token file bigseg serve wrote
    user = Client().info()["user"]
    assert (user["name"], user["admin"]) == ("admin", True)
    monkeypatch.setenv("BIGSEG_TOKEN", "not-the-token")
    with pytest.raises(ServiceError) as err:
        Client().info()
    assert err.value.status == 401 and "--token" in str(err.value) and "not-the-token" not in str(err.value)
    monkeypatch.delenv("BIGSEG_TOKEN")
    monkeypatch.setenv("BIGSEG_DATA_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(ServiceError, match="no service token: pass it with --token"):
        Client()


def test_cli_submit_wait_json_then_jobs_job_logs(service, image, reference):
    _, labels, _ = reference
    tok, url = service.token, service.url
    run = cli_on_terminal("submit", image, "--method", "watershed", "--diameter", str(DIAMETER), "--name", "nuclei",
                          "--block", ",".join(map(str, BLOCK)), "--title", "from the shell", "--tag", "cli", "--server", url, f"--token={tok}", "--wait",
                          "--json")
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert summary["objects"] == int(labels.max())
    assert summary["labels"] == os.path.join(image, "labels", "nuclei")
    np.testing.assert_array_equal(read_labels(summary["labels"]), labels)
    job_id = summary["job"]
    assert f"job {job_id} running" in run.stderr and "Traceback" not in run.stderr
    bar = re.search(r"segment\s*: 100%\|.*\| (\d+)/(\d+) ", run.stderr)  # tqdm's bar, on a terminal only
    assert bar and int(bar[1]) == int(bar[2]) == summary["blocks"], run.stderr
    assert f"{summary['objects']} objects" in run.stdout  # the summary for people, then its JSON

    listed = cli("jobs", "--json", "--server", url, f"--token={tok}")
    assert listed.returncode == 0, listed.stderr
    assert [(j["id"], j["status"], j["title"]) for j in json.loads(listed.stdout)] == \
        [(job_id, "succeeded", "from the shell")]
    table = cli("jobs", "--status", "succeeded", "--server", url, f"--token={tok}")
    header, row = table.stdout.splitlines()
    assert header.split()[:4] == ["ID", "STATUS", "STAGE", "%"]
    assert row.split()[:2] == [job_id, "succeeded"] and " 100 " in row and "from the shell" in row

    shown = cli("job", job_id, "--json", "--server", url, f"--token={tok}")
    assert shown.returncode == 0, shown.stderr
    data = json.loads(shown.stdout)
    assert data["status"] == "succeeded" and data["result"]["objects"] == summary["objects"]
    assert data["spec"]["method"]["diameter"] == DIAMETER and data["spec"]["input"]["url"] == image
    people = cli("job", job_id, "--server", url, f"--token={tok}")
    assert f"job      {job_id}" in people.stdout and f"{summary['objects']} objects" in people.stdout

    logs = cli("logs", job_id, "--server", url, f"--token={tok}")
    with open(os.path.join(service.data_dir, "jobs", job_id, "job.log")) as f:
        assert logs.returncode == 0 and logs.stdout == f.read() != ""


def test_cli_cancels_a_queued_and_a_running_job_and_retries_one(start_server, tmp_path, image, reference):  # noqa: F811
    """One runner: a big job runs (its `submit --wait` waits in the background), a small one waits in the queue;
    both are canceled with `bigseg cancel`, the waiting CLI exits 1, `bigseg retry` runs the small one."""
    service = start_server(f"sqlite:///{tmp_path / 'service.db'}", runners=1)
    tok, url = service.token, service.url
    client = Client(url, tok)
    big, _ = nuclei((64, 512, 512), seed=6)  # 32 blocks: it runs long enough to be canceled
    big_image = write_ome_zarr(tmp_path / "data" / "big.zarr", big, "zyx", (16, 64, 64))
    waiting = subprocess.Popen([sys.executable, "-m", "bigseg", "submit", big_image, "--diameter", str(DIAMETER),
                                "--block", "32,128,128", "--server", url, f"--token={tok}", "--wait", "--json"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env())
    try:
        running = wait_for(lambda: waiting.poll() is None and [j.id for j in client.jobs()], "the big job",
                           lambda: waiting.communicate()[1])[0]
        queued = cli("submit", image, "--diameter", str(DIAMETER), "--block", ",".join(map(str, BLOCK)), "--server", url,
                 f"--token={tok}")
        assert queued.returncode == 0, queued.stderr
        queued = queued.stdout.strip()
        service.wait(running, "running", check=lambda j: j["progress"]["stage"] == "segment")
        assert client.job(queued).status == "queued"  # one runner: the second job waits

        # the queued one first: once the running one is canceled, the freed runner may start the queued one
        gone = cli("cancel", queued, "--server", url, f"--token={tok}")
        assert gone.returncode == 0 and gone.stdout.strip() == f"job {queued} canceled (attempt 1)"
        stopping = cli("cancel", running, "--server", url, f"--token={tok}")
        assert stopping.returncode == 0 and stopping.stdout.split()[2] in ("canceling", "canceled")
        out, err = waiting.communicate(timeout=90)
    finally:
        if waiting.poll() is None:
            waiting.kill()
    assert waiting.returncode == 1, err
    assert err.strip().splitlines()[-1].startswith(f"bigseg: job {running} canceled: ") and "Traceback" not in err
    assert json.loads(out.strip().splitlines()[-1])["status"] == "canceled"
    with pytest.raises(JobCancelled):
        client.job(running).wait(timeout=5)

    again = cli("retry", queued, "--server", url, f"--token={tok}")
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() in (f"job {queued} queued (attempt 2)", f"job {queued} starting (attempt 2)")
    result = client.wait(queued, timeout=180)
    np.testing.assert_array_equal(read_labels(result.labels), reference[1])

    refused = cli("retry", queued, "--server", url, f"--token={tok}")
    assert "only a failed, canceled or interrupted job can be retried" in one_error_line(refused)


def test_cli_errors_are_one_line(service, image):
    url, tok = service.url, service.token
    wrong = one_error_line(cli("jobs", "--server", url, "--token=wrong-token"))
    assert "token is not valid" in wrong and "--token" in wrong and "wrong-token" not in wrong

    (port,) = free_ports(1)
    nobody = one_error_line(cli("jobs", "--server", f"http://127.0.0.1:{port}", f"--token={tok}"))
    assert nobody.startswith(f"bigseg: error: cannot reach the bigseg service at http://127.0.0.1:{port}: is "
                             "`bigseg serve` running?")

    # refused by the service (the image has no physical units), with the field named
    unitless = one_error_line(cli("submit", image, "--diameter", "8um", "--server", url, f"--token={tok}"))
    assert unitless.startswith("bigseg: error: method.diameter: a length in physical units")
    with pytest.raises(ServiceError) as err:
        Client(url, tok).validate(image, "watershed", diameter="8um")
    assert err.value.status == 422 and err.value.field == "method.diameter"
    outside = one_error_line(cli("submit", "/etc", "--server", url, f"--token={tok}"))
    assert "input.url" in outside
    # refused here before any request (the same check as bigseg segment)
    negative = one_error_line(cli("submit", image, "--diameter", "-3", "--server", url, f"--token={tok}"))
    assert negative.startswith("bigseg: error: method.diameter:")
    missing = one_error_line(cli("job", "j-nope", "--server", url, f"--token={tok}"))
    assert "j-nope" in missing
    assert Client(url, tok).jobs() == []  # nothing was queued by any of these


def test_wait_raises_the_jobs_error(service, image):
    """A job that fails on the service: its input image is removed after the job was accepted."""
    client = Client(service.url, service.token)
    job = client.submit(image, "watershed", name="nuclei", diameter=DIAMETER, block=BLOCK)
    shutil.rmtree(image)
    with pytest.raises(JobError) as err:
        job.wait(timeout=120)
    assert job.status == "failed" and str(err.value) == job.data["error"]["message"]
    assert isinstance(err.value, InputError) and err.value.kind == "input" and image in str(err.value)
    assert "\n" not in str(err.value) and err.value.job_id == job.id
