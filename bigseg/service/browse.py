"""The file browser of ``GET /files``: a user's roots, and the folders inside them, OME-Zarr images annotated.

Only metadata is read: one small JSON file per folder to recognise an image, then the image's metadata
(:func:`bigseg.io.ome.open_image`), never its chunks. Entries that lead outside the user's roots (symlinks)
are left out, as are hidden (dot) files.
"""
from __future__ import annotations

import json
import os

from bigseg.errors import BigsegError, InputError, ParameterError
from bigseg.service.paths import Access

#: Files whose attributes say whether a folder is an OME-Zarr image (Zarr v3, then v2).
_ATTRS = ("zarr.json", ".zattrs")
#: An attributes file larger than this is not read to recognise an image (consolidated metadata can be large).
_MAX_ATTRS_BYTES = 4 << 20


def list_folder(access: Access, path: str | None) -> dict:
    """Without ``path``: the user's roots. With it: the folder's entries, folders first, then by name.
    Raises :class:`~bigseg.service.paths.PathForbidden` (field ``path``) outside the roots, InputError for
    a missing folder or a file, ParameterError for an object-store URL (not listed yet)."""
    if not path:
        return {"path": None, "parent": None, "entries": _roots(access)}
    location = access.check(path, "r", "path")
    if "://" in location:
        raise ParameterError(f"path: {location}: listing object stores is not supported yet; type the URL of the "
                             "image instead")
    if not os.path.isdir(location):
        what = "a file" if os.path.exists(location) else "no such folder"
        raise InputError(f"path: {location}: {what}; give the path of a folder inside your roots")
    parent = os.path.dirname(location)
    entries = []
    with os.scandir(location) as it:
        for entry in it:
            if entry.name.startswith(".") or not access.visible(entry.path):
                continue
            entries.append(_entry(entry))
    entries.sort(key=lambda e: (e["kind"] == "file", e["name"]))
    return {"path": location, "parent": parent if parent != location and access.visible(parent) else None,
            "entries": entries}


def _roots(access: Access) -> list[dict]:
    """One entry per root location, the strongest mode kept when a location is given twice."""
    modes: dict[str, str] = {}
    for root in access.roots:
        modes[root.location] = "rw" if "rw" in (root.mode, modes.get(root.location)) else "ro"
    return [{"name": loc, "path": loc, "kind": "dir", "mode": mode} for loc, mode in modes.items()]


def _entry(entry: os.DirEntry) -> dict:
    try:
        is_dir = entry.is_dir()
    except OSError:
        is_dir = False
    if not is_dir:
        return {"name": entry.name, "path": entry.path, "kind": "file", "ome": None}
    if not is_ome_zarr(entry.path):
        return {"name": entry.name, "path": entry.path, "kind": "dir", "ome": None}
    return {"name": entry.name, "path": entry.path, "kind": "ome-zarr", "ome": describe(entry.path)}


def is_ome_zarr(folder: str) -> bool:
    """Whether ``folder``'s Zarr attributes carry OME metadata (``ome`` or ``multiscales``)."""
    for name in _ATTRS:
        attrs_file = os.path.join(folder, name)
        try:
            if os.path.getsize(attrs_file) > _MAX_ATTRS_BYTES:
                return True  # too large to read here: let describe() say what it is
            with open(attrs_file, "rb") as f:
                attrs = json.load(f)
        except (OSError, ValueError):
            continue
        if isinstance(attrs, dict) and name == "zarr.json":
            attrs = attrs.get("attributes") or {}
        if isinstance(attrs, dict) and ("ome" in attrs or "multiscales" in attrs):
            return True
    return False


def describe(url: str) -> dict:
    """``{"axes": "zyx", "shape": [...], "levels": 3, "channels": 1, "dtype": "uint16"}`` from an image's
    metadata, or ``{"error": "one line"}`` when it cannot be read."""
    from bigseg.io.ome import open_image
    try:
        image = open_image(url)
    except Exception as err:  # noqa: BLE001 - any unreadable image is shown as such, never breaks the listing
        return {"error": _first_line(err)}
    level = image.levels[0]
    return {"axes": "".join(image.axis_names), "shape": list(level.shape), "levels": len(image.levels),
            "channels": image.size("c"), "dtype": level.dtype}


def _first_line(err: BaseException) -> str:
    """A BigsegError's own one-line message; anything else named as unreadable metadata."""
    lines = str(err).strip().splitlines()
    if isinstance(err, BigsegError) and lines:
        return lines[0]
    return f"cannot read its OME-Zarr metadata ({type(err).__name__}: {lines[0] if lines else 'no message'})"
