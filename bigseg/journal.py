"""What makes a job resumable: its identity, and a record of every finished task.

A job's identity (``job.json`` in the work folder) is :meth:`bigseg.pipeline.Plan.identity`: its spec and
the values derived from it. Each task's result is written by the worker, after the task's own outputs, as
``done/<step>/<i>.pkl``: a task with a record is finished and is not run again when the job resumes.
"""
from __future__ import annotations

import json
import pickle
from dataclasses import dataclass

from bigseg.errors import OutputError
from bigseg.io import store

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

    def record_url(self, step: str, i: int) -> str:
        return store.join(self.work_url, "done", step, f"{i}.pkl")

    def finished(self, step: str) -> dict[int, object]:
        """Results of the tasks of ``step`` already finished (task index -> result)."""
        folder = store.join(self.work_url, "done", step)
        if not store.exists(folder):
            return {}
        return {int(name[:-4]): pickle.loads(store.load_bytes(store.join(folder, name)))
                for name in store.children(folder) if name.endswith(".pkl")}


def run_and_record(fn, task, record_url: str):
    """Run one task on a worker and record its result; the record is written last, whole, then renamed."""
    result = fn(task)
    store.save_bytes(record_url, pickle.dumps(result))
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
