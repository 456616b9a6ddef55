"""User-facing errors: one type, caught once by the CLI and printed as one line."""


class BigsegError(Exception):
    """A mistake in what the user asked for; the message says what and how to fix it."""


class InputError(BigsegError):
    """The input image cannot be used as given."""


class OutputError(BigsegError):
    """The output location cannot be written as asked."""


class ParameterError(BigsegError):
    """A method, block or cluster parameter does not fit the image."""


class BlockError(BigsegError):
    """A block could not be processed (unreadable input, bad values, the method failed); names the block."""


class JobCancelled(BigsegError):
    """The job was cancelled; what it finished is kept and a rerun of the same job resumes it."""

    def __init__(self, message: str = "job cancelled; the output is incomplete: run the same job again to resume"):
        super().__init__(message)


def first_line(value) -> str:
    """The first line of an error's (or any value's) text, for a one-line message; an error without text is
    named by its type."""
    text = str(value).strip()
    if text:
        return text.splitlines()[0].strip()
    return type(value).__name__ if isinstance(value, BaseException) else ""


def validation_message(err, model=None, prefix: str = "") -> str:
    """One line from a pydantic ``ValidationError``: ``method.diameter: must be positive``; an unknown field
    is named with the closest valid one (``model`` is the validated class, used to find it)."""
    import difflib
    parts = []
    for e in err.errors():
        loc = [str(p) for p in e["loc"]]
        path, fields = _walk(model, loc) if model is not None else (loc, None)
        where = ".".join(([prefix] if prefix else []) + path)
        if e["type"] == "extra_forbidden":
            close = difflib.get_close_matches(path[-1], sorted(fields or ()), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else \
                (f"; valid fields: {', '.join(sorted(fields))}" if fields else "")
            parts.append(f"{where}: unknown field{hint}")
        elif e["type"] == "union_tag_invalid":
            parts.append(f"{where}: unknown {path[-1] if path else 'kind'} '{e['ctx']['tag']}'; choose one of "
                         f"{e['ctx']['expected_tags'].replace(chr(39), '')}")
        else:
            msg = e["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
            parts.append(f"{where}: {msg}" if where else msg)  # a whole-job rule names its fields itself
    return "; ".join(parts)


def _walk(model, loc: list[str]) -> tuple[list[str], set[str] | None]:
    """The user's path for a pydantic error location (union tags dropped) and the fields valid at its end."""
    from pydantic import BaseModel
    path, cls, fields = [], model, None
    for part in loc:
        if isinstance(cls, dict):  # a tagged union: the tag names the member, it is not a field
            if part in cls:
                cls = cls[part]
                continue
            cls = None
        fields = set(cls.model_fields) if isinstance(cls, type) and issubclass(cls, BaseModel) else None
        path.append(part)
        cls = _field_model(cls, part) if fields is not None and part in fields else None
    return path, fields


def _field_model(cls, name: str):
    """The model class (or {tag: class} for a tagged union) of field ``name``, else None."""
    import typing

    from pydantic import BaseModel
    ann = cls.model_fields[name].annotation
    members = [a for a in typing.get_args(ann) or (ann,) if isinstance(a, type) and issubclass(a, BaseModel)]
    for a in typing.get_args(ann):  # Annotated[Union[...], Field(discriminator=...)]
        members += [m for m in typing.get_args(a) if isinstance(m, type) and issubclass(m, BaseModel)]
    if len(members) == 1:
        return members[0]
    if members:
        return {m.model_fields["name"].default: m for m in members if "name" in m.model_fields}
    return None
