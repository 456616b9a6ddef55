"""Job files (YAML or JSON), keyword arguments and ``--set`` overrides, all turned into a :class:`JobSpec`."""
from __future__ import annotations

import json
import os

import yaml
from pydantic import ValidationError

from bigseg.errors import ParameterError, validation_message
from bigseg.spec.job import SPEC_VERSION, JobSpec

#: ``segment(image, method, name, **kwargs)`` keywords that are not method parameters: where they go.
KEYWORDS = {"level": ("input", "level"), "channel": ("input", "channel"), "timepoint": ("input", "timepoint"),
            "timepoints": ("input", "timepoints"), "stain": ("input", "stain"),
            "block": ("blocks", "shape"), "halo": ("blocks", "halo"), "iou_threshold": ("stitch", "iou_threshold"),
            "output": ("output", "url"), "overwrite": ("output", "overwrite"),
            "skip_background": ("foreground", "skip_background"), "foreground_threshold": ("foreground", "threshold"),
            "mask": ("foreground", "mask"), "features": ("measure", "features"), "crops": ("measure", "crops"),
            "channels": ("measure", "channels"),
            "colocalization_thresholds": ("measure", "colocalization_thresholds"), "parent": ("measure", "parent"),
            "neighbour_radius": ("measure", "neighbour_radius"), "track": ("track", "enabled"),
            "track_min_overlap": ("track", "min_overlap"), "track_division_overlap": ("track", "division_overlap"),
            "track_max_distance": ("track", "max_distance"), "skip_bad_blocks": ("options", "skip_bad_blocks"),
            "keep_work": ("options", "keep_work")}


def measure_settings(data: dict):
    """A job's ``measure`` section alone (for measuring existing labels), validated like a job's."""
    from bigseg.spec.job import MeasureSpec
    try:
        return MeasureSpec.model_validate(data)
    except ValidationError as err:
        raise ParameterError(validation_message(err, MeasureSpec, prefix="measure")) from None


def from_dict(data: dict, source: str = "") -> JobSpec:
    """Validate plain data; errors name the field (``method.diameter: must be positive``)."""
    where = f"{source}: " if source else ""
    _check_mapping(data, where)
    version = data.get("version", SPEC_VERSION)
    if isinstance(version, int) and version > SPEC_VERSION:
        raise ParameterError(f"{where}job-file version {version} is newer than this bigseg reads (up to "
                             f"{SPEC_VERSION}); upgrade bigseg (pip install -U bigseg)")
    try:
        return JobSpec.model_validate(data)
    except ValidationError as err:
        raise ParameterError(where + validation_message(err, JobSpec)) from None


def from_file(path: str | os.PathLike, overrides: list[str] = ()) -> JobSpec:
    """A job file (YAML or JSON), with ``section.field=value`` overrides applied."""
    return from_dict(apply_overrides(read_file(path), overrides), f"job file {os.fspath(path)}")


def read_file(path: str | os.PathLike) -> dict:
    """A job file's data, not yet validated (YAML or JSON)."""
    path = os.fspath(path)
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise ParameterError(f"job file {path}: no such file; write one with: bigseg spec IMAGE ... > job.yaml") \
            from None
    except yaml.YAMLError as err:
        raise ParameterError(f"job file {path}: not valid YAML or JSON ({' '.join(str(err).split())})") from None
    data = {} if data is None else data
    _check_mapping(data, f"job file {path}: ")
    return data


def _check_mapping(data, where: str) -> None:
    if not isinstance(data, dict):
        raise ParameterError(f"{where}a job is a mapping of sections (input, method, ...), not {type(data).__name__}")


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """``["method.diameter=10", "output.overwrite=true"]`` set into a copy of ``data`` (values read as YAML)."""
    data = json.loads(json.dumps(data))
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ParameterError(f"--set {item}: write section.field=value, e.g. method.diameter=10")
        *parents, leaf = key.strip().split(".")
        node = data
        for p in parents:
            if isinstance(node.get(p), str) and p == "method":  # `method: watershed` short form
                node[p] = {"name": node[p]}
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ParameterError(f"--set {item}: {p} is not a section")
        node[leaf] = yaml.safe_load(value) if value.strip() else None
    return data


def to_yaml(spec: JobSpec) -> str:
    return yaml.safe_dump(spec.to_dict(), sort_keys=False, allow_unicode=True)


def from_kwargs(image, method="watershed", name: str | None = None, **kwargs) -> JobSpec:
    """The spec that ``bigseg.segment(image, method, name, level=..., diameter=...)`` means: keywords of
    :data:`KEYWORDS` go to their section, all others are the method's parameters."""
    data: dict = {"input": {"url": os.fspath(image)}, "output": {"name": name}}
    params = {}
    for key, value in kwargs.items():
        if value is None:
            continue
        if key in KEYWORDS:
            section, field = KEYWORDS[key]
            if key == "block":
                value = list(value)
            elif key == "output":
                value = os.fspath(value)
            data.setdefault(section, {})[field] = value
        else:
            params[key] = value
    from bigseg.methods import Method
    if isinstance(method, Method):
        if params:
            method = method.model_copy(update=params)
        data["method"] = method
    else:
        data["method"] = {"name": method, **params}
    return from_dict(data)
