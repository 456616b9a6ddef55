"""Backend ``local``: worker processes on this machine, one thread each, and one extra worker per GPU.

Scheduler, workers and dashboard listen on 127.0.0.1 only.
"""
from __future__ import annotations

import contextlib
import logging
import os

from bigseg.cluster._backend import Request

log = logging.getLogger(__name__)
#: Memory a worker needs for one default-sized block (the methods use ~40 bytes a voxel).
WORKER_MEMORY = 3 * 2**30
LOOPBACK = "127.0.0.1"
DASHBOARD = "127.0.0.1:0"


def default_workers() -> int:
    """As many workers as cores, but no more than memory allows (``WORKER_MEMORY`` each)."""
    import psutil
    cores = os.cpu_count() or 1
    return max(1, min(cores, psutil.virtual_memory().total // WORKER_MEMORY))


def detect_gpus() -> int:
    """Visible NVIDIA GPUs (``CUDA_VISIBLE_DEVICES`` or ``nvidia-smi -L``); 0 if none."""
    import shutil
    import subprocess
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    if shutil.which("nvidia-smi") is None:
        return 0
    out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False)
    return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))


def gpu_cluster(cpu_workers: int, gpus: int, gpu_ids: list[str] | None = None):
    """``cpu_workers`` plain workers (I/O, stitching, measurement) plus one worker per GPU, each seeing only
    its own device (``CUDA_VISIBLE_DEVICES``) and advertising ``resources={"GPU": 1}``, so that blocks of
    GPU methods run there and nowhere else. dask-cuda's ``LocalCUDACluster`` is not used for the GPU
    workers because it gives them no CPU siblings; its device pinning is the same."""
    from distributed import Nanny, Scheduler, SpecCluster
    ids = gpu_ids or os.environ.get("CUDA_VISIBLE_DEVICES", ",".join(map(str, range(gpus)))).split(",")
    base = {"nthreads": 1, "host": LOOPBACK, "dashboard_address": DASHBOARD}
    workers = {f"cpu-{i}": {"cls": Nanny, "options": dict(base)} for i in range(cpu_workers)}
    for i in range(gpus):
        workers[f"gpu-{i}"] = {"cls": Nanny, "options": {**base, "resources": {"GPU": 1},
                                                         "env": {"CUDA_VISIBLE_DEVICES": ids[i % len(ids)].strip()}}}
    return SpecCluster(workers=workers, scheduler={"cls": Scheduler, "options": {"host": LOOPBACK,
                                                                                  "dashboard_address": DASHBOARD}})


def local_cluster(workers: int, gpus: int = 0):
    """A new cluster of ``workers`` single-threaded worker processes (plus ``gpus`` GPU workers)."""
    from distributed import LocalCluster
    if gpus:
        return gpu_cluster(workers, gpus)
    return LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host=LOOPBACK,
                        dashboard_address=DASHBOARD)


@contextlib.contextmanager
def open_client(profile, request: Request, name: str | None = None):
    from distributed import Client
    n = profile.planned_workers(request.workers)  # the size the job was planned for
    gpus = request.gpus if request.gpus is not None else profile.gpus
    if request.gpu and not gpus:
        gpus = "auto"
    gpus = detect_gpus() if gpus == "auto" else int(gpus or 0)
    log.info("local cluster: %d workers, %d GPU workers", n, gpus)
    with local_cluster(n, gpus) as cluster, Client(cluster) as client:
        yield client
