"""Writing an NGFF label image: arrays first, metadata last, so a partial output is never a valid one."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

import numpy as np
import zarr

from bigseg.errors import OutputError
from bigseg.io import store
from bigseg.io.access import check_output
from bigseg.io.lock import LOCK_NAME
from bigseg.io.ome import ImageView, normalize_url, ome_attrs, open_group

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
#: The job's work folder inside the label group (intermediate arrays, the journal).
WORK_NAME = ".bigseg-work"


@dataclass(frozen=True)
class LabelTarget:
    """Where one label image goes: ``IMAGE/labels/<name>`` or a standalone ``--output`` group."""

    url: str
    name: str
    zarr_format: int
    version: str
    image_url: str
    in_image: bool

    @property
    def labels_group_url(self) -> str | None:
        return store.join(self.image_url, "labels") if self.in_image else None

    @property
    def table_url(self) -> str:
        return store.join(self.url, "measurements.parquet")

    @property
    def tracks_url(self) -> str:
        return store.join(self.url, "tracks.parquet")

    @property
    def qc_url(self) -> str:
        return store.join(self.url, "qc.png")

    @property
    def work_url(self) -> str:
        return store.join(self.url, WORK_NAME)

    def level_path(self, i: int) -> str:
        return str(i)


def plan_target(view: ImageView, name: str, output: str | None, overwrite: bool) -> LabelTarget:
    """Check the name and the output location; nothing is written."""
    if not NAME.match(name or "") or name in (".", ".."):
        raise OutputError(f"label name '{name}' is not allowed; use letters, digits, '_', '-' or '.', "
                          "not a path (e.g. --name nuclei)")
    image = view.image
    if output is None:
        target = LabelTarget(store.join(image.url, "labels", name), name, image.zarr_format, image.version,
                             image.url, True)
    else:
        target = LabelTarget(normalize_url(output), name, image.zarr_format, image.version, image.url, False)
    if store.is_url(target.url):  # first: reading its state needs the same access
        check_output(target.url, "; or use --output to write the labels elsewhere" if target.in_image else "")
    if not overwrite and state(target.url) in ("complete", "other"):
        raise OutputError(f"{target.url} already exists; pass --overwrite to replace it, or choose "
                          "another --name / --output")
    _check_writable(target)
    return target


def state(url: str) -> str:
    """``"absent"``, ``"incomplete"`` (a bigseg job that has not finished), ``"complete"`` or ``"other"``."""
    if not store.exists(url):
        return "absent"
    try:
        group = zarr.open_group(store=url, mode="r")
    except Exception:  # a folder holding only a job's lock or work files
        return "incomplete" if set(store.children(url)) <= {LOCK_NAME, WORK_NAME} else "other"
    status = group.attrs.get("bigseg", {}).get("status")
    return status if status in ("incomplete", "complete") else ("complete" if ome_attrs(group)[1] else "other")


def incomplete_labels(image_url: str) -> list[str]:
    """Names of label groups under ``IMAGE/labels`` whose job has not finished (not listed, not valid)."""
    url = store.join(image_url, "labels")
    if not store.exists(url):
        return []
    return [n for n in sorted(store.children(url)) if state(store.join(url, n)) == "incomplete"]


def _check_writable(target: LabelTarget) -> None:
    if store.is_url(target.url):
        return  # checked by check_output
    parent = os.path.dirname(os.path.abspath(target.url))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise OutputError(f"cannot write to {target.url}: {parent} is a file, not a folder; choose another "
                          "--output")
    if not os.access(parent, os.W_OK):
        hint = "; use --output to write the labels elsewhere" if target.in_image else ""
        raise OutputError(f"cannot write to {parent}: permission denied{hint}")


def start(target: LabelTarget) -> None:
    """Clear the output (all but the job's lock), then create the group, marked incomplete, without OME
    metadata."""
    _unlist(target)
    if store.exists(target.url):
        for name in store.children(target.url):
            if name != LOCK_NAME:
                store.remove(store.join(target.url, name))
    try:
        zarr.open_group(store=target.url, mode="a", zarr_format=target.zarr_format,  # "w" would delete the lock
                        attributes={"bigseg": {"status": "incomplete"}})
    except (PermissionError, OSError) as err:
        raise OutputError(f"cannot write to {target.url}: {err.strerror or err}") from None


def create_levels(target: LabelTarget, view: ImageView, dtype: np.dtype, time: bool = False) -> list[zarr.Array]:
    """Empty pyramid levels, one per image level from the segmented one down, chunked like the image (a
    resumed job keeps the levels it had already created); with ``time``, the image's t axis first (one
    timepoint a chunk)."""
    group = open_group(target.url, mode="r+", zarr_format=target.zarr_format)
    arrays = []
    axes = ["t"] * time + list(view.image.spatial_axes)
    for i, level in enumerate(range(view.level, len(view.image.levels))):
        lv = view.at_level(level)
        shape = (view.image.size("t"),) * time + lv.shape
        chunks = (1,) * time + tuple(min(c, s) for c, s in zip(lv.chunks, lv.shape))
        kwargs = dict(name=target.level_path(i), shape=shape, chunks=chunks, dtype=dtype, fill_value=0)
        if target.zarr_format == 2:
            kwargs["chunk_key_encoding"] = {"name": "v2", "separator": "/"}
        else:
            kwargs["dimension_names"] = axes
        existing = group.get(kwargs["name"])
        if existing is not None and existing.shape == shape and existing.dtype == dtype:
            arrays.append(existing)
        else:
            arrays.append(group.create_array(**kwargs, overwrite=True))
    return arrays


def finalize(target: LabelTarget, view: ImageView, n_levels: int, extra: dict | None = None,
             time: bool = False) -> None:
    """Write the OME metadata that makes the label image visible; the last write of a job. With ``time``, the
    levels have the image's t axis first (and its scale and translation)."""
    image = view.image
    axes = [a.to_json() for a in image.axes if a.name in image.spatial_axes or (time and a.name == "t")]
    t = image.axis_names.index("t") if time else None
    datasets = []
    for i in range(n_levels):
        lv = image.view(view.level + i, view.channel, view.timepoint)
        level = image.levels[view.level + i]
        scale = ([level.scale[t]] if time else []) + list(lv.scale)
        translation = ([level.translation[t]] if time else []) + list(lv.translation)
        datasets.append({"path": target.level_path(i), "coordinateTransformations": [
            {"type": "scale", "scale": scale}, {"type": "translation", "translation": translation}]})
    multiscale = {"name": target.name, "axes": axes, "datasets": datasets, "type": "nearest"}
    source = "../../" if target.in_image else target.image_url
    image_label = {"source": {"image": source}}
    attrs = {"bigseg": {"status": "complete", **(extra or {})}}
    if target.version == "0.4":
        multiscale = {"version": "0.4", **multiscale}
        attrs.update({"multiscales": [multiscale], "image-label": {"version": "0.4", **image_label}})
    else:
        attrs["ome"] = {"version": target.version, "multiscales": [multiscale], "image-label": image_label}
    group = open_group(target.url, mode="r+", zarr_format=target.zarr_format)
    group.attrs.put(attrs)
    if target.in_image:
        _list(target)


def _labels_group(target: LabelTarget) -> zarr.Group:
    url = target.labels_group_url
    try:
        return open_group(url, mode="r+", zarr_format=target.zarr_format)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError):
        return zarr.open_group(store=url, mode="a", zarr_format=target.zarr_format)


def _set_labels(group: zarr.Group, version: str, names: list[str]) -> None:
    ome, _ = ome_attrs(group)
    if version == "0.4":
        group.attrs.update({"labels": names})
    else:
        group.attrs.update({"ome": {**ome, "version": version, "labels": names}})


def _list(target: LabelTarget) -> None:
    group = _labels_group(target)
    ome, _ = ome_attrs(group)
    names = [n for n in ome.get("labels", []) if n != target.name] + [target.name]
    _set_labels(group, target.version, names)


def _unlist(target: LabelTarget) -> None:
    if not target.in_image or not store.exists(target.labels_group_url):
        return
    group = _labels_group(target)
    ome, _ = ome_attrs(group)
    if target.name in ome.get("labels", []):
        _set_labels(group, target.version, [n for n in ome["labels"] if n != target.name])


#: The largest id a uint32 label image holds.
MAX_UINT32_ID = 2**32 - 1


def label_dtype(n_objects: int) -> np.dtype:
    """uint32 while ids fit (JS viewers cannot read 64-bit labels), else uint64."""
    return np.dtype(np.uint32) if n_objects <= MAX_UINT32_ID else np.dtype(np.uint64)

