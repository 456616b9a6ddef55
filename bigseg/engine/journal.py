"""What makes a job resumable: its identity, and a record of every finished task.

A job's identity (``job.json`` in the work folder) is :meth:`bigseg.pipeline.Plan.identity`: its spec and
the values derived from it. Each task's result is written by the worker, after the task's own outputs, as
``done/<step>/<i>.json`` or ``.npz`` (see :mod:`bigseg.engine.records`; never a pickle): a task with a
record is finished and is not run again when the job resumes. A step's records are found with one
listing and read with batched calls of up to ``READ_BATCH`` records (concurrent on object stores).

The client also writes *checkpoints*: the results of many tasks of a step in one file
(``done/<step>/checkpoint-<id>.npz``), every ``CHECKPOINT_EVERY`` tasks and at the end of the step. A resumed
job reads the checkpoints and only the records they do not cover, so resuming a step of 10^5 tasks on an
object store costs a few reads, not 10^5. Steps whose results the job does not use are only listed.
"""
from __future__ import annotations

import json
import logging
import posixpath
import uuid
from dataclasses import dataclass

from bigseg.engine import records
from bigseg.errors import OutputError
from bigseg.io import store
from bigseg.segment_blocks import BlockSummary

log = logging.getLogger(__name__)
#: Records read per batched call (concurrent on object stores); a step has one call per this many tasks.
READ_BATCH = 5000
#: The client writes a checkpoint of a step's results every this many finished tasks (and at its end).
CHECKPOINT_EVERY = 1000
CHECKPOINT_PREFIX = "checkpoint-"
records.register(BlockSummary)


@dataclass(frozen=True)
class Journal:
    """The work folder's record of a job."""

    work_url: str

    @property
    def job_url(self) -> str:
        return store.join(self.work_url, "job.json")

    def recorded_identity(self) -> dict | None:
        if not store.exists(self.job_url):
            return None
        return json.loads(store.load_bytes(self.job_url))

    def start(self, ident: dict) -> None:
        store.save_bytes(self.job_url, json.dumps(ident, indent=1).encode())

    def step_url(self, step: str) -> str:
        return store.join(self.work_url, "done", step)

    def record_stem(self, step: str, i: int) -> str:
        """Where task ``i`` of ``step`` is recorded, without the suffix (the record's format chooses it)."""
        return store.join(self.step_url(step), str(i))

    def finished(self, step: str, results: bool = True) -> dict[int, object]:
        """The tasks of ``step`` already finished: task index -> result (``None`` for all with
        ``results=False``, which only lists the folder). One listing; the checkpoints, then the records they do
        not cover, read in batched calls of ``READ_BATCH``. Records that cannot be read (and pickles, which are
        never loaded) are left out, so their tasks run again."""
        fs, folder = store.filesystem(self.step_url(step))
        fs.invalidate_cache(folder)
        try:
            paths = fs.ls(folder, detail=False)
        except FileNotFoundError:
            return {}
        wanted, checkpoints, pickles = {}, [], 0
        for path in paths:
            stem, suffix = posixpath.splitext(posixpath.basename(path.rstrip("/")))
            if suffix in records.SUFFIXES and stem.isdigit():
                wanted[path] = (int(stem), suffix)
            elif suffix in records.SUFFIXES and stem.startswith(CHECKPOINT_PREFIX):
                checkpoints.append((path, suffix))
            elif suffix == ".pkl":
                pickles += 1
        if pickles:
            log.warning("%s: %d pickle record(s) (from an older bigseg) are not loaded; their tasks run again",
                        folder, pickles)
        if not results:
            return dict.fromkeys(sorted(i for i, _ in wanted.values()))
        out: dict[int, object] = {}
        for index, value in self._read(fs, folder, dict(checkpoints)):
            out.update(zip(value["tasks"], value["results"]))
        rest = {path: i for path, (i, _) in wanted.items() if i not in out}
        for path, value in self._read(fs, folder, {p: wanted[p][1] for p in rest}):
            out[rest[path]] = value
        return out

    def _read(self, fs, folder: str, paths: dict[str, str]):
        """(path, decoded value) of every readable record of ``paths`` (path -> suffix), in batched calls."""
        bad, names = [], list(paths)
        for start in range(0, len(names), READ_BATCH):  # bytes held at once stay bounded
            data = fs.cat(names[start:start + READ_BATCH], on_error="return")
            by_name = {posixpath.basename(p): v for p, v in data.items()}
            for path in names[start:start + READ_BATCH]:
                value = by_name.get(posixpath.basename(path))
                try:
                    if not isinstance(value, bytes):
                        raise records.RecordError(f"cannot read it ({value!r})")
                    yield path, records.decode(paths[path], value)
                except records.RecordError as err:
                    bad.append(f"{posixpath.basename(path)}: {err}")
        if bad:
            log.warning("%s: %d record(s) cannot be read, their tasks run again: %s", folder, len(bad),
                        "; ".join(bad[:3]) + (" ..." if len(bad) > 3 else ""))

    def checkpoint(self, step: str, results: dict[int, object]) -> None:
        """Record the results of many finished tasks of ``step`` in one file (written whole, then renamed)."""
        if not results:
            return
        tasks = sorted(results)
        suffix, data = records.encode({"tasks": tasks, "results": [results[i] for i in tasks]})
        store.save_bytes(store.join(self.step_url(step), f"{CHECKPOINT_PREFIX}{uuid.uuid4().hex}{suffix}"), data)


def run_and_record(fn, task, record_stem: str):
    """Run one task on a worker and record its result; the record is written last, whole, then renamed."""
    result = fn(task)
    suffix, data = records.encode(result)
    store.save_bytes(record_stem + suffix, data)
    return result


def differences(recorded: dict, wanted: dict, prefix: str = "") -> list[str]:
    """Names of the settings that differ between two identities (``method.sigma``, ``block``...)."""
    out = []
    for key in sorted(set(recorded) | set(wanted)):
        a, b = recorded.get(key), wanted.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}".removeprefix("spec."))
    return out


def check_resumable(recorded: dict, wanted: dict, url: str) -> None:
    diff = differences(recorded, wanted)
    if diff:
        raise OutputError(f"{url} holds an unfinished job with different settings ({', '.join(diff)}); run the "
                          "same command again to resume it, or pass --overwrite to start over")
