"""The service's settings: defaults < ``--config service.yaml`` < command-line flags.

Runner processes get the same settings through the ``BIGSEG_SERVICE`` environment variable (JSON), never on
their command line (the database URL may hold a password).
"""
from __future__ import annotations

import json
import os
import re
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from bigseg.errors import ParameterError, validation_message

ENV = "BIGSEG_SERVICE"


def default_data_dir() -> str:
    """``$BIGSEG_DATA_DIR``, else ``~/.local/share/bigseg`` (where the token file is looked for too)."""
    return os.environ.get("BIGSEG_DATA_DIR") or os.path.join(os.path.expanduser("~"), ".local", "share", "bigseg")


_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(s|min|h)?\s*$")


def _seconds(value):
    """``60``, ``"60s"``, ``"2min"``, ``"1h"`` -> seconds."""
    if isinstance(value, str):
        match = _DURATION.match(value)
        if not match:
            raise ValueError(f"'{value}' is not a duration; write e.g. 60s, 2min or 1h")
        return float(match[1]) * {"s": 1, None: 1, "min": 60, "h": 3600}[match[2]]
    return value


Seconds = Annotated[float, BeforeValidator(_seconds), Field(gt=0)]


class Limits(BaseModel):
    """Per-user limits (admins' too); a user's own ``limits`` override these."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, alias_generator=lambda n: n.replace("_", "-"))
    max_queued: int = Field(100, ge=1, description="jobs a user may have waiting")
    max_running: int = Field(2, ge=1, description="jobs of a user that run at once")


class ServiceConfig(BaseModel):
    """Everything ``bigseg serve`` and its runners need to know."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, alias_generator=lambda n: n.replace("_", "-"))
    host: str = "127.0.0.1"
    port: int = Field(8642, ge=0, le=65535)
    data_dir: str = Field(default_factory=default_data_dir)
    database: str | None = Field(None, description="sqlite:///PATH or postgresql://...; default DATA/service.db")
    runners: int = Field(2, ge=1, description="jobs this server runs at once (each has its own cluster)")
    max_attempts: int = Field(3, ge=1, description="attempts of a job whose runner died, before it fails")
    cancel_grace: Seconds = Field(60.0, description="after a cancel, how long a runner may take before SIGKILL")
    heartbeat: Seconds = Field(2.0, description="a runner silent for 5 times this (15 s at least) is taken for dead")
    roots: list[str] = Field(default_factory=list, description="the admin's folders, PATH[:rw|ro]")
    models: list[str] = Field(default_factory=list, description="folders that model files may be loaded from")
    limits: Limits = Field(default_factory=Limits)
    max_body_bytes: int = Field(1 << 20, ge=1024, description="largest request body accepted")
    profiles: dict[str, Any] = Field(default_factory=dict, description="cluster profiles added to bigseg.profiles")
    default_profile: str | None = Field(None, description="profile of jobs that name none (default: bigseg.profile)")

    @property
    def database_url(self) -> str:
        return self.database or os.path.join(self.data_dir, "service.db")

    @property
    def token_file(self) -> str:
        return os.path.join(self.data_dir, "token")

    def job_dir(self, job_id: str) -> str:
        return os.path.join(self.data_dir, "jobs", job_id)

    def roots_of(self, user: dict) -> list[str]:
        """A user's folders (``PATH:mode``): their own; an admin without any gets the service's ``roots``."""
        return self.roots if user["admin"] and not user["roots"] else list(user["roots"] or [])

    def access_for(self, user: dict):
        """The :class:`~bigseg.service.paths.Access` that checks a user's paths."""
        from bigseg.service.paths import Access, parse_root
        return Access([parse_root(r) for r in self.roots_of(user)], self.models)

    def to_env(self) -> str:
        return self.model_dump_json(by_alias=True)

    @classmethod
    def from_env(cls) -> ServiceConfig:
        return cls.model_validate(json.loads(os.environ[ENV]))

    def apply_profiles(self) -> None:
        """Add this service's profiles to Dask's config (where ``bigseg.cluster`` reads them)."""
        import dask
        if self.profiles:
            dask.config.update(dask.config.config, {"bigseg": {"profiles": self.profiles}}, priority="new")
        if self.default_profile:
            dask.config.set({"bigseg.profile": self.default_profile})


def load(path: str | None = None, **overrides) -> ServiceConfig:
    """Settings from a YAML file (optional) with ``overrides`` (flags; ``None`` values are ignored)."""
    data: dict = {}
    if path:
        try:
            with open(path) as f:
                data = yaml.safe_load(f) or {}
        except OSError as err:
            raise ParameterError(f"cannot read the service config {path}: {err.strerror}") from None
        except yaml.YAMLError as err:
            raise ParameterError(f"{path} is not valid YAML: {str(err).splitlines()[0]}") from None
        if not isinstance(data, dict):
            raise ParameterError(f"{path} must hold a mapping of settings (host, port, roots, ...)")
    data.update({k.replace("_", "-"): v for k, v in overrides.items() if v not in (None, [], ())})
    try:
        config = ServiceConfig.model_validate(data)
    except ValidationError as err:
        raise ParameterError(f"{path or 'service settings'}: {validation_message(err, ServiceConfig)}") from None
    return config.model_copy(update={"data_dir": os.path.abspath(os.path.expanduser(config.data_dir))})
