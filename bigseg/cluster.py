"""Getting a Dask client: an embedded local cluster by default, or an existing scheduler."""
from __future__ import annotations

import contextlib
import logging
import os

from bigseg.errors import ParameterError

log = logging.getLogger(__name__)
#: Memory a worker needs for one default-sized block (the methods use ~40 bytes a voxel).
WORKER_MEMORY = 3 * 2**30


def default_workers() -> int:
    import psutil
    cores = os.cpu_count() or 1
    return max(1, min(cores, psutil.virtual_memory().total // WORKER_MEMORY))


@contextlib.contextmanager
def connect(scheduler: str | None = None, workers: int | None = None, client=None, gpus: int | str | None = None):
    """Yield a ``distributed.Client``: the one given, one for ``scheduler``, or a new local cluster of
    ``workers`` single-threaded worker processes plus one per GPU (``gpus``: a count or "auto")."""
    from distributed import Client, LocalCluster
    if client is not None:
        yield client
        return
    if scheduler is not None:
        if workers is not None:
            raise ParameterError("--workers and --scheduler exclude each other: an existing scheduler has its "
                                 "own workers")
        try:
            c = Client(scheduler, timeout="10s")
        except (OSError, TimeoutError) as err:
            raise ParameterError(f"cannot reach the Dask scheduler at {scheduler} ({err}); check the address "
                                 "or leave out --scheduler to use a local cluster") from None
        with c:
            yield c
        return
    n = workers or default_workers()
    if n < 1:
        raise ParameterError(f"--workers {n}: give at least 1 worker")
    gpus = detect_gpus() if gpus == "auto" else int(gpus or 0)
    cluster = gpu_cluster(n, gpus) if gpus else LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                                              dashboard_address=":0")
    with cluster, Client(cluster) as c:
        yield c


def detect_gpus() -> int:
    """Visible NVIDIA GPUs (``CUDA_VISIBLE_DEVICES`` or ``nvidia-smi -L``); 0 if none."""
    import shutil
    import subprocess
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    if shutil.which("nvidia-smi") is None:
        return 0
    out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
    return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))


def gpu_cluster(cpu_workers: int, gpus: int, gpu_ids: list[str] | None = None):
    """``cpu_workers`` plain workers (I/O, stitching, measurement) plus one worker per GPU, each seeing only
    its own device (``CUDA_VISIBLE_DEVICES``) and advertising ``resources={"GPU": 1}``, so that blocks of
    GPU methods run there and nowhere else. dask-cuda's ``LocalCUDACluster`` is not used for the GPU
    workers because it gives them no CPU siblings; its device pinning is the same."""
    from distributed import Nanny, Scheduler, SpecCluster
    ids = gpu_ids or os.environ.get("CUDA_VISIBLE_DEVICES", ",".join(map(str, range(gpus)))).split(",")
    workers = {f"cpu-{i}": {"cls": Nanny, "options": {"nthreads": 1}} for i in range(cpu_workers)}
    for i in range(gpus):
        workers[f"gpu-{i}"] = {"cls": Nanny, "options": {"nthreads": 1, "resources": {"GPU": 1},
                                                         "env": {"CUDA_VISIBLE_DEVICES": ids[i % len(ids)].strip()}}}
    return SpecCluster(workers=workers, scheduler={"cls": Scheduler, "options": {"dashboard_address": ":0"}})


def n_workers(client) -> int:
    return max(1, len(client.scheduler_info().get("workers", {})))
