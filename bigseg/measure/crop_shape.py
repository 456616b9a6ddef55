"""Shape features of objects from a label image region: pure functions of arrays (the columns and their
definitions: :mod:`bigseg.measure.crops`).

The objects of a region are measured together: one pass over the region's voxels finds every object's hull
points and border pixels (2D) or marching-cubes patterns (3D); only the convex hull itself is per object
(Qhull on a few points, its voxels counted line by line).
"""
from __future__ import annotations

import functools
import math

import numpy as np
from scipy.spatial import ConvexHull, QhullError

#: The columns that need the crop, by number of spatial axes.
SHAPE_COLUMNS = {2: ("solidity", "perimeter", "circularity"), 3: ("solidity", "surface_area", "sphericity")}
#: Inside test of a voxel centre against a hull facet's plane, as skimage's ``convex_hull_image``.
HULL_TOLERANCE = 1e-10
#: A facet normal's last-axis part below this is taken as 0 (the facet bounds whole lines).
_FLAT = 1e-12
#: Facet-by-line values computed at once when hull voxels are counted.
_HULL_CHUNK = 1 << 22
#: A region's voxels that cost about as much as measuring one object on its own crop.
_OBJECT_VOXELS = 4096
#: Voxels of a region handled at once (a slab along the first axis).
_SLAB_VOXELS = 1 << 23
#: skimage's perimeter weights by border-pixel code (10 diagonal + 2 edge neighbours in the border + 1).
_STRAIGHT, _DIAGONAL, _MIXED = (5, 7, 15, 17, 25, 27), (21, 33), (13, 23)


def size_features(voxel_count, bbox_voxels, spacing: tuple[float, ...]) -> dict[str, np.ndarray]:
    """``extent`` and ``equivalent_diameter_area`` of objects from their voxel counts and box sizes."""
    ndim = len(spacing)
    count = np.asarray(voxel_count, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        extent = count / np.asarray(bbox_voxels, np.float64)
    return {"extent": extent,
            "equivalent_diameter_area": (2 * ndim * count * math.prod(spacing) / math.pi) ** (1 / ndim)}


def crop_features(mask: np.ndarray, spacing: tuple[float, ...]) -> dict[str, float]:
    """Solidity, extent, equivalent_diameter_area and perimeter/circularity (2D) or surface_area/sphericity
    (3D) of one object, ``mask`` its bounding-box crop (bool).

    >>> yy, xx = np.mgrid[-3:4, -3:4]
    >>> crop_features(yy ** 2 + xx ** 2 <= 9, (1.0, 1.0))["solidity"]
    1.0
    """
    mask = np.asarray(mask, bool)
    if mask.ndim not in SHAPE_COLUMNS or len(spacing) != mask.ndim:
        raise ValueError(f"crop_features needs a 2D or 3D mask and a spacing per axis; got shape {mask.shape} "
                         f"and spacing {tuple(spacing)}")
    out = {k: float(v[0]) for k, v in size_features([np.count_nonzero(mask)], [mask.size], spacing).items()}
    shape = region_features(mask.view(np.uint8), (0,) * mask.ndim, np.array([1]), np.zeros((1, mask.ndim), int),
                            np.array([mask.shape]), spacing)
    out.update({k: float(v[0]) for k, v in shape.items()})
    return {k: out[k] for k in ("solidity", "extent", "equivalent_diameter_area") + SHAPE_COLUMNS[mask.ndim][1:]}


def region_features(region: np.ndarray, origin: tuple[int, ...], labels: np.ndarray, bbox_min: np.ndarray,
                    bbox_max: np.ndarray, spacing: tuple[float, ...]) -> dict[str, np.ndarray]:
    """:data:`SHAPE_COLUMNS` of objects ``labels`` (bounding boxes ``bbox_min`` .. ``bbox_max``: global voxel
    indices, max exclusive, inside the region) from one region of a label image, its first voxel at
    ``origin``. Other labels count as background; an object absent from the region gets NaN.

    The objects are measured together, or each on its own crop where their boxes fill little of the region
    (objects along a block's faces)."""
    labels = np.asarray(labels)
    lo = np.asarray(bbox_min, np.int64).reshape(len(labels), -1) - np.asarray(origin, np.int64)
    hi = np.asarray(bbox_max, np.int64).reshape(len(labels), -1) - np.asarray(origin, np.int64)
    if region.size <= np.prod(hi - lo, axis=1).sum() + _OBJECT_VOXELS * len(labels):
        return _measure(region, labels, lo, hi, spacing)
    out = {k: np.empty(len(labels)) for k in SHAPE_COLUMNS[region.ndim]}
    for i in range(len(labels)):
        crop = region[tuple(slice(a, b) for a, b in zip(lo[i], hi[i]))]
        one = _measure(crop, labels[i:i + 1], np.zeros((1, region.ndim), np.int64), (hi[i] - lo[i])[None], spacing)
        for k in out:
            out[k][i] = one[k][0]
    return out


def _measure(region, labels, lo, hi, spacing) -> dict[str, np.ndarray]:
    order = np.argsort(labels, kind="stable")
    index = _object_index(region, labels[order])  # 1 + position in `order`, 0 elsewhere
    k = len(labels)
    count = np.bincount(index.ravel(), minlength=k + 1)[1:].astype(np.float64)
    points, owner = hull_points(index)
    starts = np.r_[0, np.cumsum(np.bincount(owner, minlength=k + 1)[1:])]
    points = points[np.argsort(owner, kind="stable")]
    hull = np.zeros(k)
    for j in np.flatnonzero(count):
        first = lo[order[j]]
        hull[j] = hull_count(points[starts[j]:starts[j + 1]] - first, tuple(hi[order[j]] - first))
    size = count * math.prod(spacing)
    with np.errstate(divide="ignore", invalid="ignore"):
        if region.ndim == 2:
            p = perimeters(index, k, spacing)
            columns = {"solidity": count / hull, "perimeter": p,
                       "circularity": np.where(p > 0, 4 * math.pi * size / p ** 2, np.nan)}
        else:
            a = surface_areas(index, k, spacing)
            columns = {"solidity": count / hull, "surface_area": a,
                       "sphericity": math.pi ** (1 / 3) * (6 * size) ** (2 / 3) / a}
    out = {}
    for name, values in columns.items():
        out[name] = np.empty(k)
        out[name][order] = np.where(count > 0, values, np.nan)
    return out


def _object_index(region: np.ndarray, sorted_labels: np.ndarray) -> np.ndarray:
    """Each voxel's object, 1 + the position of its label in ``sorted_labels``, or 0."""
    k = len(sorted_labels)
    dtype = np.min_scalar_type(k)
    lo, hi = int(sorted_labels[0]), int(sorted_labels[-1])
    if hi - lo < max(region.size, 1 << 16):  # a lookup table over the labels' range
        table = np.zeros(hi - lo + 2, dtype)
        table[sorted_labels.astype(np.int64) - lo] = np.arange(1, k + 1)
        offset = region.astype(np.int64) - lo
        offset[(offset < 0) | (offset > hi - lo)] = hi - lo + 1
        return table[offset]
    position = np.searchsorted(sorted_labels, region)
    found = sorted_labels[np.minimum(position, k - 1)] == region
    return np.where(found, position + 1, 0).astype(dtype)


def _slabs(index: np.ndarray):
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


def _neighbour(padded: np.ndarray, d: int, step: int) -> np.ndarray:
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
    for z0, core, padded, strides in _slabs(index):
        corner = core > 0
        for d in range(index.ndim):
            corner &= (_neighbour(padded, d, -1) != core) | (_neighbour(padded, d, 1) != core)
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


def hull_voxels(mask: np.ndarray) -> int:
    """Voxels of skimage's ``convex_hull_image(mask)``: the same hull from :func:`hull_points`, its voxels
    counted line by line (not every voxel of the box against every facet)."""
    points, _ = hull_points(np.asarray(mask, bool).view(np.uint8))
    return hull_count(points, mask.shape)


def perimeters(index: np.ndarray, k: int, spacing: tuple[float, float]) -> np.ndarray:
    """skimage's ``perimeter(crop, 4)`` of each object 1..k of ``index`` (2D, 0 background), each link at its
    physical length (:mod:`bigseg.measure.crops`): a border pixel (one with a 4-neighbour not the object's)
    is weighted by its code, 10 x its diagonal + 2 x its edge neighbours among the object's border pixels + 1."""
    differs = np.zeros(index.shape, bool)  # a 4-neighbour (or the outside) is not the pixel's object
    differs[0] = differs[-1] = True
    differs[:, 0] = differs[:, -1] = True
    for d in range(2):
        step = np.not_equal(*((index[1:], index[:-1]) if d == 0 else (index[:, 1:], index[:, :-1])))
        (differs[1:] if d == 0 else differs[:, 1:])[...] |= step
        (differs[:-1] if d == 0 else differs[:, :-1])[...] |= step
    border = differs & (index > 0)
    y, x = np.nonzero(border)
    objects = index[y, x]

    def linked(offsets):  # border neighbours of the same object, by direction
        total = np.zeros(y.size, np.int64)
        for dy, dx in offsets:
            ny, nx = y + dy, x + dx
            inside = (ny >= 0) & (ny < index.shape[0]) & (nx >= 0) & (nx < index.shape[1])
            ny, nx = np.clip(ny, 0, index.shape[0] - 1), np.clip(nx, 0, index.shape[1] - 1)
            total += inside & border[ny, nx] & (index[ny, nx] == objects)
        return total
    v, h = linked(((-1, 0), (1, 0))), linked(((0, -1), (0, 1)))
    d = linked(((-1, -1), (-1, 1), (1, -1), (1, 1)))
    code = 10 * d + 2 * (v + h) + 1
    edges = v * spacing[0] + h * spacing[1]
    diagonal = math.hypot(*spacing)
    with np.errstate(divide="ignore", invalid="ignore"):
        straight = edges / (v + h)  # skimage's weight 1: the mean of the edge links
    weight = np.select([np.isin(code, _STRAIGHT), np.isin(code, _DIAGONAL), np.isin(code, _MIXED)],
                       [straight, diagonal, (diagonal + edges) / 2], 0.0)
    return np.bincount(objects, weights=weight, minlength=k + 1)[1:]


def perimeter(mask: np.ndarray, spacing: tuple[float, float]) -> float:
    """:func:`perimeters` of one object, ``mask`` its crop."""
    return float(perimeters(np.asarray(mask, bool).view(np.uint8), 1, spacing)[0])


def surface_areas(index: np.ndarray, k: int, spacing: tuple[float, float, float]) -> np.ndarray:
    """Area of skimage's marching-cubes mesh (level 0.5, ``spacing``) of each object 1..k of ``index`` (3D,
    0 background), its crop zero-padded by one voxel.

    With values 0 and 1, every cube of 2 x 2 x 2 voxels gets the triangles of its corners' pattern alone
    (vertices at edge midpoints, Lewiner's tests decided by the pattern), so an object's area is the sum over
    the cubes that hold it and something else of a table of the 256 patterns' areas."""
    table = _cube_areas(tuple(map(float, spacing)))
    total = np.zeros(k + 1)
    corner_offsets = np.array(list(np.ndindex(2, 2, 2)))
    for z0, core, padded, strides in _slabs(index):
        n = (core.shape[0] + (z0 + core.shape[0] == index.shape[0]), padded.shape[1] - 1, padded.shape[2] - 1)
        corners = [padded[dz:dz + n[0], dy:dy + n[1], dx:dx + n[2]] for dz, dy, dx in corner_offsets]
        if k == 1:  # one object: its pattern from the corners' bits
            pattern = np.zeros(n, np.uint8)
            for bit, c in enumerate(corners):
                pattern |= (c == 1).view(np.uint8) << bit
            total[1] += np.bincount(pattern.ravel(), minlength=256) @ table
            continue
        mixed = corners[1] != corners[0]
        for c in corners[2:]:
            mixed |= c != corners[0]
        first = np.column_stack(np.nonzero(mixed)) @ strides  # the mixed cubes' first corners, flat
        values = padded.ravel()[first + (corner_offsets @ strides)[:, None]]
        top = values.max(axis=0)
        alone = ((values == top) | (values == 0)).all(axis=0)  # one object and background: most cubes
        pattern = np.packbits(values[:, alone] != 0, axis=0, bitorder="little")[0]
        total += np.bincount(top[alone], weights=table[pattern], minlength=k + 1)
        values = values[:, ~alone]
        for r in range(8):  # cubes of several objects: each object once, at its first corner
            first = values[r] > 0
            for j in range(r):
                first &= values[j] != values[r]
            own = values[:, first]
            pattern = np.packbits(own == own[r], axis=0, bitorder="little")[0]
            total += np.bincount(own[r], weights=table[pattern], minlength=k + 1)
    return total[1:]


def surface_area(mask: np.ndarray, spacing: tuple[float, float, float]) -> float:
    """:func:`surface_areas` of one object, ``mask`` its crop."""
    return float(surface_areas(np.asarray(mask, bool).view(np.uint8), 1, spacing)[0])


@functools.lru_cache(maxsize=16)
def _cube_areas(spacing: tuple[float, float, float]) -> np.ndarray:
    """The mesh area of each pattern of a 2 x 2 x 2 cube of 0 and 1 (bit k: corner k in ``np.ndindex`` order)."""
    from skimage.measure import marching_cubes, mesh_surface_area
    areas = np.zeros(256)
    for pattern in range(1, 255):
        cube = np.array([(pattern >> k) & 1 for k in range(8)], np.float32).reshape(2, 2, 2)
        verts, faces, _, _ = marching_cubes(cube, 0.5, spacing=spacing)
        areas[pattern] = mesh_surface_area(verts, faces)
    return areas
