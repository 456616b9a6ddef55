"""One job, stage by stage, on a Dask client:

open -> plan -> segment blocks -> stitch -> relabel -> pyramid -> measure -> finalize.

The client sends small task descriptions and receives per-block summaries (counts of boundary fragments)
and edges; voxels and statistics move only between workers and storage.
"""
from __future__ import annotations

import functools
import logging
import math
import time
import uuid
from dataclasses import dataclass, field, replace

import numpy as np
import zarr

from bigseg.blocks import BlockGrid, block_budget, finer_grids, group_voxels, makespan, plan_grid, region_voxels
from bigseg.foreground import ForegroundMask, foreground_blocks, foreground_map, read_voxels
from bigseg.errors import BigsegError, JobCancelled, ParameterError
from bigseg.io import labels as label_io
from bigseg.io import lock as lock_io
from bigseg.io import store
from bigseg.io import table as table_io
from bigseg.io.ome import ImageView, open_image
from bigseg.engine import events as ev
from bigseg.engine.cancel import Cancellation
from bigseg.engine.journal import Journal, check_resumable
from bigseg.engine.runner import StageRunner
from bigseg.measure import stage as measure_stage
from bigseg.measure.passes import TableAt, run_passes
from bigseg.measure.settings import MeasurePlan, measure_plan, measured_view
from bigseg.methods import Method
from bigseg.methods._sample import clear_sample_cache
from bigseg.spec import JobSpec
from bigseg.qc import write_overlay
from bigseg.pyramid import DownsampleTask, downsample, fused_levels, regions
from bigseg.relabel import BlockIds, RelabelTask, relabel_group
from bigseg.segment_blocks import BlockSummary, JobFiles, SegmentTask, segment_block
from bigseg.stitch import resolve, resolve_classes
from bigseg.stitch_rules import Output
from bigseg.timelapse import selected_timepoints, track

log = logging.getLogger(__name__)


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
    #: blocks never read: no foreground in the low-resolution mask (dilated by the halo)
    blocks_background: int = 0
    #: a time-lapse job: the timepoints segmented (None: one timepoint), and the tracks table (None: no tracking)
    timepoints: tuple[int, ...] | None = None
    tracks: str | None = None

    @property
    def voxels_per_second(self) -> float:
        return self.voxels / max(self.seconds.get("total", 0.0), 1e-9)

    def summary(self) -> dict:
        return {"labels": self.labels, "table": self.table, "qc": self.qc, "objects": self.objects,
                "blocks": self.blocks, "blocks_empty": self.blocks_empty,
                "blocks_background": self.blocks_background, "dtype": self.dtype,
                "threshold": self.threshold, "block": list(self.block_shape), "halo": list(self.halo),
                "seconds": {k: round(v, 3) for k, v in self.seconds.items()}, "voxels": self.voxels,
                "voxels_per_second": round(self.voxels_per_second, 1), "resumed": self.resumed,
                "blocks_skipped": self.blocks_skipped,
                "timepoints": None if self.timepoints is None else len(self.timepoints), "tracks": self.tracks}


@dataclass(frozen=True)
class Plan:
    """A checked job, ready to run: nothing has been written yet."""

    spec: JobSpec
    view: ImageView
    method: Method
    grid: BlockGrid
    #: where the labels go (None: a plan without output, from :func:`plan_segmentation`)
    target: label_io.LabelTarget | None
    min_size: int
    resume: bool = False
    #: where the foreground mask came from (None: no mask, every block is segmented)
    foreground: ForegroundMask | None = None
    #: what the table measures beyond the basic statistics
    measure: MeasurePlan = MeasurePlan()
    #: a time-lapse job's timepoints (None: one timepoint); its grid has the image's t axis as a batch axis
    frames: tuple[int, ...] | None = None

    @functools.cached_property
    def active(self) -> np.ndarray | None:
        """True for each block (by id) with foreground, segmented at full resolution; the others are background,
        never read (None: every block is active). In a time-lapse job, the blocks of the selected timepoints."""
        if self.frames is not None:
            selected = np.zeros(self.grid.shape[0], bool)
            selected[list(self.frames)] = True
            return np.repeat(selected, len(self.grid) // self.grid.shape[0])
        return None if self.foreground is None else self.foreground.active

    def active_blocks(self) -> list:
        """The blocks the segment stage reads and segments, in block order."""
        return [b for b in self.grid if self.active is None or self.active[b.id]]

    def kept_region(self, block) -> tuple[slice, ...] | None:
        """The part of an active block's extended region that is labelled (None: all of it)."""
        return None if self.foreground is None else self.foreground.kept_region(block)

    def read_region(self, block) -> tuple[slice, ...]:
        """What the segment task of an active ``block`` reads: its kept box with the halo, or its extended
        region."""
        read = (None if self.foreground is None else
                self.foreground.read_region(block, self.halo, self.view.shape, self.grid.align))
        return block.extended if read is None else read

    def segment_task(self, block, files: JobFiles) -> SegmentTask:
        """The segment stage's task for ``block`` (the job's, the preview's and the dry run's alike)."""
        kept = self.kept_region(block)
        read = None if kept is None else self.read_region(block)
        return SegmentTask(self.view, self.method, self.grid, block, files, self.min_size,
                           self.spec.options.skip_bad_blocks, kept, read, self.measure.extras,
                           self.measure.parent_array)

    @property
    def blocks_background(self) -> int:
        """Blocks skipped as background (no foreground in the low-resolution mask, dilated by the halo)."""
        return 0 if self.foreground is None else self.foreground.background

    @property
    def halo(self) -> tuple[int, ...]:
        """The context the job reads around a block, per axis (the grid has 0 on axes with one block)."""
        return _given_halo(self.spec, self.view) or self.method.halo(self.view.voxel_size)

    def identity(self) -> dict:
        """What must be the same for a job to resume another: the spec (less its run options) and what was
        derived from it (block plan, minimum size, job-wide values such as the threshold)."""
        identity = {"format": IDENTITY_FORMAT, "spec": self.spec.identity(), "block": list(self.grid.block_shape),
                    "halo": list(self.grid.halo), "min_size": self.min_size, "job_values": self.method.job_values(),
                    "foreground": None if self.foreground is None else self.foreground.identity(),
                    "measure": self.measure.describe()}
        if self.frames is not None:  # "all" or a range resolved against the image's t axis
            identity["timepoints"] = {"selected": list(self.frames), "of": self.grid.shape[0]}
        return identity


#: Version of :meth:`Plan.identity`'s layout (a work folder from another layout is not resumed).
IDENTITY_FORMAT = 4


def plan(spec: JobSpec, n_workers: int) -> Plan:
    """Open the image and check everything about the job before any cluster starts or any byte is written."""
    view, halo = _checked(spec)
    target = label_io.plan_target(view, spec.label_name, spec.output.url, spec.output.overwrite)
    lock_io.check_free(target.url)
    recorded = None
    if not spec.output.overwrite and label_io.state(target.url) == "incomplete":
        recorded = Journal(target.work_url).recorded_identity()  # an unfinished job: resume it
    block = spec.blocks.shape or (tuple(recorded["block"][-view.ndim:]) if recorded and "block" in recorded else None)
    job = replace(_segmentation(spec, view, halo, n_workers, block), target=target, resume=recorded is not None)
    if recorded is not None:
        check_resumable(recorded, job.identity(), target.url)
    return job


def plan_segmentation(spec: JobSpec, n_workers: int) -> Plan:
    """The part of :func:`plan` that needs no output: the image opened, the method checked and prepared (the
    job-wide values from the job sample), halo and block grid. Its ``target`` is None: for previews, which
    write nothing and work on read-only images. ``n_workers`` sizes the default blocks, as in :func:`plan`."""
    view, halo = _checked(spec)
    return _segmentation(spec, view, halo, n_workers, spec.blocks.shape)


def _checked(spec: JobSpec) -> tuple[ImageView, tuple[int, ...] | None]:
    """The view the job segments, with the method, halo and block shape checked against it (no pixel read)."""
    view = open_view(spec)
    spec.method.check(view.voxel_size)
    halo = _given_halo(spec, view)
    if spec.blocks.shape is not None:
        plan_grid(view.shape, view.chunks, (0,) * view.ndim, spec.blocks.shape)  # checks the block shape
    return view, halo


def open_view(spec: JobSpec) -> ImageView:
    """The level, channel and timepoint of the image that the job segments (a time-lapse job's first), and the
    channels it measures (metadata only)."""
    image = open_image(spec.input.url)
    frames = selected_timepoints(spec, image)
    view = image.view(spec.input.level, spec.input.channel, frames[0] if frames else spec.input.timepoint,
                      spec.input.stain)
    return measured_view(spec.measure, view)


def _given_halo(spec: JobSpec, view: ImageView) -> tuple[int, ...] | None:
    """``blocks.halo`` in voxels per axis (None: the method's own)."""
    if spec.blocks.halo is None:
        return None
    return tuple(int(math.ceil(h)) for h in Method.voxels(spec.blocks.halo, view.voxel_size, "blocks.halo"))


def _segmentation(spec: JobSpec, view: ImageView, halo: tuple[int, ...] | None, n_workers: int,
                  block: tuple[int, ...] | None) -> Plan:
    """Job-wide values (once per job, from the job sample: of a time-lapse, its first timepoint's) and the block
    grid (of a time-lapse: the grid of one timepoint repeated along the t axis); no output yet."""
    voxel_size = view.voxel_size
    frames = selected_timepoints(spec, view.image)
    clear_sample_cache()  # the sample is read once per job, never reused from an earlier one
    check_values(view, spec.options.skip_bad_blocks)
    method = spec.method.prepare(view)  # job-wide values (threshold, normalisation) once, never per block
    halo = halo or method.halo(voxel_size)
    budget, memory = block_budget((len(frames or ()) or 1, *view.shape), n_workers, method.bytes_per_voxel)
    fmap = None if frames else foreground_map(spec.foreground, view, halo,
                                              dark=bool(getattr(method, "dark_objects", False)))
    if block is None and fmap is not None:  # default blocks, fine enough for the background to be skipped
        candidates = [(g, foreground_blocks(fmap, g)) for g in finer_grids(view.shape, view.chunks, halo, budget,
                                                                           method.alignment(view.ndim), memory)]
        grid, mask = min(candidates, key=lambda c: makespan(read_voxels(*c, halo, view.shape), n_workers))
    else:
        grid = plan_grid(view.shape, view.chunks, halo, block, budget, method.alignment(view.ndim), memory)
        mask = foreground_blocks(fmap, grid)
    if mask is not None:
        log.info("foreground mask from %s (threshold %s): %d of %d blocks background", mask.source, mask.threshold,
                 mask.background, len(grid))
    if method.stitch_rule(view.ndim).needs_halo and any(h == 0 and g > 1 for h, g in zip(grid.halo,
                                                                                          grid.grid_shape)):
        raise ParameterError(f"method '{method.name}' needs a halo of at least 1 voxel to stitch blocks; "
                             "set blocks.halo to 1 or more")
    if frames is not None:
        grid = grid.over(view.image.size("t"))
    return Plan(spec, view, method, grid, None, method.object_min_size(voxel_size), foreground=mask,
                measure=measure_plan(spec.measure, view), frames=frames)


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


def run(plan: Plan, client, observer: ev.Observer | None = None,
        cancellation: Cancellation | None = None) -> SegmentResult:
    """Run a planned job on ``client``, resuming it if its output holds the same job unfinished; the label
    image becomes visible only when everything is written.

    ``observer`` receives the job's events (:mod:`bigseg.engine.events`), ending with one of JobFinished,
    JobFailed or JobCancelled; ``cancellation.cancel()`` from another thread stops the job at once
    (:class:`~bigseg.errors.JobCancelled`), leaving an incomplete output that a rerun resumes."""
    observer = ev.as_observer(observer)
    cancellation = cancellation or Cancellation()
    try:
        cancellation.raise_if_cancelled()
        with lock_io.JobLock(plan.target.url):
            runner = StageRunner(client, Journal(plan.target.work_url), uuid.uuid4().hex[:8], observer,
                                 cancellation)
            result = _run(plan, runner)
    except JobCancelled:
        log.info("%s: job cancelled", plan.target.url)
        observer.on_event(ev.JobCancelled())
        raise
    except BaseException as err:
        observer.on_event(ev.JobFailed(str(err) if isinstance(err, BigsegError) else
                                       f"{type(err).__name__}: {err}"))
        raise
    observer.on_event(ev.JobFinished(result.summary()))
    return result


def _say(stages: StageRunner, event: ev.Message | ev.Warning) -> None:
    """A line for the user: an event for the observer, and a log record for diagnostics."""
    log.log(logging.WARNING if isinstance(event, ev.Warning) else logging.INFO, "%s", event.text,
            extra={"bigseg_event": True})
    stages.observer.on_event(event)


def _run(plan: Plan, stages: StageRunner) -> SegmentResult:
    t_start = time.perf_counter()
    spec, view, method, grid, target = plan.spec, plan.view, plan.method, plan.grid, plan.target
    files, journal = JobFiles(target.work_url), stages.journal
    with stages.local("plan"):
        if not plan.resume:
            label_io.start(target)
            zarr.create_array(store=files.fragments, shape=grid.shape, shards=grid.block_shape,
                              chunks=inner_chunks(grid.block_shape), dtype=np.uint32, fill_value=0, zarr_format=3)
            journal.start(plan.identity())  # from here on, the job can be resumed
    started = ev.JobStarted(view.image.url, spec.input.level, tuple(grid.shape), len(grid), tuple(grid.block_shape),
                            tuple(grid.halo), method.name, plan.resume, getattr(stages.client, "dashboard_link", None))
    log.info("job started: %s", started.to_dict())
    stages.observer.on_event(started)

    blocks = list(grid)
    if plan.blocks_background:
        _say(stages, ev.Message(f"{plan.blocks_background} of {len(grid)} blocks are background (no foreground in "
                                f"the mask from {plan.foreground.source}, dilated by the halo): not read"))
    tasks = [plan.segment_task(b, files) for b in plan.active_blocks()]
    reads = [region_voxels(t.read_region) for t in tasks]
    segmented = stages.run("segment", segment_block, tasks, resources=method.resources(),
                           order=sorted(range(len(tasks)), key=lambda i: -reads[i]))  # largest first
    summaries = _every_block(grid, segmented)
    skipped = [s.error for s in summaries if s.error]
    if skipped:
        _say(stages, ev.Warning(f"skipped {len(skipped)} unreadable block(s), left unlabelled: "
                                + "; ".join(skipped)))
    by_id = {s.block_id: s for s in summaries}
    background = plan.blocks_background

    lookup = _stitch(plan, stages, files, summaries)
    dtype = label_io.label_dtype(lookup.n_objects)
    if dtype != np.uint32:
        _say(stages, ev.Warning(f"{lookup.n_objects} objects do not fit uint32; labels are uint64 "
                                "(some viewers cannot show 64-bit labels)"))

    has_t = plan.frames is not None  # a time-lapse: the label image has the t axis
    levels = label_io.create_levels(target, view, dtype, has_t)
    _relabel_and_pyramid(plan, stages, files, lookup, by_id, levels, dtype)

    # a resumed job whose table was already moved into place has nothing left to measure
    published = store.exists(target.table_url) and not store.exists(files.table_parts)
    channel_names = view.channel_names
    table_args = measure_stage.TableArgs(view.scale, view.translation, view.shape, channel_names,
                                         plan.measure.extras, plan.measure.parent, grid.batch)
    if not published:
        with stages.local("measure"):
            merges = measure_stage.merge_steps(lookup, files, table_args)  # objects across blocks: on workers
        interior = [measure_stage.MeasureTask(files.interior_stats(b.id),
                                              table_io.part_url(files.table_parts, b.id + 1),
                                              int(lookup.interior_base[b.id]) + 1, table_args)
                    for b in blocks if by_id[b.id].n_fragments > by_id[b.id].n_boundary]
        for i, tasks in enumerate([merges[0] + interior, *merges[1:]]):  # later steps: merges of many blocks
            stages.run("measure", measure_stage.measure_task, tasks, step="measure" + (f"-{i}" if i else ""),
                       results=False)
        _table_passes(plan, stages, files)
        if spec.track.enabled:
            track(plan, stages, (target.url, target.level_path(0), target.zarr_format), files.table_parts,
                  store.join(files.work_url, "tracks"), files.tracks)

    stages.cancellation.raise_if_cancelled()  # the last point to stop: finalizing makes the output valid
    with stages.local("finalize"):
        write_overlay(view, target.url, [target.level_path(i) for i in range(len(levels))], target.zarr_format,
                      target.qc_url, has_t)
        if store.exists(files.tracks):  # before the table: a resumed job whose table was published is done
            store.publish(files.tracks, target.tracks_url)
        if not published:
            store.publish(files.table_parts, target.table_url)
        label_io.finalize(target, view, len(levels), {"method": method.name, "objects": lookup.n_objects,
                                                      "table": "measurements.parquet",
                                                      "blocks_skipped": skipped, "blocks_background": background,
                                                      "foreground": plan.foreground and plan.foreground.describe(),
                                                      "measure": plan.measure.describe(),
                                                      **_timelapse_metadata(plan)}, has_t)
        if not spec.options.keep_work:
            store.remove(files.work_url)
    stages.seconds["total"] = time.perf_counter() - t_start
    return SegmentResult(
        labels=target.url, table=target.table_url, qc=target.qc_url, objects=lookup.n_objects,
        blocks=len(grid) if plan.frames is None else len(segmented),
        blocks_empty=sum(1 for s in segmented if s.n_fragments == 0), dtype=dtype.name,
        threshold=method.job_values().get("threshold"), block_shape=grid.block_shape, halo=grid.halo,
        seconds=stages.seconds, voxels=math.prod(view.shape) * len(plan.frames or (0,)), resumed=stages.resumed,
        blocks_skipped=skipped, blocks_background=background, timepoints=plan.frames,
        tracks=target.tracks_url if spec.track.enabled else None)


def _table_passes(plan: Plan, stages: StageRunner, files: JobFiles) -> None:
    """The passes over the finished table parts that the measure settings ask for (neighbourhoods, the parent's
    children), step by step on the workers."""
    view, target = plan.view, plan.target
    at = TableAt(files.table_parts, files.work_url, target.url, target.level_path(0), target.zarr_format,
                 view.image.url, target.name, tuple(view.shape), tuple(view.scale), plan.grid.batch)
    for warning in run_passes(stages, plan.measure, at):
        _say(stages, ev.Warning(warning))


def _timelapse_metadata(plan: Plan) -> dict:
    """A time-lapse job's part of the label metadata: its timepoints (the others are left 0) and its tracks
    table."""
    if plan.frames is None:
        return {}
    return {"timepoints": list(plan.frames), "tracks": "tracks.parquet" if plan.spec.track.enabled else None}


def _every_block(grid: BlockGrid, segmented: list[BlockSummary]) -> list[BlockSummary]:
    """Summaries of every block in block order: background blocks (not segmented) have no fragments."""
    by_id = {s.block_id: s for s in segmented}
    return [by_id.get(i) or BlockSummary.empty(i) for i in range(len(grid))]


def _stitch(plan: Plan, stages: StageRunner, files: JobFiles, summaries: list):
    """The stitch stage: edges from the method's rule, found by face tasks on the workers, resolved on the
    client (a class map has nothing to join: its statistics merge by class)."""
    grid, view, method = plan.grid, plan.view, plan.method
    if method.output() is Output.CLASSES:
        with stages.local("stitch"):
            return resolve_classes(summaries, len(grid))
    fn, tasks = method.stitch_rule(view.ndim).edge_tasks(grid, files, summaries, plan.spec.stitch.iou_threshold)
    edges = stages.run("stitch", fn, tasks)
    with stages.local("stitch"):
        return resolve(summaries, len(grid), edges, plan.min_size)


def _relabel_and_pyramid(plan: Plan, stages: StageRunner, files: JobFiles, lookup, by_id: dict, levels: list,
                         dtype: np.dtype) -> None:
    """The relabel stage (final ids into level 0, one task per group of blocks; each also writes the lower levels
    sampled from inside its group alone), then the pyramid stage for the other levels, level by level."""
    target, grid = plan.target, plan.grid
    paths, shapes = tuple(target.level_path(i) for i in range(len(levels))), tuple(lv.shape for lv in levels)
    voxels = group_voxels()
    group_shape = tuple(k * b for k, b in zip(grid.group_counts(voxels), grid.block_shape))
    fused = tuple(fused_levels(list(shapes), [lv.chunks for lv in levels], group_shape))
    tasks = []
    for group in grid.groups(voxels):
        ids = tuple(BlockIds(b, lookup.boundary_ids.get(b.id, np.zeros(0, np.int64)), int(lookup.interior_base[b.id]),
                             by_id[b.id].n_fragments) for b in group.blocks() if by_id[b.id].n_fragments)
        if ids:
            tasks.append(RelabelTask(group, ids, files.fragments, target.url, target.zarr_format, dtype.str, paths,
                                     shapes, fused))
    stages.run("relabel", relabel_group, tasks, results=False)
    selected = None if plan.frames is None else set(plan.frames)  # a time-lapse's timepoints: the others stay 0
    for i in range(1, len(levels)):  # level by level: each is sampled from the one above
        if i in fused:
            continue
        level_tasks = [DownsampleTask(target.url, paths[i - 1], paths[i], target.zarr_format, shapes[i - 1],
                                      shapes[i], r) for r in regions(levels[i].shape, levels[i].chunks)
                       if selected is None or not selected.isdisjoint(range(r[0].start, r[0].stop))]
        stages.run("pyramid", downsample, level_tasks, step=f"pyramid-{i}", results=False)
    stages.seconds.setdefault("pyramid", 0.0)  # every level may have been written by the relabel tasks


def inner_chunks(block_shape: tuple[int, ...]) -> tuple[int, ...]:
    """Chunks of at most 128 voxels per axis inside each block-sized shard: a stitch task's one-voxel shell into
    the next blocks decodes a few of them, not whole blocks (smaller ones cost more per voxel to read and write)."""
    out = []
    for b in block_shape:
        divisors = [c for c in range(16, 129) if b % c == 0]
        out.append(max(divisors) if divisors else b)
    return tuple(out)
