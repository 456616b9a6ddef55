"""Backend ``address``: a scheduler that is already running (started by hand, by an admin, by another tool).

The address comes from the profile, else from Dask's ``scheduler-address`` (``DASK_SCHEDULER_ADDRESS``).
Nothing is started, so nothing is stopped: only the client is closed.
"""
from __future__ import annotations

import contextlib
import logging

import dask.config

from bigseg.cluster._backend import Request, on_no_workers, where
from bigseg.errors import ParameterError, first_line

log = logging.getLogger(__name__)


def scheduler_address(profile, name: str | None = None) -> str:
    address = profile.address or dask.config.get("scheduler-address", default=None)
    if not address:
        raise ParameterError(f"{where(name, 'address')}: no scheduler address; set it in the profile or set "
                             "DASK_SCHEDULER_ADDRESS (Dask's scheduler-address)")
    return str(address)


@contextlib.contextmanager
def open_client(profile, request: Request, name: str | None = None):
    from distributed import Client
    if request.workers is not None:
        raise ParameterError(f"workers={request.workers} and {where(name)} (an existing scheduler) exclude each "
                             "other: an existing scheduler has its own workers")
    address = scheduler_address(profile, name)
    try:
        client = Client(address, timeout=profile.timeout)
    except (OSError, TimeoutError) as err:
        reason = first_line(err)
        raise ParameterError(f"cannot reach the Dask scheduler at {address} ({reason}); check the address and "
                             f"that the scheduler runs ({where(name, 'address')})") from None
    with client:
        on_no_workers(client, lambda: f"the scheduler at {address} has no workers: start some with "
                                      f"`dask worker {address}`")
        if request.gpu:
            _check_gpu_workers(client, address)
        yield client


def _check_gpu_workers(client, address: str) -> None:
    workers = client.scheduler_info().get("workers", {})
    if workers and not any(w.get("resources", {}).get("GPU") for w in workers.values()):
        raise ParameterError(f"the method runs on GPUs but no worker of the scheduler at {address} advertises "
                             "a GPU: start GPU workers with `dask worker --resources GPU=1 ...`")
