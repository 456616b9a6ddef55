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
from bigseg.blocks import DEFAULT_BLOCK_VOXELS, BlockGrid, plan_grid, region_text
from bigseg.errors import BigsegError, BlockError, ParameterError
from bigseg.io import labels as label_io
from bigseg.io import lock as lock_io
from bigseg.io import store
from bigseg.io import table as table_io
from bigseg.io.ome import ImageView, open_image
from bigseg.journal import Journal, check_resumable, run_and_record
from bigseg.methods import Method
from bigseg.methods._sample import clear_sample_cache
from bigseg.progress import Progress
from bigseg.spec import JobSpec
from bigseg.qc import write_overlay
from bigseg.pyramid import DownsampleTask, downsample, regions
from bigseg.relabel import RelabelTask, relabel_block
from bigseg.segment_blocks import JobFiles, SegmentTask, segment_block
from bigseg.stitch import no_edges, resolve, resolve_classes
from bigseg.stitch_rules import Output

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
    resumed: dict = field(default_factory=dict)
    blocks_skipped: list = field(default_factory=list)

    @property
    def voxels_per_second(self) -> float:
        return self.voxels / max(self.seconds.get("total", 0.0), 1e-9)

    def summary(self) -> dict:
        return {"labels": self.labels, "table": self.table, "qc": self.qc, "objects": self.objects,
                "blocks": self.blocks, "blocks_empty": self.blocks_empty, "dtype": self.dtype,
                "threshold": self.threshold, "block": list(self.block_shape), "halo": list(self.halo),
                "seconds": {k: round(v, 3) for k, v in self.seconds.items()}, "voxels": self.voxels,
                "voxels_per_second": round(self.voxels_per_second, 1), "resumed": self.resumed,
                "blocks_skipped": self.blocks_skipped}


class _Stages:
    """Runs each stage's tasks (skipping those the journal records as finished), times stages and drives
    the progress observer."""

    def __init__(self, progress: Progress, journal: Journal, key: str):
        self.progress, self.journal, self.key = progress, journal, key
        self.seconds: dict[str, float] = {}
        self.resumed: dict[str, int] = {}

    def run(self, client, name: str, fn, tasks: list, step: str | None = None, resources=None,
            label: str | None = None) -> list:
        """Results of ``fn`` over ``tasks``, in order. Every task runs to the end before a failure is raised,
        so that a resumed job redoes only the tasks that failed."""
        t0 = time.perf_counter()
        step = step or name
        self.progress.stage(label or name, len(tasks))
        done = self.journal.finished(step) if tasks else {}
        results = [done.get(i) for i in range(len(tasks))]
        if done:
            self.resumed[step] = len(done)
            self.progress.advance(len(done))
        todo = [i for i in range(len(tasks)) if i not in done]
        failures = []
        if todo:
            from distributed import as_completed
            futures = client.map(run_and_record, [fn] * len(todo), [tasks[i] for i in todo],
                                 [self.journal.record_url(step, i) for i in todo],
                                 key=[f"bigseg-{step}-{self.key}-{i}" for i in todo],
                                 retries=RETRIES, resources=resources, pure=False)
            index = dict(zip((f.key for f in futures), todo))
            for fut in as_completed(futures):
                try:
                    results[index[fut.key]] = fut.result()
                except Exception as err:  # noqa: BLE001 - reported together below
                    failures.append((index[fut.key], err))
                self.progress.advance()
        self.progress.end()
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0
        if failures:
            raise _stage_error(name, tasks, sorted(failures, key=lambda f: f[0]))
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
    resume: bool = False

    def identity(self) -> dict:
        """What must be the same for a job to resume another: the spec (less its run options) and what was
        derived from it (block plan, minimum size, job-wide values such as the threshold)."""
        return {"format": IDENTITY_FORMAT, "spec": self.spec.identity(), "block": list(self.grid.block_shape),
                "halo": list(self.grid.halo), "min_size": self.min_size, "job_values": self.method.job_values()}


#: Version of :meth:`Plan.identity`'s layout (a work folder from another layout is not resumed).
IDENTITY_FORMAT = 2


def plan(spec: JobSpec, n_workers: int) -> Plan:
    """Open the image and check everything about the job before any cluster starts or any byte is written."""
    image = open_image(spec.input.url)
    view = image.view(spec.input.level, spec.input.channel, spec.input.timepoint)
    voxel_size = view.voxel_size
    method = spec.method
    method.check(voxel_size)
    halo = None
    if spec.blocks.halo is not None:
        halo = tuple(int(math.ceil(h)) for h in Method.voxels(spec.blocks.halo, voxel_size, "blocks.halo"))
    if spec.blocks.shape is not None:
        plan_grid(view.shape, view.chunks, (0,) * view.ndim, spec.blocks.shape)  # checks the block shape
    target = label_io.plan_target(view, spec.label_name, spec.output.url, spec.output.overwrite)
    lock_io.check_free(target.url)
    recorded = None
    if not spec.output.overwrite and label_io.state(target.url) == "incomplete":
        recorded = Journal(target.work_url).recorded_identity()  # an unfinished job: resume it
    clear_sample_cache()  # the sample is read once per job, never reused from an earlier one
    check_values(view, spec.options.skip_bad_blocks)
    method = method.prepare(view)  # job-wide values (threshold, normalisation) once, never per block
    halo = halo or method.halo(voxel_size)
    budget = max(1, min(DEFAULT_BLOCK_VOXELS, math.prod(view.shape) // (2 * max(n_workers, 1))))
    block = spec.blocks.shape or (tuple(recorded["block"]) if recorded and "block" in recorded else None)
    grid = plan_grid(view.shape, view.chunks, halo, block, budget, method.alignment(view.ndim))
    if method.stitch_rule(view.ndim).needs_halo and any(h == 0 and g > 1 for h, g in zip(grid.halo,
                                                                                          grid.grid_shape)):
        raise ParameterError(f"method '{method.name}' needs a halo of at least 1 voxel to stitch blocks; "
                             "set blocks.halo to 1 or more")
    job = Plan(spec, view, method, grid, target, method.object_min_size(voxel_size), recorded is not None)
    if recorded is not None:
        check_resumable(recorded, job.identity(), target.url)
    return job


def check_values(view: ImageView, skip_unreadable: bool = False) -> None:
    """Refuse unreadable, NaN / inf and constant images (from the job's sample) before anything is written."""
    from bigseg.errors import InputError
    from bigseg.methods._sample import job_sample, sample_failures
    failures, sample = sample_failures(view), job_sample(view)
    if failures and (not skip_unreadable or sample.size == 0):
        more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
        raise InputError(f"{view.image.url}: cannot read {failures[0]}{more}; the image is corrupt or its metadata "
                         "is wrong: repair it, or pass --skip-bad-blocks to leave unreadable blocks unlabelled")
    if not np.isfinite(sample).all():
        raise InputError(f"{view.image.url} contains NaN or infinite values; replace them (e.g. with 0) before "
                         "segmenting")
    lo, hi = float(sample.min()), float(sample.max())
    if lo == hi and hi != 0:
        raise InputError(f"{view.image.url} is constant ({hi:g} everywhere): there is nothing to segment; check "
                         "--channel / --level")


def run(plan: Plan, client, progress: Progress | None = None) -> SegmentResult:
    """Run a planned job on ``client``, resuming it if its output holds the same job unfinished; the label
    image becomes visible only when everything is written."""
    with lock_io.JobLock(plan.target.url):
        return _run(plan, client, progress or Progress())


def _run(plan: Plan, client, progress: Progress) -> SegmentResult:
    t_start = time.perf_counter()
    spec, view, method, grid, target = plan.spec, plan.view, plan.method, plan.grid, plan.target
    files, journal = JobFiles(target.work_url), Journal(target.work_url)
    stages = _Stages(progress, journal, uuid.uuid4().hex[:8])
    with stages.local("plan"):
        if not plan.resume:
            label_io.start(target)
            zarr.create_array(store=files.fragments, shape=view.shape, shards=grid.block_shape,
                              chunks=_inner_chunks(grid.block_shape), dtype=np.uint32, fill_value=0, zarr_format=3)
            journal.start(plan.identity())  # from here on, the job can be resumed
    progress.message(f"bigseg: {view.image.url} level {spec.input.level} {view.shape} in {len(grid)} blocks of "
                     f"{grid.block_shape} (halo {grid.halo}), method {method.name}"
                     + (" (resuming an unfinished job)" if plan.resume else ""))
    if getattr(client, "dashboard_link", None):
        progress.message(f"bigseg: Dask dashboard {client.dashboard_link}")

    blocks = list(grid)
    tasks = [SegmentTask(view, method, grid, b, files, plan.min_size, spec.options.skip_bad_blocks) for b in blocks]
    summaries = stages.run(client, "segment", segment_block, tasks, resources=method.resources())
    skipped = [s.error for s in summaries if s.error]
    if skipped:
        progress.message(f"bigseg: skipped {len(skipped)} unreadable block(s), left unlabelled: "
                         + "; ".join(skipped))
    by_id = {s.block_id: s for s in summaries}

    lookup = _stitch(plan, client, stages, files, summaries)
    dtype = label_io.label_dtype(lookup.n_objects)
    if dtype != np.uint32:
        log.warning("%d objects do not fit uint32: writing uint64 labels", lookup.n_objects)
        progress.message(f"bigseg: {lookup.n_objects} objects do not fit uint32; labels are uint64 "
                         "(some viewers cannot show 64-bit labels)")

    levels = label_io.create_levels(target, view, dtype)
    relabel_tasks = [RelabelTask(b, files.fragments, target.url, target.level_path(0), target.zarr_format,
                                 lookup.boundary_ids.get(b.id, np.zeros(0, np.int64)),
                                 int(lookup.interior_base[b.id]), by_id[b.id].n_fragments, dtype.str)
                     for b in blocks if by_id[b.id].n_fragments]
    stages.run(client, "relabel", relabel_block, relabel_tasks)

    for i in range(1, len(levels)):  # level by level: each is sampled from the one above
        level_tasks = [DownsampleTask(target.url, target.level_path(i - 1), target.level_path(i),
                                      target.zarr_format, levels[i - 1].shape, levels[i].shape, r)
                       for r in regions(levels[i].shape, levels[i].chunks)]
        stages.run(client, "pyramid", downsample, level_tasks, step=f"pyramid-{i}", label=f"level {i}")

    # a resumed job whose table was already moved into place has nothing left to measure
    published = store.exists(target.table_url) and not store.exists(files.table_parts)
    channel_names = tuple(f"c{c}" for c in range(view.n_channels))
    table_args = (view.scale, view.translation, view.shape, channel_names)
    if not published:
        with stages.local("measure"):
            df = measure.table(lookup.boundary_partials, lookup.boundary_labels,
                               lookup.boundary_blocks_spanned, *table_args[:3], list(channel_names))
            table_io.write_part(df, table_io.part_url(files.table_parts, 0))
        measure_tasks = [measure.MeasureTask(files.interior_stats(b.id),
                                             table_io.part_url(files.table_parts, b.id + 1),
                                             int(lookup.interior_base[b.id]) + 1, *table_args)
                         for b in blocks if by_id[b.id].n_fragments > by_id[b.id].n_boundary]
        stages.run(client, "measure", measure.measure_block, measure_tasks)

    with stages.local("finalize"):
        write_overlay(view, target.url, [target.level_path(i) for i in range(len(levels))], target.zarr_format,
                      target.qc_url)
        if not published:
            store.publish(files.table_parts, target.table_url)
        label_io.finalize(target, view, len(levels), {"method": method.name, "objects": lookup.n_objects,
                                                      "table": "measurements.parquet",
                                                      "blocks_skipped": skipped})
        if not spec.options.keep_work:
            store.remove(files.work_url)
    stages.seconds["total"] = time.perf_counter() - t_start
    return SegmentResult(
        labels=target.url, table=target.table_url, qc=target.qc_url, objects=lookup.n_objects, blocks=len(grid),
        blocks_empty=sum(1 for s in summaries if s.n_fragments == 0), dtype=dtype.name,
        threshold=getattr(method, "threshold", None), block_shape=grid.block_shape, halo=grid.halo,
        seconds=stages.seconds, voxels=math.prod(view.shape), resumed=stages.resumed, blocks_skipped=skipped)


def _stage_error(name: str, tasks: list, failures: list) -> Exception:
    """One error for a stage's failed tasks: the first, named, with how many failed and what was kept."""
    from distributed import KilledWorker
    i, err = failures[0]
    what = f"block {tasks[i].block.id} {region_text(tasks[i].block.core)}" if hasattr(tasks[i], "block") else \
        f"{name} task {i}"
    if isinstance(err, KilledWorker):
        err = BlockError(f"{what}: the workers running it died repeatedly (out of memory?); use a smaller "
                         "--block or workers with more memory")
    elif not isinstance(err, BigsegError):
        return err  # a bug: keep its traceback
    more = f" ({len(failures)} of {len(tasks)} {name} tasks failed)" if len(failures) > 1 else ""
    return BlockError(f"{err}{more}; the {len(tasks) - len(failures)} finished tasks are kept: fix the cause and "
                      "run the same command again to resume")


def _stitch(plan: Plan, client, stages: _Stages, files: JobFiles, summaries: list):
    """The stitch stage: edges from the method's rule, found by face tasks on the workers, resolved on the
    client (a class map has nothing to join: its statistics merge by class)."""
    grid, view, method = plan.grid, plan.view, plan.method
    if method.output() is Output.CLASSES:
        with stages.local("stitch"):
            return resolve_classes(summaries, len(grid), view.ndim, view.n_channels)
    fn, tasks = method.stitch_rule(view.ndim).edge_tasks(grid, files, summaries, plan.spec.stitch.iou_threshold)
    edges = stages.run(client, "stitch", fn, tasks)
    with stages.local("stitch"):
        return resolve(summaries, len(grid), np.concatenate([no_edges(), *edges]), plan.min_size, view.ndim,
                       view.n_channels)


def _inner_chunks(block_shape: tuple[int, ...]) -> tuple[int, ...]:
    """Small chunks inside each block-sized shard, so stitching reads thin slabs, not whole blocks."""
    out = []
    for b in block_shape:
        divisors = [c for c in range(16, 65) if b % c == 0]
        out.append(max(divisors) if divisors else b)
    return tuple(out)
