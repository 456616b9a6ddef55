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
def connect(scheduler: str | None = None, workers: int | None = None, client=None):
    """Yield a ``distributed.Client``: the one given, one for ``scheduler``, or a new local cluster
    of ``workers`` single-threaded worker processes (closed on exit)."""
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
    with LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster) as c:
        yield c


def n_workers(client) -> int:
    return max(1, len(client.scheduler_info().get("workers", {})))
