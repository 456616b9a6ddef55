"""File-system helpers that work alike for local paths and fsspec URLs (s3://, gs://, file://)."""
from __future__ import annotations

import io
import logging
import posixpath
from collections.abc import Mapping

import fsspec
import fsspec.config
import numpy as np

log = logging.getLogger(__name__)
#: Protocols whose writes are atomic puts of whole objects and which have no folders.
OBJECT_STORES = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl"})


def is_url(url: str) -> bool:
    """An fsspec URL (``s3://``, ``https://``, ...) rather than a local path."""
    return "://" in url


def join(url: str, *parts: str) -> str:
    return posixpath.join(url.rstrip("/"), *parts)


def filesystem(url: str):
    """(fsspec filesystem, path inside it). Listings are not cached: other processes (the workers, a
    resumed job) add and remove files between calls."""
    if is_url(url):
        return fsspec.core.url_to_fs(url, use_listings_cache=False)
    return fsspec.core.url_to_fs(url)


def exists(url: str) -> bool:
    fs, path = filesystem(url)
    return fs.exists(path)


def children(url: str) -> list[str]:
    """Names of the files and folders directly in folder ``url``."""
    fs, path = filesystem(url)
    return [posixpath.basename(p.rstrip("/")) for p in fs.ls(path, detail=False)]


def remove(url: str) -> None:
    fs, path = filesystem(url)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def configure(storage_options: Mapping | None) -> dict:
    """Apply fsspec options per protocol in this process, e.g. ``{"s3": {"key": ..., "secret": ...,
    "endpoint_url": ...}}``: every filesystem created afterwards (by bigseg, zarr or pyarrow) gets them, and
    options passed explicitly still win. A protocol's options replace the ones it had; ``{}`` clears them.
    Returns the previous options of those protocols (``configure(previous)`` restores them). Without any,
    s3fs reads the standard ``AWS_*`` environment variables."""
    previous = {}
    for protocol, options in check_options(storage_options).items():
        previous[protocol] = dict(fsspec.config.conf.get(protocol, {}))
        if options:
            fsspec.config.conf[protocol] = dict(options)
        else:
            fsspec.config.conf.pop(protocol, None)
        log.debug("storage options for %s:// set (%s)", protocol, ", ".join(sorted(options)) or "none")
    return previous


def check_options(storage_options: Mapping | None) -> dict[str, dict]:
    """``storage_options`` as plain ``{protocol: {option: value}}``; raises ParameterError for another shape."""
    from bigseg.errors import ParameterError
    if not storage_options:
        return {}
    if not isinstance(storage_options, Mapping) or not all(
            isinstance(p, str) and isinstance(o, Mapping | None) for p, o in storage_options.items()):
        raise ParameterError("storage_options must map a protocol to its options, e.g. "
                             "{s3: {key: ..., secret: ..., endpoint_url: ...}}")
    return {p: dict(o or {}) for p, o in storage_options.items()}


def is_object_store(fs) -> bool:
    """True for object stores (S3, GCS, Azure): no folders, no rename, a put is atomic."""
    protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    return bool(OBJECT_STORES.intersection(protocols))


def publish(src: str, dst: str) -> None:
    """Move folder ``src`` to ``dst``: one atomic rename on a local disk (when ``dst`` does not exist yet).
    Object stores have no rename: there every file is copied, then the sources are deleted, so that an
    interrupted publish resumes (files already at ``dst`` are copied again, ``src`` goes last)."""
    fs, src_path = filesystem(src)
    _, dst_path = filesystem(dst)
    if not is_object_store(fs) and not fs.exists(dst_path):
        fs.mv(src_path, dst_path, recursive=True)
        return
    names = [name for name, info in fs.find(src_path, detail=True).items() if info["type"] == "file"]
    if names:
        targets = [posixpath.join(dst_path, posixpath.relpath(name, src_path)) for name in names]
        if is_object_store(fs):
            fs.copy(names, targets)
            fs.rm(names)
        else:
            for name, target in zip(names, targets):
                fs.mv(name, target)
    if fs.exists(src_path):
        fs.rm(src_path, recursive=True)


def save_arrays(url: str, arrays: dict[str, np.ndarray]) -> None:
    """Write named arrays as one .npz file (written whole, then renamed into place)."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    save_bytes(url, buf.getvalue())


def load_arrays(url: str) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(load_bytes(url))) as npz:
        return {k: npz[k] for k in npz.files}


def iter_arrays(urls: list[str], batch: int = 64):
    """The named arrays of .npz files ``urls`` (all on one file system), in order, read ``batch`` at a time
    with one call (concurrent on object stores)."""
    if not urls:
        return
    fs, _ = filesystem(urls[0])
    for start in range(0, len(urls), batch):
        paths = [filesystem(u)[1] for u in urls[start:start + batch]]
        data = fs.cat(paths)
        for path in paths:
            with np.load(io.BytesIO(data[path])) as npz:
                yield {k: npz[k] for k in npz.files}


def save_array(url: str, array: np.ndarray) -> None:
    """Write one array as a .npy file (written whole, then renamed into place)."""
    save_bytes(url, _npy_bytes(array))


def load_array(url: str) -> np.ndarray:
    return np.load(io.BytesIO(load_bytes(url)))


def load_bytes(url: str) -> bytes:
    fs, path = filesystem(url)
    with fs.open(path, "rb") as f:
        return f.read()


def save_bytes(url: str, data: bytes) -> None:
    """Write a file whole: one put on an object store (atomic there), else written aside and renamed (aside: a
    hidden name, which readers of a folder of parts such as pyarrow's datasets skip)."""
    fs, path = filesystem(url)
    if is_object_store(fs):
        fs.pipe_file(path, data)
        return
    fs.makedirs(posixpath.dirname(path), exist_ok=True)
    folder, name = posixpath.split(path)
    tmp = posixpath.join(folder, f".{name}.partial")
    with fs.open(tmp, "wb") as f:
        f.write(data)
    fs.mv(tmp, path)


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()
