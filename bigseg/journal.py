"""What makes a job resumable: its identity, and a record of every finished task.

A job's identity is its input, method with its job-wide values, and block plan (``job.json`` in the
work folder). Each task's result is written by the worker, after the task's own outputs, as
``done/<step>/<i>.pkl``: a task with a record is finished and is not run again when the job resumes.
"""
from __future__ import annotations

import json
import pickle
from dataclasses import dataclass

import numpy as np

from bigseg.errors import OutputError
from bigseg.io import store

FORMAT = 1


def identity(plan) -> dict:
    """What must be the same for a job to resume another: input, method, parameters, block plan."""
    view = plan.view
    return {"format": FORMAT, "image": view.image.url, "level": view.level, "channel": view.channel,
            "timepoint": view.timepoint, "method": plan.method.name, "params": _plain(plan.method.params()),
            "block": list(plan.grid.block_shape), "halo": list(plan.grid.halo), "min_size": plan.min_size,
            "iou_threshold": plan.spec.iou_threshold}


def _plain(value):
    return json.loads(json.dumps(value, default=lambda v: v.item() if isinstance(v, np.generic) else str(v)))


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


def differences(recorded: dict, wanted: dict) -> list[str]:
    """Names of the settings that differ between two identities (``params.sigma``, ``block``...)."""
    out = []
    for key in sorted(set(recorded) | set(wanted)):
        a, b = recorded.get(key), wanted.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += [f"{key}.{k}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        elif a != b:
            out.append(key)
    return out


def check_resumable(recorded: dict, wanted: dict, url: str) -> None:
    diff = differences(recorded, wanted)
    if diff:
        raise OutputError(f"{url} holds an unfinished job with different settings ({', '.join(diff)}); run the "
                          "same command again to resume it, or pass --overwrite to start over")
