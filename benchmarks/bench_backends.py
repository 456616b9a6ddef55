"""Benchmark of the cluster backends (issue 5): the same watershed job on the profiles ``local``, ``address`` and
``slurm``, each with N single-threaded workers, in one run.

    python benchmarks/bench_backends.py [--shape 128,1024,1024] [--workers 2] [--dir /tmp/bigseg-bench-backends]
                                        [--block 64,256,256] [--repeat 1]

Backends (profiles passed to ``bigseg.segment(image, "watershed", profile={...})``)
  local    {kind: local, workers: N}: a LocalCluster started and stopped by the job.
  address  {kind: address, address: ...}: a scheduler and N workers started beforehand by the ``dask`` CLI
           (tests/services/dask_cli.py), as an admin would; started before and stopped after each run, untimed.
  slurm    {kind: jobqueue, system: slurm, scale: {jobs: N}, cluster: {cores: 1, processes: 1, ...}}: worker jobs
           on a real single-node SLURM (tests/services/slurm.py, started once, untimed; needs root or an installed
           slurm-wlm + munge), submitted and cancelled by the job.

The image is written once (bigseg.synthetic) under --dir and reused by later runs with the same shape and chunks.
Every backend gets the same block shape; the outputs must be identical to local's (level 0 compared chunk-wise,
and the measurements tables). Prints one table: per backend the seconds the user waits (``bigseg.segment`` wall
time, cluster start and stop included), the job's own seconds (``result.seconds``: total and segment stage), the
seconds before the job started (cluster start, connection, planning) and after it ended (cluster stop), the
seconds from the call to the first worker joining (the scheduler's add-worker event), and ratios backend / local.
With --repeat > 1 the numbers are medians and the backends take turns.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time

import numpy as np
import pandas as pd
import zarr

import bigseg
from bigseg.engine import events
from bigseg.synthetic import nuclei, write_ome_zarr

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from services import dask_cli as dask_cli_service
from services import slurm as slurm_service

BACKENDS = ("local", "address", "slurm")


class Timeline(events.Observer):
    """Records, without changing the job, when it started (JobStarted, after the plan stage) and, once the
    first stage is over, which workers ran it and when each joined the scheduler (its add-worker events)."""

    def __init__(self):
        self.first_message = None
        self.stages = 0
        self.joined: list[float] = []
        self.workers: dict = {}

    def on_event(self, event):
        if isinstance(event, events.JobStarted) and self.first_message is None:
            self.first_message = time.time()
        if not isinstance(event, events.StageStarted):
            return
        self.stages += 1
        if self.stages == 2:  # the segment stage is done: every worker that ran a block has joined
            from distributed import default_client
            client = default_client()
            self.joined = sorted(t for t, msg in client.get_events("all")
                                 if isinstance(msg, dict) and msg.get("action") == "add-worker")
            self.workers = client.run(_worker_identity)


def _worker_identity() -> tuple[str, str | None]:
    return bigseg.__file__, os.environ.get("SLURM_JOB_ID")


def image_path(root: str, shape: tuple[int, ...], chunks: tuple[int, ...]) -> str:
    """The synthetic image for ``shape``/``chunks`` under ``root``, written once (atomically) and reused."""
    name = "image-" + "x".join(map(str, shape)) + "-chunks-" + "x".join(map(str, chunks)) + ".zarr"
    path = os.path.join(root, name)
    if os.path.exists(path):
        print(f"# data: reusing {path}", flush=True)
        return path
    t0 = time.perf_counter()
    image, truth = nuclei(shape, seed=0)
    tmp = path + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    write_ome_zarr(tmp, image, "zyx", chunks, version="0.5")
    os.rename(tmp, path)
    print(f"# data: {shape} uint16, {truth.max()} nuclei, chunks {chunks}, written in "
          f"{time.perf_counter() - t0:.0f}s to {path}", flush=True)
    return path


def profile_for(backend: str, workers: int, services: dict, root: str) -> dict:
    if backend == "local":
        return {"kind": "local", "workers": workers}
    if backend == "address":
        return {"kind": "address", "address": services["address"].address}
    memory_mb = min(2048, slurm_service.MEMORY_MB // workers)  # 2 GiB a worker, as the dask CLI workers have
    return {"kind": "jobqueue", "system": "slurm", "scale": {"jobs": workers},
            "cluster": {"cores": 1, "processes": 1, "memory": f"{memory_mb}MiB", "walltime": "02:00:00",
                        "interface": "lo", "log_directory": os.path.join(root, "slurm-logs")}}


def run_once(backend: str, image: str, block: tuple[int, ...], workers: int, services: dict, root: str,
             out: str) -> dict:
    """One timed ``bigseg.segment`` on ``backend``; the address backend's cluster is started before and
    stopped after, outside the timing."""
    if backend == "address":
        t0 = time.perf_counter()
        services["address"] = dask_cli_service.start()
        services["address_start_s"] = time.perf_counter() - t0
    try:
        profile = profile_for(backend, workers, services, root)
        timeline = Timeline()
        t_call, t0 = time.time(), time.perf_counter()
        res = bigseg.segment(image, "watershed", profile=profile, block=block, output=out, overwrite=True,
                             observer=timeline)
        wall = time.perf_counter() - t0
    finally:
        if backend == "address":
            dask_cli_service.shutdown(services.pop("address"))
    before = timeline.first_message - res.seconds.get("plan", 0.0) - t_call
    joined = [t - t_call for t in timeline.joined]
    return {"wall": wall, "job": res.seconds["total"], "segment": res.seconds["segment"], "before": before,
            "after": wall - before - res.seconds["total"],
            # a hand-started cluster's workers joined before the call: 0
            "first_worker": max(0.0, min(joined)) if joined else float("nan"),
            "result": res, "workers": timeline.workers}


def same_labels(a_url: str, b_url: str) -> bool:
    """Level 0 of two label images equal, read slab by slab along the first axis."""
    a, b = zarr.open_array(a_url + "/0", mode="r"), zarr.open_array(b_url + "/0", mode="r")
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    step = a.chunks[0]
    return all(np.array_equal(a[z:z + step], b[z:z + step]) for z in range(0, a.shape[0], step))


def same_table(a_url: str, b_url: str) -> bool:
    a = pd.read_parquet(a_url).sort_values("label").reset_index(drop=True)
    b = pd.read_parquet(b_url).sort_values("label").reset_index(drop=True)
    return a.shape == b.shape and a.equals(b)


def where_it_ran(backend: str, workers: dict, expected_n: int) -> str:
    """A short check that the job ran on the backend's own workers, importing this checkout's bigseg."""
    files = {f for f, _ in workers.values()}
    jobs = {j for _, j in workers.values()}
    problems = []
    if len(workers) != expected_n:
        problems.append(f"{len(workers)} workers, not {expected_n}")
    if files != {bigseg.__file__}:
        problems.append(f"workers import {sorted(files)}")
    if backend == "slurm" and (None in jobs or len(jobs) != expected_n):
        problems.append(f"SLURM jobs {sorted(map(str, jobs))}")
    if backend != "slurm" and jobs != {None}:
        problems.append("workers in SLURM jobs")
    return "; ".join(problems)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="128,1024,1024")
    ap.add_argument("--chunks", default="64,256,256", help="chunks of the synthetic image")
    ap.add_argument("--block", default="64,256,256", help="block shape, the same on every backend")
    ap.add_argument("--workers", type=int, default=2, help="single-threaded workers on every backend (<= 4)")
    ap.add_argument("--dir", default="/tmp/bigseg-bench-backends")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--backends", default=",".join(BACKENDS), help="subset, comma-separated; local is required")
    args = ap.parse_args()
    shape = tuple(int(v) for v in args.shape.split(","))
    chunks = tuple(int(v) for v in args.chunks.split(","))
    block = tuple(int(v) for v in args.block.split(","))
    backends = [b for b in BACKENDS if b in args.backends.split(",")]
    if "local" not in backends or args.workers > slurm_service.CPUS:
        ap.error(f"--backends must include local; --workers at most {slurm_service.CPUS} (the test SLURM's CPUs)")
    os.makedirs(args.dir, exist_ok=True)
    image = image_path(args.dir, shape, chunks)
    dask_cli_service.WORKERS = args.workers  # read by start()

    # imports and the job's sample read once, untimed, so that the first backend does not pay for them
    from bigseg import pipeline
    from bigseg.api import as_spec
    pipeline.plan(as_spec(image, "watershed", block=block, output=os.path.join(args.dir, "warmup.zarr")),
                  args.workers)

    services: dict = {}
    runs: dict[str, list[dict]] = {b: [] for b in backends}
    identical: dict[str, list[bool]] = {b: [] for b in backends}
    reference = None
    old_conf = os.environ.get("SLURM_CONF")
    try:
        if "slurm" in backends:
            t0 = time.perf_counter()
            services["slurm"] = slurm_service.start()
            services["slurm_start_s"] = time.perf_counter() - t0
            os.environ["SLURM_CONF"] = services["slurm"].conf  # sbatch, squeue, scancel find it
        for r in range(args.repeat):
            order = backends[r % len(backends):] + backends[:r % len(backends)]  # take turns going first
            for backend in order:
                out = os.path.join(args.dir, f"out-{backend}-{r}.zarr")
                run = run_once(backend, image, block, args.workers, services, args.dir, out)
                res = run["result"]
                print(f"# run {r} {backend}: wall {run['wall']:.2f}s, job {res.summary()['seconds']}, "
                      f"{res.objects} objects in {res.blocks} blocks of {res.block_shape}", flush=True)
                if problem := where_it_ran(backend, run["workers"], args.workers):
                    print(f"# WARNING {backend}: {problem}", flush=True)
                runs[backend].append(run)
                if backend == "local" and reference is None:
                    reference = res
        # compared once all ran: the reference is local's first run
        for backend in backends:
            for run in runs[backend]:
                res = run["result"]
                identical[backend].append(res.objects == reference.objects and res.objects > 0
                                          and same_labels(res.labels, reference.labels)
                                          and same_table(res.table, reference.table))
    finally:
        if "slurm" in services:
            slurm_service.shutdown(services["slurm"])
            if old_conf is None:
                os.environ.pop("SLURM_CONF", None)
            else:
                os.environ["SLURM_CONF"] = old_conf

    def med(backend, key):
        return statistics.median(run[key] for run in runs[backend])

    res = reference
    print()
    print(f"watershed on {shape} uint16 ({res.objects} objects), {res.blocks} blocks of {res.block_shape} "
          f"(halo {res.halo}), {args.workers} single-threaded workers per backend"
          + (f", medians of {args.repeat} runs" if args.repeat > 1 else ""))
    print()
    print("| backend | wall s | wall / local | job s | job / local | segment s | segment / local | "
          "before job s | first worker s | after job s | identical to local |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for backend in backends:
        ratio = {k: med(backend, k) / med("local", k) for k in ("wall", "job", "segment")}
        same = identical[backend]
        print(f"| {backend} | {med(backend, 'wall'):.2f} | {ratio['wall']:.3f} | {med(backend, 'job'):.2f} | "
              f"{ratio['job']:.3f} | {med(backend, 'segment'):.2f} | {ratio['segment']:.3f} | "
              f"{med(backend, 'before'):.2f} | {med(backend, 'first_worker'):.2f} | {med(backend, 'after'):.2f} | "
              f"{'yes' if all(same) else 'NO'}{f' ({sum(same)}/{len(same)})' if len(same) > 1 else ''} |")
    print()
    print("wall: bigseg.segment as the user waits for it (cluster start and stop included); job: result.seconds"
          "['total']; before job: call to the job's start (planning, cluster start, connection); first worker: "
          "call to the first add-worker event (0: the hand-started workers were already there); after job: "
          "job end to return (cluster stop, SLURM jobs cancelled and gone).")
    notes = []
    if "address" in backends:
        notes.append(f"dask CLI scheduler + {args.workers} workers started in {services['address_start_s']:.1f}s "
                     "before each address run (not in its wall time)")
    if "slurm" in services:
        notes.append(f"SLURM daemons started once in {services['slurm_start_s']:.1f}s (not in any wall time)")
    if notes:
        print("; ".join(notes) + ".")


if __name__ == "__main__":
    main()
