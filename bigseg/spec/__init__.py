"""The job spec: :class:`JobSpec`, job files, JSON schema."""
from __future__ import annotations

from bigseg.spec.files import apply_overrides, from_dict, from_file, from_kwargs, to_yaml
from bigseg.spec.job import SPEC_VERSION, JobSpec


def schema() -> dict:
    """The JSON schema of a job file (also the HTTP API's body and the web form)."""
    return JobSpec.model_json_schema()


__all__ = ["SPEC_VERSION", "JobSpec", "apply_overrides", "from_dict", "from_file", "from_kwargs", "schema",
           "to_yaml"]
