"""``watershed``: threshold, then a seeded watershed (of the distance transform, or of the intensity gradient)
to split touching nuclei."""
from __future__ import annotations

import math
from typing import Literal

import edt
import numpy as np
from scipy import ndimage as ndi
from skimage import filters, measure, segmentation

from bigseg.methods._classical import Classical
from bigseg.methods.base import Length, PositiveLength, describe, length_help
from bigseg.units import VoxelSize


class Watershed(Classical):
    """Seeds are the plateaus of the distance transform's local maxima (a local, shift-invariant rule,
    so a block sees the same seeds as the whole image wherever its halo covers their neighbourhood).

    ``diameter`` is the expected object diameter: it sets the halo (2 diameters plus the smoothing), the
    seed spacing (diameter / 4) and, unless given, ``min_size`` (10% of a ball), per axis with the voxel
    size. The distance transform is measured in physical units (``sampling=`` the voxel size).
    ``split: gradient`` floods the Sobel magnitude of the filtered image from the same seeds instead, so that
    boundaries follow intensity edges (one voxel more halo).
    """

    name: Literal["watershed"] = "watershed"
    description = ("smoothing, a job-wide or local threshold, touching objects split by a watershed of the "
                   "distance transform or the intensity gradient")
    diameter: PositiveLength = describe(length_help("expected object diameter"), default=12.0)
    min_distance: Length | None = describe(length_help("seed spacing; default diameter / 4"), default=None)
    split: Literal["distance", "gradient"] = describe(
        "how touching objects are split: distance = watershed of the foreground's distance transform; gradient "
        "= region growing from the same seeds over the intensity gradient (Sobel magnitude of the smoothed "
        "image), for objects whose boundaries are edges", default="distance")

    def diameter_voxels(self, voxel_size: VoxelSize) -> tuple[float, ...]:
        return self.voxels(self.diameter, voxel_size, "method.diameter")

    def default_min_size(self, voxel_size: VoxelSize) -> int:
        d = self.diameter_voxels(voxel_size)
        ball = math.pi / 6 * math.prod(d) if len(d) == 3 else math.pi / 4 * math.prod(d)
        return int(0.1 * ball)

    def halo(self, voxel_size: VoxelSize) -> tuple[int, ...]:
        sobel = 1 if self.split == "gradient" else 0
        return tuple(r + sobel + int(math.ceil(2 * d))
                     for r, d in zip(self.filter_reach(voxel_size), self.diameter_voxels(voxel_size)))

    def seed_radius(self, voxel_size: VoxelSize) -> tuple[int, ...]:
        if self.min_distance is not None:
            return tuple(max(0, int(round(r))) for r in self.voxels(self.min_distance, voxel_size,
                                                                     "method.min_distance"))
        return tuple(max(1, int(round(d / 4))) for d in self.diameter_voxels(voxel_size))

    def __call__(self, block: np.ndarray, voxel_size: VoxelSize) -> np.ndarray:
        image = self.filtered(block, voxel_size)
        fg = self.above_threshold(image, voxel_size)
        relief = filters.sobel(image) if self.split == "gradient" else None
        return split_touching(fg, self.seed_radius(voxel_size), voxel_size.spacing, relief)


def split_touching(fg: np.ndarray, seed_radius: int | tuple[int, ...], spacing=None,
                   relief: np.ndarray | None = None) -> np.ndarray:
    """Objects of a foreground mask, touching ones split by a watershed seeded at the plateaus of the local
    maxima (within ``seed_radius`` voxels per axis) of the distance transform (in units of ``spacing``): local
    and shift-invariant. The watershed floods ``relief`` (default: the negated distance transform)."""
    if not fg.any():
        return np.zeros(fg.shape, np.int32)
    dist = distance_transform(fg, spacing)
    radius = (seed_radius,) * fg.ndim if isinstance(seed_radius, int) else tuple(seed_radius)
    peaks = (dist == ndi.maximum_filter(dist, size=tuple(2 * r + 1 for r in radius), mode="nearest")) & fg
    markers = measure.label(peaks, connectivity=fg.ndim)
    return segmentation.watershed(-dist if relief is None else relief, markers, mask=fg)


def distance_transform(fg: np.ndarray, spacing=None) -> np.ndarray:
    """Each foreground voxel's distance to the nearest background voxel (in units of ``spacing``), float32:
    scipy's ``distance_transform_edt`` to the bit, 5-20x faster (seung-lab's ``edt``, one thread)."""
    return edt.edt(fg, anisotropy=tuple(spacing) if spacing is not None else (1.0,) * fg.ndim,
                   black_border=False, parallel=1)
