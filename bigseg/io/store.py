"""File-system helpers that work alike for local paths and fsspec URLs (s3://, gs://, file://)."""
from __future__ import annotations

import io
import posixpath

import fsspec
import numpy as np


def join(url: str, *parts: str) -> str:
    return posixpath.join(url.rstrip("/"), *parts)


def filesystem(url: str):
    """(fsspec filesystem, path inside it)."""
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


def publish(src: str, dst: str) -> None:
    """Move folder ``src`` to ``dst``, which does not exist yet: one atomic rename on a local disk. Object
    stores have no rename: there the files move one by one, and an interrupted publish resumes where it
    stopped (files already at ``dst`` stay)."""
    fs, src_path = filesystem(src)
    _, dst_path = filesystem(dst)
    if not fs.exists(dst_path):
        fs.mv(src_path, dst_path, recursive=True)
        return
    for name in fs.find(src_path):
        fs.mv(name, posixpath.join(dst_path, posixpath.relpath(name, src_path)))
    fs.rm(src_path, recursive=True)


def save_arrays(url: str, arrays: dict[str, np.ndarray]) -> None:
    """Write named arrays as one .npz file (written whole, then renamed into place)."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    save_bytes(url, buf.getvalue())


def load_arrays(url: str) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(load_bytes(url))) as npz:
        return {k: npz[k] for k in npz.files}


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
    fs, path = filesystem(url)
    fs.makedirs(posixpath.dirname(path), exist_ok=True)
    tmp = path + ".partial"
    with fs.open(tmp, "wb") as f:
        f.write(data)
    fs.mv(tmp, path)


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()
