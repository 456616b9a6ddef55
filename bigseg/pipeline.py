"""One job, stage by stage, on a Dask client:

open -> plan -> segment blocks -> stitch -> relabel -> pyramid -> measure -> finalize.

The client sends small task descriptions and receives per-block summaries (counts, statistics of
boundary fragments, edges); voxels move only between workers and storage.
"""
from __future__ import annotations

import logging
import math
import time
import uuid
from dataclasses import dataclass, field

import numpy as np
import zarr

from bigseg import measure
from bigseg.blocks import DEFAULT_BLOCK_VOXELS, BlockGrid, plan_grid
from bigseg.config import JobSpec
from bigseg.errors import ParameterError
from bigseg.io import labels as label_io
from bigseg.io import store
from bigseg.io import table as table_io
from bigseg.io.ome import ImageView, open_image
from bigseg.methods import Method, get_method
from bigseg.methods._classical import per_axis
from bigseg.progress import Progress
from bigseg.qc import write_overlay
from bigseg.pyramid import DownsampleTask, downsample, regions
from bigseg.relabel import RelabelTask, relabel_block
from bigseg.segment_blocks import JobFiles, SegmentTask, segment_block
from bigseg.stitch import OverlapTask, TouchTask, no_edges, overlap_edges, resolve, resolve_classes, touch_edges

log = logging.getLogger(__name__)
#: Retries of a failed block task before the job fails (lost workers are handled by Dask itself).
RETRIES = 2


@dataclass
class SegmentResult:
    """What a job produced: where, how much, how long."""

    labels: str
    table: str
    qc: str
    objects: int
    blocks: int
    blocks_empty: int
    dtype: str
    threshold: float | None
    block_shape: tuple[int, ...]
    halo: tuple[int, ...]
    seconds: dict = field(default_factory=dict)
    voxels: int = 0

    @property
    def voxels_per_second(self) -> float:
        return self.voxels / max(self.seconds.get("total", 0.0), 1e-9)

    def summary(self) -> dict:
        return {"labels": self.labels, "table": self.table, "qc": self.qc, "objects": self.objects,
                "blocks": self.blocks, "blocks_empty": self.blocks_empty, "dtype": self.dtype,
                "threshold": self.threshold, "block": list(self.block_shape), "halo": list(self.halo),
                "seconds": {k: round(v, 3) for k, v in self.seconds.items()}, "voxels": self.voxels,
                "voxels_per_second": round(self.voxels_per_second, 1)}


class _Stages:
    """Times stages and drives the progress observer."""

    def __init__(self, progress: Progress):
        self.progress, self.seconds, self._t = progress, {}, None

    def run(self, client, name: str, fn, tasks: list, key: str, resources=None, label: str | None = None) -> list:
        t0 = time.perf_counter()
        self.progress.stage(label or name, len(tasks))
        results = [None] * len(tasks)
        if tasks:
            from distributed import as_completed
            futures = client.map(fn, tasks, key=[f"bigseg-{name}-{key}-{i}" for i in range(len(tasks))],
                                 retries=RETRIES, resources=resources, pure=False)
            index = {f.key: i for i, f in enumerate(futures)}
            for fut in as_completed(futures):
                results[index[fut.key]] = fut.result()
                self.progress.advance()
        self.progress.end()
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0
        return results

    def local(self, name: str):
        stages = self

        class _Timer:
            def __enter__(self):
                self.t0 = time.perf_counter()

            def __exit__(self, *exc):
                stages.seconds[name] = stages.seconds.get(name, 0.0) + time.perf_counter() - self.t0
        return _Timer()


@dataclass(frozen=True)
class Plan:
    """A checked job, ready to run: nothing has been written yet."""

    spec: JobSpec
    view: ImageView
    method: Method
    grid: BlockGrid
    target: label_io.LabelTarget
    min_size: int


def plan(spec: JobSpec, n_workers: int) -> Plan:
    """Open the image and check everything about the job before any cluster starts or any byte is written."""
    image = open_image(spec.image)
    view = image.view(spec.level, spec.channel, spec.timepoint)
    method = get_method(spec.method, **spec.params)
    method.check(view.ndim)
    if spec.halo is not None:
        per_axis(spec.halo, view.ndim, "--halo")
    if spec.block is not None:
        plan_grid(view.shape, view.chunks, (0,) * view.ndim, spec.block)  # checks the block shape
    target = label_io.plan_target(view, spec.name, spec.output, spec.overwrite)
    method = method.prepare(view)  # job-wide values (threshold, normalisation) once, never per block
    halo = method.halo(view.ndim) if spec.halo is None else \
        tuple(int(h) for h in per_axis(spec.halo, view.ndim, "--halo"))
    budget = max(1, min(DEFAULT_BLOCK_VOXELS, math.prod(view.shape) // (2 * max(n_workers, 1))))
    grid = plan_grid(view.shape, view.chunks, halo, spec.block, budget, method.alignment(view.ndim))
    if method.stitch_rule == "iou" and any(h == 0 and g > 1 for h, g in zip(grid.halo, grid.grid_shape)):
        raise ParameterError(f"method '{method.name}' needs a halo of at least 1 voxel to stitch blocks; "
                             "give --halo 1 or more")
    return Plan(spec, view, method, grid, target, method.object_min_size(view.ndim))


def run(plan: Plan, client, progress: Progress | None = None) -> SegmentResult:
    """Run a planned job on ``client``; the label image becomes visible only when everything is written."""
    progress = progress or Progress()
    stages = _Stages(progress)
    t_start = time.perf_counter()
    key = uuid.uuid4().hex[:8]
    spec, view, method, grid, target, min_size = (plan.spec, plan.view, plan.method, plan.grid, plan.target,
                                                  plan.min_size)
    image = view.image
    with stages.local("plan"):
        label_io.start(target, spec.overwrite)
        files = JobFiles(target.work_url)
        zarr.create_array(store=files.fragments, shape=view.shape, shards=grid.block_shape,
                          chunks=_inner_chunks(grid.block_shape), dtype=np.uint32, fill_value=0, zarr_format=3)
    progress.message(f"bigseg: {image.url} level {spec.level} {view.shape} in {len(grid)} blocks of "
                     f"{grid.block_shape} (halo {grid.halo}), method {method.name}")
    if getattr(client, "dashboard_link", None):
        progress.message(f"bigseg: Dask dashboard {client.dashboard_link}")

    blocks = list(grid)
    tasks = [SegmentTask(view, method, grid, b, files, min_size, method.stitch_rule == "iou") for b in blocks]
    summaries = stages.run(client, "segment", segment_block, tasks, key, resources=method.resources())
    by_id = {s.block_id: s for s in summaries}

    lookup = _stitch(plan, client, stages, files, summaries, key)
    dtype = label_io.label_dtype(lookup.n_objects)
    if dtype != np.uint32:
        log.warning("%d objects do not fit uint32: writing uint64 labels", lookup.n_objects)
        progress.message(f"bigseg: {lookup.n_objects} objects do not fit uint32; labels are uint64")

    levels = label_io.create_levels(target, view, dtype)
    relabel_tasks = [RelabelTask(b, files.fragments, target.url, target.level_path(0), target.zarr_format,
                                 lookup.boundary_ids.get(b.id, np.zeros(0, np.int64)),
                                 int(lookup.interior_base[b.id]), by_id[b.id].n_fragments, dtype.str)
                     for b in blocks if by_id[b.id].n_fragments]
    stages.run(client, "relabel", relabel_block, relabel_tasks, key)

    for i in range(1, len(levels)):  # level by level: each is sampled from the one above
        level_tasks = [DownsampleTask(target.url, target.level_path(i - 1), target.level_path(i),
                                      target.zarr_format, levels[i - 1].shape, levels[i].shape, r)
                       for r in regions(levels[i].shape, levels[i].chunks)]
        stages.run(client, "pyramid", downsample, level_tasks, f"{key}-l{i}", label=f"level {i}")

    channel_names = tuple(f"c{c}" for c in range(view.n_channels))
    table_args = (view.scale, view.translation, view.shape, channel_names)
    with stages.local("measure"):
        df = measure.table(lookup.boundary_partials, lookup.boundary_labels,
                           lookup.boundary_blocks_spanned, *table_args[:3], list(channel_names))
        table_io.write_part(df, table_io.part_url(files.table_parts, 0))
    measure_tasks = [measure.MeasureTask(files.interior_stats(b.id), table_io.part_url(files.table_parts, b.id + 1),
                                         int(lookup.interior_base[b.id]) + 1, *table_args)
                     for b in blocks if by_id[b.id].n_fragments > by_id[b.id].n_boundary]
    stages.run(client, "measure", measure.measure_block, measure_tasks, key)

    with stages.local("finalize"):
        write_overlay(view, target.url, [target.level_path(i) for i in range(len(levels))], target.zarr_format,
                      target.qc_url)
        store.remove(target.table_url)
        store.move(files.table_parts, target.table_url)
        if not spec.keep_work:
            store.remove(files.work_url)
        label_io.finalize(target, view, len(levels), {"method": method.name, "objects": lookup.n_objects,
                                                      "table": "measurements.parquet"})
    stages.seconds["total"] = time.perf_counter() - t_start
    return SegmentResult(
        labels=target.url, table=target.table_url, qc=target.qc_url, objects=lookup.n_objects, blocks=len(grid),
        blocks_empty=sum(1 for s in summaries if s.n_fragments == 0), dtype=dtype.name,
        threshold=getattr(method, "threshold", None), block_shape=grid.block_shape, halo=grid.halo,
        seconds=stages.seconds, voxels=math.prod(view.shape))


def _stitch(plan: Plan, client, stages: _Stages, files: JobFiles, summaries: list, key: str):
    """The stitch stage by the method's rule: edges from face tasks on the workers, resolved on the client."""
    grid, view, rule = plan.grid, plan.view, plan.method.stitch_rule
    if rule == "class":
        with stages.local("stitch"):
            return resolve_classes(summaries, len(grid), view.ndim, view.n_channels)
    by_id = {s.block_id: s for s in summaries}
    if rule == "touch":
        connectivity = plan.method.touch_connectivity(view.ndim)
        # a face is read if either side has boundary fragments: its one-voxel margin also catches
        # contacts across edges and corners with blocks beside the other side
        tasks = [TouchTask(grid, files, axis, low, connectivity) for axis, low in grid.face_pairs()
                 if by_id[grid.flat_id(low)].n_boundary or by_id[grid.flat_id(_next(low, axis))].n_boundary]
        edges = stages.run(client, "stitch", touch_edges, tasks, key)
    else:
        tasks = []
        for a, off in grid.neighbour_pairs():
            sa, sb = by_id[grid.flat_id(a)], by_id[grid.flat_id(tuple(i + o for i, o in zip(a, off)))]
            if (sa.n_boundary and sb.n_fragments) or (sb.n_boundary and sa.n_fragments):
                tasks.append(OverlapTask(grid, files, a, off, sa.n_boundary, sb.n_boundary,
                                         sa.n_fragments, sb.n_fragments, plan.spec.iou_threshold))
        edges = stages.run(client, "stitch", overlap_edges, tasks, key)
    with stages.local("stitch"):
        return resolve(summaries, len(grid), np.concatenate([no_edges(), *edges]), plan.min_size, view.ndim,
                       view.n_channels)


def _next(index: tuple[int, ...], axis: int) -> tuple[int, ...]:
    return tuple(i + (j == axis) for j, i in enumerate(index))


def _inner_chunks(block_shape: tuple[int, ...]) -> tuple[int, ...]:
    """Small chunks inside each block-sized shard, so stitching reads thin slabs, not whole blocks."""
    out = []
    for b in block_shape:
        divisors = [c for c in range(16, 65) if b % c == 0]
        out.append(max(divisors) if divisors else b)
    return tuple(out)
