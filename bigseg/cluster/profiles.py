"""Cluster profiles: validated models of the ``bigseg.profiles`` entries of Dask's configuration, and where each
entry came from (bigseg's defaults, a YAML file in Dask's config paths, ``DASK_BIGSEG__...`` variables).

A profile is one model per kind, told apart by its ``kind`` field::

    bigseg:
      profile: hpc                # used when none is named
      profiles:
        hpc: {kind: jobqueue, system: slurm, cluster: {cores: 1, memory: 8GB}, scale: {jobs: 8}}
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import dask.config
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, NonNegativeInt, PositiveInt, ValidationError, model_validator

from bigseg.defaults import DEFAULTS, DEFAULTS_FILE
from bigseg.errors import ParameterError

ENV_PREFIX = "DASK_BIGSEG__PROFILES"
KINDS = ("local", "address", "jobqueue", "gateway", "kubernetes")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Profile(_Strict):
    #: fsspec options per protocol for the job's input and output (default: the standard environment variables).
    storage_options: dict[str, dict[str, Any]] = Field(default_factory=dict, repr=False)

    def planned_workers(self, workers: int | None = None) -> int | None:
        """How many workers the cluster will have (sizes the default blocks before it starts); ``None``: ask
        the running cluster."""
        return workers


class LocalProfile(_Profile):
    """Worker processes on this machine (``LocalCluster``), plus one GPU worker per GPU (``gpus``)."""

    kind: Literal["local"] = "local"
    workers: PositiveInt | None = None
    gpus: NonNegativeInt | Literal["auto"] = 0

    def planned_workers(self, workers: int | None = None) -> int | None:
        from bigseg.cluster.local import default_workers
        return workers or self.workers or default_workers()


class AddressProfile(_Profile):
    """A scheduler that is already running; ``address`` omitted: Dask's ``scheduler-address``."""

    kind: Literal["address"] = "address"
    address: str | None = None
    timeout: str = "10s"


class JobqueueScale(_Strict):
    jobs: PositiveInt | None = None
    n: PositiveInt | None = None

    @model_validator(mode="after")
    def _one(self):
        if (self.jobs is None) == (self.n is None):
            raise ValueError("give either jobs (batch jobs) or n (workers)")
        return self


class JobqueueAdapt(_Strict):
    minimum_jobs: NonNegativeInt = 0
    maximum_jobs: PositiveInt

    @model_validator(mode="after")
    def _order(self):
        if self.minimum_jobs > self.maximum_jobs:
            raise ValueError("minimum_jobs is larger than maximum_jobs")
        return self


class _Sized(_Profile):
    """A profile sized by ``scale`` (a fixed size) or ``adapt`` (bounds), not both."""

    @model_validator(mode="after")
    def _scale_or_adapt(self):
        if self.scale is not None and self.adapt is not None:
            raise ValueError("give scale or adapt, not both")
        return self


class JobqueueProfile(_Sized):
    """Workers in batch jobs (dask-jobqueue): ``cluster`` holds the keyword arguments of ``SLURMCluster``,
    ``PBSCluster``, ... ; ``scale`` or ``adapt`` says how many jobs; ``gpu``: one GPU per worker job."""

    kind: Literal["jobqueue"] = "jobqueue"
    system: Literal["slurm", "pbs", "lsf", "sge"] = "slurm"
    cluster: dict[str, Any] = Field(default_factory=dict)
    scale: JobqueueScale | None = None
    adapt: JobqueueAdapt | None = None
    gpu: bool = False

    def planned_workers(self, workers: int | None = None) -> int | None:
        per_job = int(self.cluster.get("processes", 1))
        if workers or (self.scale and self.scale.n):
            return workers or self.scale.n
        jobs = self.scale.jobs if self.scale else (self.adapt.maximum_jobs if self.adapt else None)
        return jobs * per_job if jobs else None


class GatewayAuth(_Strict):
    """How to log in to a gateway; secrets are read from environment variables, never from the profile."""

    kind: Literal["basic", "jupyterhub", "kerberos"] = "basic"
    username: str | None = None
    password_env: str = "DASK_GATEWAY_PASSWORD"
    api_token_env: str = "JUPYTERHUB_API_TOKEN"


class GatewayAdapt(_Strict):
    minimum: NonNegativeInt = 0
    maximum: PositiveInt


class GatewayProfile(_Sized):
    """A cluster from a Dask Gateway; ``options`` are the gateway's cluster options, ``gpu_options`` are added
    to them when GPU workers are wanted."""

    kind: Literal["gateway"] = "gateway"
    address: str | None = None
    proxy_address: str | None = None
    auth: GatewayAuth | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    scale: PositiveInt | None = None
    adapt: GatewayAdapt | None = None
    gpu: bool = False
    gpu_options: dict[str, Any] = Field(default_factory=dict)

    def planned_workers(self, workers: int | None = None) -> int | None:
        return workers or self.scale or (self.adapt.maximum if self.adapt else None)


#: A Kubernetes resource quantity; the operator's schema types them as strings (``1`` is written ``"1"``).
Quantity = Annotated[str, BeforeValidator(lambda v: str(v) if isinstance(v, (int, float)) else v)]


class KubernetesProfile(_Profile):
    """A ``DaskCluster`` of the dask-kubernetes operator; ``gpu``: an extra worker group with one GPU each."""

    kind: Literal["kubernetes"] = "kubernetes"
    name: str = "bigseg"
    image: str
    namespace: str | None = None
    n_workers: PositiveInt = 1
    resources: dict[str, dict[str, Quantity]] = Field(default_factory=dict)
    env: dict[str, str] = Field(default_factory=dict)
    gpu: bool = False
    gpu_workers: PositiveInt = 1
    gpu_resources: dict[str, dict[str, Quantity]] = Field(
        default_factory=lambda: {"limits": {"nvidia.com/gpu": "1"}})

    def planned_workers(self, workers: int | None = None) -> int | None:
        return workers or self.n_workers


Profile = Annotated[LocalProfile | AddressProfile | JobqueueProfile | GatewayProfile | KubernetesProfile,
                    Field(discriminator="kind")]


class _Any(BaseModel):
    profile: Profile


def configured() -> dict[str, Any]:
    """The ``bigseg.profiles`` mapping of the current Dask configuration."""
    profiles = dask.config.get("bigseg.profiles", default=None) or {}
    if not isinstance(profiles, Mapping):
        raise ParameterError(f"bigseg.profiles: expected a mapping of profile names to profiles, got "
                             f"{type(profiles).__name__} (from {', '.join(sources(None)) or 'Dask config'})")
    return dict(profiles)


def default_name() -> str:
    return str(dask.config.get("bigseg.profile", default="local"))


def resolve_name(name: str, profiles: Mapping[str, Any]) -> str | None:
    """``name`` as configured (Dask treats ``-`` and ``_`` in keys alike); None if there is no such profile."""
    for candidate in (name, name.replace("-", "_"), name.replace("_", "-"), name.lower()):
        if candidate in profiles:
            return candidate
    return None


def load_profile(name: str | None = None) -> Profile:
    """The validated profile called ``name`` (default: ``bigseg.profile``).

    Raises ``ParameterError`` naming the configured profiles and their files if there is none by that name, or
    naming the field (``bigseg.profiles.NAME.FIELD``) if it is invalid."""
    name = name or default_name()
    profiles = configured()
    key = resolve_name(name, profiles)
    if key is None:
        known = "; ".join(f"{n} ({', '.join(sources(n))})" for n in sorted(profiles)) or "none"
        raise ParameterError(f"unknown cluster profile {name!r}; configured profiles: {known}; add it under "
                             f"bigseg.profiles in a Dask config file (e.g. ~/.config/dask/bigseg.yaml)")
    return parse(profiles[key], key)


def parse(data: Any, name: str | None = None) -> Profile:
    """Validate one profile mapping; errors name the field and where the profile came from."""
    if not isinstance(data, Mapping):
        where = f"bigseg.profiles.{name}" if name else "profile"
        raise ParameterError(f"{where}: expected a mapping with a kind ({', '.join(KINDS)}), got "
                             f"{type(data).__name__}")
    try:
        return _Any.model_validate({"profile": _underscored(data)}).profile
    except ValidationError as err:
        raise _field_error(err, name, data) from None


#: Settings whose keys are Python names, where Dask's ``-`` spelling means ``_`` (not env, resources, ...).
_PYTHON_KEYS = ("auth", "scale", "adapt", "cluster", "options", "gpu_options", "scheduler_options")


def _underscored(data: Mapping) -> dict:
    """Dask config keys may be spelt with ``-`` (``password-env``): the profile's own keys and those of its
    Python-keyword settings get ``_``."""
    out = {}
    for key, value in data.items():
        key = key.replace("-", "_") if isinstance(key, str) else key
        out[key] = _underscored(value) if key in _PYTHON_KEYS and isinstance(value, Mapping) else value
    return out


def _field_path(loc: tuple) -> list[str]:
    """The field names of a pydantic error location, without the union members pydantic adds
    (``profile``, the kind, ``constrained-int``, ``literal['auto']``...)."""
    parts = [str(p) for p in loc[1:]]  # drop "profile"
    if parts and parts[0] in KINDS:  # the discriminated union puts the kind first
        parts = parts[1:]
    for i, part in enumerate(parts):
        if not (part.isidentifier() or part.isdigit()):
            return parts[:i]
    return parts


def _field_error(err: ValidationError, name: str | None, data: Mapping) -> ParameterError:
    errors = err.errors()
    first = errors[0]
    loc = _field_path(first["loc"])
    same = [e for e in errors if _field_path(e["loc"]) == loc]  # a union's members fail together
    msg = " or ".join(dict.fromkeys(e["msg"].removeprefix("Value error, ") for e in same))
    n_more = len({tuple(_field_path(e["loc"])) for e in errors}) - 1
    if first["type"] in ("union_tag_invalid", "union_tag_not_found"):
        loc = ["kind"]
        msg = (f"unknown kind {data.get('kind')!r}" if "kind" in data else "missing") + \
            f"; use one of {', '.join(KINDS)}"
    elif first["type"] == "extra_forbidden":
        msg = "unknown setting (misspelt?)"
    elif first["type"] == "missing":
        msg = "required, missing"
    where = ".".join(["bigseg", "profiles", name, *loc] if name else ["profile", *loc])
    more = f" (and {n_more} more problem(s))" if n_more else ""
    origin = f" (from {', '.join(sources(name))})" if name else ""
    return ParameterError(f"{where}: {msg}{more}{origin}")


def sources(name: str | None) -> list[str]:
    """Where profile ``name`` (None: any profile) is set, lowest priority first: bigseg's defaults file, Dask
    config files, environment variables; "dask.config.set" if none of them (set in this process)."""
    found = []

    def has(profiles) -> bool:
        return isinstance(profiles, Mapping) and (name is None or resolve_name(name, profiles) is not None)

    if has(DEFAULTS["bigseg"]["profiles"]):
        found.append(f"bigseg defaults {DEFAULTS_FILE}")
    for path, config in dask.config.collect_yaml(dask.config.paths, return_paths=True):
        section = config.get("bigseg") if isinstance(config, Mapping) else None
        if isinstance(section, Mapping) and has(section.get("profiles")):
            found.append(str(path))
    for var in sorted(os.environ):
        if not var.startswith(ENV_PREFIX):
            continue
        rest = var[len(ENV_PREFIX):]
        if rest.startswith("__"):
            if name is None or resolve_name(name, {rest[2:].split("__")[0].lower(): None}) is not None:
                found.append(f"${var}")
        elif rest == "" and has(dask.config.interpret_value(os.environ[var])):
            found.append(f"${var}")
    return found or ["dask.config.set in this process"]


def describe_profiles() -> list[dict]:
    """Every configured profile: name, kind, whether it is the default, and where it was set (``source``: the
    highest-priority place; ``sources``: all of them)."""
    default = default_name()
    out = []
    for name, data in sorted(configured().items()):
        where = sources(name)
        out.append({"name": name, "kind": data.get("kind") if isinstance(data, Mapping) else None,
                    "default": name == default, "source": where[-1], "sources": where})
    return out
