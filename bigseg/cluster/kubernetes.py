"""Backend ``kubernetes``: a ``DaskCluster`` of the dask-kubernetes operator (``KubeCluster``), deleted when the
job ends.

The operator must be installed in the Kubernetes cluster. The spec is generated with dask-kubernetes' own
``make_cluster_spec`` / ``make_worker_spec``, with the ``dask scheduler`` / ``dask worker`` commands (its
defaults call the ``dask-scheduler`` / ``dask-worker`` scripts, which distributed 2026.8 no longer ships).
``gpu: true`` adds a worker group ``gpu`` whose pods request ``nvidia.com/gpu: 1`` and whose workers advertise
``GPU=1``.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import uuid

from bigseg.cluster._backend import Request, check_gpu, on_no_workers, require, where
from bigseg.errors import ParameterError, first_line

log = logging.getLogger(__name__)
SCHEDULER_COMMAND = ["dask", "scheduler"]
#: single-threaded workers (one block is one process's worth of NumPy work) that may use the container's whole
#: memory limit (Dask's default divides it by the node's cores when the pod has no CPU limit)
WORKER_COMMAND = ["dask", "worker", "--nthreads", "1", "--memory-limit", "1"]
GPU_GROUP = "gpu"


def _run_dask(container: dict) -> dict:
    """Run ``dask ...`` whatever the image's entrypoint is (the bigseg image's is ``bigseg``): ``command``
    is the ``dask`` executable, ``args`` the rest."""
    args = container["args"]
    container["command"], container["args"] = [args[0]], args[1:]
    return container


def _merge_resources(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for key, values in extra.items():
        out[key] = {**out.get(key, {}), **values}
    return out


def cluster_spec(profile, request: Request, name: str) -> dict:
    """The ``DaskCluster`` resource: default worker group of CPU workers, scheduler with ``dask scheduler``."""
    operator = require("dask_kubernetes.operator", "kubernetes")
    spec = operator.make_cluster_spec(name=name, image=profile.image, n_workers=request.workers or profile.n_workers,
                                      resources=dict(profile.resources), env=dict(profile.env),
                                      worker_command=list(WORKER_COMMAND))
    scheduler = spec["spec"]["scheduler"]["spec"]["containers"][0]
    scheduler["args"] = SCHEDULER_COMMAND + scheduler["args"][1:]  # replaces "dask-scheduler"
    _run_dask(scheduler)
    _run_dask(spec["spec"]["worker"]["spec"]["containers"][0])
    return spec


def gpu_worker_spec(profile) -> dict:
    """The ``gpu`` worker group: ``gpu_workers`` pods, each with ``gpu_resources`` and ``--resources GPU=1``."""
    operator = require("dask_kubernetes.operator", "kubernetes")
    spec = operator.make_worker_spec(image=profile.image, n_workers=profile.gpu_workers,
                                     resources=_merge_resources(dict(profile.resources), profile.gpu_resources),
                                     env=dict(profile.env), worker_command=WORKER_COMMAND + ["--resources", "GPU=1"])
    _run_dask(spec["spec"]["containers"][0])
    return spec


@contextlib.contextmanager
def open_client(profile, request: Request, name: str | None = None):
    from distributed import Client
    operator = require("dask_kubernetes.operator", "kubernetes", name)
    check_gpu(profile, request, name)
    _check_api(profile, name)
    cluster_name = f"{profile.name}-{uuid.uuid4().hex[:8]}"  # one DaskCluster per job, never another job's
    spec = cluster_spec(profile, request, cluster_name)
    log.info("creating DaskCluster %s (%s)", cluster_name, profile.image)
    with operator.KubeCluster(custom_cluster_spec=spec, namespace=profile.namespace,
                              shutdown_on_close=True) as cluster:
        if profile.gpu:
            cluster.add_worker_group(GPU_GROUP, custom_spec=gpu_worker_spec(profile))
        with Client(cluster) as client:
            on_no_workers(client, lambda: f"DaskCluster {cluster_name} has no workers yet: check "
                                          f"`kubectl get pods -l dask.org/cluster-name={cluster_name}` "
                                          "(image pull, resource quota, pending pods)")
            yield client


def _check_api(profile, name: str | None) -> None:
    """Fail in one line when there are no Kubernetes credentials or the API server cannot be reached."""
    kr8s = require("kr8s", "kubernetes", name)
    try:
        kr8s.api(namespace=profile.namespace).version()
    except Exception as err:  # noqa: BLE001 - kr8s raises ValueError, httpx errors, ...
        reason = first_line(err)
        raise ParameterError(f"cannot reach Kubernetes for {where(name)} ({reason}); check KUBECONFIG / "
                             "the current context, or run inside the cluster") from None
