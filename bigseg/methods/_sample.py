"""Job-wide values (a threshold, normalisation percentiles) from one small sample of the image, computed
once per job on the client, so that the blocking never changes them."""
from __future__ import annotations

import math

import numpy as np
from skimage import filters

from bigseg.io.ome import open_array

#: The sample is the finest level with at most this many voxels.
SAMPLE_VOXELS = 2**24


def job_sample(view) -> np.ndarray:
    """The segmented channel at the finest level small enough to read whole (a subsample if none is):
    the data job-wide values (threshold, normalisation) are computed from, once, whatever the blocking."""
    image = view.image
    for level in range(view.level, len(image.levels)):
        small = image.view(level, view.channel, view.timepoint)
        if math.prod(small.shape) <= SAMPLE_VOXELS or level == len(image.levels) - 1:
            break
    if math.prod(small.shape) > SAMPLE_VOXELS:  # no small level: a regular subsample
        step = math.ceil((math.prod(small.shape) / SAMPLE_VOXELS) ** (1 / small.ndim))
        return np.asarray(open_array(*small.array_url)[small.index(tuple(slice(None, None, step)
                                                                         for _ in small.shape))], np.float32)
    return small.read(tuple(slice(0, s) for s in small.shape)).astype(np.float32)


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
