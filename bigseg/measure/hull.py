"""Voxels of objects' convex hulls, as scikit-image's ``convex_hull_image`` (0.26) counts them: the hull of
the voxel centres, each widened by its face centres (``offset_coordinates=True``), and the voxels whose centres
lie in it or on it (``include_borders=True``; a tolerance of 1e-10 in 3D). The same counts, from far fewer
points and line by line: in 2D from the hull's left and right chains for all objects at once, in 3D from
Qhull's facets of each object's possible corners.
"""
from __future__ import annotations

import functools
import math

import numpy as np
from scipy.spatial import ConvexHull, QhullError

#: Inside test of a voxel centre against a hull facet's plane, as skimage's ``convex_hull_image``.
HULL_TOLERANCE = 1e-10
#: A facet normal's last-axis part below this is taken as 0 (the facet bounds whole lines).
_FLAT = 1e-12
#: Facet-by-line values computed at once.
_HULL_CHUNK = 1 << 22
#: Voxels of an array handled at once (a slab along the first axis).
_SLAB_VOXELS = 1 << 23
#: No pixel in the row (below every end).
_NONE = np.iinfo(np.int64).min // 4


def hull_voxels(mask: np.ndarray) -> int:
    """Voxels of skimage's ``convex_hull_image(mask)`` (2D or 3D)."""
    index = np.asarray(mask, bool).view(np.uint8)
    if mask.ndim == 2:
        return int(hull_pixels(index, 1)[0])
    return int(hull_voxels_3d(index, np.zeros((1, 3), np.int64), np.array([mask.shape]))[0])


def hull_voxels_3d(index: np.ndarray, first: np.ndarray, last: np.ndarray) -> np.ndarray:
    """:func:`hull_voxels` of each object 1..k of ``index`` (3D, 0: background), their boxes ``first`` ..
    ``last`` (exclusive); 0 for an object absent from it."""
    k = len(first)
    points, owner = hull_points(index)
    starts = np.r_[0, np.cumsum(np.bincount(owner, minlength=k + 1)[1:])]
    points = points[np.argsort(owner, kind="stable")]
    voxels = np.zeros(k)
    for j in np.flatnonzero(np.diff(starts)):
        voxels[j] = hull_count(points[starts[j]:starts[j + 1]] - first[j], tuple(last[j] - first[j]))
    return voxels


def slabs(index: np.ndarray):
    """(first index along axis 0, core, core zero-padded by one voxel, the padded slab's strides in voxels)
    of slabs of ``index`` along its first axis; the padding holds the neighbouring planes where there are any."""
    step = max(1, _SLAB_VOXELS // max(1, math.prod(index.shape[1:])))
    for z0 in range(0, index.shape[0], step):
        z1 = min(z0 + step, index.shape[0])
        padded = np.zeros((z1 - z0 + 2, *(s + 2 for s in index.shape[1:])), index.dtype)
        below, above = max(z0 - 1, 0), min(z1 + 1, index.shape[0])
        padded[(slice(below - z0 + 1, above - z0 + 1),) + (slice(1, -1),) * (index.ndim - 1)] = index[below:above]
        strides = np.array([math.prod(padded.shape[d + 1:]) for d in range(index.ndim)])
        yield z0, padded[(slice(1, -1),) * index.ndim], padded, strides


def neighbour(padded: np.ndarray, d: int, step: int) -> np.ndarray:
    """The padded array's core shifted by ``step`` (-1 or 1) along axis ``d``: each voxel's neighbour."""
    return padded[tuple(slice(1 + step, s - 1 + step) if a == d else slice(1, s - 1)
                        for a, s in enumerate(padded.shape))]


def hull_points(index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Points (region coordinates) whose hull is, for each object of ``index`` (0: background), skimage's
    hull of its voxel centres widened by their face centres (``convex_hull_image(offset_coordinates=True)``),
    and each point's object.

    Only corners of the widened hull are needed: sums of a corner c of the centres' hull and a face centre
    o = e/2 (e = +-e_d) whose directions of support meet, some n with n.e > |n.e'| for the other axes e'
    for which c is the object's unique maximiser of n. So c is no voxel between two of its object's along an
    axis, and o is dropped where c + e or any c + e +- e' is the object's (there n.(e +- e') > 0)."""
    points, owner = [], []
    for z0, core, padded, strides in slabs(index):
        corner = core > 0
        for d in range(index.ndim):
            corner &= (neighbour(padded, d, -1) != core) | (neighbour(padded, d, 1) != core)
        where = np.nonzero(corner)
        coords = np.column_stack(where).astype(np.float64)
        coords[:, 0] += z0
        objects = core[where]
        at = (np.column_stack(where) + 1) @ strides  # the corners in the flat padded slab
        flat = padded.ravel()
        for d in range(index.ndim):
            for sign in (-1, 1):
                ahead = at + sign * strides[d]
                taken = flat[ahead] != objects
                for other in (o for o in range(index.ndim) if o != d):
                    for turn in (-1, 1):
                        taken &= flat[ahead + turn * strides[other]] != objects
                p = coords[taken]
                p[:, d] += 0.5 * sign
                points.append(p)
                owner.append(objects[taken])
    return np.concatenate(points), np.concatenate(owner).astype(np.int64)


def hull_count(points: np.ndarray, box: tuple[int, ...]) -> int:
    """Voxel centres of the box (0 .. box - 1 per axis) inside the hull of ``points`` (within
    :data:`HULL_TOLERANCE`), as skimage's ``convex_hull_image`` counts them."""
    try:  # half-integer points: Qhull's orientation tests are exact and its facets need no merging
        equations = ConvexHull(points, qhull_options="Q0 Qt").equations
    except QhullError:
        equations = ConvexHull(points).equations
    lines = _lines(tuple(box[:-1]))
    step = max(1, _HULL_CHUNK // len(equations))
    return sum(_line_counts(equations, lines[:, i:i + step], box[-1]) for i in range(0, lines.shape[1], step))


@functools.lru_cache(maxsize=4096)
def _lines(shape: tuple[int, ...]) -> np.ndarray:
    """(coordinates..., 1) of every line of a box along its last axis (``shape``: the other axes), shape
    (len(shape) + 1, lines); read-only."""
    out = np.ones((len(shape) + 1, math.prod(shape)))
    out[:-1] = np.indices(shape).reshape(len(shape), -1)
    out.flags.writeable = False
    return out


def _line_counts(equations: np.ndarray, lines: np.ndarray, n: int) -> int:
    """Voxel centres (line, 0..n-1) inside every plane, summed over the lines: a plane with a last-axis part c
    bounds the last coordinate x on one side (``w . line + c x + d < tol``: ``x < (tol - w . line - d) / c``
    for c > 0, ``>`` for c < 0); any other keeps or drops the whole line."""
    c = equations[:, -2]
    up, down = np.flatnonzero(c > _FLAT), np.flatnonzero(c < -_FLAT)
    offset = np.delete(equations, -2, axis=1)
    offset[:, -1] -= HULL_TOLERANCE  # inside: offset . (line, 1) + c x < 0
    sided = np.concatenate([up, down])
    bound = (offset[sided] / -c[sided, None]) @ lines  # x < bound (up), x > bound (down)
    hi = np.minimum(np.ceil(bound[:up.size].min(axis=0, initial=np.inf)) - 1, n - 1)
    lo = np.maximum(np.floor(bound[up.size:].max(axis=0, initial=-np.inf)) + 1, 0)
    count = np.maximum(hi - lo + 1, 0)
    if sided.size < c.size:
        flat = np.ones(c.size, bool)
        flat[sided] = False
        count[((offset[flat] @ lines) >= 0).any(axis=0)] = 0
    return int(count.sum())


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
