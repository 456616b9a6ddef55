"""Getting a Dask client for a job, by profile: a cluster backend chosen from Dask's configuration.

Profiles live under ``bigseg.profiles`` in Dask's config (YAML files in Dask's config paths, ``DASK_CONFIG``,
``DASK_BIGSEG__PROFILES__<NAME>__<KEY>`` variables); bigseg's defaults (``bigseg.yaml`` beside this file)
define ``local``. Backends, one module each: ``local``, ``address`` (an existing scheduler), ``jobqueue``
(SLURM, PBS, LSF, SGE), ``gateway`` (Dask Gateway), ``kubernetes`` (dask-kubernetes operator).

>>> with open_cluster("hpc") as client:  # doctest: +SKIP
...     bigseg.segment("image.zarr", "watershed", client=client)
"""
from __future__ import annotations

import contextlib
import importlib
import logging
from collections.abc import Mapping
from typing import Any

import dask.config

from bigseg.cluster._backend import Request, adaptive_maximum, why_no_workers
from bigseg.cluster.local import WORKER_MEMORY, default_workers, detect_gpus, gpu_cluster
from bigseg.cluster.profiles import (
    AddressProfile,
    GatewayProfile,
    JobqueueProfile,
    KubernetesProfile,
    LocalProfile,
    Profile,
    describe_profiles,
    load_profile,
    parse,
)
from bigseg.errors import ParameterError

log = logging.getLogger(__name__)


def resolve_profile(profile) -> tuple[str | None, Any]:
    """(name or None, validated profile) for a profile name (default ``bigseg.profile``), mapping or model."""
    if profile is None or isinstance(profile, str):
        from bigseg.cluster.profiles import default_name
        name = profile or default_name()
        return name, load_profile(name)
    if isinstance(profile, Mapping):
        return None, parse(profile)
    if isinstance(profile, (LocalProfile, AddressProfile, JobqueueProfile, GatewayProfile, KubernetesProfile)):
        return None, profile
    raise TypeError(f"profile must be a name, a mapping or a Profile, not {type(profile).__name__}")


@contextlib.contextmanager
def open_cluster(profile: str | Mapping | None = None, *, workers: int | None = None,
                 gpus: int | str | None = None, gpu: bool = False):
    """Start (or connect to) the cluster a profile describes and yield a ``distributed.Client`` for it.

    Parameters
    ----------
    profile : str, mapping or Profile, optional
        A profile name under ``bigseg.profiles`` (default: ``bigseg.profile``, i.e. ``local``), or a profile
        given directly, e.g. ``{"kind": "address", "address": "tcp://host:8786"}``.
    workers : int, optional
        Workers (local), or workers / jobs / pods of a new cluster, instead of the profile's number.
    gpus : int or "auto", optional
        Local profiles: GPU workers beside the CPU workers.
    gpu : bool
        The job's method runs on GPUs: the cluster must have workers that advertise ``GPU=1``.

    Everything the context started is stopped when it ends (batch jobs cancelled, gateway and Kubernetes
    clusters shut down); a scheduler given by address is left running. Mistakes (unknown profile, invalid
    field, missing extra, unreachable scheduler or gateway, refused login or batch job) raise a one-line
    ``ParameterError``.
    """
    name, prof = resolve_profile(profile)
    if workers is not None and workers < 1:
        raise ParameterError(f"workers={workers}: give at least 1 worker")
    backend = importlib.import_module(f"bigseg.cluster.{prof.kind}")  # one module per kind
    log.info("cluster profile %s (kind %s)", name or "(given)", prof.kind)
    with backend.open_client(prof, Request(workers=workers, gpus=gpus, gpu=gpu), name) as client:
        yield client


def n_workers(client, timeout: str | float | None = None) -> int:
    """Workers of ``client``'s cluster, waiting for the first one if it has none yet (batch jobs queued, a
    gateway still starting them). After ``timeout`` (default ``bigseg.worker-timeout``) a one-line
    ParameterError says what to check (e.g. the SLURM jobs' state and reason). An adaptive cluster starts
    workers only once work is submitted: without workers, its maximum is returned at once."""
    from dask.utils import parse_timedelta
    n = len(client.scheduler_info().get("workers", {}))
    if n:
        return n
    if adaptive_maximum(client):
        return adaptive_maximum(client)
    timeout = timeout if timeout is not None else dask.config.get("bigseg.worker-timeout", default="300s")
    seconds = parse_timedelta(timeout, default="s")
    try:
        client.wait_for_workers(1, timeout=seconds)
    except TimeoutError:
        raise ParameterError(f"no Dask worker joined within {seconds:g} s: {why_no_workers(client)}") from None
    return max(1, len(client.scheduler_info().get("workers", {})))


@contextlib.contextmanager
def connect(scheduler: str | None = None, workers: int | None = None, client=None, gpus: int | str | None = None):
    """Compatibility: the client given, one for ``scheduler``, or a new local cluster (``workers``, ``gpus``)."""
    if client is not None:
        yield client
        return
    if scheduler is not None:
        profile = {"kind": "address", "address": scheduler}
    else:
        profile = {"kind": "local"}
    with open_cluster(profile, workers=workers, gpus=gpus) as c:
        yield c


__all__ = [
    "WORKER_MEMORY",
    "AddressProfile",
    "GatewayProfile",
    "JobqueueProfile",
    "KubernetesProfile",
    "LocalProfile",
    "Profile",
    "connect",
    "default_workers",
    "describe_profiles",
    "detect_gpus",
    "gpu_cluster",
    "load_profile",
    "n_workers",
    "open_cluster",
]
