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
    #: the parent label image's name (None: no parent)
    parent: str | None = None

    def describe(self) -> dict:
        """For the label metadata and the resume identity."""
        return {"moments": self.extras.moments, "colocalization_thresholds": self.extras.thresholds,
                "crops": self.crops, "neighbour_radius": self.neighbour_radius, "parent": self.parent}


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
    if settings.parent is not None and settings.parent not in view.image.labels:
        known = ", ".join(view.image.labels) or "none"
        raise InputError(f"measure.parent: {view.image.url} has no label image '{settings.parent}' (it has: "
                         f"{known}); segment the parents first (e.g. --name {settings.parent})")
    return MeasurePlan(Extras(moments="shape" in features, thresholds=thresholds), "shape" in features, radius,
                       settings.parent)


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
