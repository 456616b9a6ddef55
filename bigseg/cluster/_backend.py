"""What every backend module shares: the interface, the request a job makes, optional imports, and the
explanation a backend gives when its cluster has no workers.

A backend module (``local``, ``address``, ``jobqueue``, ``gateway``, ``kubernetes``) provides::

    def open_client(profile, request: Request, name: str | None) -> ContextManager[distributed.Client]

which starts or connects to a cluster for ``profile`` (``name``: its name in the configuration, for messages)
and closes whatever it started when the context ends.
"""
from __future__ import annotations

import importlib
import weakref
from collections.abc import Callable
from dataclasses import dataclass

from bigseg.errors import ParameterError


@dataclass(frozen=True)
class Request:
    """What the job asks of the cluster beyond its profile."""

    workers: int | None = None       #: number of workers (local) or worker jobs/pods, instead of the profile's
    gpus: int | str | None = None    #: local only: GPU workers, a count or "auto"
    gpu: bool = False                #: the method runs on GPUs: the cluster must have GPU workers


def where(name: str | None, field: str | None = None) -> str:
    """``bigseg.profiles.NAME.FIELD`` (or ``profile.FIELD`` for a profile given as a mapping)."""
    parts = ["bigseg", "profiles", name] if name else ["profile"]
    return ".".join(parts + ([field] if field else []))


def check_gpu(profile, request: "Request", name: str | None, hint: str = "") -> None:
    """A job whose method runs on GPUs needs a profile whose workers have them (one line otherwise)."""
    if request.gpu and not profile.gpu:
        raise ParameterError(f"the method runs on GPUs but {where(name)} has no GPU workers; set "
                             f"{where(name, 'gpu')}: true{hint}")


def require(module: str, extra: str, name: str | None = None):
    """Import ``module`` or fail in one line saying which extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError:
        package = module.split(".")[0].replace("_", "-")
        raise ParameterError(f"{where(name)} needs {package}, which is not installed: "
                             f"pip install 'bigseg[{extra}]'") from None


_explain: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_adaptive: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def on_no_workers(client, explain: Callable[[], str], adaptive_maximum: int | None = None) -> None:
    """Register what to tell the user if ``client``'s cluster gets no worker in time, and for an adaptive
    cluster (which starts workers only once there is work) how many workers it may grow to."""
    _explain[client] = explain
    if adaptive_maximum is not None:
        _adaptive[client] = adaptive_maximum


def adaptive_maximum(client) -> int | None:
    """The most workers an adaptive cluster may start (None: not adaptive)."""
    return _adaptive.get(client)


def why_no_workers(client) -> str:
    explain = _explain.get(client)
    if explain is None:
        return f"check that workers are started for the scheduler at {client.scheduler.address}"
    try:
        return explain()
    except Exception as err:  # noqa: BLE001 - a diagnosis must not hide the original problem
        return f"(no diagnosis: {err})"
