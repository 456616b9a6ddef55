"""The measure job: a measurements table for a label image that exists (bigseg's or any NGFF label image next
to the image: ids arbitrary, an object may lie in many blocks, or in several places).

plan -> partials (one task per block: every label's statistics in the block, by id) -> merge (one task per id
range: the rows of that range from every block that holds some, merged by id into one table part) -> the table
passes the features ask for -> the table replaces the old one.

The client sees per block only its row count, id range and a sample of its ids (for the id ranges), never rows.
"""
from __future__ import annotations

import logging
import math
import time
import uuid
from dataclasses import dataclass, field

import numpy as np

from bigseg.blocks import plan_grid
from bigseg.errors import InputError
from bigseg.io import store
from bigseg.io import table as table_io
from bigseg.io.lock import JobLock
from bigseg.io.ome import ImageView, open_array, open_image
from bigseg.engine.journal import Journal
from bigseg.engine.runner import StageRunner
from bigseg.measure import partials
from bigseg.measure.stage import TableArgs
from bigseg.measure.passes import TableAt, run_passes
from bigseg.measure.settings import MeasurePlan, measure_plan, measured_view

log = logging.getLogger(__name__)

#: Objects (distinct ids) a merge task aims at.
OBJECTS_PER_TASK = 100_000
#: Ids each block reports as a sample of its id distribution (for the merge tasks' id ranges).
SAMPLE_IDS = 64
#: Default block of the partials tasks, in voxels.
BLOCK_VOXELS = 2**24


@dataclass(frozen=True)
class MeasureResult:
    table: str
    objects: int
    blocks: int
    seconds: dict = field(default_factory=dict)

    def summary(self) -> dict:
        return {"table": self.table, "objects": self.objects, "blocks": self.blocks,
                "seconds": {k: round(v, 3) for k, v in self.seconds.items()}}


@dataclass(frozen=True)
class LabelsPlan:
    view: ImageView          # the image level the labels cover, measuring the chosen channels
    name: str                # the label image's name
    labels_url: str          # the label image's group
    level_path: str          # its level 0
    zarr_format: int
    grid: object             # the blocks of the partials tasks (no halo)
    measure: MeasurePlan
    work_url: str
    table_url: str


@dataclass(frozen=True)
class PartialsTask:
    plan: LabelsPlan
    block: object
    out_url: str


@dataclass(frozen=True)
class MergeTask:
    lo: int                  # ids lo <= id < hi
    hi: int
    sources: tuple[str, ...]
    part_url: str
    table_args: TableArgs


def plan(image_url: str, labels: str, settings, n_workers: int, block=None) -> LabelsPlan:
    """Check the label image against the image (shape of a level, integer ids) and the settings; nothing is
    written."""
    image = open_image(image_url)
    label_image = image.label_image(labels, "", "give the name of one of its label images (IMAGE/labels/NAME)")
    labels_url = label_image.url
    if "t" in label_image.axis_names:
        raise InputError(f"{labels_url} has a t axis; bigseg measure takes spatial label images for now: segment "
                         "the movie with --timepoints (its table measures every timepoint)")
    lview = label_image.view(0)
    dtype = np.dtype(label_image.levels[0].dtype)
    if dtype.kind not in "iu":
        raise InputError(f"{labels_url}: ids are {dtype} (not integers); a label image holds integer ids, 0 for "
                         "the background: convert it (e.g. astype uint32) first")
    view = _level_of(image, lview.shape, labels_url)
    view = measured_view(settings, view)
    chunks = lview.chunks if block is None else (1,) * view.ndim  # tasks only read: any block will do
    grid = plan_grid(view.shape, chunks, (0,) * view.ndim, block, max_voxels=BLOCK_VOXELS)
    work = store.join(labels_url, ".bigseg-measure-work")
    return LabelsPlan(view, labels, labels_url, label_image.levels[0].path, label_image.zarr_format, grid,
                      measure_plan(settings, view), work, store.join(labels_url, "measurements.parquet"))


def _level_of(image, shape: tuple[int, ...], labels_url: str) -> ImageView:
    """The image's level whose spatial shape is the labels' level 0."""
    shapes = image.level_shapes
    if tuple(shape) in shapes:
        return image.view(shapes.index(tuple(shape)))
    raise InputError(f"{labels_url}: level 0 has shape {tuple(shape)}, the shape of no level of the image "
                     f"({shapes}); the labels must cover one of the image's levels")


def block_partials(task: PartialsTask) -> tuple[int, int, int, np.ndarray]:
    """Every label's partials in one block, by id (sorted): (rows, smallest id, largest id, a sample of ids)."""
    p, block = task.plan, task.block
    labels = np.asarray(open_array(p.labels_url, p.level_path, p.zarr_format)[block.core])
    if labels.dtype.kind == "i" and labels.size and labels.min() < 0:
        raise InputError(f"{p.labels_url}: negative ids in block {block.id}; label ids are 0 (background) or "
                         "positive: relabel the image first")
    flat = labels.ravel()
    where = np.flatnonzero(flat)
    ids, local = np.unique(flat[where], return_inverse=True)
    part = partials.voxel_partials(where, local.astype(np.int64) + 1, labels.shape,
                                   p.view.read_channels(block.core), block.origin, ids.size, p.measure.extras)
    if p.measure.parent_array is not None:
        parents = np.asarray(open_array(*p.measure.parent_array)[block.core]).ravel()[where]
        part.update(partials.contingency(local.astype(np.int64), parents))
    store.save_arrays(task.out_url, {"label": ids.astype(np.uint64), **part})
    sample = ids[np.linspace(0, ids.size - 1, min(SAMPLE_IDS, ids.size)).astype(int)] if ids.size else ids
    return int(ids.size), int(ids[0]) if ids.size else 0, int(ids[-1]) if ids.size else 0, \
        sample.astype(np.uint64)


def merge_range(task: MergeTask) -> int:
    """The objects with ids in [lo, hi): their rows from every source block merged by id, as one table part."""
    parts, ids = [], []
    for block in store.iter_arrays(list(task.sources)):
        label = block.pop("label")
        rows = slice(*np.searchsorted(label, np.array([task.lo, task.hi], np.uint64)))  # uint64: no float rounding
        parts.append(partials.take(block, rows))
        ids.append(label[rows])
    args = task.table_args
    if parts:
        unique, group = np.unique(np.concatenate(ids), return_inverse=True)
        merged = partials.merge(partials.concat(parts), group, unique.size)
        spanned = np.bincount(group, minlength=unique.size)  # each source holds an id once
    else:
        unique, spanned = np.zeros(0, np.uint64), np.zeros(0, np.int64)
        merged = partials.empty_partials(len(args.shape), len(args.channel_names), args.extras)
    table_io.write_part(args.table(merged, unique, spanned), task.part_url)
    return int(unique.size)


def id_ranges(counts: np.ndarray, samples: list[np.ndarray], per_task: int) -> np.ndarray:
    """Boundaries b_0 < b_1 < ... of the merge tasks' id ranges [b_i, b_i+1): weighted quantiles of the blocks'
    id samples, about ``per_task`` rows each (the first starts at 0, the last ends past the largest id)."""
    total = int(counts.sum())
    n_tasks = max(1, math.ceil(total / per_task))
    kept = [(s, c / s.size) for s, c in zip(samples, counts) if s.size]
    if not kept:
        return np.array([0, 1], np.uint64)
    values = np.concatenate([s for s, _ in kept])
    weights = np.concatenate([np.full(s.size, w) for s, w in kept])
    order = np.argsort(values, kind="stable")
    values, cumulative = values[order], np.cumsum(weights[order])
    inner = values[np.searchsorted(cumulative, total * np.arange(1, n_tasks) / n_tasks)]
    top = np.uint64(int(values[-1]) + 1)
    return np.unique(np.concatenate([[np.uint64(0)], inner.astype(np.uint64), [top]]))


def run(lplan: LabelsPlan, client) -> MeasureResult:
    """Measure the label image of ``lplan`` on ``client``; the table replaces the old one only when complete."""
    t0 = time.perf_counter()
    with JobLock(lplan.labels_url):
        store.remove(lplan.work_url)
        stages = StageRunner(client, Journal(lplan.work_url), uuid.uuid4().hex[:8])
        blocks = list(lplan.grid)
        tasks = [PartialsTask(lplan, b, store.join(lplan.work_url, "partials", f"{b.id}.npz")) for b in blocks]
        found = stages.run("partials", block_partials, tasks)
        counts = np.array([f[0] for f in found], np.int64)
        lows, highs = np.array([f[1] for f in found], np.uint64), np.array([f[2] for f in found], np.uint64)
        bounds = id_ranges(counts, [f[3] for f in found], OBJECTS_PER_TASK)
        view = lplan.view
        args = TableArgs(view.scale, view.translation, view.shape, view.channel_names, lplan.measure.extras,
                         lplan.measure.parent)
        parts_url = store.join(lplan.work_url, "table")
        merges = []
        for i, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
            holds = (counts > 0) & (lows < hi) & (highs >= lo)
            merges.append(MergeTask(int(lo), int(hi), tuple(tasks[j].out_url for j in np.flatnonzero(holds)),
                                    table_io.part_url(parts_url, i), args))
        objects = sum(stages.run("measure", merge_range, merges))
        at = TableAt(parts_url, lplan.work_url, lplan.labels_url, lplan.level_path, lplan.zarr_format,
                     view.image.url, lplan.name, tuple(view.shape), tuple(view.scale))
        for warning in run_passes(stages, lplan.measure, at):
            log.warning("%s", warning)
        table_io.replace(parts_url, lplan.table_url)
        store.remove(lplan.work_url)
    stages.seconds["total"] = time.perf_counter() - t0
    return MeasureResult(lplan.table_url, int(objects), len(blocks), stages.seconds)
