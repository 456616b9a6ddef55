"""``threshold``: Gaussian smoothing, one global threshold, connected components."""
from __future__ import annotations

from typing import Literal

import numpy as np
from skimage import measure

from bigseg.methods._classical import Classical
from bigseg.methods.base import describe
from bigseg.stitch_rules import Touch
from bigseg.units import VoxelSize


class Threshold(Classical):
    """Foreground = the filtered image (see :mod:`bigseg.methods._classical`) above its threshold; objects =
    its connected components.

    Block-wise results equal the monolithic run exactly (up to renumbering): every filter is exact with
    the halo of :meth:`filter_reach`, and components are joined across blocks where they touch.
    """

    name: Literal["threshold"] = "threshold"
    description = ("smoothing, a job-wide or local threshold (optionally after background subtraction), connected "
                   "components (exact block-wise)")
    connectivity: int | None = describe("1 = voxels touch by faces only; the image's ndim = faces, edges and "
                                        "corners (default)", default=None, ge=1, le=3)

    def stitch_rule(self, ndim: int) -> Touch:
        return Touch(min(self.connectivity or ndim, ndim))

    def halo(self, voxel_size: VoxelSize) -> tuple[int, ...]:
        return self.filter_reach(voxel_size)

    def __call__(self, block: np.ndarray, voxel_size: VoxelSize) -> np.ndarray:
        return measure.label(self.foreground(block, voxel_size), connectivity=self.stitch_rule(block.ndim).connectivity)

    def fragment_source(self, block: np.ndarray, voxel_size: VoxelSize) -> np.ndarray:
        if type(self).__call__ is not Threshold.__call__:  # a subclass that labels blocks its own way
            return self(block, voxel_size)
        return self.foreground(block, voxel_size)  # the Touch rule labels the core's foreground itself
