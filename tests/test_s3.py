"""bigseg on a real S3 server (SeaweedFS): inputs and outputs on s3://, credentials from storage options or
the AWS environment variables, one-line errors, the output lock, publishing and resuming a killed job."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid

import fsspec
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import zarr

import bigseg
from bigseg.errors import InputError, OutputError
from bigseg.io import lock as lock_io
from bigseg.io import store
from bigseg.io import table as table_io
from bigseg.io.storage import StorageOptions
from bigseg.synthetic import nuclei
from conftest import write_image
from services.seaweedfs import s3  # noqa: F401

SHAPE, CHUNKS, BLOCK = (32, 96, 96), (16, 48, 48), (32, 48, 48)  # 4 blocks
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> str:
    data, _ = nuclei(SHAPE, seed=3)
    return write_image(tmp_path_factory.mktemp("s3img") / "img.zarr", data, "zyx", CHUNKS)


@pytest.fixture(scope="module")
def reference(image, client, tmp_path_factory):
    """The same job on local disk: labels, table and QC image."""
    out = str(tmp_path_factory.mktemp("s3ref") / "out.zarr")
    res = bigseg.segment(image, "watershed", output=out, block=BLOCK, client=client)
    table = pd.read_parquet(os.path.join(out, "measurements.parquet"))
    with open(os.path.join(out, "qc.png"), "rb") as f:
        qc = f.read()
    return zarr.open_array(os.path.join(out, "0"), mode="r")[:], _sorted(table), qc, res.objects


@pytest.fixture(scope="module")
def configured(s3, client):  # noqa: F811
    """The server's credentials as storage options, in this process and (by the plugin) on the workers,
    whose environment has no AWS variables."""
    creds = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL")
    assert not any(client.run(lambda: [k for k in creds if k in os.environ]).values())
    previous = store.configure(s3.storage_options)
    client.register_plugin(StorageOptions(s3.storage_options))
    yield s3
    client.unregister_worker_plugin(StorageOptions.name)
    store.configure({"s3": previous.get("s3") or {}})


@pytest.fixture
def bucket(s3):  # noqa: F811
    return s3.bucket()


def _sorted(df: pd.DataFrame) -> pd.DataFrame:
    return df.sort_values("label").reset_index(drop=True)


def _upload(s3, local: str, bucket: str, name: str = "img.zarr") -> str:  # noqa: F811
    s3.filesystem().put(local, f"{bucket}/{name}", recursive=True)
    return f"s3://{bucket}/{name}"


def _files(fs, path: str) -> list[str]:
    """The objects under ``path`` (SeaweedFS also lists the empty folders that deleted objects leave)."""
    return sorted(p for p, info in fs.find(path, detail=True).items() if info["type"] == "file")


def _objects(s3, bucket: str) -> dict[str, bytes]:  # noqa: F811
    fs = s3.filesystem()
    return {p: fs.cat_file(p) for p in _files(fs, bucket)}


def _read_s3(s3, url: str):  # noqa: F811
    """Labels, table and QC image of a label group on S3, read with s3fs/pyarrow directly."""
    fs, path = s3.filesystem(), url[len("s3://"):]
    labels = zarr.open_array(store.join(url, "0"), mode="r",
                             storage_options={"key": s3.key, "secret": s3.secret, "endpoint_url": s3.endpoint})[:]
    table = pq.read_table(f"{path}/measurements.parquet", filesystem=fs).to_pandas()
    return labels, _sorted(table), fs.cat_file(f"{path}/qc.png")


def _assert_same_as_reference(s3, url: str, reference) -> None:  # noqa: F811
    labels, table, qc = _read_s3(s3, url)
    ref_labels, ref_table, ref_qc, n = reference
    assert labels.max() == n > 20
    assert np.array_equal(labels, ref_labels)
    pd.testing.assert_frame_equal(table, ref_table)
    assert qc == ref_qc
    names = _files(s3.filesystem(), url[len("s3://"):])
    assert not [p for p in names if "/.bigseg-work/" in p or p.endswith(lock_io.LOCK_NAME)]  # nothing left over


def test_s3_image_gets_its_labels_on_s3_identical_to_local_disk(client, configured, image, reference, bucket):
    src = _upload(configured, image, bucket)
    res = bigseg.segment(src, "watershed", name="nuclei", block=BLOCK, client=client)
    assert res.labels == f"{src}/labels/nuclei"
    _assert_same_as_reference(configured, res.labels, reference)
    attrs = zarr.open_group(res.labels, mode="r").attrs.asdict()
    assert attrs["bigseg"]["status"] == "complete" and len(attrs["ome"]["multiscales"][0]["datasets"]) == 3
    assert bigseg.open_image(src).labels == ("nuclei",)  # listed in the image's labels group on S3


def test_a_profile_with_storage_options_runs_an_s3_job_on_workers_without_credentials(s3, image, reference,
                                                                                      bucket, monkeypatch):
    """The profile's storage options reach this process and a new cluster's workers (whose environment has no
    AWS variables): the job runs and gives the local result; afterwards this process has its old options."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    previous = store.configure({"s3": {}})  # nothing configured in this process either
    try:
        src = _upload(s3, image, bucket)
        profile = {"kind": "local", "workers": 2, "storage_options": s3.storage_options}
        res = bigseg.segment(src, "watershed", name="nuclei", block=BLOCK, profile=profile)
        assert "s3" not in fsspec.config.conf  # restored after the job
    finally:
        store.configure(previous)
    _assert_same_as_reference(s3, res.labels, reference)


def test_storage_options_are_checked_and_never_shown():
    from bigseg.errors import ParameterError
    plugin = StorageOptions({"s3": {"key": "k", "secret": "s3cr3t-value", "endpoint_url": "http://127.0.0.1:1"}})
    assert "s3cr3t-value" not in repr(plugin) and "s3" in repr(plugin)
    with pytest.raises(ParameterError, match="storage_options must map a protocol"):
        StorageOptions({"s3": "key=k"})


def test_local_input_s3_output_and_s3_input_local_output(client, configured, image, reference, bucket, tmp_path):
    res = bigseg.segment(image, "watershed", output=f"s3://{bucket}/out.zarr", block=BLOCK, client=client)
    _assert_same_as_reference(configured, res.labels, reference)

    src = _upload(configured, image, bucket, "in.zarr")
    res = bigseg.segment(src, "watershed", output=str(tmp_path / "out.zarr"), block=BLOCK, client=client)
    assert np.array_equal(zarr.open_array(str(tmp_path / "out.zarr" / "0"), mode="r")[:], reference[0])
    pd.testing.assert_frame_equal(_sorted(pd.read_parquet(res.table)), reference[1])
    assert not _files(configured.filesystem(), f"{bucket}/in.zarr/labels")  # the input was only read


@pytest.fixture
def wrong(s3):  # noqa: F811
    """Apply other storage options in this process for one test (the checks run before any worker)."""
    def apply(**options):
        store.configure({"s3": {**s3.storage_options["s3"], **options}})
    yield apply
    store.configure(s3.storage_options)


def _one_line(err: Exception, s3) -> str:  # noqa: F811
    text = str(err)
    assert "\n" not in text and s3.secret not in text and "wrong-secret" not in text
    return text


@pytest.mark.parametrize("side", ["input", "output"])
def test_wrong_credentials_are_refused_in_one_line_and_nothing_is_written(client, configured, image, bucket, wrong,
                                                                          side):
    src = _upload(configured, image, bucket) if side == "input" else image
    before = _objects(configured, bucket)
    wrong(secret="wrong-secret-" + uuid.uuid4().hex)
    with pytest.raises(InputError if side == "input" else OutputError) as info:
        bigseg.segment(src, "watershed", output=f"s3://{bucket}/out.zarr", block=BLOCK, client=client)
    text = _one_line(info.value, configured)
    assert "access denied" in text and "AWS_SECRET_ACCESS_KEY" in text and bucket in text
    wrong(key="nobody")
    with pytest.raises(InputError if side == "input" else OutputError, match="access denied"):
        bigseg.segment(src, "watershed", output=f"s3://{bucket}/out.zarr", block=BLOCK, client=client)
    assert _objects(configured, bucket) == before


def test_read_only_credentials_read_an_s3_image_but_cannot_label_it_in_place(client, configured, image, bucket,
                                                                            wrong):
    src = _upload(configured, image, bucket)
    before = _objects(configured, bucket)
    wrong(key=configured.readonly_key, secret=configured.readonly_secret)
    assert bigseg.open_image(src).levels[0].shape == SHAPE  # reading is allowed
    with pytest.raises(OutputError) as info:
        bigseg.segment(src, "watershed", name="nuclei", block=BLOCK, client=client)
    text = _one_line(info.value, configured)
    assert text.startswith(f"cannot write to {src}/labels/nuclei: access denied") and "use --output" in text
    assert configured.readonly_secret not in text
    assert _objects(configured, bucket) == before


@pytest.mark.parametrize("side", ["input", "output"])
def test_a_missing_bucket_is_refused_and_not_created(client, configured, image, bucket, side):
    missing = f"missing-{uuid.uuid4().hex[:12]}"
    src = f"s3://{missing}/img.zarr" if side == "input" else _upload(configured, image, bucket)
    out = f"s3://{bucket}/out.zarr" if side == "input" else f"s3://{missing}/out.zarr"
    before = _objects(configured, bucket)
    with pytest.raises(InputError if side == "input" else OutputError) as info:
        bigseg.segment(src, "watershed", output=out, block=BLOCK, client=client)
    assert f"bucket '{missing}' does not exist" in _one_line(info.value, configured)
    assert missing not in configured.filesystem().ls("")  # SeaweedFS would create it on the first put
    assert _objects(configured, bucket) == before
    if side == "input":
        with pytest.raises(InputError, match=f"s3://{bucket}/nothing.zarr: nothing there"):
            bigseg.segment(f"s3://{bucket}/nothing.zarr", "watershed", block=BLOCK, client=client)


def test_an_unreachable_endpoint_is_refused_in_one_line(client, configured, image, bucket, wrong):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the with block ends: nothing listens there
    src = _upload(configured, image, bucket)
    wrong(endpoint_url=f"http://127.0.0.1:{port}")
    t0 = time.monotonic()
    with pytest.raises(InputError) as info:
        bigseg.segment(src, "watershed", output=f"s3://{bucket}/out.zarr", block=BLOCK, client=client)
    text = _one_line(info.value, configured)
    assert f"at http://127.0.0.1:{port}" in text and "cannot be reached" in text
    assert time.monotonic() - t0 < 60


def test_cli_refuses_wrong_output_credentials_with_exit_2(s3, image, bucket):  # noqa: F811
    env = {**os.environ, **s3.env, "AWS_SECRET_ACCESS_KEY": "wrong-" + uuid.uuid4().hex, "PYTHONPATH": REPO}
    proc = subprocess.run([sys.executable, "-m", "bigseg.cli", "segment", image, "--output",
                           f"s3://{bucket}/out.zarr", "--block", ",".join(map(str, BLOCK))],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"bigseg: error: cannot write to s3://{bucket}/out.zarr: "
                                                   "access denied"), proc.stderr
    assert env["AWS_SECRET_ACCESS_KEY"] not in proc.stderr + proc.stdout
    assert _files(s3.filesystem(), bucket) == []


# -- the output lock on the real store ---------------------------------------------------------------------

def test_the_s3_lock_has_one_holder(configured, bucket):
    url = f"s3://{bucket}/out.zarr"
    locks = [lock_io.JobLock(url) for _ in range(6)]
    won = []
    barrier = threading.Barrier(len(locks))

    def race(lock):
        barrier.wait()
        if lock._create():
            won.append(lock.token)
    threads = [threading.Thread(target=race, args=(lk,)) for lk in locks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1  # the conditional put lets exactly one writer create the lock
    assert lock_io.read(store.join(url, lock_io.LOCK_NAME))["token"] == won[0]
    with pytest.raises(OutputError) as info:
        lock_io.JobLock(url).acquire()
    assert "being written by another bigseg job" in str(info.value) and "\n" not in str(info.value)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize("holder", ["dead process here", "silent host"])
def test_a_stale_s3_lock_is_taken_over(configured, bucket, holder):
    url = f"s3://{bucket}/out.zarr"
    lock_url = store.join(url, lock_io.LOCK_NAME)
    host, pid = (socket.gethostname(), _dead_pid()) if holder == "dead process here" else ("elsewhere", 1)
    heartbeat = time.time() - (5 if holder == "dead process here" else lock_io.STALE_S + 60)
    store.save_bytes(lock_url, json.dumps({"host": host, "pid": pid, "token": "old", "heartbeat": heartbeat}).encode())
    with lock_io.JobLock(url) as lock:
        assert lock_io.read(lock_url)["token"] == lock.token
    assert not configured.filesystem().exists(lock_url[len("s3://"):])  # released


def test_a_live_remote_holder_and_a_half_written_s3_lock_are_respected(configured, bucket):
    url = f"s3://{bucket}/out.zarr"
    lock_url = store.join(url, lock_io.LOCK_NAME)
    store.save_bytes(lock_url, json.dumps({"host": "elsewhere", "pid": 1, "token": "t",
                                           "heartbeat": time.time() - 5}).encode())
    with pytest.raises(OutputError, match="pid 1 on elsewhere"):
        lock_io.JobLock(url).acquire()
    store.save_bytes(lock_url, b'{"host": "elsew')  # a writer that crashed mid-write, on a store without atomic puts
    modified = configured.filesystem().info(lock_url[len("s3://"):])["LastModified"].timestamp()
    assert lock_io.read(lock_url) == {"heartbeat": modified}  # aged by the object's own time
    with pytest.raises(OutputError):
        lock_io.check_free(url)


# -- publishing file by file ----------------------------------------------------------------------------

def _parts(bucket: str, n: int = 6) -> tuple[str, pd.DataFrame]:
    src = f"s3://{bucket}/work/table"
    frames = []
    for i in range(n):
        df = pd.DataFrame({"label": np.arange(i * 10 + 1, i * 10 + 11), "area": np.arange(10.0) * (i + 1)})
        table_io.write_part(df, table_io.part_url(src, i))
        frames.append(df)
    return src, pd.concat(frames, ignore_index=True)


def test_publish_on_s3_moves_every_file(configured, bucket):
    src, expected = _parts(bucket)
    dst = f"s3://{bucket}/out.zarr/measurements.parquet"
    store.publish(src, dst)
    fs = configured.filesystem()
    assert _files(fs, f"{bucket}/work") == [] and len(_files(fs, dst[5:])) == 6
    pd.testing.assert_frame_equal(_sorted(table_io.read_table(dst)), expected)


@pytest.mark.parametrize("cut", ["while copying", "while deleting"])
def test_an_interrupted_publish_on_s3_resumes(configured, bucket, cut):
    src, expected = _parts(bucket)
    dst = f"s3://{bucket}/out.zarr/measurements.parquet"
    fs = configured.filesystem()
    names = sorted(_files(fs, src[5:]))
    # the state a killed publish leaves: some files copied; or all copied and some sources deleted
    copied = names[:2] if cut == "while copying" else names
    fs.copy(copied, [f"{dst[5:]}/{os.path.basename(n)}" for n in copied])
    if cut == "while deleting":
        fs.rm(names[:3])
    store.publish(src, dst)
    assert _files(fs, f"{bucket}/work") == [] and len(_files(fs, dst[5:])) == 6
    pd.testing.assert_frame_equal(_sorted(table_io.read_table(dst)), expected)


@pytest.mark.faults
def test_a_publish_killed_on_s3_resumes(configured, bucket):
    """A real interruption: a process publishing 200 files is killed once the first ones are at the target."""
    fs = configured.filesystem()
    fs.pipe({f"{bucket}/src/f{i:04d}": str(i).encode() for i in range(200)})
    code = ("import sys; from bigseg.io import store; store.publish(sys.argv[1], sys.argv[2])")
    env = {**os.environ, **configured.env, "PYTHONPATH": REPO}
    proc = subprocess.Popen([sys.executable, "-c", code, f"s3://{bucket}/src", f"s3://{bucket}/dst"], env=env)
    try:
        while not _files(fs, f"{bucket}/dst"):
            assert proc.poll() is None, "the publish ended before it could be killed"
            time.sleep(0.01)
    finally:
        proc.kill()
        proc.wait()
    assert _files(fs, f"{bucket}/src")  # killed part-way
    store.publish(f"s3://{bucket}/src", f"s3://{bucket}/dst")
    assert _files(fs, f"{bucket}/src") == []
    assert fs.cat([f"{bucket}/dst/f{i:04d}" for i in range(200)]) == \
        {f"{bucket}/dst/f{i:04d}": str(i).encode() for i in range(200)}


# -- the CLI, killed and resumed, credentials from the environment ------------------------------------------

@pytest.mark.faults
def test_cli_job_on_s3_killed_resumes_identically_and_never_writes_the_secret(client, configured, image, reference,
                                                                              bucket, tmp_path):
    s3_ = configured
    src, out = _upload(s3_, image, bucket), f"s3://{bucket}/out.zarr"
    fs = s3_.filesystem()
    env = {**os.environ, **s3_.env, "PYTHONPATH": REPO}
    args = [sys.executable, "-m", "bigseg.cli", "segment", src, "--output", out, "--workers", "2",
            "--block", ",".join(map(str, BLOCK)), "--json", "-v"]
    logs = [tmp_path / "run1.log", tmp_path / "run2.log"]
    with open(logs[0], "wb") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    work = f"{bucket}/out.zarr/.bigseg-work"
    try:
        while not fs.exists(f"{bucket}/out.zarr/{lock_io.LOCK_NAME}"):
            assert proc.poll() is None, logs[0].read_text()
            time.sleep(0.05)
        # 1. a second job on the same output, while the first runs, is refused in one line
        with pytest.raises(OutputError) as info:
            bigseg.segment(src, "watershed", output=out, block=BLOCK, client=client)
        assert "being written by another bigseg job" in _one_line(info.value, s3_)
        # 2. killed (client, scheduler, workers) once some blocks are recorded
        while not _files(fs, f"{work}/done/segment"):
            assert proc.poll() is None, logs[0].read_text()
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert zarr.open_group(out, mode="r").attrs["bigseg"]["status"] == "incomplete"
    during = _objects(s3_, bucket)
    assert any("/.bigseg-work/job.json" in p for p in during) and any("/done/segment/" in p for p in during)

    # 3. the same command resumes: it takes over the dead job's lock and reuses its finished blocks
    proc2 = subprocess.run(args, capture_output=True, env=env, timeout=240)
    logs[1].write_bytes(proc2.stdout + proc2.stderr)
    assert proc2.returncode == 0, proc2.stderr.decode()[-3000:]
    summary = json.loads(proc2.stdout.decode().strip().splitlines()[-1])
    assert summary["resumed"].get("segment", 0) > 0
    _assert_same_as_reference(s3_, out, reference)

    # 4. the secret is in no object written (work folder while running, labels, table, QC) and in no log
    after = _objects(s3_, bucket)
    secret = s3_.secret.encode()
    assert not [p for p, data in {**during, **after}.items() if secret in data or s3_.key.encode() in data]
    assert not [p for p in logs if secret in p.read_bytes()]
    assert any(p.endswith("measurements.parquet/part-000000000-000000000.parquet") for p in after)
