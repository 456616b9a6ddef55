"""Job-wide values (a threshold, normalisation percentiles) from one small sample of the image, computed
once per job on the client, so that the blocking never changes them."""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from skimage import filters

from bigseg.blocks import region_text

#: The sample is the finest level with at most this many voxels.
SAMPLE_VOXELS = 2**24


@dataclass(frozen=True, eq=False)
class SampleImage:
    """The job sample as an image: the segmented channel at the sample level (float32), which of its voxels
    could be read (None: all), and how many voxels of the segmented level one sample voxel spans per axis."""

    data: np.ndarray
    readable: np.ndarray | None
    step: tuple[float, ...]
    failures: tuple[str, ...]

    @property
    def values(self) -> np.ndarray:
        """The readable voxels, flat."""
        return self.data.ravel() if self.readable is None else self.data[self.readable]


def job_sample(view) -> np.ndarray:
    """The segmented channel's voxels (flat, float32) at the finest level small enough to read whole (a
    subsample if none is): the data job-wide values (threshold, normalisation) are computed from, once,
    whatever the blocking. Unreadable chunks are left out (see :func:`sample_failures`)."""
    return _sample(view).values


def sample_image(view) -> SampleImage:
    """The job sample with its shape (for job-wide values computed from a filtered image)."""
    return _sample(view)


def sample_failures(view) -> tuple[str, ...]:
    """The regions of the sample that could not be read (corrupt chunks, metadata that lies), with why."""
    return _sample(view).failures


def clear_sample_cache() -> None:
    _sample.cache_clear()


@functools.lru_cache(maxsize=4)
def _sample(view) -> SampleImage:
    small = view.finest_level(SAMPLE_VOXELS)
    level = small.level
    step = tuple(s / v for s, v in zip(small.scale, view.scale))
    if math.prod(small.shape) > SAMPLE_VOXELS:  # no small level: a regular subsample
        every = math.ceil((math.prod(small.shape) / SAMPLE_VOXELS) ** (1 / small.ndim))
        region = tuple(slice(None, None, every) for _ in small.shape)
        step = tuple(s * every for s in step)
        try:
            data = np.asarray(small.read(region), np.float32)
            return SampleImage(data, None, step, ())
        except Exception as err:  # noqa: BLE001 - corrupt chunks, metadata that lies about dtype or shape
            return SampleImage(np.zeros((0,) * small.ndim, np.float32), None, step,
                               (f"a subsample of level {level} ({type(err).__name__}: {err})",))
    data = np.zeros(small.shape, np.float32)
    readable = np.ones(small.shape, bool)
    failures = []
    for tile in np.ndindex(*(math.ceil(s / c) for s, c in zip(small.shape, small.chunks))):
        region = tuple(slice(i * c, min((i + 1) * c, s)) for i, c, s in zip(tile, small.chunks, small.shape))
        try:  # chunk by chunk, so that one bad chunk is named and the rest still count
            data[region] = small.read(region)
        except Exception as err:  # noqa: BLE001
            readable[region] = False
            failures.append(f"level {level} region {region_text(region)} ({type(err).__name__}: {err})")
    return SampleImage(data, readable if failures else None, step, tuple(failures))


#: The job-wide thresholds, by ``method.threshold_method``.
HISTOGRAM_THRESHOLDS = {"otsu": filters.threshold_otsu, "li": filters.threshold_li,
                        "triangle": filters.threshold_triangle, "yen": filters.threshold_yen,
                        "mean": filters.threshold_mean}


def histogram_threshold(values: np.ndarray, method: str = "otsu") -> float:
    """One threshold for the whole job from the sample's (flat) ``values``."""
    if float(values.min()) == float(values.max()):
        return float(values.max())  # constant image: nothing is above the threshold
    return float(HISTOGRAM_THRESHOLDS[method](values))


def global_percentiles(view, low: float = 1.0, high: float = 99.8) -> tuple[float, float]:
    """Intensity percentiles for normalising every block alike (deep models), from :func:`job_sample`."""
    lo, hi = np.percentile(job_sample(view), (low, high))
    return float(lo), float(hi) if hi > lo else float(lo) + 1.0
