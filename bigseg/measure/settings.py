"""A job's measurement settings, checked against its image before anything runs: which channels, which
column families, the job-wide colocalization thresholds (once per job, from the job sample), the parent
label image and the neighbour radius in physical units."""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from bigseg.errors import InputError, ParameterError
from bigseg.measure.partials import Extras

#: The colocalization thresholds come from the finest level with at most this many voxels (as the job sample).
SAMPLE_VOXELS = 2**24


@dataclass(frozen=True)
class MeasurePlan:
    """What the measure stages compute for one job (a plain, picklable description)."""

    extras: Extras = Extras()
    #: the crop pass (shape features from each object's crop)
    crops: bool = False
    #: the neighbour passes, and their radius in physical units (None: no neighbours)
    neighbour_radius: float | None = None
    #: the parent label image's name (None: no parent) and its level of the measured level's shape
    #: (url, path, zarr format)
    parent: str | None = None
    parent_array: tuple[str, str, int] | None = None

    def describe(self) -> dict:
        """For the label metadata and the resume identity."""
        return {"moments": self.extras.moments, "colocalization_thresholds": self.extras.thresholds,
                "crops": self.crops, "neighbour_radius": self.neighbour_radius, "parent": self.parent,
                "parent_level": None if self.parent_array is None else self.parent_array[1]}


def measured_view(settings, view):
    """``view`` measuring the channels of ``settings.channels`` (checked against the image)."""
    if settings.channels is None:
        return view
    names = view.all_channel_names
    wrong = [c for c in settings.channels if c >= len(names)]
    if wrong:
        raise InputError(f"measure.channels: the image has {len(names)} measurable channel(s) ({', '.join(names)}), "
                         f"not channel {wrong[0]}; give channels 0 to {len(names) - 1}")
    return replace(view, measured=tuple(settings.channels))


def measure_plan(settings, view) -> MeasurePlan:
    """The job's :class:`MeasurePlan` from its ``measure`` section and the (measured) view."""
    features = set(settings.features)
    names = view.channel_names
    thresholds = None
    if "colocalization" in features:
        if len(names) < 2:
            raise InputError(f"measure.features: colocalization needs 2 or more measured channels; the image (or "
                             f"measure.channels) has {len(names)} ({', '.join(names)}); drop colocalization or "
                             "measure more channels")
        thresholds = _thresholds(settings.colocalization_thresholds, view)
    elif settings.colocalization_thresholds is not None:
        raise ParameterError("measure.colocalization_thresholds: given without the colocalization feature; add "
                             "colocalization to measure.features or drop the thresholds")
    radius = None
    if "neighbours" in features:
        radius = _physical(settings.neighbour_radius, view)
    parent = None if settings.parent is None else _parent_array(settings.parent, view)
    if settings.crops and "shape" not in features:
        raise ParameterError("measure.crops: the crop pass measures shape; add shape to measure.features")
    crops = "shape" in features and settings.crops is not False
    return MeasurePlan(Extras(moments="shape" in features, thresholds=thresholds, parent=parent is not None),
                       crops, radius, settings.parent, parent)


def _parent_array(name: str, view) -> tuple[str, str, int]:
    """The parent label image's level whose shape is the measured level's (a parent segmented at another level
    is refused: its ids are not resampled)."""
    from bigseg.io import store
    labels = view.image.label_image(name, "measure.parent", f"segment the parents first (e.g. --name {name})")
    url, shapes = labels.url, labels.level_shapes
    if not store.exists(store.join(url, "measurements.parquet")):
        raise InputError(f"measure.parent: label image '{name}' has no measurements table for its children's "
                         f"counts; measure it first: bigseg measure IMAGE --labels {name}")
    for level, shape in enumerate(shapes):
        if shape == tuple(view.shape):
            return url, labels.levels[level].path, labels.zarr_format
    raise InputError(f"measure.parent: label image '{name}' has levels of shape {shapes}, none the shape of the "
                     f"measured level {view.level} {tuple(view.shape)}; segment (or measure) at the parents' level")


def _thresholds(given, view) -> tuple[float, ...]:
    """Manders' thresholds: the given ones (one per measured channel), or each channel's Otsu threshold of the
    job sample."""
    names = view.channel_names
    if given is not None:
        if len(given) != len(names):
            raise ParameterError(f"measure.colocalization_thresholds: {len(given)} value(s) for {len(names)} "
                                 f"measured channels ({', '.join(names)}); give one per channel")
        return tuple(float(t) for t in given)
    from skimage.filters import threshold_otsu
    small = view.finest_level(SAMPLE_VOXELS)
    every = max(1, math.ceil((math.prod(small.shape) / SAMPLE_VOXELS) ** (1 / small.ndim)))
    sample = small.read_channels(tuple(slice(None, None, every) for _ in small.shape))
    values = [np.asarray(channel, np.float32).ravel() for channel in sample]
    return tuple(float(v.max()) if v.min() == v.max() else float(threshold_otsu(v)) for v in values)


def _physical(length, view) -> float:
    """A length in physical units: a number is voxels along the last (x) axis."""
    try:
        voxels = view.voxel_size.voxels(length)
    except ValueError as err:
        raise ParameterError(f"measure.neighbour_radius: {err}") from None
    return float(voxels[-1] * view.voxel_size.spacing[-1])
