"""What the classical methods share: smoothing and a global threshold computed once per job."""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage as ndi

from bigseg.errors import ParameterError
from bigseg.methods._sample import global_threshold
from bigseg.methods.base import Method

#: scipy's Gaussian reaches this many sigmas; the halo must cover it for exact block-wise smoothing.
TRUNCATE = 4.0
THRESHOLD_METHODS = ("otsu", "li", "triangle", "yen", "mean")


def per_axis(value, ndim: int, what: str) -> tuple[float, ...]:
    values = tuple(value) if isinstance(value, (tuple, list)) else (value,)
    if len(values) == 1:
        return values * ndim
    if len(values) != ndim:
        raise ParameterError(f"{what} has {len(values)} values but the image is {ndim}D; "
                             f"give 1 value or {ndim} (one per axis)")
    return values


@dataclass(frozen=True)
class Classical(Method):
    sigma: float | tuple[float, ...] = 1.0
    threshold: float | None = None
    threshold_method: str = "otsu"

    def check(self, ndim: int) -> None:
        sig = per_axis(self.sigma, ndim, "sigma")
        if any(s < 0 for s in sig):
            raise ParameterError(f"sigma {self.sigma} is negative; give a smoothing of 0 or more voxels")
        if self.threshold_method not in THRESHOLD_METHODS:
            raise ParameterError(f"unknown threshold method '{self.threshold_method}'; "
                                 f"choose one of {', '.join(THRESHOLD_METHODS)}")
        if self.min_size is not None and self.min_size < 0:
            raise ParameterError(f"min_size {self.min_size} is negative; give 0 or more voxels")

    def smoothing_radius(self, ndim: int) -> tuple[int, ...]:
        return tuple(int(TRUNCATE * s + 0.5) if s > 0 else 0 for s in per_axis(self.sigma, ndim, "sigma"))

    def smooth(self, block: np.ndarray) -> np.ndarray:
        data = np.asarray(block, dtype=np.float32)
        sigma = per_axis(self.sigma, data.ndim, "sigma")
        if not any(sigma):
            return data
        return ndi.gaussian_filter(data, sigma, mode="nearest", truncate=TRUNCATE)

    def prepare(self, view) -> "Classical":
        if self.threshold is not None:
            return self
        return replace(self, threshold=global_threshold(view, self.threshold_method))

    def foreground(self, block: np.ndarray) -> np.ndarray:
        if self.threshold is None:
            raise RuntimeError("prepare() must set the threshold before blocks are segmented")
        return self.smooth(block) > self.threshold
