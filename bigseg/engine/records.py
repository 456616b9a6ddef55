"""The journal's record codec: what a task returns, as JSON or NPZ bytes, never pickles.

Values: None, bool, int, float, str, lists, tuples, dicts, numpy arrays and scalars (any dtype but
object or structured), and dataclasses registered with :func:`register`. A value without arrays is a
JSON document (``.json``); one with arrays is an NPZ file (``.npz``, read with ``allow_pickle=False``) of
two members: ``__record__``, the JSON tree (arrays described by dtype, shape and offset), and
``__data__``, the arrays' bytes one after another (two members, not one per array: reading a record's
zip members dominates the time to resume a job of many blocks). Decoding builds only the registered
dataclasses: a record cannot name code to run.
"""
from __future__ import annotations

import dataclasses
import io
import json

import numpy as np

JSON, NPZ = ".json", ".npz"
SUFFIXES = (JSON, NPZ)
_META, _DATA = "__record__", "__data__"
_ALIGN = 16
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
    if not arrays:
        return JSON, json.dumps(tree, separators=(",", ":")).encode()
    layout, chunks, offset = [], [], 0
    for a in arrays:
        data = np.ascontiguousarray(a).tobytes()
        layout.append({"dtype": a.dtype.str, "shape": list(a.shape), "offset": offset})
        pad = -len(data) % _ALIGN
        chunks += [data, b"\0" * pad]
        offset += len(data) + pad
    meta = json.dumps({"value": tree, "arrays": layout}, separators=(",", ":")).encode()
    buf = io.BytesIO()
    np.savez(buf, **{_META: np.frombuffer(meta, np.uint8), _DATA: np.frombuffer(b"".join(chunks), np.uint8)})
    return NPZ, buf.getvalue()


def decode(suffix: str, data: bytes):
    """The value of a record; :class:`RecordError` if it cannot be read or names a type not allowed."""
    try:
        if suffix == JSON:
            return _decode(json.loads(data), [])
        if suffix == NPZ:
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                meta, blob = json.loads(npz[_META].tobytes()), npz[_DATA]
            return _decode(meta["value"], [_array(blob, a) for a in meta["arrays"]])
    except RecordError:
        raise
    except Exception as err:  # noqa: BLE001 - any unreadable record is one kind of problem
        raise RecordError(f"unreadable record ({type(err).__name__}: {err})") from err
    raise RecordError(f"not a record file: '{suffix}'")


def _array(blob: np.ndarray, layout: dict) -> np.ndarray:
    dtype, shape = np.dtype(layout["dtype"]), tuple(layout["shape"])
    if dtype.hasobject:
        raise RecordError("a record holds Python objects")
    n = dtype.itemsize * int(np.prod(shape, dtype=np.int64))
    start = layout["offset"]
    if start < 0 or start + n > blob.size:
        raise RecordError("a record's array lies outside its data")
    return blob[start:start + n].view(dtype).reshape(shape).copy()


def _name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _encode(v, arrays: list):
    if v is None or isinstance(v, (bool, str)):
        return v
    if isinstance(v, (int, float)) and not isinstance(v, np.generic):
        return v
    if isinstance(v, (np.ndarray, np.generic)):
        a = np.asarray(v)
        if a.dtype.hasobject or a.dtype.names is not None or a.dtype.subdtype is not None:
            raise TypeError(f"arrays of dtype {a.dtype} (Python objects or structured) cannot be recorded")
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


def _decode(t, arrays: list):
    if isinstance(t, list):
        return [_decode(x, arrays) for x in t]
    if not isinstance(t, dict):
        return t
    if "__array__" in t:
        a = arrays[t["__array__"]]
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
