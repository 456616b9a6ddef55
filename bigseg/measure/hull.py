"""Voxels of objects' convex hulls, as scikit-image's ``convex_hull_image`` (0.26) counts them: the hull of
the voxel centres, each widened by its face centres (``offset_coordinates=True``), and the voxels whose centres
lie in it or on it (``include_borders=True``; a tolerance of 1e-10 in 3D). The same counts, from far fewer
points and line by line: in 2D from the hull's left and right chains for all objects at once, in 3D from each
object's possible corners (:mod:`bigseg.measure.shape3d`).
"""
from __future__ import annotations

import numpy as np

from bigseg.measure import shape3d

#: No pixel in the row (below every end).
_NONE = np.iinfo(np.int64).min // 4


def hull_voxels(mask: np.ndarray) -> int:
    """Voxels of skimage's ``convex_hull_image(mask)`` (2D or 3D)."""
    index = np.asarray(mask, bool).view(np.uint8)
    if mask.ndim == 2:
        return int(hull_pixels(index, 1)[0])
    box = np.array([mask.shape])
    return int(shape3d.shape_3d(index, np.array([1]), np.zeros_like(box), box, np.zeros(256))[1][0])


def hull_pixels(index: np.ndarray, k: int) -> np.ndarray:
    """:func:`hull_voxels` of each object 1..k of ``index`` (2D, 0 background), all at once.

    A row of the hull runs from its left to its right chain. The right chain is the least concave majorant of
    the widened pixels' rightmost x per height (in half pixels: a row's last pixel + 1/2 at the row, and
    the last pixels of the rows either side at the heights between): points below the chord of their
    neighbours are dropped, in all chains at once, until none is; the left chain likewise, mirrored."""
    inside = index > 0
    last = inside.copy()
    last[:, :-1] &= index[:, :-1] != index[:, 1:]
    first = inside.copy()
    first[:, 1:] &= index[:, 1:] != index[:, :-1]
    y, x = np.nonzero(last)
    objects = index[y, x].astype(np.int64)
    row_min = np.full(k + 1, index.shape[0], np.int64)
    np.minimum.at(row_min, objects, y)
    row_max = np.full(k + 1, -1, np.int64)
    np.maximum.at(row_max, objects, y)
    rows = np.maximum(row_max - row_min + 1, 0)
    row_start = np.r_[0, np.cumsum(rows)[:-1]]

    def ends(y, x, objects, sign):  # sign x 2 x (the row's last pixel), per object row
        out = np.full(int(rows.sum()), _NONE)
        np.maximum.at(out, row_start[objects] + y - row_min[objects], sign * 2 * x.astype(np.int64))
        return out
    right = ends(y, x, objects, 1)
    y, x = np.nonzero(first)
    left = ends(y, x, index[y, x].astype(np.int64), -1)
    width = _chain_floor(right, rows, row_start) + _chain_floor(left, rows, row_start) + 1
    return np.bincount(np.repeat(np.arange(k + 1), rows), weights=width, minlength=k + 1)[1:]


def _chain_floor(end: np.ndarray, rows: np.ndarray, row_start: np.ndarray) -> np.ndarray:
    """floor of the concave majorant (see :func:`hull_pixels`) at each object row, ``end`` the rows' ends in
    half pixels (``_NONE``: no pixel); all arithmetic in integers, so points on the hull count in."""
    present = np.flatnonzero(rows)
    rows, row_start = rows[present], row_start[present]
    n = end.size
    # each object's chain, at heights 2y - 1, 2y, ..., 2 y_max + 1: between rows, then at a row, ...
    chain_start = 2 * row_start + np.arange(present.size)
    row_chain = np.repeat(chain_start - 2 * row_start, rows) + 2 * np.arange(n)  # a row's slot between rows
    before = np.r_[_NONE, end[:-1]]
    before[row_start] = _NONE
    m = np.full(2 * n + present.size, _NONE)
    m[row_chain] = np.maximum(before, end)
    m[row_chain + 1] = np.where(end > _NONE, end + 1, _NONE)
    final = chain_start + 2 * rows
    m[final] = end[row_start + rows - 1]
    alive = m > _NONE
    fixed = np.zeros(m.size, bool)
    fixed[chain_start] = fixed[final] = True  # a chain's first and last points: always corners
    while True:
        before, after = _alive_neighbours(alive)
        i = np.flatnonzero(alive & ~fixed)
        a, b = before[i], after[i]
        below = (m[i] - m[a]) * (b - a) <= (m[b] - m[a]) * (i - a)
        if not below.any():
            break
        alive[i[below]] = False
    at = row_chain + 1
    a, b = _alive_neighbours(alive, at)
    span = np.maximum(b - a, 1)
    return np.floor_divide(m[a] * span + (m[b] - m[a]) * (at - a), 2 * span)


def _alive_neighbours(alive: np.ndarray, at: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The nearest alive slots before and after each slot (or at the slots ``at``: themselves if alive)."""
    slot = np.arange(alive.size)
    last = np.maximum.accumulate(np.where(alive, slot, -1))
    next_ = np.minimum.accumulate(np.where(alive, slot, alive.size)[::-1])[::-1]
    if at is not None:
        return last[at], next_[at]
    return np.r_[-1, last[:-1]], np.r_[next_[1:], alive.size]
