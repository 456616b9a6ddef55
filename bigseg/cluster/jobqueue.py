"""Backend ``jobqueue``: workers in batch jobs of SLURM, PBS, LSF or SGE (dask-jobqueue 0.9).

The scheduler runs here (dashboard on 127.0.0.1 unless the profile says otherwise); each worker job connects
back to it. The first jobs are submitted before the client is handed out, so a job the batch system refuses
fails here with the batch system's own reason. Closing cancels every job; for SLURM it also waits until
``squeue`` no longer lists them.
"""
from __future__ import annotations

import contextlib
import logging
import math
import shutil
import subprocess
import time

from bigseg.cluster._backend import Request, check_gpu, on_no_workers, require, where
from bigseg.errors import ParameterError, first_line

log = logging.getLogger(__name__)
CLASSES = {"slurm": "SLURMCluster", "pbs": "PBSCluster", "lsf": "LSFCluster", "sge": "SGECluster"}
SUBMIT = {"slurm": "sbatch", "pbs": "qsub", "lsf": "bsub", "sge": "qsub"}
STATUS = {"slurm": "squeue", "pbs": "qstat", "lsf": "bjobs", "sge": "qstat"}
#: Seconds to wait, after cancelling, for SLURM to stop listing the worker jobs.
GONE_TIMEOUT_S = 60.0


def cluster_kwargs(profile) -> dict:
    """The dask-jobqueue class's keyword arguments: the profile's, a loopback dashboard by default, and for
    GPU profiles workers that advertise ``GPU=1`` (and, on SLURM, ask for one GPU unless told how)."""
    kw = dict(profile.cluster)
    kw["scheduler_options"] = {"dashboard_address": "127.0.0.1:0", **(kw.get("scheduler_options") or {})}
    if profile.gpu:
        extra = list(kw.get("worker_extra_args") or [])
        if "--resources" not in extra:
            extra += ["--resources", "GPU=1"]
        kw["worker_extra_args"] = extra
        if profile.system == "slurm":
            directives = list(kw.get("job_extra_directives") or [])
            if not any("gres" in d or "gpu" in d for d in directives):
                directives.append("--gres=gpu:1")
            kw["job_extra_directives"] = directives
    return kw


@contextlib.contextmanager
def open_client(profile, request: Request, name: str | None = None):
    from distributed import Client
    jobqueue = require("dask_jobqueue", "slurm", name)
    check_gpu(profile, request, name, " (and request the GPU in cluster.job_extra_directives)")
    try:
        cluster = getattr(jobqueue, CLASSES[profile.system])(**cluster_kwargs(profile))
    except (TypeError, ValueError) as err:
        raise ParameterError(f"{where(name, 'cluster')}: {first_line(err)}") from None
    job_ids: set[str] = set()
    try:
        with cluster:
            _start_jobs(cluster, profile, request, name)
            with Client(cluster) as client:
                on_no_workers(client, lambda: explain(cluster, profile.system),
                              _adaptive_maximum(cluster, profile, request))
                try:
                    yield client
                finally:
                    job_ids.update(_job_ids(cluster))
            job_ids.update(_job_ids(cluster))
    finally:
        if profile.system == "slurm" and job_ids:
            _wait_gone(sorted(job_ids))


def _start_jobs(cluster, profile, request: Request, name: str | None) -> None:
    """Submit the first jobs and wait for the batch system to accept them (not for them to start)."""
    processes = cluster._dummy_job.worker_processes  # workers per job, as JobQueueCluster.scale computes it
    if profile.adapt is not None and request.workers is None:
        if profile.adapt.minimum_jobs:
            _submit(cluster, profile, name, profile.adapt.minimum_jobs)
        cluster.adapt(minimum_jobs=profile.adapt.minimum_jobs, maximum_jobs=profile.adapt.maximum_jobs)
    elif request.workers is not None:
        _submit(cluster, profile, name, math.ceil(request.workers / processes))
    elif profile.scale is not None and profile.scale.n is not None:
        _submit(cluster, profile, name, math.ceil(profile.scale.n / processes))
    else:
        _submit(cluster, profile, name, profile.scale.jobs if profile.scale else 1)


def _adaptive_maximum(cluster, profile, request: Request) -> int | None:
    if profile.adapt is None or request.workers is not None:
        return None
    return profile.adapt.maximum_jobs * cluster._dummy_job.worker_processes


def _submit(cluster, profile, name: str | None, jobs: int) -> None:
    """What ``cluster.scale(jobs=jobs)`` does, but waiting for the submissions so that a refusal is raised
    here (``scale`` submits in a background callback that only logs failures)."""
    from distributed.core import Status

    async def submit():
        while len(cluster.worker_spec) < jobs:
            cluster.worker_spec.update(cluster.new_worker_spec())
        try:
            await cluster._correct_state()
        except BaseException:
            for job in cluster.workers.values():  # never submitted: nothing to cancel at close
                if job.status == Status.created:
                    job.status = Status.failed
            raise

    log.info("submitting %d %s worker jobs", jobs, profile.system)
    try:
        cluster.sync(submit)
    except FileNotFoundError as err:
        raise ParameterError(f"{where(name)}: {err.filename or SUBMIT[profile.system]} not found; run on a "
                             f"machine that can submit {profile.system.upper()} jobs") from None
    except RuntimeError as err:
        if "Command exited with non-zero exit code" not in str(err):
            raise
        raise ParameterError(f"{profile.system.upper()} refused the worker job: {_batch_reason(err)}; change "
                             f"{where(name, 'cluster')} (memory, cores, queue, walltime, ...) to fit") from None


def _batch_reason(err: Exception) -> str:
    """The submit command's own error lines (dask-jobqueue puts them after ``stderr:``), on one line."""
    text = str(err)
    text = text.split("stderr:", 1)[1] if "stderr:" in text else text
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return "; ".join(lines) or first_line(err)


def _job_ids(cluster) -> list[str]:
    return [str(job.job_id) for job in list(cluster.workers.values()) if getattr(job, "job_id", None)]


def explain(cluster, system: str) -> str:
    """Why no worker joined: the jobs' states and, for SLURM, squeue's reason (e.g. ``PENDING (Resources)``)."""
    ids = _job_ids(cluster)
    if not ids:
        return "no worker job was submitted (an adaptive profile submits jobs only when there is work)"
    if system != "slurm" or shutil.which("squeue") is None:
        return f"{system.upper()} worker jobs {', '.join(ids)} did not start: check them with {STATUS[system]}"
    states = _squeue(ids, "%i %T %r")
    if not states:
        return (f"SLURM worker jobs {', '.join(ids)} are no longer queued: they ended or failed; read their "
                "output files (cluster.log_directory)")
    return "SLURM worker jobs did not start: " + ", ".join(
        f"{line.split()[0]} {line.split()[1]} ({' '.join(line.split()[2:])})" for line in states) + \
        f"; check `squeue -j {','.join(ids)}`"


def _squeue(ids: list[str], fmt: str) -> list[str]:
    proc = subprocess.run(["squeue", "-h", "-j", ",".join(ids), "-o", fmt], capture_output=True, text=True,
                          timeout=30, check=False)
    return [line for line in proc.stdout.splitlines() if line.strip()] if proc.returncode == 0 else []


def _wait_gone(ids: list[str]) -> None:
    """Wait until SLURM no longer lists the cancelled jobs (they pass through COMPLETING)."""
    if shutil.which("squeue") is None:
        return
    deadline = time.monotonic() + GONE_TIMEOUT_S
    while (left := _squeue(ids, "%i")) and time.monotonic() < deadline:
        time.sleep(0.5)
    if left:
        log.warning("SLURM still lists worker jobs %s after cancelling them", ", ".join(left))
