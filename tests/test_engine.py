"""The engine: record codec (never pickles), batched journal listing, events of real jobs, the job handle,
and cancellation from another thread on a real cluster (released tasks, incomplete output, exact resume)."""
from __future__ import annotations

import io
import json
import logging
import os
import pathlib
import pickle
import threading
import time
import uuid
from dataclasses import dataclass

import dask.config
import numpy as np
import pandas as pd
import pytest
import zarr

import bigseg
from bigseg.engine import Cancellation, EventLog, JobHandle, Observer, events
from bigseg.engine import journal as journal_module
from bigseg.engine import records
from bigseg.engine.journal import Journal, run_and_record
from bigseg.errors import JobCancelled
from bigseg.io import store
from bigseg.segment_blocks import BlockSummary
from bigseg.stitch import EDGE_COLUMNS, no_edges
from bigseg.synthetic import nuclei
from conftest import write_image


def _same(a, b) -> bool:
    """Deep equality that also compares array dtypes and shapes."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return type(a) is type(b) and a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, BlockSummary):
        return type(b) is BlockSummary and all(_same(getattr(a, f), getattr(b, f)) for f in
                                               ("block_id", "n_fragments", "n_boundary", "counts", "seconds",
                                                "error"))
    return type(a) is type(b) and a == b


# ---- records: what tasks return, as JSON or NPZ --------------------------------------------------------------

def _summary(n: int = 3, error: str | None = None) -> BlockSummary:
    rng = np.random.default_rng(n)
    return BlockSummary(7, n + 4, n, rng.integers(1, 60000, n).astype(np.uint16), 0.25, error)


@pytest.mark.parametrize("value, suffix", [
    (None, ".json"), (0, ".json"), (123456789012, ".json"), (-3, ".json"), (2.5, ".json"),
    ("text", ".json"), ([1, None, "a"], ".json"), ((1, 2), ".json"), ({3: "int key", "__x": 1}, ".json"),
    (no_edges(), ".npz"),
    (np.array([[1, 2, 3, 0, 5], [4, 5, 6, 1, 2]], np.int64)[:, :EDGE_COLUMNS], ".npz"),
    (np.uint32(7), ".npz"), (np.zeros((0, 3), np.float32), ".npz"),
    (BlockSummary.empty(0, 0.01), ".npz"),
    (BlockSummary.empty(9, 0.0, "block 9 [0:48, 4:92]: cannot read the input (OSError: x)"), ".npz"),
    (_summary(), ".npz"), (_summary(1, "an error"), ".npz"),
    ({"nested": [_summary(2), (np.arange(3), None)]}, ".npz"),
])
def test_records_round_trip_task_results_exactly(value, suffix):
    got_suffix, data = records.encode(value)
    assert got_suffix == suffix
    assert _same(records.decode(got_suffix, data), value)
    if suffix == ".json":
        json.loads(data)  # a plain JSON document


def test_records_refuse_what_would_need_a_pickle():
    @dataclass
    class Unregistered:
        x: int

    with pytest.raises(TypeError, match="not allowed in records"):
        records.encode(Unregistered(1))
    with pytest.raises(TypeError, match="Python objects or structured"):
        records.encode(np.array([object(), 1], dtype=object))
    with pytest.raises(TypeError, match="cannot be recorded"):
        records.encode({1, 2})


class _Touch:
    """Unpickling this creates a file: proof that a loader ran code from the record."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return pathlib.Path.touch, (pathlib.Path(self.path),)


def test_a_pickle_in_the_record_folder_is_never_unpickled(tmp_path, caplog):
    journal = Journal(str(tmp_path / "work"))
    folder = pathlib.Path(journal.step_url("segment"))
    folder.mkdir(parents=True)
    proof = tmp_path / "proof"
    pickle.loads(pickle.dumps(_Touch(proof)))
    assert proof.exists()  # the payload does run code when unpickled
    proof.unlink()
    marker = tmp_path / "pwned"
    (folder / "3.pkl").write_bytes(pickle.dumps(_Touch(marker)))  # an old-style or planted record
    for i, dtype, data in [(4, "|O", np.array([_Touch(marker)], dtype=object)),  # pickled inside the NPZ
                           (9, "|O", np.zeros(16, np.uint8))]:  # raw bytes claiming to be object pointers
        meta = {"value": {"__array__": 0, "scalar": False}, "arrays": [{"dtype": dtype, "shape": [1], "offset": 0}]}
        buf = io.BytesIO()
        np.savez(buf, __record__=np.frombuffer(json.dumps(meta).encode(), np.uint8), __data__=data)
        (folder / f"{i}.npz").write_bytes(buf.getvalue())
    (folder / "6.json").write_text(json.dumps({"__dataclass__": "subprocess.Popen",
                                               "fields": {"args": ["touch", str(marker)]}}))
    (folder / ".8.json.partial").write_text("1")  # a record being written
    run_and_record(lambda t: t * 3, 5, journal.record_stem("segment", 5))
    run_and_record(lambda t: _summary(t), 7, journal.record_stem("segment", 7))
    with caplog.at_level(logging.WARNING, logger="bigseg"):
        done = journal.finished("segment")
    assert sorted(done) == [5, 7] and done[5] == 15 and _same(done[7], _summary(7))
    assert not marker.exists()
    said = "\n".join(r.getMessage() for r in caplog.records)
    assert "1 pickle record(s)" in said and "are not loaded" in said
    assert "3 record(s) cannot be read" in said and "subprocess.Popen" in said


def test_checkpoints_let_a_resume_read_a_few_files_and_unused_results_are_only_listed(tmp_path, monkeypatch):
    journal = Journal(str(tmp_path / "work"))
    n = 2500
    for i in range(n):
        run_and_record(lambda v: v, _summary(1 + i % 4), journal.record_stem("segment", i))
    journal.checkpoint("segment", {i: _summary(1 + i % 4) for i in range(1000)})
    journal.checkpoint("segment", {i: _summary(1 + i % 4) for i in range(1000, 2000)})
    fs, _ = store.filesystem(journal.work_url)
    counted = _Counted(fs, monkeypatch)
    done = journal.finished("segment")
    assert sorted(done) == list(range(n)) and all(_same(done[i], _summary(1 + i % 4)) for i in range(n))
    assert counted.calls["ls"] == 1 and counted.inner["cat_file"] == 2 + 500  # two checkpoints, 500 records
    listed = journal.finished("segment", results=False)
    assert listed == dict.fromkeys(range(n)) and counted.inner["cat_file"] == 2 + 500  # listed, nothing read


def test_the_runner_checkpoints_a_step_as_its_results_arrive(client, tmp_path, monkeypatch):
    from bigseg.engine import runner as runner_module
    from bigseg.engine.runner import StageRunner
    monkeypatch.setattr(runner_module, "CHECKPOINT_EVERY", 4)
    journal = Journal(str(tmp_path / "work"))
    runner = StageRunner(client, journal, "ckpt")
    assert runner.run("square", _square, list(range(10))) == [i * i for i in range(10)]
    folder = tmp_path / "work" / "done" / "square"
    checkpoints = sorted(folder.glob("checkpoint-*"))
    covered = []
    for path in checkpoints:
        value = records.decode(path.suffix, path.read_bytes())
        assert value["results"] == [i * i for i in value["tasks"]]
        covered += value["tasks"]
    assert sorted(covered) == list(range(10)) and len(checkpoints) >= 3  # every 4 results, and the rest
    for i in range(10):  # without the tasks' own records, the checkpoints alone resume the step
        next(folder.glob(f"{i}.*")).unlink()
    again = StageRunner(client, journal, "ckpt2")
    assert again.run("square", _square, list(range(10))) == [i * i for i in range(10)]
    assert again.resumed == {"square": 10}


def _square(i: int) -> int:
    return i * i


class _Counted:
    """Counts the calls a real fsspec filesystem gets (the methods are wrapped on its cached instance):
    ``calls`` those made from outside the filesystem, ``inner`` those its own methods make."""

    METHODS = ("ls", "find", "glob", "walk", "exists", "info", "isdir", "isfile", "open", "cat", "cat_file")

    def __init__(self, fs, monkeypatch):
        self.calls, self.inner, self.depth = dict.fromkeys(self.METHODS, 0), dict.fromkeys(self.METHODS, 0), 0
        for name in self.METHODS:
            monkeypatch.setattr(fs, name, self._wrap(name, getattr(fs, name)))

    def _wrap(self, name, fn):
        def counted(*args, **kwargs):
            (self.inner if self.depth else self.calls)[name] += 1
            self.depth += 1
            try:
                return fn(*args, **kwargs)
            finally:
                self.depth -= 1
        return counted


@pytest.mark.parametrize("root", ["memory", "local"])
def test_finished_lists_the_folder_once_and_reads_every_record_in_one_batched_call(root, tmp_path, monkeypatch):
    work = f"memory://bigseg-test-{uuid.uuid4().hex}/work" if root == "memory" else str(tmp_path / "work")
    journal = Journal(work)
    n = 300
    for i in range(n):
        value = _summary(1 + i % 4) if i % 2 else i * 7  # .npz and .json records side by side
        run_and_record(lambda v: v, value, journal.record_stem("segment", i))
    fs, _ = store.filesystem(work)
    counted = _Counted(fs, monkeypatch)
    done = journal.finished("segment")
    assert sorted(done) == list(range(n))
    assert all(_same(done[i], _summary(1 + i % 4) if i % 2 else i * 7) for i in range(n))
    assert {k: v for k, v in counted.calls.items() if v} == {"ls": 1, "cat": 1}  # one listing, one batched read
    assert counted.inner["cat_file"] == n  # the batched read fetches each record once
    monkeypatch.setattr(journal_module, "READ_BATCH", 128)  # larger steps: one batched read per 128 records
    again = journal.finished("segment")
    assert counted.calls["ls"] == 2 and counted.calls["cat"] == 1 + 3 and counted.inner["cat_file"] == 2 * n
    assert sorted(again) == list(range(n)) and all(_same(again[i], done[i]) for i in range(n))
    assert journal.finished("relabel") == {}  # a step without records: one listing that finds nothing
    if root == "memory":
        store.remove(work)


# ---- cancellation token and job handle ---------------------------------------------------------------------

def test_cancellation_runs_callbacks_once_and_raises_one_line():
    token, calls = Cancellation(), []
    token.on_cancel(lambda: calls.append("a"))
    forget = token.on_cancel(lambda: calls.append("b"))
    forget()
    token.raise_if_cancelled()
    threading.Thread(target=token.cancel).start()
    assert token.wait(10) and token.cancelled
    token.cancel()
    token.on_cancel(lambda: calls.append("late"))  # registered after the cancel: runs at once
    assert calls == ["a", "late"]
    with pytest.raises(JobCancelled) as err:
        token.raise_if_cancelled()
    assert str(err.value) == "job cancelled; the output is incomplete: run the same job again to resume"
    assert isinstance(err.value, bigseg.BigsegError)


def test_job_handle_returns_the_result_or_reraises_the_error():
    release = threading.Event()
    handle = JobHandle(lambda token: release.wait(30) and 42)
    assert not handle.done() and not handle.wait(0.05)
    with pytest.raises(TimeoutError):
        handle.result(timeout=0.05)
    release.set()
    assert handle.result(timeout=30) == 42 and handle.done()

    def fails(token):
        raise ValueError("boom")
    with pytest.raises(ValueError, match="boom"):
        JobHandle(fails).result(timeout=30)

    def until_cancelled(token):
        while True:
            token.raise_if_cancelled()
            time.sleep(0.01)
    waiting = JobHandle(until_cancelled)
    waiting.cancel()
    assert waiting.wait(30) and waiting.cancelled
    with pytest.raises(JobCancelled):
        waiting.result()


def _bigseg_tasks(client) -> list[str]:
    return client.run_on_scheduler(lambda dask_scheduler: [str(k) for k in dask_scheduler.tasks
                                                           if str(k).startswith("bigseg-")])


def _released(client, before: set, timeout: float = 10.0) -> set:
    """The job's tasks the scheduler still holds (beyond ``before``), once released or after ``timeout``
    seconds: futures dropped by the client are released by a message the scheduler reads a moment later."""
    deadline = time.monotonic() + timeout
    while (left := set(_bigseg_tasks(client)) - before) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


# ---- events of real jobs ---------------------------------------------------------------------------------------

#: the stages of the job below: level 1 is written by the relabel tasks (each of its chunks lies in one block),
#: level 2 by the pyramid stage
STAGES = ["segment", "stitch", "relabel", "pyramid-2", "measure"]


def _check_order(evs: list, stages: list[str]) -> dict:
    """Events are JobStarted, then per stage StageStarted, StageAdvanced (done rising to total) and
    StageEnded, in the pipeline's order, then one end event; returns each stage's total."""
    assert isinstance(evs[0], events.JobStarted)
    totals, i = {}, 1
    for stage in stages:
        start = evs[i]
        assert isinstance(start, events.StageStarted) and start.stage == stage, (stage, start)
        totals[stage], last = start.total, 0
        i += 1
        while isinstance(evs[i], events.StageAdvanced):
            assert evs[i].stage == stage and evs[i].total == start.total and last < evs[i].done <= start.total
            last, i = evs[i].done, i + 1
        assert last == start.total
        assert isinstance(evs[i], events.StageEnded) and evs[i].stage == stage and evs[i].seconds >= 0
        i += 1
    assert i == len(evs) - 1, evs[i:]
    return totals


def test_events_of_a_job_arrive_in_order_and_count_its_tasks(client, tmp_path):
    from bigseg.cli_render import ConsoleObserver
    image, _ = nuclei((128, 128), seed=6)
    path = write_image(tmp_path / "img.zarr", image, "yx", (32, 32), levels=3)
    log = EventLog()
    with dask.config.set({"bigseg.group-voxels": 64 * 64}):  # one block per stitch and relabel task
        res = bigseg.segment(path, "threshold", client=client, block=(64, 64), observer=log)
    evs = log.events
    totals = _check_order(evs, STAGES)
    started, finished = evs[0], evs[-1]
    assert started == events.JobStarted(path, 0, (128, 128), 4, (64, 64), started.halo, "threshold", False,
                                        client.dashboard_link)
    labels = zarr.open_array(os.path.join(res.labels, "0"), mode="r")[:]
    from bigseg.pyramid import TASK_VOXELS
    assert TASK_VOXELS >= 32 * 32  # so level 2 (32x32) is one pyramid task
    # 2x2 blocks: the 4 faces are those after blocks (0, 0), (0, 1) and (1, 0)
    assert totals["segment"] == 4 and totals["relabel"] == 4 and totals["stitch"] == 3
    assert totals["pyramid-2"] == 1
    assert isinstance(finished, events.JobFinished) and finished.summary["objects"] == len(np.unique(labels)) - 1
    assert finished.summary["blocks"] == 4
    for e in evs:
        d = e.to_dict()
        assert d["type"] == type(e).__name__ and json.loads(json.dumps(d)) == d
    # the console observer draws the same events: messages on stderr, the summary (JSON last) on stdout
    out, err = io.StringIO(), io.StringIO()
    console = ConsoleObserver(as_json=True, bars=False, out=out, err=err)
    for e in evs:
        console.on_event(e)
    assert json.loads(out.getvalue().splitlines()[-1]) == finished.to_dict()["summary"]
    assert out.getvalue().startswith(f"labels   {res.labels}  (uint32, {res.objects} objects)")
    assert "in 4 blocks of (64, 64)" in err.getvalue() and client.dashboard_link in err.getvalue()


def test_a_failing_job_ends_with_job_failed_after_its_stage_ended(client, tmp_path):
    from faulty_methods import BrokenThreshold
    image, _ = nuclei((96, 96), seed=5)
    image[80, 80] = 60000  # in block 8's core only
    path = write_image(tmp_path / "img.zarr", image, "yx", (32, 32), levels=1)
    log, before = EventLog(), set(_bigseg_tasks(client))
    with pytest.raises(bigseg.BigsegError) as err:
        bigseg.segment(path, BrokenThreshold(), output=str(tmp_path / "out.zarr"), client=client, block=(32, 32),
                       observer=log)
    assert _released(client, before) == set()  # the error does not keep the job's tasks on the scheduler
    kinds = [type(e).__name__ for e in log.events]
    assert kinds[0] == "JobStarted" and kinds[-2:] == ["StageEnded", "JobFailed"]
    assert log.events[-1] == events.JobFailed(str(err.value)) and "block 8" in log.events[-1].error
    assert [e.done for e in log.events if isinstance(e, events.StageAdvanced)][-1] == 9  # all ended first


def test_a_job_cancelled_before_it_starts_writes_nothing(tmp_path):
    from bigseg.pipeline import plan, run
    from bigseg.spec import from_kwargs
    image, _ = nuclei((64, 64), seed=2)
    path = write_image(tmp_path / "img.zarr", image, "yx", (32, 32), levels=1)
    token, log = Cancellation(), EventLog()
    token.cancel()
    with pytest.raises(JobCancelled):
        run(plan(from_kwargs(path, "threshold"), 1), client=None, observer=log, cancellation=token)
    assert log.events == [events.JobCancelled()]
    assert not os.path.exists(os.path.join(path, "labels"))


# ---- cancel a real job from another thread -------------------------------------------------------------------

BLOCK = (48, 32, 32)


def _read(label_url: str):
    labels = zarr.open_array(os.path.join(label_url, "0"), mode="r")[:]
    table = pd.read_parquet(os.path.join(label_url, "measurements.parquet")).sort_values("label")
    return labels, table.reset_index(drop=True)


class _After(Observer):
    """Sets ``reached`` once ``n`` tasks of ``stage`` are done; keeps the events."""

    def __init__(self, stage: str, n: int):
        self.stage, self.n, self.reached, self.log = stage, n, threading.Event(), EventLog()

    def on_event(self, event):
        self.log.on_event(event)
        if isinstance(event, events.StageAdvanced) and event.stage == self.stage and event.done >= self.n:
            self.reached.set()


@pytest.mark.slow
def test_cancel_from_another_thread_mid_segment_releases_tasks_and_the_rerun_resumes_exactly(client, tmp_path):
    from bigseg.io import labels as label_io
    from bigseg.io.lock import LOCK_NAME
    image, _ = nuclei((48, 256, 256), seed=11)
    path = write_image(tmp_path / "image.zarr", image, "zyx", (16, 32, 32), levels=2)
    reference = bigseg.segment(path, "watershed", output=str(tmp_path / "reference.zarr"), block=BLOCK,
                               client=client)
    assert reference.blocks == 64
    out = str(tmp_path / "out.zarr")
    spy, before = _After("segment", 5), set(_bigseg_tasks(client))
    handle = bigseg.submit(path, "watershed", output=out, block=BLOCK, client=client, observer=spy)
    assert spy.reached.wait(240), "the segment stage did not reach 5 blocks"
    handle.cancel()
    t0 = time.perf_counter()
    with pytest.raises(JobCancelled):
        handle.result(timeout=60)
    latency = time.perf_counter() - t0
    kinds = [type(e).__name__ for e in spy.log.events]
    assert kinds[-1] == "JobCancelled" and "JobFinished" not in kinds and "StageEnded" not in kinds
    done_at_cancel = max(e.done for e in spy.log.events if isinstance(e, events.StageAdvanced))
    assert 5 <= done_at_cancel < 64
    assert set(_bigseg_tasks(client)) <= before  # released at once: cancelled, not merely dropped
    assert label_io.state(out) == "incomplete"
    assert not os.path.exists(os.path.join(out, LOCK_NAME))  # the lock was released
    print(f"cancel: {done_at_cancel} of 64 blocks done, result() raised {latency:.2f} s after cancel()")

    log = EventLog()
    again = bigseg.segment(path, "watershed", output=out, block=BLOCK, client=client, observer=log)
    assert log.events[0].resuming and again.resumed["segment"] >= done_at_cancel
    assert again.resumed["segment"] < 64
    labels, table = _read(again.labels)
    ref_labels, ref_table = _read(reference.labels)
    assert np.array_equal(labels, ref_labels) and labels.max() == reference.objects > 100
    pd.testing.assert_frame_equal(table, ref_table)
    assert label_io.state(out) == "complete"
