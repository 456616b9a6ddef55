"""``watershed``: threshold, then a distance-transform seeded watershed to split touching nuclei."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from skimage import measure, segmentation

from bigseg.errors import ParameterError
from bigseg.methods._classical import Classical


@dataclass(frozen=True)
class Watershed(Classical):
    """Seeds are the plateaus of the distance transform's local maxima (a local, shift-invariant rule,
    so a block sees the same seeds as the whole image wherever its halo covers their neighbourhood).

    ``diameter`` is the expected object diameter in voxels: it sets the halo (2 diameters plus the
    smoothing), the seed spacing (diameter / 4) and, unless given, ``min_size`` (10% of a ball).
    """

    name = "watershed"
    stitch_rule = "iou"
    diameter: float = 12.0
    min_distance: int | None = None

    def check(self, ndim: int) -> None:
        super().check(ndim)
        if self.diameter <= 0:
            raise ParameterError(f"diameter {self.diameter} must be positive (expected object size in voxels)")

    def default_min_size(self, ndim: int) -> int:
        ball = math.pi / 6 * self.diameter**3 if ndim == 3 else math.pi / 4 * self.diameter**2
        return int(0.1 * ball)

    def halo(self, ndim: int) -> tuple[int, ...]:
        return tuple(r + int(math.ceil(2 * self.diameter)) for r in self.smoothing_radius(ndim))

    def seed_radius(self) -> int:
        return self.min_distance if self.min_distance is not None else max(1, int(round(self.diameter / 4)))

    def __call__(self, block: np.ndarray) -> np.ndarray:
        return split_touching(self.foreground(block), self.seed_radius())


def split_touching(fg: np.ndarray, seed_radius: int) -> np.ndarray:
    """Objects of a foreground mask, touching ones split by a watershed of the distance transform seeded at
    the plateaus of its local maxima (within ``seed_radius``): local and shift-invariant."""
    if not fg.any():
        return np.zeros(fg.shape, np.int32)
    dist = ndi.distance_transform_edt(fg).astype(np.float32)
    size = 2 * seed_radius + 1
    peaks = (dist == ndi.maximum_filter(dist, size=size, mode="nearest")) & fg
    markers = measure.label(peaks, connectivity=fg.ndim)
    return segmentation.watershed(-dist, markers, mask=fg)
