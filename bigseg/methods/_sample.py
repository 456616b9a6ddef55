"""Job-wide values (a threshold, normalisation percentiles) from one small sample of the image, computed
once per job on the client, so that the blocking never changes them."""
from __future__ import annotations

import functools
import math

import numpy as np
from skimage import filters

from bigseg.blocks import region_text

#: The sample is the finest level with at most this many voxels.
SAMPLE_VOXELS = 2**24


def job_sample(view) -> np.ndarray:
    """The segmented channel's voxels (flat, float32) at the finest level small enough to read whole (a
    subsample if none is): the data job-wide values (threshold, normalisation) are computed from, once,
    whatever the blocking. Unreadable chunks are left out (see :func:`sample_failures`)."""
    return _sample(view)[0]


def sample_failures(view) -> tuple[str, ...]:
    """The regions of the sample that could not be read (corrupt chunks, metadata that lies), with why."""
    return _sample(view)[1]


def clear_sample_cache() -> None:
    _sample.cache_clear()


@functools.lru_cache(maxsize=4)
def _sample(view) -> tuple[np.ndarray, tuple[str, ...]]:
    image = view.image
    for level in range(view.level, len(image.levels)):
        small = view.at_level(level)
        if math.prod(small.shape) <= SAMPLE_VOXELS or level == len(image.levels) - 1:
            break
    if math.prod(small.shape) > SAMPLE_VOXELS:  # no small level: a regular subsample
        step = math.ceil((math.prod(small.shape) / SAMPLE_VOXELS) ** (1 / small.ndim))
        region = tuple(slice(None, None, step) for _ in small.shape)
        try:
            return np.asarray(small.read(region), np.float32).ravel(), ()
        except Exception as err:  # noqa: BLE001 - corrupt chunks, metadata that lies about dtype or shape
            return np.zeros(0, np.float32), (f"a subsample of level {level} ({type(err).__name__}: {err})",)
    parts, failures = [], []
    for tile in np.ndindex(*(math.ceil(s / c) for s, c in zip(small.shape, small.chunks))):
        region = tuple(slice(i * c, min((i + 1) * c, s)) for i, c, s in zip(tile, small.chunks, small.shape))
        try:  # chunk by chunk, so that one bad chunk is named and the rest still count
            parts.append(small.read(region).astype(np.float32).ravel())
        except Exception as err:  # noqa: BLE001
            failures.append(f"level {level} region {region_text(region)} ({type(err).__name__}: {err})")
    return (np.concatenate(parts) if parts else np.zeros(0, np.float32)), tuple(failures)


def global_threshold(view, method: str = "otsu") -> float:
    """One threshold for the whole job, from :func:`job_sample`."""
    data = job_sample(view)
    if float(data.min()) == float(data.max()):
        return float(data.max())  # constant image: nothing is above the threshold
    fn = {"otsu": filters.threshold_otsu, "li": filters.threshold_li, "triangle": filters.threshold_triangle,
          "yen": filters.threshold_yen, "mean": filters.threshold_mean}[method]
    return float(fn(data))


def global_percentiles(view, low: float = 1.0, high: float = 99.8) -> tuple[float, float]:
    """Intensity percentiles for normalising every block alike (deep models), from :func:`job_sample`."""
    lo, hi = np.percentile(job_sample(view), (low, high))
    return float(lo), float(hi) if hi > lo else float(lo) + 1.0
