"""Shape features of objects from a label image region: pure functions of arrays (the columns and their
definitions: :mod:`bigseg.measure.crops`).

3D objects are measured one by one by compiled kernels (:mod:`bigseg.measure.shape3d`); 2D objects together,
on one strip of their crops: one pass over it finds every object's border pixels and hull
(:mod:`bigseg.measure.hull`).
"""
from __future__ import annotations

import functools
import math

import numpy as np

from bigseg.measure import hull, shape3d

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

    3D: object by object, compiled (:mod:`bigseg.measure.shape3d`). 2D: the objects together, each object's
    crop (its pixels, nothing else) laid into a strip of crops one pixel apart (:func:`_strips`), the strip
    measured in one pass."""
    labels = np.asarray(labels)
    lo = np.asarray(bbox_min, np.int64).reshape(len(labels), -1) - np.asarray(origin, np.int64)
    hi = np.asarray(bbox_max, np.int64).reshape(len(labels), -1) - np.asarray(origin, np.int64)
    if region.ndim == 3:
        count, hull_voxels, area = shape3d.shape_3d(region, labels, lo, hi, _cube_areas(tuple(map(float, spacing))))
        return _columns_3d(count, hull_voxels, area, spacing)
    out = {k: np.full(len(labels), np.nan) for k in SHAPE_COLUMNS[region.ndim]}
    for rows in _strips(hi - lo):
        values = _measure_2d(_strip(region, labels[rows], lo[rows], hi[rows]), len(rows), spacing)
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


def _strip(region, labels, lo, hi) -> np.ndarray:
    """The objects' crops side by side along the last axis, one background pixel apart: object j (in the given
    order) as j + 1."""
    box = hi - lo
    start = np.r_[0, np.cumsum(box[:, -1] + 1)[:-1]]
    index = np.zeros((*box[:, :-1].max(axis=0), int(start[-1] + box[-1, -1])), np.min_scalar_type(len(labels)))
    for j, label in enumerate(labels):
        crop = region[tuple(slice(a, b) for a, b in zip(lo[j], hi[j]))]
        index[tuple(slice(0, b) for b in box[j, :-1]) + (slice(start[j], start[j] + box[j, -1]),)][crop == label] \
            = j + 1
    return index


def _measure_2d(index, k, spacing) -> dict[str, np.ndarray]:
    """The columns of objects 1..k of ``index`` (2D, 0: background)."""
    count = np.bincount(index.ravel(), minlength=k + 1)[1:].astype(np.float64)
    size = count * math.prod(spacing)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = perimeters(index, k, spacing)
        columns = {"solidity": count / hull.hull_pixels(index, k), "perimeter": p,
                   "circularity": np.where(p > 0, 4 * math.pi * size / p ** 2, np.nan)}
    return {name: np.where(count > 0, values, np.nan) for name, values in columns.items()}


def _columns_3d(count, hull_voxels, area, spacing) -> dict[str, np.ndarray]:
    """The 3D columns from each object's voxel count, hull voxels and mesh area."""
    size = count * math.prod(spacing)
    with np.errstate(divide="ignore", invalid="ignore"):
        columns = {"solidity": count / hull_voxels, "surface_area": area,
                   "sphericity": math.pi ** (1 / 3) * (6 * size) ** (2 / 3) / area}
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


def surface_area(mask: np.ndarray, spacing: tuple[float, float, float]) -> float:
    """The marching-cubes mesh area of one object, ``mask`` its crop (:mod:`bigseg.measure.crops`)."""
    mask = np.asarray(mask, bool)
    box = np.array([mask.shape])
    return float(shape3d.shape_3d(mask, np.array([1]), np.zeros_like(box), box, _cube_areas(tuple(spacing)))[2][0])


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
