"""Shape features from object crops: a second, optional pass over the measurements table's parts.

Columns (scikit-image's names and definitions, ``skimage.measure.regionprops`` 0.26, with ``spacing`` = the
image's scale; A = area or volume = voxel count x voxel size):

- ``solidity``: voxel count / voxels of the convex hull image (skimage's ``area / area_convex``, with its
  ``convex_hull_image``: the hull of the voxel centres, each widened by its face centres, in voxel indices,
  and the voxels whose centres lie in or on it; spacing cancels). skimage fails on a 3D object whose voxel
  centres are coplanar (one slice thick: its first hull, of the centres alone, is flat) and gives solidity
  inf: here the widened voxels' hull is taken directly, the object's 2D solidity (<= 1).
- ``extent``: voxel count / voxels of the bounding box.
- ``equivalent_diameter_area``: (2 ndim A / pi) ** (1 / ndim), the diameter of a disc / ball of the same size.
- 2D ``perimeter``: skimage's 4-neighbourhood estimator (``skimage.measure.perimeter(crop, 4)`` times the pixel
  size). skimage has it for isotropic pixels only; here each border pixel's weight (half its links: 1 for
  straight, sqrt(2) for diagonal, (1 + sqrt(2)) / 2 for one of each) is taken with its links' physical lengths:
  an edge link along axis d is ``spacing[d]`` long, a diagonal one ``hypot(*spacing)``; with isotropic pixels
  that is skimage's value.
- 2D ``circularity``: 4 pi A / perimeter ** 2 (NaN where the perimeter is 0: one or two pixels).
- 3D ``surface_area``: the area (``mesh_surface_area``) of the marching-cubes mesh (skimage ``marching_cubes``,
  Lewiner, level 0.5, ``spacing``) of the object's mask (1 inside, 0 elsewhere) over its crop zero-padded by
  one voxel on every side, so that the mesh is closed.
- 3D ``sphericity``: pi ** (1/3) (6 A) ** (2/3) / surface_area (1 for a true ball; a voxelised ball of radius
  10 reads 0.91, as its mesh is ~9% larger than the sphere's; objects of a few voxels can exceed 1).

scikit-image has no surface_area, sphericity or circularity; bigseg defines them as above.

The pass (:func:`crop_steps` on the client, :func:`measure_crops` on the workers) reads each object once: an
object's row is in exactly one part, and that part's task reads it (the part owns the object; the client lists
part names only, no rows). A task reads the label image (level 0) once per group of its objects whose bounding
boxes start in one cell (:func:`read_cell`: a few MB), as the union of their boxes, cell by cell in Z-order
through a cache of decoded chunks (:class:`~bigseg.io.chunk_cache.ChunkCache`: the boxes of objects that cross
block faces overlap several chunks), and writes its columns to a results file; a second step joins them into
the parts (with the neighbourhood pass's columns where it runs: one rewrite of each part, whole, then renamed
into place; a rerun writes the same bytes). An object whose bounding box holds more than
``bigseg.measure.crop-voxels`` voxels is not read: its crop columns are NaN (``extent`` and
``equivalent_diameter_area`` come from its row and are always set), and the task returns how many such objects
its part has (:func:`too_large_message`).
"""
from __future__ import annotations

import math
import posixpath
from dataclasses import dataclass

import numpy as np

from bigseg.io import store
from bigseg.io import table as table_io
from bigseg.io.chunk_cache import ChunkCache
from bigseg.io.ome import open_array
from bigseg.measure import parts
from bigseg.measure.crop_shape import SHAPE_COLUMNS, crop_features, region_features, size_features
from bigseg.measure.parts import Column, JoinTask

__all__ = ["CROP_COLUMNS", "CropTask", "crop_features", "crop_reads", "crop_steps", "crop_voxels", "measure_crops",
           "read_cell", "too_large_message"]

#: The columns this pass adds, by number of spatial axes.
CROP_COLUMNS = {2: ("solidity", "extent", "equivalent_diameter_area", "perimeter", "circularity"),
                3: ("solidity", "extent", "equivalent_diameter_area", "surface_area", "sphericity")}
AXES = {2: ("y", "x"), 3: ("z", "y", "x")}
#: Voxels of a read cell, about (:func:`read_cell`).
CELL_VOXELS = 2**21


def crop_voxels() -> int:
    """Voxels of the largest bounding box whose object is read for its crop features
    (``bigseg.measure.crop-voxels``)."""
    import dask.config
    return int(dask.config.get("bigseg.measure.crop-voxels", default=2**27))


@dataclass(frozen=True)
class CropTask:
    """Measure the crop columns of one table part's objects, reading them from a label image's level, into the
    results file ``out_url`` (``label`` and the columns; joined into the part by the pass's second step)."""

    part_url: str
    out_url: str
    labels_url: str
    level_path: str
    zarr_format: int
    shape: tuple[int, ...]
    spacing: tuple[float, ...]
    max_voxels: int
    #: leading axes of the label array before the spatial ones (a time-lapse's t: the part's ``t`` column)
    batch: int = 0


def crop_steps(parts_url: str, work_url: str, labels_url: str, level_path: str, zarr_format: int,
               shape: tuple[int, ...], spacing: tuple[float, ...], max_voxels: int | None = None,
               batch: int = 0) -> list[list]:
    """The pass's two steps for the table folder ``parts_url`` (from its file names only): one
    :class:`CropTask` per part (results under ``work_url``), then one :class:`~bigseg.measure.parts.JoinTask`
    per part. ``max_voxels``: :func:`crop_voxels` when not given."""
    if len(shape) != len(spacing) or len(shape) not in CROP_COLUMNS:
        raise ValueError(f"crop_steps needs 2 or 3 axes alike in shape {tuple(shape)} and spacing {tuple(spacing)}")
    bound = crop_voxels() if max_voxels is None else int(max_voxels)
    urls = parts.part_urls(parts_url)
    outs = [store.join(work_url, "crops", posixpath.basename(u).replace(".parquet", ".npz")) for u in urls]
    columns = tuple(Column(name, "float64", math.nan) for name in CROP_COLUMNS[len(shape)])
    return [[CropTask(u, o, labels_url, level_path, zarr_format, tuple(map(int, shape)), tuple(map(float, spacing)),
                      bound, batch) for u, o in zip(urls, outs)],
            [JoinTask(u, (o,), columns) for u, o in zip(urls, outs)]]


def measure_crops(task: CropTask) -> int:
    """Write the crop columns of ``task``'s part; returns how many of its objects have a bounding box over
    ``task.max_voxels`` voxels (no crop features)."""
    ndim = len(task.shape)
    mins, maxs = [f"bbox_min_{a}" for a in AXES[ndim]], [f"bbox_max_{a}" for a in AXES[ndim]]
    df = table_io.read_part(task.part_url, ["label", "voxel_count", *mins, *maxs] + (["t"] if task.batch else []))
    bbox_min, bbox_max = df[mins].to_numpy(np.int64), df[maxs].to_numpy(np.int64)
    labels = df["label"].to_numpy()
    box = _box_voxels(bbox_min, bbox_max)
    columns = size_features(df["voxel_count"].to_numpy(), box, task.spacing)
    columns.update({k: np.full(len(df), np.nan) for k in SHAPE_COLUMNS[ndim]})
    too_large = box > task.max_voxels
    array = ChunkCache(open_array(task.labels_url, task.level_path, task.zarr_format))  # the reads overlap
    cell = read_cell(array.chunks[task.batch:], task.shape)
    for prefix, subset in _frames(df, task.batch):
        for rows, lo, hi in crop_reads(bbox_min, bbox_max, subset[~too_large[subset]], task.shape, cell,
                                       task.max_voxels):
            region = array.read(prefix + tuple(slice(a, b) for a, b in zip(lo, hi)))
            values = region_features(region, tuple(lo), labels[rows], bbox_min[rows], bbox_max[rows], task.spacing)
            for k, v in values.items():
                columns[k][rows] = v
    store.save_arrays(task.out_url, {"label": labels, **{k: columns[k] for k in CROP_COLUMNS[ndim]}})
    return int(too_large.sum())


def too_large_message(n: int, max_voxels: int) -> str:
    """The warning for ``n`` objects the pass did not read (the sum of :func:`measure_crops`' results)."""
    return (f"{n} object(s) with a bounding box of more than {max_voxels} voxels have no solidity or other crop "
            "features (NaN); raise bigseg.measure.crop-voxels to measure them")


def _box_voxels(bbox_min: np.ndarray, bbox_max: np.ndarray) -> np.ndarray:
    return np.prod(np.asarray(bbox_max, np.int64) - np.asarray(bbox_min, np.int64), axis=1)


def _frames(df, batch: int):
    """(index prefix into the label array, rows) per timepoint of a time-lapse's part; one group otherwise."""
    if not batch:
        return [((), np.arange(len(df)))]
    t = df["t"].to_numpy()
    return [((int(v),), np.flatnonzero(t == v)) for v in np.unique(t)]


def read_cell(chunks: tuple[int, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
    """The cells that objects are read by (:func:`crop_reads`): the label array's chunks, the longest axis halved
    while over :data:`CELL_VOXELS` voxels, the shortest doubled while under a quarter of it. Reads of a few
    MB each: the region arrays are reused from one read to the next (a fresh large array costs its pages)."""
    cell = [max(1, min(int(c), int(s))) for c, s in zip(chunks, shape)]
    while math.prod(cell) > CELL_VOXELS and max(cell) > 1:
        d = int(np.argmax(cell))
        cell[d] = -(-cell[d] // 2)
    while math.prod(cell) < CELL_VOXELS // 4:
        growable = [d for d in range(len(cell)) if cell[d] < shape[d]]
        if not growable:
            break
        d = min(growable, key=lambda i: cell[i])
        cell[d] = min(2 * cell[d], int(shape[d]))
    return tuple(cell)


def _morton(index: np.ndarray) -> np.ndarray:
    """The Z-order (Morton) code of each row of cell indices (bits interleaved, the first axis highest)."""
    index = np.asarray(index, np.uint64)
    ndim = index.shape[1]
    code = np.zeros(len(index), np.uint64)
    for bit in range(64 // ndim):
        for d in range(ndim):
            code |= ((index[:, d] >> np.uint64(bit)) & np.uint64(1)) << np.uint64(bit * ndim + ndim - 1 - d)
    return code


def crop_reads(bbox_min: np.ndarray, bbox_max: np.ndarray, rows: np.ndarray, shape: tuple[int, ...],
               cell: tuple[int, ...], max_voxels: int):
    """(rows, region start, region stop) of each read: the objects whose boxes start in one cell (of shape
    ``cell``), read as the union of their boxes, or one by one where that union holds more than ``max_voxels``
    voxels."""
    if not rows.size:
        return
    code = _morton(bbox_min[rows] // np.asarray(cell))  # nearby cells in turn: their chunks stay cached
    order = np.argsort(code, kind="stable")
    rows, code = rows[order], code[order]
    starts = np.flatnonzero(np.r_[True, code[1:] != code[:-1], True])
    for s, e in zip(starts[:-1], starts[1:]):
        group = rows[s:e]
        lo, hi = bbox_min[group].min(axis=0), bbox_max[group].max(axis=0)
        if math.prod(hi - lo) <= max_voxels:
            yield group, lo, hi
        else:
            for r in group:
                yield np.array([r]), bbox_min[r], bbox_max[r]
