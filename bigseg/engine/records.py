"""The journal's record codec: what a task returns, as JSON or NPZ bytes, never pickles.

Values: None, bool, int, float, str, lists, tuples, dicts, numpy arrays and scalars (any dtype but
object), and dataclasses registered with :func:`register`. A value without arrays is a JSON document
(``.json``); one with arrays is an NPZ file (``.npz``) whose member ``__record__`` is the JSON tree and
whose other members are the arrays, read back with ``allow_pickle=False``. Decoding builds only the
registered dataclasses: a record cannot name code to run.
"""
from __future__ import annotations

import dataclasses
import io
import json

import numpy as np

JSON, NPZ = ".json", ".npz"
SUFFIXES = (JSON, NPZ)
_META = "__record__"
_TYPES: dict[str, type] = {}


class RecordError(ValueError):
    """A record that cannot be read back (corrupt, or naming a type that is not allowed)."""


def register(cls: type) -> type:
    """Allow the dataclass ``cls`` in records (usable as a decorator)."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    _TYPES[_name(cls)] = cls
    return cls


def encode(value) -> tuple[str, bytes]:
    """(suffix, bytes) of ``value``: ``.json`` when it holds no arrays, else ``.npz``."""
    arrays: list[np.ndarray] = []
    tree = _encode(value, arrays)
    text = json.dumps(tree, separators=(",", ":"))
    if not arrays:
        return JSON, text.encode()
    buf = io.BytesIO()
    np.savez(buf, **{_META: np.frombuffer(text.encode(), np.uint8)},
             **{f"a{i}": a for i, a in enumerate(arrays)})
    return NPZ, buf.getvalue()


def decode(suffix: str, data: bytes):
    """The value of a record; :class:`RecordError` if it cannot be read or names a type not allowed."""
    try:
        if suffix == JSON:
            return _decode(json.loads(data), {})
        if suffix == NPZ:
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                members = {k: npz[k] for k in npz.files}
            tree = json.loads(members.pop(_META).tobytes())
            return _decode(tree, members)
    except RecordError:
        raise
    except Exception as err:  # noqa: BLE001 - any unreadable record is one kind of problem
        raise RecordError(f"unreadable record ({type(err).__name__}: {err})") from err
    raise RecordError(f"not a record file: '{suffix}'")


def _name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _encode(v, arrays: list):
    if v is None or isinstance(v, (bool, str)):
        return v
    if isinstance(v, (int, float)) and not isinstance(v, np.generic):
        return v
    if isinstance(v, (np.ndarray, np.generic)):
        a = np.asarray(v)
        if a.dtype.hasobject:
            raise TypeError("arrays of Python objects cannot be recorded without pickles")
        arrays.append(a)
        return {"__array__": len(arrays) - 1, "scalar": isinstance(v, np.generic)}
    if isinstance(v, (list, tuple)):
        items = [_encode(x, arrays) for x in v]
        return items if isinstance(v, list) else {"__tuple__": items}
    if isinstance(v, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in v):
            return {k: _encode(x, arrays) for k, x in v.items()}
        return {"__dict__": [[_encode(k, arrays), _encode(x, arrays)] for k, x in v.items()]}
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        name = _name(type(v))
        if _TYPES.get(name) is not type(v):
            raise TypeError(f"{name} is not allowed in records: register it with bigseg.engine.records.register")
        return {"__dataclass__": name, "fields": {f.name: _encode(getattr(v, f.name), arrays)
                                                  for f in dataclasses.fields(v) if f.init}}
    raise TypeError(f"a task result of type {type(v).__name__} cannot be recorded")


def _decode(t, arrays: dict):
    if isinstance(t, list):
        return [_decode(x, arrays) for x in t]
    if not isinstance(t, dict):
        return t
    if "__array__" in t:
        a = arrays[f"a{t['__array__']}"]
        return a[()] if t.get("scalar") else a
    if "__tuple__" in t:
        return tuple(_decode(x, arrays) for x in t["__tuple__"])
    if "__dict__" in t:
        return {_decode(k, arrays): _decode(x, arrays) for k, x in t["__dict__"]}
    if "__dataclass__" in t:
        cls = _TYPES.get(t["__dataclass__"])
        if cls is None:
            raise RecordError(f"a record names the type '{t['__dataclass__']}', which is not allowed")
        return cls(**{k: _decode(x, arrays) for k, x in t["fields"].items()})
    return {k: _decode(x, arrays) for k, x in t.items()}
