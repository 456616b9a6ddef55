"""The job's command-line flags, generated from the job spec and the method models, and the job a command line
means (a job file, then the flags given, then ``--set`` overrides)."""
from __future__ import annotations

import argparse
import typing

from bigseg.errors import ParameterError
from bigseg.methods import METHODS, parameters
from bigseg.spec import apply_overrides, from_dict
from bigseg.spec.files import KEYWORDS, read_file
from bigseg.spec.job import JobSpec


#: Job flags: flag -> (section, field) of the job spec. Method flags are generated from the method models.
JOB_FLAGS = {"name": ("output", "name"), **{k: v for k, v in KEYWORDS.items() if k != "keep_work"}}


def add_job_arguments(p: argparse.ArgumentParser) -> None:
    """The job's flags (all default to None: only flags given on the command line enter the spec)."""
    p.add_argument("image", nargs="?", help="OME-Zarr image: a local path or a URL (s3://, https://)")
    p.add_argument("--spec", dest="spec_file", default=None, help="job file (YAML or JSON); flags given beside it "
                   "override its values")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override one value of the job, e.g. --set method.diameter=10 (repeatable)")
    p.add_argument("--method", default=None, help="|".join(METHODS) + " (default: watershed)")
    job = p.add_argument_group("job")
    for flag, (section, field) in JOB_FLAGS.items():
        _add_flag(job, flag, _job_field(section, field), dest=f"job_{flag}")
    methods = p.add_argument_group("method parameters (see bigseg spec --schema)")
    for field, (info, owners) in _method_fields().items():
        _add_flag(methods, field, info, dest=f"method_{field}", owners=owners)


def add_measure_arguments(p: argparse.ArgumentParser) -> None:
    """``bigseg measure``'s flags: the job's ``measure`` section, flag for field."""
    from bigseg.spec.job import MeasureSpec
    group = p.add_argument_group("measurements")
    for field, info in MeasureSpec.model_fields.items():
        _add_flag(group, field, info, dest=f"measure_{field}")


def measure_kwargs(args) -> dict:
    """The ``measure`` flags given, as :func:`bigseg.measure` keywords."""
    from bigseg.spec.job import MeasureSpec
    out = {}
    for field, info in MeasureSpec.model_fields.items():
        value = getattr(args, f"measure_{field}")
        if value is not None:
            out[field] = _flag_value(value, info.annotation)
    return out


def _job_field(section: str, field: str):
    return JobSpec.model_fields[section].annotation.model_fields[field]


def _add_flag(group, name: str, info, dest: str, owners: list[str] | None = None) -> None:
    flag = "--" + name.replace("_", "-")
    text = (info.description or "").replace("%", "%%")
    if owners is not None and len(owners) < len(METHODS):
        text = f"{'/'.join(owners)}: {text}"
    choices = _choices(info.annotation)
    if choices:
        text = f"{text} ({' | '.join(choices)})"
    if info.annotation is bool:
        group.add_argument(flag, dest=dest, action="store_true", default=None, help=text)
    elif info.annotation == bool | None:  # on, off or the default: --flag / --no-flag
        group.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=None, help=text)
    else:
        group.add_argument(flag, dest=dest, default=None, help=text, metavar=name.upper())


def _choices(annotation) -> list[str]:
    if typing.get_origin(annotation) is typing.Literal:
        return [str(c) for c in typing.get_args(annotation)]
    args = [a for a in typing.get_args(annotation) or (annotation,) if a is not type(None)]
    return [str(c) for a in args if typing.get_origin(a) is typing.Literal for c in typing.get_args(a)]


def _method_fields() -> dict:
    """Every method parameter once: field name -> (its pydantic field, the methods that have it)."""
    out: dict = {}
    for method_name, cls in METHODS.items():
        for field, info in parameters(cls).items():
            out.setdefault(field, (info, []))[1].append(method_name)
    return out


def _flag_value(text, annotation):
    """A flag's text as job data: comma-separated values become lists, numbers become numbers (the job
    model validates and converts the rest)."""
    if not isinstance(text, str) or annotation is str:
        return text
    if "," in text or _is_list(annotation):
        return [_scalar(v.strip()) for v in text.split(",")]
    return _scalar(text)


def _is_list(annotation) -> bool:
    """A field that only takes a list (``list[int] | None``)."""
    args = [a for a in typing.get_args(annotation) or (annotation,) if a is not type(None)]
    return bool(args) and all(typing.get_origin(a) is list for a in args)


def _scalar(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def job_spec(args):
    """The job a command line means: the job file (if any), then the flags given, then the --set overrides."""
    if args.spec_file is None and args.image is None:
        raise ParameterError("give an image (bigseg segment IMAGE ...) or a job file (--spec job.yaml)")
    data: dict = {}
    if args.spec_file is not None:
        data = read_file(args.spec_file)  # validated once, with the flags and overrides applied
    if args.image is not None:
        data.setdefault("input", {})["url"] = args.image
    for flag, (section, field) in JOB_FLAGS.items():
        value = getattr(args, f"job_{flag}")
        if value is not None:
            info = _job_field(section, field)
            data.setdefault(section, {})[field] = _flag_value(value, info.annotation)
    method = data.get("method") or {}
    method = {"name": method} if isinstance(method, str) else dict(method)
    if args.method is not None and args.method != method.get("name"):
        method = {"name": args.method}  # another method: the file's parameters do not apply
    for field, (info, _) in _method_fields().items():
        value = getattr(args, f"method_{field}")
        if value is not None:
            method[field] = _flag_value(value, info.annotation)
    if method:
        data["method"] = {"name": "watershed", **method}
    if args.overrides:
        data = apply_overrides(data, args.overrides)
    return from_dict(data, f"job file {args.spec_file}" if args.spec_file else "")
