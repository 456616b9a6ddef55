"""Faults on real clusters of worker processes: killed workers and jobs, resumes, locks, corrupt and hostile
input. Each checks that nothing is lost: the input's checksums, and labels and tables identical to an
undisturbed run."""
from __future__ import annotations

import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import zarr

import bigseg
from bigseg.cli import main
from bigseg.synthetic import nuclei
from conftest import checksums, write_image

pytestmark = pytest.mark.faults

BLOCK = (48, 32, 32)
N_BLOCKS = 64


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A 3D image (64 blocks of 48x32x32, halo 28) and its undisturbed watershed result, written outside it."""
    root = tmp_path_factory.mktemp("faults")
    image, _ = nuclei((48, 256, 256), seed=11)
    path = write_image(root / "image.zarr", image, "zyx", (16, 32, 32), levels=2)
    out = str(root / "reference.zarr")
    assert main(["segment", path, "--output", out, "--block", "48,32,32", "--workers", "2"]) == 0
    return path, _read(out)


def _read(label_url: str) -> tuple[np.ndarray, pd.DataFrame]:
    labels = zarr.open_array(os.path.join(label_url, "0"), mode="r")[:]
    table = pd.read_parquet(os.path.join(label_url, "measurements.parquet")).sort_values("label")
    return labels, table.reset_index(drop=True)


def _assert_identical(label_url: str, reference) -> None:
    labels, table = _read(label_url)
    ref_labels, ref_table = reference
    assert np.array_equal(labels, ref_labels)
    pd.testing.assert_frame_equal(table, ref_table)


def _copy(path: str, tmp_path) -> str:
    dst = str(tmp_path / os.path.basename(path))
    shutil.copytree(path, dst)
    return dst


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "bigseg.cli", "segment", *args]


def _run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(_cli(*args), capture_output=True, text=True, timeout=timeout)


def _kill_when(args: list[str], ready, timeout: float = 240) -> None:
    """Start ``bigseg segment`` and SIGKILL its whole process group (client, scheduler, workers) once
    ``ready()`` holds."""
    proc = subprocess.Popen(_cli(*args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    t0 = time.monotonic()
    try:
        while not ready():
            assert proc.poll() is None, "the job ended before it could be killed"
            assert time.monotonic() - t0 < timeout
            time.sleep(0.005)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _records(label_url: str, step: str) -> int:
    """The tasks' own records of ``step`` (``<i>.json`` / ``<i>.npz``; the client's checkpoints not counted)."""
    folder = os.path.join(label_url, ".bigseg-work", "done", step)
    return sum(len(glob.glob(os.path.join(folder, f"[0-9]*{suffix}"))) for suffix in (".json", ".npz"))


def test_a_worker_killed_mid_job_changes_nothing(reference, tmp_path):
    from distributed import Client, LocalCluster

    from bigseg.engine import events
    path, ref = reference
    before = checksums(path)

    class KillOneWorker(events.Observer):
        """Kills a worker process (SIGKILL) once 5 blocks are done, while the others are running."""

        def __init__(self, client):
            self.client, self.killed = client, None

        def on_event(self, event):
            if isinstance(event, events.StageAdvanced) and event.stage == "segment" and event.done >= 5 \
                    and self.killed is None:
                processing = self.client.processing()
                busy = [w for w, keys in processing.items() if keys]
                pids = self.client.run(os.getpid, workers=busy[:1])
                self.killed = next(iter(pids.values()))
                os.kill(self.killed, signal.SIGKILL)

    with LocalCluster(n_workers=3, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        spy = KillOneWorker(client)
        res = bigseg.segment(path, "watershed", output=str(tmp_path / "out.zarr"), block=BLOCK, client=client,
                             observer=spy)
        assert spy.killed is not None
        alive = client.run(os.getpid).values()
    assert spy.killed not in alive and res.blocks == N_BLOCKS
    _assert_identical(res.labels, ref)
    assert checksums(path) == before


def test_a_killed_job_resumes_without_redoing_finished_blocks(reference, tmp_path, capsys):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Multiscales, Reader
    path, ref = reference
    path = _copy(path, tmp_path)
    before = checksums(path)
    label = os.path.join(path, "labels", "nuclei")
    args = [path, "--name", "nuclei", "--block", "48,32,32", "--workers", "2", "--json"]

    # 1. killed part-way through the segment stage
    _kill_when(args, lambda: _records(label, "segment") >= 10)
    done_at_kill = _records(label, "segment")
    assert 10 <= done_at_kill < N_BLOCKS
    # never a partial result that looks complete
    assert main(["info", path]) == 0
    assert "incomplete (unfinished jobs" in capsys.readouterr().out
    assert not any(node.load(Label) for node in Reader(parse_url(path))())
    assert not any(node.load(Multiscales) for node in Reader(parse_url(label))())
    assert not os.path.exists(os.path.join(label, "measurements.parquet"))
    assert "multiscales" not in json.dumps(zarr.open_group(label, mode="r").attrs.asdict())
    # resuming with other settings is refused, and changes nothing
    proc = _run(path, "--name", "nuclei", "--block", "48,32,32", "--workers", "2", "--sigma", "2")
    assert proc.returncode == 2 and "unfinished job with different settings (" in proc.stderr
    assert "method.sigma" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and _records(label, "segment") >= done_at_kill

    # 2. resumed, then killed again in a later stage (relabel)
    _kill_when(args, lambda: _records(label, "relabel") >= 1)
    relabelled_at_kill = _records(label, "relabel")
    assert _records(label, "segment") == N_BLOCKS

    # 3. resumed to the end: nothing finished is redone, the result is the undisturbed one
    proc = _run(*args)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["resumed"]["segment"] == N_BLOCKS  # no block segmented twice after the second kill
    assert summary["resumed"].get("relabel", 0) >= relabelled_at_kill
    _assert_identical(label, ref)
    assert checksums(path) == before
    assert not os.path.exists(os.path.join(label, ".bigseg-work"))
    assert not os.path.exists(os.path.join(label, ".bigseg-lock"))
    assert zarr.open_group(os.path.join(path, "labels"), mode="r").attrs["ome"]["labels"] == ["nuclei"]


def test_segment_stage_resume_counts_blocks_done_before_the_kill(reference, tmp_path):
    """The first resume skips exactly the blocks recorded before the kill."""
    path, ref = reference
    out = str(tmp_path / "out.zarr")
    args = [path, "--output", out, "--block", "48,32,32", "--workers", "2", "--json"]
    _kill_when(args, lambda: _records(out, "segment") >= 20)
    done = _records(out, "segment")
    proc = _run(*args)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["resumed"]["segment"] == done and "stitch" not in summary["resumed"]
    _assert_identical(out, ref)


def test_a_second_job_on_the_same_output_is_refused_and_a_stale_lock_is_taken_over(reference, tmp_path):
    from bigseg.io import lock
    path, ref = reference
    out = str(tmp_path / "out.zarr")
    before = checksums(path)
    args = [path, "--output", out, "--block", "48,32,32", "--workers", "2"]
    proc = subprocess.Popen(_cli(*args), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        t0 = time.monotonic()
        while _records(out, "segment") < 1:
            assert time.monotonic() - t0 < 120 and proc.poll() is None
            time.sleep(0.01)
        second = _run(*args, "--overwrite")
        assert second.returncode == 2 and "being written by another bigseg job" in second.stderr
        assert len(second.stderr.strip().splitlines()) == 1
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    holder = lock.read(os.path.join(out, lock.LOCK_NAME))
    assert holder["pid"] == proc.pid and lock.is_stale(holder)  # the crashed holder's lock is left behind
    third = _run(*args)  # ... and is taken over: the job resumes and finishes
    assert third.returncode == 0, third.stderr
    _assert_identical(out, ref)
    assert checksums(path) == before


def test_a_lock_held_elsewhere_is_honoured_until_its_heartbeat_stops(tmp_path):
    from bigseg.errors import OutputError
    from bigseg.io import lock
    url = str(tmp_path / "labels" / "x")
    os.makedirs(url)
    lock_file = os.path.join(url, lock.LOCK_NAME)
    with open(lock_file, "w") as f:
        json.dump({"host": "another-node", "pid": 1, "token": "t", "heartbeat": time.time()}, f)
    with pytest.raises(OutputError, match="pid 1 on another-node"):
        lock.JobLock(url).acquire()
    with open(lock_file, "w") as f:
        json.dump({"host": "another-node", "pid": 1, "token": "t", "heartbeat": time.time() - lock.STALE_S - 1}, f)
    with lock.JobLock(url) as held:
        assert lock.read(lock_file)["token"] == held.token
    assert not os.path.exists(lock_file)


def test_transient_errors_are_retried_and_change_nothing(client, tmp_path):
    from faulty_methods import FlakyThreshold
    image, _ = nuclei((96, 96), seed=5)
    path = write_image(tmp_path / "img.zarr", image, "yx", (32, 32), levels=1)
    attempts = tmp_path / "attempts"
    attempts.mkdir()
    before = checksums(path)
    plain = bigseg.segment(path, "threshold", output=str(tmp_path / "plain.zarr"), client=client, block=(32, 32))
    flaky = bigseg.segment(path, FlakyThreshold(log_dir=str(attempts)), output=str(tmp_path / "flaky.zarr"),
                           client=client, block=(32, 32))
    keys = {}
    for name in os.listdir(attempts):
        keys.setdefault(name.rsplit("-", 1)[0], []).append(name)
    assert flaky.blocks == 9 and all(len(v) >= 2 for v in keys.values())  # each failed once, then succeeded
    assert np.array_equal(_read(flaky.labels)[0], _read(plain.labels)[0])
    assert checksums(path) == before


def test_a_block_that_always_fails_is_named_after_the_others_are_kept(client, tmp_path):
    from faulty_methods import BrokenThreshold
    image, _ = nuclei((96, 96), seed=5)
    image[80, 80] = 60000  # in block 8's core (64:96, 64:96) only: the halo is 4 voxels
    path = write_image(tmp_path / "img.zarr", image, "yx", (32, 32), levels=1)
    before = checksums(path)
    out = str(tmp_path / "out.zarr")
    with pytest.raises(bigseg.BigsegError, match=r"block 8 \[60:96, 60:96\]: method threshold failed "
                                                 r"\(ValueError: this block always fails") as err:
        bigseg.segment(path, BrokenThreshold(), output=out, client=client, block=(32, 32))
    assert "the 8 finished tasks are kept" in str(err.value)
    assert _records(out, "segment") == 8
    assert checksums(path) == before
    assert bigseg.io.labels.state(out) == "incomplete"


def _corrupt_chunk(path: str, how: str) -> str:
    """Corrupt the chunk at (0, 1, 1) of level 0 (garbage or truncated); returns its file."""
    chunk = os.path.join(path, "s0", "c", "0", "1", "1")
    data = open(chunk, "rb").read()
    with open(chunk, "wb") as f:
        f.write(os.urandom(len(data)) if how == "garbage" else data[: len(data) // 2])
    return chunk


@pytest.mark.parametrize("how", ["garbage", "truncated"])
def test_a_corrupt_chunk_fails_the_job_naming_the_block_or_is_skipped_on_request(reference, tmp_path, capsys,
                                                                                 how):
    path = _copy(reference[0], tmp_path)
    _corrupt_chunk(path, how)
    before = checksums(path)
    code = main(["segment", path, "--block", "48,32,32", "--workers", "2", "--name", "n"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1  # found while reading the job's sample, before anything is written
    assert re.match(r"bigseg: error: \S+: cannot read level 0 region \[0:16, 32:64, 32:64\] \(", err[0]), err[0]
    assert "--skip-bad-blocks" in err[0] and not os.path.exists(os.path.join(path, "labels"))
    assert main(["segment", path, "--block", "48,32,32", "--workers", "2", "--name", "n", "--skip-bad-blocks",
                 "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    skipped = summary["blocks_skipped"]
    assert len(skipped) == 9  # the block of the chunk and the 8 whose halo reaches into it
    assert any(s.startswith("block 9 [0:48, 4:92, 4:92]: cannot read") for s in skipped)
    labels = zarr.open_array(os.path.join(path, "labels", "n", "0"), mode="r")
    assert not labels[:, 0:96, 0:96].any() and labels[:].any()
    assert checksums(path) == before


def test_hostile_input_is_one_line_and_writes_nothing(tmp_path, capsys):
    def fails(argv, *words):
        code = main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and err[0].startswith("bigseg: error: "), err
        assert all(w in err[0] for w in words), err[0]

    image, _ = nuclei((64, 64), seed=2)
    nan = image.astype(np.float32)
    nan[10, 10] = np.nan
    inf = image.astype(np.float32)
    inf[5, 5] = np.inf
    cases = {"nan": (nan, ("NaN or infinite",)), "inf": (inf, ("NaN or infinite",)),
             "constant": (np.full((64, 64), 9, np.uint16), ("constant (9 everywhere)",))}
    for name, (data, words) in cases.items():
        path = write_image(tmp_path / f"{name}.zarr", data, "yx", (32, 32), levels=1)
        before = checksums(path)
        fails(["segment", path, "--workers", "1"], *words)
        assert checksums(path) == before and not os.path.exists(os.path.join(path, "labels"))
    # metadata that lies: levels out of order; a scale with the wrong number of values
    path = write_image(tmp_path / "lies.zarr", image, "yx", (32, 32), levels=2)
    meta = os.path.join(path, "zarr.json")
    good = json.load(open(meta))
    bad = json.loads(json.dumps(good))
    ds = bad["attributes"]["ome"]["multiscales"][0]["datasets"]
    ds.reverse()
    json.dump(bad, open(meta, "w"))
    fails(["segment", path, "--workers", "1"], "larger than the level above")
    bad = json.loads(json.dumps(good))
    bad["attributes"]["ome"]["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"] = [1.0]
    json.dump(bad, open(meta, "w"))
    fails(["segment", path, "--workers", "1"], "scale/translation has 1/2 values")
    json.dump(good, open(meta, "w"))
    fails(["segment", path, "--name", "../../x"], "not allowed")  # a path that escapes the output location
    assert not os.path.exists(os.path.join(path, "labels"))


def test_metadata_that_lies_about_the_dtype_is_one_line(tmp_path, capsys):
    image, _ = nuclei((64, 64), seed=2)
    path = write_image(tmp_path / "dtype.zarr", image, "yx", (32, 32), levels=2)
    meta = os.path.join(path, "s0", "zarr.json")
    m = json.load(open(meta))
    m["data_type"] = "uint64"  # the chunks hold uint16
    json.dump(m, open(meta, "w"))
    before = checksums(path)
    code = main(["segment", path, "--workers", "1", "--name", "n"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"bigseg: error: {path}: cannot read level 0 region [0:32, 0:32] (")
    assert "metadata is wrong" in err[0]
    assert checksums(path) == before and not os.path.exists(os.path.join(path, "labels"))


def test_an_image_smaller_than_one_block(client, tmp_path):
    image, _ = nuclei((24, 40), seed=4, radius=(3, 5))
    path = write_image(tmp_path / "tiny.zarr", image, "yx", (8, 8), levels=1)
    res = bigseg.segment(path, "threshold", client=client, block=(64, 64))
    whole = bigseg.segment(path, "threshold", name="whole", client=client)
    from matching import same_partition
    assert res.blocks == 1 and whole.blocks > 1 and res.objects > 0  # one clipped block against the default grid
    assert same_partition(_read(res.labels)[0], _read(whole.labels)[0])


def test_too_many_objects_for_uint32_switch_to_uint64_and_say_so(client, tmp_path, monkeypatch):
    """The switch itself, end to end: the uint32 limit is lowered so that a small image crosses it."""
    from bigseg.io import labels as label_io
    from bigseg.engine import events
    image, _ = nuclei((128, 128), seed=6)
    path = write_image(tmp_path / "many.zarr", image, "yx", (32, 32), levels=2)
    small = bigseg.segment(path, "threshold", name="u32", client=client, block=(64, 64))
    monkeypatch.setattr(label_io, "MAX_UINT32_ID", small.objects - 1)

    said = events.EventLog()
    big = bigseg.segment(path, "threshold", name="u64", client=client, block=(64, 64), observer=said)
    assert big.dtype == "uint64" and small.dtype == "uint32"
    assert any("do not fit uint32; labels are uint64" in e.text for e in said.events if isinstance(e, events.Warning))
    a, b = (zarr.open_array(os.path.join(r.labels, "0"), mode="r") for r in (small, big))
    assert b.dtype == np.uint64 and np.array_equal(a[:], b[:])
    assert zarr.open_array(os.path.join(big.labels, "1"), mode="r").dtype == np.uint64


def test_a_job_killed_after_its_table_was_published_resumes_to_the_same_result(reference, tmp_path):
    """The last window: table moved into place, metadata not yet written. Recreated exactly (the work folder
    kept, the group put back to 'incomplete'), then resumed."""
    from bigseg.pipeline import plan, run
    from bigseg.spec import from_kwargs
    path, ref = reference
    out = str(tmp_path / "out.zarr")
    spec = dict(method="watershed", name="n", block=BLOCK, output=out)
    from distributed import Client, LocalCluster
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0") as cluster, Client(cluster) as c:
        run(plan(from_kwargs(path, **spec, keep_work=True), 2), c)
        zarr.open_group(out, mode="r+").attrs.put({"bigseg": {"status": "incomplete"}})
        assert not os.path.exists(os.path.join(out, ".bigseg-work", "table"))  # published
        res = run(plan(from_kwargs(path, **spec), 2), c)
    assert res.resumed["segment"] == N_BLOCKS and "measure" not in res.resumed  # nothing left to measure
    _assert_identical(out, ref)


def test_an_interrupted_publish_on_an_object_store_moves_the_rest(tmp_path):
    from bigseg.io import store
    src, dst = tmp_path / "parts", tmp_path / "table"
    src.mkdir()
    dst.mkdir()
    for name in ("0.parquet", "1.parquet", "2.parquet"):
        (src / name).write_text(name)
    os.rename(src / "0.parquet", dst / "0.parquet")  # what the interrupted publish had moved
    store.publish(str(src), str(dst))
    assert sorted(os.listdir(dst)) == ["0.parquet", "1.parquet", "2.parquet"] and not src.exists()
    assert (dst / "2.parquet").read_text() == "2.parquet"
