"""What the classical methods share: smoothing and a global threshold computed once per job."""
from __future__ import annotations

from typing import Literal

import numpy as np
from scipy import ndimage as ndi

from bigseg.methods._sample import global_threshold
from bigseg.methods.base import Lengths, Method, describe, length_help
from bigseg.units import VoxelSize

#: scipy's Gaussian reaches this many sigmas; the halo must cover it for exact block-wise smoothing.
TRUNCATE = 4.0
ThresholdMethod = Literal["otsu", "li", "triangle", "yen", "mean"]


class Classical(Method):
    sigma: Lengths = describe(length_help("Gaussian smoothing (one value, or one per axis z,y,x)"), default=1.0)
    threshold: float | None = describe("intensity threshold; default: computed once per job by threshold_method",
                                       default=None)
    threshold_method: ThresholdMethod = describe("how the job-wide threshold is computed", default="otsu")

    def check(self, voxel_size: VoxelSize) -> None:
        self.sigma_voxels(voxel_size)

    def sigma_voxels(self, voxel_size: VoxelSize) -> tuple[float, ...]:
        return self.voxels(self.sigma, voxel_size, "method.sigma")

    def smoothing_radius(self, voxel_size: VoxelSize) -> tuple[int, ...]:
        return tuple(int(TRUNCATE * s + 0.5) if s > 0 else 0 for s in self.sigma_voxels(voxel_size))

    def smooth(self, block: np.ndarray, voxel_size: VoxelSize) -> np.ndarray:
        sigma = self.sigma_voxels(voxel_size)
        block = np.asarray(block)
        if not any(sigma):
            return np.asarray(block, dtype=np.float32)
        # values float32 holds exactly are filtered as they are (the same result, without a float32 copy)
        exact = block.dtype == np.float32 or (block.dtype.kind in "uib" and block.dtype.itemsize <= 2)
        return ndi.gaussian_filter(block if exact else block.astype(np.float32), sigma, output=np.float32,
                                   mode="nearest", truncate=TRUNCATE)

    def prepare(self, view) -> "Classical":
        if self.threshold is not None:
            return self
        return self.model_copy(update={"threshold": global_threshold(view, self.threshold_method)})

    def job_values(self) -> dict:
        return {"threshold": self.threshold}

    def foreground(self, block: np.ndarray, voxel_size: VoxelSize) -> np.ndarray:
        if self.threshold is None:
            raise RuntimeError("prepare() must set the threshold before blocks are segmented")
        return self.smooth(block, voxel_size) > self.threshold
