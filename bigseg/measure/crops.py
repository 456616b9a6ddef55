"""Shape features from object crops: a second, optional pass over the measurements table's parts.

Columns (scikit-image's names and definitions, ``skimage.measure.regionprops`` 0.26, with ``spacing`` = the
image's scale; A = area or volume = voxel count x voxel size):

- ``solidity``: voxel count / voxels of the convex hull image (skimage's ``area / area_convex``; the hull
  is taken in voxel indices, each voxel widened by its face centres, and holds the voxels whose centres lie in
  it, so spacing cancels). skimage fails on a 3D object whose voxel centres are coplanar (one slice thick) and
  returns an empty hull (solidity inf): here the hull of the widened voxels is taken directly (solidity <= 1).
- ``extent``: voxel count / voxels of the bounding box.
- ``equivalent_diameter_area``: (2 ndim A / pi) ** (1 / ndim), the diameter of a disc / ball of the same size.
- 2D ``perimeter``: skimage's 4-neighbourhood estimator (``skimage.measure.perimeter(crop, 4)`` times the pixel
  size). skimage has it for isotropic pixels only; here each border pixel's weight (half its links: 1 for
  straight, sqrt(2) for diagonal, (1 + sqrt(2)) / 2 for one of each) is taken with its links' physical lengths:
  an edge link along axis d is ``spacing[d]`` long, a diagonal one ``hypot(*spacing)``; with isotropic pixels
  that is skimage's value.
- 2D ``circularity``: 4 pi A / perimeter ** 2 (NaN where the perimeter is 0: one or two pixels).
- 3D ``surface_area``: the area of the marching-cubes mesh (skimage ``marching_cubes``, Lewiner, level 0.5,
  ``spacing``) of the object's crop zero-padded by one voxel on every side, so that the mesh is closed.
- 3D ``sphericity``: pi ** (1/3) (6 A) ** (2/3) / surface_area, 1 for a ball.

The pass (:func:`crop_steps` on the client, :func:`measure_crops` on the workers) reads each object once: its row
is in exactly one part, and the task of that part reads it (the table's owner of an object). A task reads the
label image level 0 once per group of its objects whose bounding boxes start in one block (the union of their
boxes), and rewrites its part with the new columns, whole, then renamed into place; a part that has them is
left as it is. An object whose bounding box holds more than ``bigseg.measure.crop-voxels`` voxels is not read:
its crop columns are NaN (``extent`` and ``equivalent_diameter_area`` come from its row and are always set), and
the task returns how many such objects its part has.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import ConvexHull, QhullError

from bigseg.io import store
from bigseg.io import table as table_io

#: The columns this pass adds, by number of spatial axes.
CROP_COLUMNS = {2: ("solidity", "extent", "equivalent_diameter_area", "perimeter", "circularity"),
                3: ("solidity", "extent", "equivalent_diameter_area", "surface_area", "sphericity")}
#: Columns from the object's row (its voxel count and bounding box), set for every object.
ROW_COLUMNS = ("extent", "equivalent_diameter_area")
AXES = {2: ("y", "x"), 3: ("z", "y", "x")}
#: Inside test of a voxel centre against a hull facet's plane, as skimage's ``convex_hull_image``.
HULL_TOLERANCE = 1e-10
#: Facet-by-line values computed at once when the hull voxels are counted.
_HULL_CHUNK = 1 << 22


def crop_voxels() -> int:
    """Voxels of the largest bounding box whose object is read for its crop features
    (``bigseg.measure.crop-voxels``)."""
    import dask.config
    return int(dask.config.get("bigseg.measure.crop-voxels", default=2**27))


def crop_features(mask: np.ndarray, spacing: tuple[float, ...]) -> dict[str, float]:
    """The crop columns (:data:`CROP_COLUMNS`) of one object, ``mask`` its bounding-box crop (bool, 2D or 3D).

    >>> yy, xx = np.mgrid[-3:4, -3:4]
    >>> crop_features(yy ** 2 + xx ** 2 <= 9, (1.0, 1.0))["solidity"]
    1.0
    """
    mask = np.asarray(mask, bool)
    if mask.ndim not in CROP_COLUMNS or len(spacing) != mask.ndim:
        raise ValueError(f"crop_features needs a 2D or 3D mask and a spacing per axis; got shape {mask.shape} "
                         f"and spacing {tuple(spacing)}")
    count = int(np.count_nonzero(mask))
    out = size_features(np.array([count]), np.array([mask.size]), spacing)
    out = {k: float(v[0]) for k, v in out.items()}
    out.update(_shape_features(mask, count, spacing))
    return {k: out[k] for k in CROP_COLUMNS[mask.ndim]}


def size_features(voxel_count: np.ndarray, bbox_voxels: np.ndarray, spacing: tuple[float, ...]) -> dict:
    """``extent`` and ``equivalent_diameter_area`` of objects from their voxel counts and box sizes."""
    ndim = len(spacing)
    area = np.asarray(voxel_count, np.float64) * math.prod(spacing)
    with np.errstate(divide="ignore", invalid="ignore"):
        extent = np.asarray(voxel_count, np.float64) / np.asarray(bbox_voxels, np.float64)
    return {"extent": extent, "equivalent_diameter_area": (2 * ndim * area / math.pi) ** (1 / ndim)}


def _shape_features(mask: np.ndarray, count: int, spacing: tuple[float, ...]) -> dict[str, float]:
    """The columns that need the crop: solidity and perimeter/circularity (2D) or surface_area/sphericity (3D)."""
    if count == 0:
        return dict.fromkeys(("solidity",) + CROP_COLUMNS[mask.ndim][3:], math.nan)
    area = count * math.prod(spacing)
    solidity = count / hull_voxels(mask)
    if mask.ndim == 2:
        p = perimeter(mask, spacing)
        return {"solidity": solidity, "perimeter": p,
                "circularity": 4 * math.pi * area / p ** 2 if p > 0 else math.nan}
    s = surface_area(mask, spacing)
    return {"solidity": solidity, "surface_area": s,
            "sphericity": math.pi ** (1 / 3) * (6 * area) ** (2 / 3) / s if s > 0 else math.nan}


def hull_voxels(mask: np.ndarray) -> int:
    """Voxels of skimage's ``convex_hull_image(mask)`` (2D: that function; 3D: the same hull, its voxels
    counted line by line instead of testing every voxel of the box against every facet)."""
    if mask.ndim == 2:
        from skimage.morphology import convex_hull_image
        return int(np.count_nonzero(convex_hull_image(mask)))
    equations = _hull_equations(mask)
    n_lines = mask.shape[0] * mask.shape[1]
    z, y = (c.ravel().astype(np.float64) for c in np.mgrid[0:mask.shape[0], 0:mask.shape[1]])
    step = max(1, _HULL_CHUNK // len(equations))
    total = 0
    for start in range(0, n_lines, step):
        total += _hull_line_counts(equations, z[start:start + step], y[start:start + step], mask.shape[2])
    return total


def _hull_equations(mask: np.ndarray) -> np.ndarray:
    """Facet planes (unit normal, offset; ``normal . p + offset <= 0`` inside) of the hull of the voxels of a
    3D mask widened by their face centres (skimage's ``offset_coordinates``). The hull of the voxel centres
    comes first from each line's first and last voxel along the last axis (the same hull as all voxels')."""
    any_ = mask.any(axis=-1)
    lines = np.nonzero(any_)
    first = mask.argmax(axis=-1)[lines]
    last = mask.shape[-1] - 1 - mask[..., ::-1].argmax(axis=-1)[lines]
    points = np.concatenate([np.column_stack([*lines, first]), np.column_stack([*lines, last])]).astype(np.float64)
    try:
        hull = ConvexHull(points)
        points = hull.points[hull.vertices]
    except QhullError:  # coplanar centres (one slice, one line): the widened voxels still span a volume
        pass
    offsets = np.concatenate([np.eye(3) * -0.5, np.eye(3) * 0.5])
    widened = np.unique((points[:, None, :] + offsets).reshape(-1, 3), axis=0)
    return np.unique(ConvexHull(widened).equations, axis=0)  # coplanar triangles share one plane


def _hull_line_counts(equations: np.ndarray, z: np.ndarray, y: np.ndarray, nx: int) -> int:
    """Voxel centres (z, y, 0..nx-1) inside every facet plane (within :data:`HULL_TOLERANCE`), summed over
    the lines (z, y): each plane bounds x on one side, or keeps or drops the whole line."""
    bound = HULL_TOLERANCE - (np.outer(equations[:, 0], z) + np.outer(equations[:, 1], y) + equations[:, 3:])
    cx = equations[:, 2]
    lo = np.zeros(z.size)
    hi = np.full(z.size, nx - 1.0)
    up, down = cx > 0, cx < 0  # cx x < bound: x < bound / cx, or x > bound / cx
    if up.any():
        hi = np.minimum(hi, (np.ceil(bound[up] / cx[up, None]) - 1).min(axis=0))
    if down.any():
        lo = np.maximum(lo, (np.floor(bound[down] / cx[down, None]) + 1).max(axis=0))
    flat = ~(up | down)
    kept = (bound[flat] > 0).all(axis=0) if flat.any() else True
    return int(np.where(kept, np.maximum(hi - lo + 1, 0), 0).sum())


def perimeter(mask: np.ndarray, spacing: tuple[float, float]) -> float:
    """skimage's ``perimeter(mask, 4)`` with each link at its physical length (see the module's text)."""
    image = mask.astype(np.uint8)
    border = image - ndi.binary_erosion(image, ndi.generate_binary_structure(2, 1), border_value=0)
    p = np.pad(border, 1)
    vertical = p[:-2, 1:-1] + p[2:, 1:-1]  # border neighbours along axis 0
    horizontal = p[1:-1, :-2] + p[1:-1, 2:]
    diagonal = p[:-2, :-2] + p[:-2, 2:] + p[2:, :-2] + p[2:, 2:]
    on = border.astype(bool)
    v, h, d = (a[on].astype(np.int64) for a in (vertical, horizontal, diagonal))
    code = 10 * d + 2 * (v + h) + 1  # skimage's convolution with [[10, 2, 10], [2, 1, 2], [10, 2, 10]]
    edge_links = v * spacing[0] + h * spacing[1]
    diagonal_link = math.hypot(*spacing)
    with np.errstate(divide="ignore", invalid="ignore"):
        straight = edge_links / (v + h)  # skimage's weight 1: the mean of the edge links
    weight = np.select([np.isin(code, (5, 7, 15, 17, 25, 27)), np.isin(code, (21, 33)), np.isin(code, (13, 23))],
                       [straight, diagonal_link, (diagonal_link + edge_links) / 2], 0.0)
    return float(weight.sum())


def surface_area(mask: np.ndarray, spacing: tuple[float, float, float]) -> float:
    """Area of the marching-cubes mesh (level 0.5) of the mask zero-padded by one voxel, in physical units."""
    from skimage.measure import marching_cubes, mesh_surface_area
    verts, faces, _, _ = marching_cubes(np.pad(mask, 1).astype(np.float32), 0.5, spacing=tuple(spacing))
    return float(mesh_surface_area(verts, faces))


def region_features(region: np.ndarray, origin: tuple[int, ...], labels: np.ndarray, bbox_min: np.ndarray,
                    bbox_max: np.ndarray, spacing: tuple[float, ...]) -> dict[str, np.ndarray]:
    """The crop-only columns of objects ``labels`` (bounding boxes ``bbox_min`` .. ``bbox_max``, global voxel
    indices, max exclusive) from one region of the label image read once, its first voxel at ``origin``."""
    names = ("solidity",) + CROP_COLUMNS[region.ndim][3:]
    out = {k: np.full(len(labels), np.nan) for k in names}
    offset = np.asarray(origin)
    for i, (label, lo, hi) in enumerate(zip(labels, bbox_min - offset, bbox_max - offset)):
        crop = region[tuple(slice(a, b) for a, b in zip(lo, hi))] == label
        values = _shape_features(crop, int(np.count_nonzero(crop)), spacing)
        for k in names:
            out[k][i] = values[k]
    return out


@dataclass(frozen=True)
class CropTask:
    """Add the crop columns to one table part, reading the objects from a label image's level."""

    part_url: str
    labels_url: str
    level_path: str
    zarr_format: int
    shape: tuple[int, ...]
    block_shape: tuple[int, ...]
    spacing: tuple[float, ...]
    max_voxels: int


def crop_steps(parts_url: str, labels_url: str, level_path: str, zarr_format: int, shape: tuple[int, ...],
               block_shape: tuple[int, ...], spacing: tuple[float, ...],
               max_voxels: int | None = None) -> list[list[CropTask]]:
    """The pass's tasks, one per part of the table folder ``parts_url`` (from its file names only), in one step.
    ``max_voxels``: :func:`crop_voxels` when not given."""
    if not len(shape) == len(block_shape) == len(spacing) or len(shape) not in CROP_COLUMNS:
        raise ValueError(f"crop_steps needs 2 or 3 axes alike in shape {tuple(shape)}, block_shape "
                         f"{tuple(block_shape)} and spacing {tuple(spacing)}")
    bound = crop_voxels() if max_voxels is None else int(max_voxels)
    names = sorted(n for n in store.children(parts_url) if n.endswith(".parquet"))
    return [[CropTask(store.join(parts_url, n), labels_url, level_path, zarr_format, tuple(map(int, shape)),
                      tuple(map(int, block_shape)), tuple(map(float, spacing)), bound) for n in names]]


def measure_crops(task: CropTask) -> int:
    """Add the crop columns to ``task``'s part (unless it has them); returns how many of its objects have a
    bounding box over ``task.max_voxels`` voxels (no crop features)."""
    ndim = len(task.shape)
    mins, maxs = [f"bbox_min_{a}" for a in AXES[ndim]], [f"bbox_max_{a}" for a in AXES[ndim]]
    if set(CROP_COLUMNS[ndim]) <= set(table_io.part_columns(task.part_url)):
        boxes = table_io.read_part(task.part_url, mins + maxs)
        return int((_box_voxels(boxes[mins].to_numpy(), boxes[maxs].to_numpy()) > task.max_voxels).sum())
    df = table_io.read_part(task.part_url)
    bbox_min, bbox_max = df[mins].to_numpy(np.int64), df[maxs].to_numpy(np.int64)
    labels = df["label"].to_numpy()
    box = _box_voxels(bbox_min, bbox_max)
    columns = size_features(df["voxel_count"].to_numpy(), box, task.spacing)
    names = ("solidity",) + CROP_COLUMNS[ndim][3:]
    for k in names:
        columns[k] = np.full(len(df), np.nan)
    too_large = box > task.max_voxels
    from bigseg.io.ome import open_array
    array = open_array(task.labels_url, task.level_path, task.zarr_format)
    for rows, lo, hi in crop_reads(bbox_min, bbox_max, np.flatnonzero(~too_large), task.shape, task.block_shape,
                               task.max_voxels):
        region = np.asarray(array[tuple(slice(a, b) for a, b in zip(lo, hi))])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            values = region_features(region, tuple(lo), labels[rows], bbox_min[rows], bbox_max[rows], task.spacing)
        for k in names:
            columns[k][rows] = values[k]
    for k in CROP_COLUMNS[ndim]:
        df[k] = columns[k]
    table_io.write_part(df, task.part_url)
    return int(too_large.sum())


def _box_voxels(bbox_min: np.ndarray, bbox_max: np.ndarray) -> np.ndarray:
    return np.prod(np.asarray(bbox_max, np.int64) - np.asarray(bbox_min, np.int64), axis=1)


def crop_reads(bbox_min: np.ndarray, bbox_max: np.ndarray, rows: np.ndarray, shape: tuple[int, ...],
           block_shape: tuple[int, ...], max_voxels: int):
    """(rows, region start, region stop) of each read: the objects whose boxes start in one block, read as the
    union of their boxes, or one by one where that union holds more than ``max_voxels`` voxels."""
    if not rows.size:
        return
    grid = tuple(-(-s // b) for s, b in zip(shape, block_shape))
    block = np.ravel_multi_index(tuple((bbox_min[rows] // np.asarray(block_shape)).T), grid)
    order = np.argsort(block, kind="stable")
    rows, block = rows[order], block[order]
    starts = np.flatnonzero(np.r_[True, block[1:] != block[:-1], True])
    for s, e in zip(starts[:-1], starts[1:]):
        group = rows[s:e]
        lo, hi = bbox_min[group].min(axis=0), bbox_max[group].max(axis=0)
        if math.prod(hi - lo) <= max_voxels:
            yield group, lo, hi
        else:
            for r in group:
                yield np.array([r]), bbox_min[r], bbox_max[r]
