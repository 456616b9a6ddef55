"""What the API does with jobs beyond storing them: plan and estimate, the job's JSON, cancel, logs, results."""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache

from bigseg.errors import BigsegError
from bigseg.service import states
from bigseg.service.db import Store

API = "/api/v1"
#: Voxels per second one worker segments, by method (measured on this project's 2-core CI machines:
#: benchmarks/bench_backends.py, bench_deep.py), for the estimate ``validate`` shows. Rough on purpose.
RATES = {"threshold": 4e6, "watershed": 1.5e6, "pixel-classifier": 3e5, "stardist": 1e5, "cellpose": 3e4}
#: Bytes a worker holds per voxel of a block with its halo (input, float working copies, labels).
BYTES_PER_VOXEL = 28


class NotFound(BigsegError):
    """A job's result that does not exist (yet)."""


@dataclass(frozen=True)
class JobPlan:
    """A planned job and where it would run."""

    plan: object  # bigseg.pipeline.Plan
    profile: str
    workers: int

    @property
    def target(self):
        return self.plan.target


def plan(spec, profile: str | None) -> JobPlan:
    """Plan ``spec`` as its runner will (same profile, same worker count): nothing is written."""
    from bigseg import cluster, pipeline
    from bigseg.errors import ParameterError
    from bigseg.methods._sample import clear_sample_cache
    try:
        name, prof = cluster.resolve_profile(profile)
    except ParameterError as err:
        raise ParameterError(f"profile: {err}") from None
    workers = prof.planned_workers(None) or 1
    try:
        return JobPlan(pipeline.plan(spec, workers), name or "local", workers)
    finally:
        clear_sample_cache()  # up to 64 MB per image: the server keeps none (the runner reads its own)


def plan_summary(job: JobPlan) -> dict:
    """What ``POST /jobs/validate`` answers."""
    p = job.plan
    grid, view = p.grid, p.view
    voxels = math.prod(view.shape)
    with_halo = math.prod(b + 2 * h for b, h in zip(grid.block_shape, grid.halo))
    rate = RATES.get(p.method.name, 1e6) * max(job.workers, 1)
    warnings = []
    if p.spec.output.url is None:
        warnings.append(f"the labels are written inside the image ({p.target.url})")
    if p.resume:
        warnings.append("an unfinished job with the same settings wrote this output: this job resumes it")
    if len(grid) > 100_000:
        warnings.append(f"{len(grid)} blocks: larger blocks (blocks.shape) cut scheduling overhead")
    return {"valid": True, "blocks": len(grid), "block_shape": list(grid.block_shape), "halo": list(grid.halo),
            "shape": list(view.shape), "voxels": voxels, "output_url": p.target.url, "resume": p.resume,
            "est_worker_bytes": int(with_halo * BYTES_PER_VOXEL + with_halo * view.dtype.itemsize),
            "est_seconds": round(5 + voxels / rate, 1), "workers": job.workers, "profile": job.profile,
            "method": p.method.name, "warnings": warnings}


def job_json(job: dict, caller: str) -> dict:
    """A job as the API shows it (times as ISO 8601 UTC; the dashboard link only to its owner)."""
    link = f"{API}/jobs/{job['id']}"
    progress = job["progress"] or {"stage": None, "fraction": 1.0 if job["status"] == states.SUCCEEDED else 0.0,
                                   "stages": []}
    return {"id": job["id"], "title": job["title"], "tags": job["tags"] or [], "owner": job["owner"],
            "status": job["status"], "attempt": job["attempt"], "max_attempts": job["max_attempts"],
            "profile": job["profile"], "priority": job["priority"], "created": _iso(job["created"]),
            "started": _iso(job["started"]), "finished": _iso(job["finished"]), "spec": job["spec"],
            "output": job["output_url"], "progress": progress, "error": job["error"], "result": job["result"],
            "dashboard": job["dashboard"] if caller == job["owner"] and job["status"] in states.RUNNING_STATES
            else None,
            "links": {"self": link, "events": f"{link}/events", "log": f"{link}/log", "qc": f"{link}/qc.png",
                      "table": f"{link}/table", "table_parquet": f"{link}/table.parquet"}}


def cancel(store: Store, job: dict) -> None:
    """Cancel ``job`` whatever its state (a finished job stays as it is)."""
    status = job["status"]
    if status in (states.QUEUED, states.INTERRUPTED):
        if store.transition(job["id"], states.CANCELED, "cancelled before it ran",
                            error={"message": "cancelled", "kind": "canceled"}).ok:
            return
        status = store.job(job["id"])["status"]
    if status in (states.STARTING, states.RUNNING):
        store.transition(job["id"], states.CANCELING, "cancel requested", cancel_requested=time.time())


def read_log(folder: str, offset: int, limit: int) -> dict:
    path = os.path.join(folder, "job.log")
    if not os.path.exists(path):
        return {"text": "", "offset": offset, "next_offset": offset}
    if offset >= os.path.getsize(path):  # nothing new (seeking past the largest file size fails)
        return {"text": "", "offset": offset, "next_offset": offset}
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read(limit)
    return {"text": data.decode("utf-8", errors="replace"), "offset": offset, "next_offset": offset + len(data)}


def qc_png(job: dict) -> bytes:
    """A finished job's QC picture."""
    from bigseg.io import store
    url = _result_url(job, "qc", "QC picture")
    try:
        return store.load_bytes(url)
    except OSError:
        raise NotFound(f"the QC picture of job {job['id']} ({url}) is gone (moved or deleted)") from None


def _result_url(job: dict, key: str, what: str) -> str:
    """Where a finished job wrote its ``key`` (``qc``, ``table``); :class:`NotFound` before it has succeeded."""
    url = (job["result"] or {}).get(key)
    if job["status"] != states.SUCCEEDED or not url:
        raise NotFound(f"job {job['id']} is {job['status']}: its {what} exists once it has succeeded")
    return url


def table(job: dict):
    """A finished job's measurements table (a DataFrame)."""
    url = _result_url(job, "table", "table")
    try:
        return _table(url, job["finished"])
    except (OSError, FileNotFoundError):
        raise NotFound(f"the table of job {job['id']} ({url}) is gone (moved or deleted)") from None


def table_parquet(job: dict) -> bytes:
    """The table as one Parquet file (it is stored as a folder of parts)."""
    import io
    buffer = io.BytesIO()
    table(job).to_parquet(buffer, index=False)
    return buffer.getvalue()


def table_rows(job: dict, limit: int, offset: int, sort: str | None, desc: bool) -> dict:
    """A page of the measurements table, sorted by ``sort`` when given."""
    from bigseg.errors import ParameterError
    df = table(job)
    if sort:
        if sort not in df.columns:
            raise ParameterError(f"sort: no column '{sort}'; columns are {', '.join(map(str, df.columns))}")
        df = df.sort_values(sort, ascending=not desc, kind="stable")
    page = df.iloc[offset:offset + limit]
    rows = [[_plain(v) for v in row] for row in page.itertuples(index=False, name=None)]
    return {"columns": [str(c) for c in df.columns], "rows": rows, "total": len(df)}


@lru_cache(maxsize=4)
def _table(url: str, finished: float):
    """The table at ``url`` as written by the job that finished at ``finished`` (a rerun is read again)."""
    from bigseg.io.table import read_table
    return read_table(url)


def _plain(value):
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")
