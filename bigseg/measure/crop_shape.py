"""Shape features of objects from a label image region: pure functions of arrays (the columns and their
definitions: :mod:`bigseg.measure.crops`).

The objects of a region are measured together, on one strip of their crops: one pass over it finds every
object's border pixels (2D) or marching-cubes patterns (3D) and hull (:mod:`bigseg.measure.hull`).
"""
from __future__ import annotations

import functools
import math

import numpy as np

from bigseg.measure import hull

#: The columns that need the crop, by number of spatial axes.
SHAPE_COLUMNS = {2: ("solidity", "perimeter", "circularity"), 3: ("solidity", "surface_area", "sphericity")}
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

    >>> features = crop_features(np.ones((3, 4), bool), (1.0, 0.5))
    >>> features["solidity"], features["extent"], features["perimeter"]
    (1.0, 1.0, 7.0)
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
    ``origin``. An object absent from the region gets NaN.

    The objects are measured together: each object's crop (its voxels, nothing else) is laid into a strip of
    crops one voxel apart (:func:`_strips`), and the strip is measured in one pass."""
    labels = np.asarray(labels)
    lo = np.asarray(bbox_min, np.int64).reshape(len(labels), -1) - np.asarray(origin, np.int64)
    hi = np.asarray(bbox_max, np.int64).reshape(len(labels), -1) - np.asarray(origin, np.int64)
    out = {k: np.full(len(labels), np.nan) for k in SHAPE_COLUMNS[region.ndim]}
    for rows in _strips(hi - lo):
        index, first, last = _strip(region, labels[rows], lo[rows], hi[rows])
        values = _measure(index, first, last, spacing)
        for k in out:
            out[k][rows] = values[k]
    return out


def _strips(box: np.ndarray):
    """Groups of objects (rows of their box shapes ``box``) whose crops share a strip: by decreasing cross
    section (the box less its last axis), a new strip where a crop's cross section is under half the strip's,
    so that a strip is at least half crops."""
    cross = np.prod(box[:, :-1], axis=1)
    order = np.argsort(-cross, kind="stable")
    start, section = 0, None
    for i, r in enumerate(order):
        grown = box[r, :-1] if section is None else np.maximum(section, box[r, :-1])
        if section is not None and 2 * cross[r] < math.prod(grown):
            yield order[start:i]
            start, grown = i, box[r, :-1]
        section = grown
    if order.size:
        yield order[start:]


def _strip(region, labels, lo, hi) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The objects' crops side by side along the last axis, one background voxel apart: object j (in the
    given order) as j + 1; and each crop's first and last (exclusive) voxel in the strip."""
    box = hi - lo
    start = np.r_[0, np.cumsum(box[:, -1] + 1)[:-1]]
    index = np.zeros((*box[:, :-1].max(axis=0), int(start[-1] + box[-1, -1])), np.min_scalar_type(len(labels)))
    first = np.zeros_like(lo)
    first[:, -1] = start
    last = first + box
    for j, label in enumerate(labels):
        crop = region[tuple(slice(a, b) for a, b in zip(lo[j], hi[j]))]
        index[tuple(slice(a, b) for a, b in zip(first[j], last[j]))][crop == label] = j + 1
    return index, first, last


def _measure(index, first, last, spacing) -> dict[str, np.ndarray]:
    """The columns of objects 1..k of ``index`` (0: background), their boxes ``first`` .. ``last``."""
    k = len(first)
    count = np.bincount(index.ravel(), minlength=k + 1)[1:].astype(np.float64)
    size = count * math.prod(spacing)
    with np.errstate(divide="ignore", invalid="ignore"):
        if index.ndim == 2:
            p = perimeters(index, k, spacing)
            columns = {"solidity": count / hull.hull_pixels(index, k), "perimeter": p,
                       "circularity": np.where(p > 0, 4 * math.pi * size / p ** 2, np.nan)}
        else:
            a = surface_areas(index, k, spacing)
            columns = {"solidity": count / hull.hull_voxels_3d(index, first, last), "surface_area": a,
                       "sphericity": math.pi ** (1 / 3) * (6 * size) ** (2 / 3) / a}
    return {name: np.where(count > 0, values, np.nan) for name, values in columns.items()}


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
    for z0, core, padded, strides in hull.slabs(index):
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
