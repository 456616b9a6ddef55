"""The local filters of the classical methods (background subtraction, adaptive threshold) and how far each
reaches: a block read with at least that much context gets the same values as the whole image."""
from __future__ import annotations

import math
from typing import Literal

import numpy as np
from skimage import filters, morphology, restoration

BackgroundMethod = Literal["none", "rolling-ball", "tophat"]

#: scikit-image's ``filters.gaussian`` (which ``threshold_local`` calls) reaches this many sigmas.
SKIMAGE_GAUSSIAN_TRUNCATE = 4.0


def subtract_background(data: np.ndarray, method: BackgroundMethod, radii: tuple[int, ...]) -> np.ndarray:
    """``data`` (float32, objects bright) less its background: ``rolling-ball`` is scikit-image's
    ``restoration.rolling_ball`` (the apex of a ball of these semi-axes, in voxels, rolled under the image),
    ``tophat`` the white top-hat (the image less its opening) with :func:`ball_footprint`."""
    if method == "none":
        return data
    if method == "rolling-ball":
        return data - restoration.rolling_ball(data, kernel=rolling_ball_kernel(radii), workers=1)
    return morphology.white_tophat(data, footprint=ball_footprint(radii))


def background_reach(method: BackgroundMethod, radii: tuple[int, ...]) -> tuple[int, ...]:
    """Voxels of context per axis :func:`subtract_background` needs: the rolling ball's kernel (one
    erosion-like pass), twice the top-hat's footprint (an erosion, then a dilation)."""
    if method == "none":
        return (0,) * len(radii)
    if method == "rolling-ball":
        return tuple(s // 2 for s in rolling_ball_kernel(radii).shape)
    return tuple(2 * r for r in footprint_reach(ball_footprint(radii)))


def rolling_ball_kernel(radii: tuple[int, ...]) -> np.ndarray:
    """The ball ``rolling_ball`` rolls: scikit-image's ``ball_kernel`` when the semi-axes are equal, else the
    ellipsoid with these semi-axes (and the largest as its intensity axis), as ``ellipsoid_kernel`` draws it
    but allowing a semi-axis of 0 (no rolling along that axis)."""
    if len(set(radii)) == 1:
        return restoration.ball_kernel(radii[0], len(radii))
    grids = np.ogrid[tuple(slice(-r, r + 1) for r in radii)]
    inside = 1 - sum((g / max(r, 1)) ** 2 for g, r in zip(grids, radii))
    kernel = max(radii) * np.sqrt(np.clip(inside, 0, None))
    kernel[inside < 0] = np.inf
    return kernel


def ball_footprint(radii: tuple[int, ...]) -> tuple[tuple[np.ndarray, int], ...]:
    """A flat ball-like footprint with these semi-axes (voxels) as a sequence of 3-voxel-wide footprints
    (scikit-image's ``decomposition="sequence"``: an erosion costs O(radius), not O(radius^ndim)). Unequal
    semi-axes: the ball of the smallest, grown along the longer axes by a disk or a line of the difference."""
    parts: list[tuple[np.ndarray, int]] = []
    done = 0
    for r in sorted(set(radii)):
        axes = [a for a, ra in enumerate(radii) if ra >= r]
        if r > done:
            parts += _placed(_sequence(r - done, len(axes)), axes, len(radii))
        done = r
    return tuple(parts)


def _sequence(radius: int, ndim: int) -> tuple[tuple[np.ndarray, int], ...]:
    if ndim == 1:
        return ((np.ones(3, np.uint8), radius),)
    shape = morphology.disk if ndim == 2 else morphology.ball
    return tuple(shape(radius, decomposition="sequence"))


def _placed(sequence, axes: list[int], ndim: int) -> list[tuple[np.ndarray, int]]:
    """Footprints over ``axes`` of an ``ndim``-dimensional image (size 1 along the others)."""
    out = []
    for fp, n in sequence:
        shape = [1] * ndim
        for a, s in zip(axes, fp.shape):
            shape[a] = s
        out.append((fp.reshape(shape), int(n)))
    return out


def footprint_reach(sequence) -> tuple[int, ...]:
    """How far a sequence of footprints reaches along each axis (what an erosion by it looks at)."""
    return tuple(sum(int(n) * (fp.shape[a] // 2) for fp, n in sequence) for a in range(sequence[0][0].ndim))


def local_threshold(data: np.ndarray, window: tuple[int, ...], offset: float) -> np.ndarray:
    """scikit-image's ``threshold_local`` (Gaussian-weighted mean of an odd ``window`` per axis, less
    ``offset``)."""
    return filters.threshold_local(data, window, method="gaussian", offset=offset, mode="reflect")


def local_reach(window: tuple[int, ...]) -> tuple[int, ...]:
    """Voxels of context :func:`local_threshold` needs: its Gaussian's sigma is (window - 1) / 6 and reaches
    ``SKIMAGE_GAUSSIAN_TRUNCATE`` sigmas (rounded as scipy rounds it), more than half the window."""
    return tuple(int(SKIMAGE_GAUSSIAN_TRUNCATE * (w - 1) / 6 + 0.5) for w in window)


def odd_window(voxels: float) -> int:
    """A window length in voxels, rounded up to the odd number ``threshold_local`` needs (at least 1)."""
    return 2 * int(math.floor(voxels / 2)) + 1
