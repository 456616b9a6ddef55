"""Centroid neighbours of every object, exact across blocks: the distance to the nearest other object's centroid
(and its label) and the number of other centroids within a radius, in the table's physical units.

Three steps over a folder of table parts, planned on the client by :func:`neighbour_steps` from the parts' footers
(row count and centroid extent of each part, never the rows):

1. per part (:func:`bucket_part`): the rows' labels and centroids into one file per region they lie in or near.
   Regions are the boxes of a regular grid whose edge (at least the radius) makes the fullest region hold about
   ``objects_per_task`` objects, as the parts' extents tell; a row is near a region within ``Grid.margin``
   (at least the radius, and about two spacings of objects in the densest region).
2. per region (:func:`measure_region`): a KD-tree over the region's own rows and those in its margin. Counts
   within the radius are exact (margin >= radius), so is a nearest neighbour found within the margin. For the
   others (sparse places) the task reads, from the parts whose extent reaches them, every row as near as the
   neighbour found (or as a part that surely holds another object) and queries again: exact too.
3. per part (:func:`bigseg.measure.parts.join_part`): the results joined into the part by label.

Ties: the nearest neighbour is the smallest label among the centroids at the nearest distance.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import math
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from bigseg.errors import InputError, ParameterError
from bigseg.io import store
from bigseg.measure import parts
from bigseg.measure.parts import Column, JoinTask

#: Objects a region task measures, about (its KD-tree also holds its margin's).
OBJECTS_PER_TASK = 100_000
#: Margin for nearest neighbours, in spacings of objects in the densest region.
SPACINGS = 2.0
#: Relative slack for floating-point rounding in the margins.
SLACK = 1e-9
#: Estimated (part, region) overlaps above which the grid is not refined further.
MAX_OVERLAPS = 2_000_000

DISTANCE = Column("nearest_neighbour_distance", "float64", math.nan)
NEAREST = Column("nearest_neighbour_label", "uint64", 0)
WITHIN = Column("neighbours_within_radius", "int64", 0)


def columns(radius: float | None) -> tuple[Column, ...]:
    """The columns the pass adds (the radius count only with a radius)."""
    return (DISTANCE, NEAREST) if radius is None else (DISTANCE, NEAREST, WITHIN)


@dataclass(frozen=True)
class Grid:
    """Regions: boxes of edge ``edge`` from ``origin``; a point is near a region within ``margin`` of it."""

    origin: tuple[float, ...]
    edge: float
    margin: float

    def index(self, points: np.ndarray, shift: float = 0.0) -> np.ndarray:
        """The region of each point (moved by ``shift`` along every axis), shape (n, ndim). Monotone in each
        coordinate, so a part's extent tells which regions its rows can reach."""
        return np.floor(((points + shift) - np.asarray(self.origin)) / self.edge).astype(np.int64)


@dataclass(frozen=True)
class BucketTask:
    """Split one part's rows into the files ``out_urls`` of the regions ``regions`` (shape (k, ndim))."""

    part_url: str
    centroid_columns: tuple[str, ...]
    grid: Grid
    regions: np.ndarray
    out_urls: tuple[str, ...]


@dataclass(frozen=True)
class RegionTask:
    """Measure the objects of one region from the bucket files of the parts near it (``sources``); the results
    of a part's rows go to ``results[i]`` (None: the part has no rows in the region). A nearest neighbour
    within ``margin`` is exact (inf: the only region, which holds every object)."""

    sources: tuple[str, ...]
    results: tuple[str | None, ...]
    margin: float
    radius: float | None
    summary_url: str
    centroid_columns: tuple[str, ...]


def neighbour_steps(parts_url: str, work_url: str, radius: float | None,
                    objects_per_task: int | None = None) -> list[list]:
    """The pass's tasks, step by step (buckets, regions, joins): a step's tasks read what the steps before it
    wrote. ``radius``: for ``neighbours_within_radius``, in the centroids' units (None: no such column).
    Intermediate files go to a folder of ``work_url`` named for the plan."""
    if radius is not None and not (math.isfinite(radius) and radius >= 0):
        raise ParameterError(f"neighbour_radius must be a length of 0 or more (e.g. 20um), not {radius}")
    urls = parts.part_urls(parts_url)
    cols = columns(radius)
    if not urls:
        return [[], [], []]
    centroid = parts.centroid_columns(urls)
    rows, low, high = parts.ranges(urls, centroid, np.float64)
    full = [int(j) for j in np.flatnonzero(rows)]
    if not full:
        return [[], [], [JoinTask(u, (), cols) for u in urls]]
    grid = plan_grid(rows[full], low[full], high[full], radius or 0.0, objects_per_task or OBJECTS_PER_TASK)
    folder = store.join(work_url, "neighbours-" + _fingerprint(urls, rows, low, high, grid, radius))
    summary_url = store.join(folder, "parts.npz")
    store.save_arrays(summary_url, {"url": np.array(urls), "rows": rows, "low": low, "high": high})

    own = {j: _cells(grid, low[j], high[j], 0.0) for j in full}
    regions = sorted({r for j in full for r in own[j]})
    region_id = {r: i for i, r in enumerate(regions)}
    near_parts: list[list[int]] = [[] for _ in regions]
    buckets = []
    for j in full:
        mine = [region_id[r] for r in _cells(grid, low[j], high[j], grid.margin) if r in region_id]
        for i in mine:
            near_parts[i].append(j)
        buckets.append(BucketTask(urls[j], centroid, grid, np.array([regions[i] for i in mine], np.int64),
                                  tuple(_bucket_url(folder, i, j) for i in mine)))
    own_sets = {j: set(own[j]) for j in full}
    measures = [RegionTask(tuple(_bucket_url(folder, i, j) for j in near),
                           tuple(_result_url(folder, i, j) if r in own_sets[j] else None for j in near),
                           grid.margin if len(regions) > 1 else math.inf, radius, summary_url, centroid)
                for i, (r, near) in enumerate(zip(regions, near_parts))]
    joins = [JoinTask(u, tuple(_result_url(folder, region_id[r], j) for r in own.get(j, ())), cols)
             for j, u in enumerate(urls)]
    return [buckets, measures, joins]


def _bucket_url(folder: str, region: int, part: int) -> str:
    return store.join(folder, "buckets", f"{region:09d}", f"{part:09d}.npz")


def _result_url(folder: str, region: int, part: int) -> str:
    return store.join(folder, "results", f"{part:09d}", f"{region:09d}.npz")


def _cells(grid: Grid, low: np.ndarray, high: np.ndarray, margin: float) -> list[tuple[int, ...]]:
    """The regions a box (``low``..``high``, widened by ``margin``) reaches, as index tuples."""
    lo = grid.index(low[None], -margin)[0]
    hi = grid.index(high[None], margin)[0]
    return list(itertools.product(*(range(a, b + 1) for a, b in zip(lo, hi))))


def _fingerprint(urls, rows, low, high, grid: Grid, radius) -> str:
    h = hashlib.sha1(json.dumps([urls, grid.origin, grid.edge, grid.margin,
                                 radius]).encode())
    for a in (rows, low, high):
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:12]


def plan_grid(rows: np.ndarray, low: np.ndarray, high: np.ndarray, radius: float, per_task: int) -> Grid:
    """The regions for parts of ``rows`` objects within ``low``..``high`` (each shape (parts, ndim)): the edge
    halved from the whole extent while the fullest region would hold more than ``per_task`` objects (a part's
    objects counted as spread evenly over its extent), never below the radius."""
    origin, top = low.min(0), high.max(0)
    size = max(1.0, float(np.abs(origin).max()), float(np.abs(top).max()))
    floor = max(radius * (1 + SLACK), SLACK * size)
    edge = max(float((top - origin).max()) * (1 + SLACK), floor)  # one region holds them all
    peak = _fullest(rows, low, high, origin, edge)
    while peak > per_task and edge / 2 >= floor:
        finer = _fullest(rows, low, high, origin, edge / 2)
        if finer is None:
            break
        edge, peak = edge / 2, finer
    spread = np.minimum(top - origin, edge)  # the fullest region's extent along each axis, about
    spread = spread[spread > 0]
    spacing = (np.prod(spread) / max(peak, 1.0)) ** (1 / spread.size) if spread.size else 0.0
    margin = max(radius * (1 + SLACK), min(SPACINGS * spacing, edge / 2))
    return Grid(tuple(float(o) for o in origin), edge, margin)


def _fullest(rows, low, high, origin, edge) -> float | None:
    """The estimated objects of the fullest region of edge ``edge`` (None: too many regions to estimate)."""
    lo = np.floor((low - origin) / edge).astype(np.int64)
    hi = np.floor((high - origin) / edge).astype(np.int64)
    if np.prod(hi - lo + 1, axis=1).sum() > MAX_OVERLAPS:
        return None
    dims = hi.max(0) + 1
    keys, weights = [], []
    for j in range(len(rows)):
        axis_weights, axis_cells = [], []
        for d in range(low.shape[1]):
            cells = np.arange(lo[j, d], hi[j, d] + 1)
            length = high[j, d] - low[j, d]
            if length > 0:
                start = origin[d] + cells * edge
                share = np.clip(np.minimum(high[j, d], start + edge) - np.maximum(low[j, d], start), 0, None) / length
            else:
                share = np.ones(1)
            axis_cells.append(cells)
            axis_weights.append(share)
        grids = np.meshgrid(*axis_cells, indexing="ij")
        keys.append(np.ravel_multi_index([g.ravel() for g in grids], dims))
        weights.append(rows[j] * np.prod(np.meshgrid(*axis_weights, indexing="ij"), axis=0).ravel())
    keys, weights = np.concatenate(keys), np.concatenate(weights)
    _, inverse = np.unique(keys, return_inverse=True)
    return float(np.bincount(inverse, weights).max())


def bucket_part(task: BucketTask) -> int:
    """Write, for each of the task's regions, the part's rows in or near it (``label``, ``centroid``, ``own``:
    in the region itself); returns the part's rows."""
    label, coords = _rows(task.part_url, task.centroid_columns)
    grid = task.grid
    own = grid.index(coords)
    lo, hi = grid.index(coords, -grid.margin), grid.index(coords, grid.margin)
    for region, url in zip(task.regions, task.out_urls):
        near = np.all((lo <= region) & (region <= hi), axis=1)
        store.save_arrays(url, {"label": label[near], "centroid": coords[near],
                                "own": np.all(own[near] == region, axis=1)})
    return int(label.size)


def _rows(url: str, centroid_columns: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    values = parts.read_columns(url, ("label",) + tuple(centroid_columns))
    coords = np.column_stack([values[c].astype(np.float64) for c in centroid_columns])
    if not np.isfinite(coords).all():
        raise InputError(f"{url}: some centroids are not numbers; measure the labels again")
    return values["label"].astype(np.uint64), coords


def measure_region(task: RegionTask) -> dict:
    """Write the region's objects' neighbour columns, one result file per part; returns the objects measured
    and how many needed a wider search than the margin."""
    loaded = list(store.iter_arrays(list(task.sources)))
    label = np.concatenate([a["label"] for a in loaded])
    coords = np.concatenate([a["centroid"] for a in loaded])
    own = np.concatenate([a["own"] for a in loaded])
    source = np.repeat(np.arange(len(loaded)), [a["label"].size for a in loaded])
    q = np.flatnonzero(own)
    tree = cKDTree(coords)
    values = {}
    if task.radius is not None:
        values[WITHIN.name] = tree.query_ball_point(coords[q], task.radius, return_length=True).astype(np.int64) - 1
    distance, nearest = nearest_neighbours(tree, label, coords[q], label[q])
    far = np.flatnonzero(~(distance <= task.margin * (1 - SLACK)))  # an object nearer may lie outside the margin
    if far.size:
        distance[far], nearest[far] = _widened(task, coords[q[far]], label[q[far]], distance[far])
    values[DISTANCE.name] = np.where(np.isfinite(distance), distance, np.nan)
    values[NEAREST.name] = nearest
    for i, url in enumerate(task.results):
        if url is not None:
            mine = source[q] == i
            store.save_arrays(url, {"label": label[q[mine]], **{k: v[mine] for k, v in values.items()}})
    return {"objects": int(q.size), "widened": int(far.size)}


def nearest_neighbours(tree: cKDTree, labels: np.ndarray, points: np.ndarray,
                       point_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distance, label) of the nearest centroid in ``tree`` (of ``labels``) to each point, not the point's own
    label; ties: the smallest label. inf and 0 where the tree holds no other object."""
    n = len(labels)
    dist, index = tree.query(points, k=3)
    named = np.append(labels, np.uint64(0))[index]
    other = np.where(np.isfinite(dist) & (named != point_labels[:, None]), dist, np.inf)
    rows = np.arange(len(points))
    first = np.argmin(other, axis=1)
    d1 = other[rows, first]
    label = np.where(np.isfinite(d1), named[rows, first], np.uint64(0)).astype(np.uint64)
    other[rows, first] = np.inf
    for t in np.flatnonzero(np.isfinite(d1) & (other.min(axis=1) == d1)):  # a tie: every label at that distance
        label[t] = _smallest_at(tree, labels, points[t], point_labels[t], d1[t], n)
    return d1, label


def _smallest_at(tree: cKDTree, labels, point, own_label, distance: float, n: int) -> np.uint64:
    k = 8
    while True:
        dist, index = tree.query(point, k=min(k, n))
        dist, index = np.atleast_1d(dist), np.atleast_1d(index)
        if k >= n or dist[-1] > distance:
            at = labels[index[(dist == distance) & (labels[index] != own_label)]]
            return at.min()
        k *= 2


def _widened(task: RegionTask, points: np.ndarray, point_labels: np.ndarray,
             found: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact nearest neighbours of ``points`` from the parts themselves: every row as near as the neighbour
    found, or where none was, as the farthest corner of the nearest part that surely holds another object."""
    summary = store.load_arrays(task.summary_url)
    rows, low, high = summary["rows"], summary["low"], summary["high"]
    reach = found.copy()
    lost = ~np.isfinite(reach)
    if lost.any():
        reach[lost] = _part_bound(points[lost], rows, low, high)
    known = np.isfinite(reach)
    reach = reach * (1 + SLACK) + SLACK * np.abs(points).max(axis=1)
    lo, hi = points - reach[:, None], points + reach[:, None]
    needed = np.zeros(len(rows), bool)
    for s in range(0, len(points), 256):
        k = known[s:s + 256]
        a, b = lo[s:s + 256][k], hi[s:s + 256][k]
        needed |= np.any(np.all((low[None] <= b[:, None]) & (high[None] >= a[:, None]), axis=2), axis=0)
    needed &= rows > 0
    distance, nearest = np.full(len(points), np.inf), np.zeros(len(points), np.uint64)
    if not needed.any():  # no other object at all
        return distance, nearest
    box_lo, box_hi = lo[known].min(0), hi[known].max(0)
    labels, coords = [], []
    for url in summary["url"][needed]:
        label, xyz = _rows(str(url), task.centroid_columns)
        inside = np.all((xyz >= box_lo) & (xyz <= box_hi), axis=1)
        labels.append(label[inside])
        coords.append(xyz[inside])
    tree = cKDTree(np.concatenate(coords))
    distance[known], nearest[known] = nearest_neighbours(tree, np.concatenate(labels), points[known],
                                                         point_labels[known])
    return distance, nearest


def _part_bound(points: np.ndarray, rows, low, high) -> np.ndarray:
    """For each point, a distance within which another object surely lies: the farthest corner of a part that
    holds a row other than the point (inf: the point is the only object)."""
    out = np.full(len(points), np.inf)
    for s in range(0, len(points), 256):
        p = points[s:s + 256, None, :]
        corner = np.sqrt((np.maximum(np.abs(p - low[None]), np.abs(p - high[None])) ** 2).sum(axis=2))
        other = (rows[None] >= 2) | ((rows[None] == 1) & np.any(low[None] != p, axis=2))
        out[s:s + 256] = np.where(other, corner, np.inf).min(axis=1)
    return out
