"""Reading OME-Zarr (NGFF 0.4 on Zarr v2, NGFF 0.5 on Zarr v3) images lazily.

Only metadata is read here; pixels are read block by block on the workers through
:func:`open_array`, which keeps one open array per worker process.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace

import numpy as np
import zarr

from bigseg.errors import InputError
from bigseg.io import colour, store
from bigseg.units import VoxelSize

SPATIAL = ("z", "y", "x")


@dataclass(frozen=True)
class Axis:
    name: str
    type: str | None = None
    unit: str | None = None

    def to_json(self) -> dict:
        out = {"name": self.name}
        if self.type:
            out["type"] = self.type
        if self.unit:
            out["unit"] = self.unit
        return out


@dataclass(frozen=True)
class Level:
    """One resolution level of a multiscale image."""

    path: str
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    dtype: str
    scale: tuple[float, ...]
    translation: tuple[float, ...]


@dataclass(frozen=True)
class OmeImage:
    """An OME-Zarr multiscale image: where it is and what its metadata says."""

    url: str
    version: str
    zarr_format: int
    axes: tuple[Axis, ...]
    levels: tuple[Level, ...]
    labels: tuple[str, ...]

    @property
    def axis_names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.axes)

    @property
    def spatial_axes(self) -> tuple[str, ...]:
        return tuple(a for a in self.axis_names if a in SPATIAL)

    def size(self, axis: str) -> int:
        return self.levels[0].shape[self.axis_names.index(axis)] if axis in self.axis_names else 1

    @property
    def level_shapes(self) -> list[tuple[int, ...]]:
        """Each level's spatial shape."""
        return [self.view(level).shape for level in range(len(self.levels))]

    def label_image(self, name: str, field: str, hint: str) -> "OmeImage":
        """The label image ``IMAGE/labels/<name>``, or a one-line error: ``field`` (the setting that named it) and
        ``hint`` (what to do)."""
        if name not in self.labels:
            known = ", ".join(self.labels) or "none"
            raise InputError(f"{field + ': ' if field else ''}{self.url} has no label image '{name}' (it has: "
                             f"{known}); {hint}")
        return open_image(store.join(self.url, "labels", name))

    def view(self, level: int = 0, channel: int | None = None, timepoint: int | None = None,
             stain: str | None = None) -> "ImageView":
        """Choose a level, channel (or, for an RGB(A) image, a stain) and timepoint; checks they exist."""
        if not 0 <= level < len(self.levels):
            raise InputError(
                f"level {level} is out of range: {self.url} has levels 0..{len(self.levels) - 1}; "
                "pass --level within that range")
        for axis, value, flag in (("c", channel, "--channel"), ("t", timepoint, "--timepoint")):
            n = self.size(axis)
            if value is not None and not (0 <= value < n):
                what = "channels" if axis == "c" else "timepoints"
                raise InputError(
                    f"{flag} {value} is out of range: the image has {n} {what} (0..{n - 1})")
        colour.check_stain(stain, self.size("c"), self.levels[level].dtype, self.url)
        return ImageView(self, level, channel or 0, timepoint or 0, stain)


@dataclass(frozen=True)
class ImageView:
    """One level, channel and timepoint of an image, as a spatial (z, y, x) or (y, x) array; with a ``stain``,
    the segmented channel is that stain's concentration (float32) in the image's R, G, B channels."""

    image: OmeImage
    level: int
    channel: int
    timepoint: int
    stain: str | None = None
    #: the intensities the table measures, as indices into :meth:`all_channel_names` (None: all of them)
    measured: tuple[int, ...] | None = None

    def at_level(self, level: int) -> "ImageView":
        """The same channel (or stain) and timepoint at another level."""
        return replace(self, level=level)

    def at_timepoint(self, timepoint: int) -> "ImageView":
        """The same level and channel (or stain) at another timepoint."""
        return replace(self, timepoint=timepoint)

    def finest_level(self, max_voxels: int) -> "ImageView":
        """This view at the finest level, at or below its own, with at most ``max_voxels`` voxels (else the
        coarsest level)."""
        for level in range(self.level, len(self.image.levels)):
            small = self.at_level(level)
            if math.prod(small.shape) <= max_voxels:
                return small
        return small

    @property
    def array_url(self) -> tuple[str, str, int]:
        lev = self.image.levels[self.level]
        return self.image.url, lev.path, self.image.zarr_format

    def _spatial_index(self, axis: str) -> int:
        return self.image.axis_names.index(axis)

    @property
    def ndim(self) -> int:
        return len(self.image.spatial_axes)

    @property
    def shape(self) -> tuple[int, ...]:
        lev = self.image.levels[self.level]
        return tuple(lev.shape[self._spatial_index(a)] for a in self.image.spatial_axes)

    @property
    def chunks(self) -> tuple[int, ...]:
        lev = self.image.levels[self.level]
        return tuple(lev.chunks[self._spatial_index(a)] for a in self.image.spatial_axes)

    @property
    def scale(self) -> tuple[float, ...]:
        lev = self.image.levels[self.level]
        return tuple(lev.scale[self._spatial_index(a)] for a in self.image.spatial_axes)

    @property
    def translation(self) -> tuple[float, ...]:
        lev = self.image.levels[self.level]
        return tuple(lev.translation[self._spatial_index(a)] for a in self.image.spatial_axes)

    @property
    def voxel_size(self) -> VoxelSize:
        """Spacing and units of the spatial axes (lengths in physical units are converted with it)."""
        units = {a.name: a.unit for a in self.image.axes}
        return VoxelSize(self.scale, tuple(units[a] for a in self.image.spatial_axes))

    @property
    def n_channels(self) -> int:
        return self.image.size("c")

    @property
    def dtype(self) -> np.dtype:
        """The dtype :meth:`read` returns."""
        return np.dtype(np.float32) if self.stain else np.dtype(self.image.levels[self.level].dtype)

    @property
    def all_channel_names(self) -> tuple[str, ...]:
        """Every intensity the image can be measured in: its channels, or R, G, B and the stains."""
        return colour.channel_names(self.n_channels, self.image.levels[self.level].dtype)

    @property
    def channel_names(self) -> tuple[str, ...]:
        """The names of the intensities :meth:`read_channels` returns (the table's column suffixes)."""
        names = self.all_channel_names
        return names if self.measured is None else tuple(names[i] for i in self.measured)

    @property
    def measures_segmented_channel(self) -> bool:
        """The table measures the segmented intensities alone (a single-channel image, all of it measured)."""
        return self.n_channels == 1 and self.measured is None

    def index(self, region: tuple[slice, ...], channel: int | slice | None = None) -> tuple:
        """Full-array index for a spatial region; ``channel=None`` means the segmented channel."""
        spatial = dict(zip(self.image.spatial_axes, region))
        out = []
        for name in self.image.axis_names:
            if name == "t":
                out.append(self.timepoint)
            elif name == "c":
                out.append(self.channel if channel is None else channel)
            else:
                out.append(spatial[name])
        return tuple(out)

    def read(self, region: tuple[slice, ...]) -> np.ndarray:
        """The segmented channel (or stain) over a spatial region."""
        if self.stain:
            return colour.stain(self._read_all(region), self.stain)
        return np.asarray(open_array(*self.array_url)[self.index(region)])

    def read_channels(self, region: tuple[slice, ...]) -> np.ndarray:
        """The measured intensities over a spatial region, shape (C, *region): all channels, or for an RGB(A)
        image R, G, B and the stains (see :attr:`channel_names`)."""
        channels = self._read_all(region)
        if colour.is_rgb(self.n_channels, channels.dtype):
            channels = colour.measured(channels)
        return channels if self.measured is None else channels[list(self.measured)]

    def _read_all(self, region: tuple[slice, ...]) -> np.ndarray:
        """Every channel over a spatial region, as stored, shape (C, *region)."""
        arr = open_array(*self.array_url)
        if "c" not in self.image.axis_names:
            return np.asarray(arr[self.index(region)])[None]
        return np.asarray(arr[self.index(region, slice(None))])


def open_array(url: str, path: str, zarr_format: int, mode: str = "r") -> zarr.Array:
    """Open one array of a store (not cached: a store may be replaced between jobs)."""
    return zarr.open_array(store=url, path=path, mode=mode, zarr_format=zarr_format)


def open_group(url: str, mode: str = "r", zarr_format: int | None = None) -> zarr.Group:
    return zarr.open_group(store=url, mode=mode, zarr_format=zarr_format)


def ome_attrs(group: zarr.Group) -> tuple[dict, str | None]:
    """The OME attributes of a group and their NGFF version (``None`` if it has none)."""
    attrs = group.attrs.asdict()
    if "ome" in attrs:  # NGFF 0.5 keeps everything under "ome"
        ome = attrs["ome"]
        return ome, str(ome.get("version", "0.5"))
    if "multiscales" in attrs:
        return attrs, str(attrs["multiscales"][0].get("version", "0.4"))
    return attrs, None


def normalize_url(url) -> str:
    """A local path for local data (``file://`` URLs included), else the fsspec URL as given."""
    url = os.fspath(url)
    return url[len("file://"):] if url.startswith("file://") else url


def _missing_level(url: str, path: str) -> InputError:
    return InputError(f"{url}: the metadata names level '{path}' but there is no such array; the image is "
                      "incomplete or its metadata is wrong")


def open_image(url: str) -> OmeImage:
    """Read an OME-Zarr image's metadata; raises :class:`InputError` with a fix for bad input."""
    url = normalize_url(url)
    if not store.is_url(url) and not os.path.exists(url):
        raise InputError(f"{url}: no such file or directory; give the path of an OME-Zarr image (.zarr)")
    if not store.is_url(url) and not os.path.isdir(url):
        raise InputError(f"{url}: not a Zarr store (it is a file); give the path of an OME-Zarr image folder")
    try:
        group = open_group(url, mode="r")
    except Exception as err:  # zarr raises several types for "nothing here"
        if store.is_url(url):  # say why: refused credentials, an unreachable store, a missing bucket, nothing there
            from bigseg.io.access import check_input
            check_input(url, err)
        raise InputError(f"{url}: not a Zarr group ({type(err).__name__}); "
                         "convert the image to OME-Zarr first, e.g. with bioformats2raw") from None
    ome, version = ome_attrs(group)
    if group.attrs.get("bigseg", {}).get("status") == "incomplete":
        raise InputError(f"{url}: an unfinished bigseg output (its job did not finish), not a valid image; run "
                         "the job again to resume it")
    if version is None or "multiscales" not in ome:
        raise InputError(f"{url}: Zarr group without OME-NGFF 'multiscales' metadata; "
                         "convert the image to OME-Zarr first, e.g. with bioformats2raw")
    ms = ome["multiscales"][0]
    if "axes" not in ms:  # NGFF 0.1/0.2: no axes; the first level's dimensions are the last of t, c, z, y, x
        first = ms["datasets"][0]["path"]
        if first not in group:
            raise _missing_level(url, first)
        ms = {**ms, "axes": [{"name": n} for n in "tczyx"[-group[first].ndim:]]}
    axes = tuple(Axis(a["name"], a.get("type"), a.get("unit")) if isinstance(a, dict) else Axis(a)
                 for a in ms["axes"])
    names = [a.name for a in axes]
    if not {"y", "x"} <= set(names) or set(names) - {"t", "c", "z", "y", "x"}:
        raise InputError(f"{url}: axes {names} are not supported; bigseg needs (t, c, z,) y, x axes")
    global_scale = _transform(ms.get("coordinateTransformations", []), len(axes))
    levels = []
    for ds in ms["datasets"]:
        try:
            arr = group[ds["path"]]
        except KeyError:
            raise _missing_level(url, ds["path"]) from None
        if arr.ndim != len(axes):
            raise InputError(f"{url}/{ds['path']}: the array has {arr.ndim} dimensions but the metadata "
                             f"names {len(axes)} axes {names}; fix the metadata")
        scale, translation = _transform(ds.get("coordinateTransformations", []), len(axes))
        if len(scale) != len(axes) or len(translation) != len(axes):
            raise InputError(f"{url}/{ds['path']}: the metadata's scale/translation has {len(scale)}/"
                             f"{len(translation)} values for {len(axes)} axes {names}; fix the metadata")
        if levels and any(s > p for s, p in zip(arr.shape, levels[-1].shape)):
            raise InputError(f"{url}/{ds['path']}: level shape {tuple(arr.shape)} is larger than the level above "
                             f"it {levels[-1].shape}; the metadata lists the levels in the wrong order or is wrong")
        scale = tuple(s * g for s, g in zip(scale, global_scale[0]))
        translation = tuple(t * g + gt for t, g, gt in zip(translation, global_scale[0], global_scale[1]))
        chunks = arr.shards if getattr(arr, "shards", None) else arr.chunks
        levels.append(Level(ds["path"], tuple(arr.shape), tuple(chunks), str(arr.dtype), scale, translation))
    labels = ()
    if "labels" in group:
        l_ome, _ = ome_attrs(group["labels"])
        labels = tuple(l_ome.get("labels", []))
    return OmeImage(url, version, group.metadata.zarr_format, axes, tuple(levels), labels)


def _transform(transforms: list[dict], ndim: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    scale, translation = (1.0,) * ndim, (0.0,) * ndim
    for t in transforms:
        if t.get("type") == "scale":
            scale = tuple(float(v) for v in t["scale"])
        elif t.get("type") == "translation":
            translation = tuple(float(v) for v in t["translation"])
    return scale, translation
