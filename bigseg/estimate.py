"""Dry runs: a planned job, one representative block run on a worker of the job's own cluster
(:mod:`bigseg.probe`), and from it what the whole job will cost: peak memory per worker and seconds per
stage. Nothing is written.

The seconds are modelled stage by stage from what the block showed: each block's segment task costs the
block's seconds scaled by its voxels read; relabel, pyramid and measure tasks cost what the block's did,
scaled by voxels; a stitch task reads its faces at the block's relabel rate; every task adds the cluster's
measured per-task overhead; the client's own parts (resolving the stitch graph, the boundary objects' table,
the QC picture) are run on copies of the block's summary. A stage's tasks share the workers that may run
them, but no stage ends before its longest task.
"""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

import numpy as np

from bigseg.blocks import Block, region_text, region_voxels
from bigseg.errors import InputError
from bigseg.pipeline import Plan
from bigseg.probe import BlockProbe, probe_block, start_up
from bigseg.pyramid import regions
from bigseg.stitch import no_edges, resolve
from bigseg.segment_blocks import BlockSummary, JobFiles
from bigseg.stitch_rules import Output

#: Blocks tried, nearest the centre first, until one has objects.
TRIES = 4
#: Copies of the block's summary on which the client's parts are timed (then scaled to the job's blocks).
CLIENT_COPIES = 64


@dataclass(frozen=True)
class Estimate:
    """What a job will cost, from one block run on a worker of its cluster."""

    image: str
    shape: tuple[int, ...]
    blocks: int
    blocks_background: int
    block_shape: tuple[int, ...]
    halo: tuple[int, ...]
    #: the block that was run: id, core region, how many blocks were tried, its fragments and seconds
    block: dict
    #: voxels read (blocks with their halo) / voxels owned, over the active blocks
    halo_overhead: float
    workers: int
    #: bytes per worker: ``peak`` = ``baseline`` (the worker before the block) + ``block`` (the block's rise)
    memory: dict
    #: estimated seconds per stage of the job's run, and their ``total``
    seconds: dict = field(default_factory=dict)

    def summary(self) -> dict:
        return {"image": self.image, "shape": list(self.shape), "blocks": self.blocks,
                "blocks_background": self.blocks_background, "block_shape": list(self.block_shape),
                "halo": list(self.halo), "block": self.block, "halo_overhead": round(self.halo_overhead, 3),
                "workers": self.workers, "memory": self.memory,
                "seconds": {k: round(v, 2) for k, v in self.seconds.items()}}


def estimate(plan: Plan, client) -> Estimate:
    """Run one representative block of ``plan`` on ``client``'s cluster and estimate the whole job."""
    grid, view, method = plan.grid, plan.view, plan.method
    active = plan.active_blocks()
    if not active:
        raise InputError(f"{view.image.url}: every block is background (nothing above the foreground level at low "
                         "resolution): there is nothing to segment; check input.channel and input.level")
    centre = [s / 2 for s in view.shape]
    order = sorted(active, key=lambda b: (sum(((s.start + s.stop) / 2 - c) ** 2
                                              for s, c in zip(b.core, centre)), b.id))
    tasks = [plan.segment_task(b, JobFiles("")) for b in order[:TRIES]]
    t0 = time.perf_counter()
    client.run(start_up, tasks[0])  # every worker, at once: what a fresh worker pays before its first block
    start = time.perf_counter() - t0
    for tried, task in enumerate(tasks, start=1):
        block = task.block
        probe = client.submit(probe_block, task, resources=method.resources(), pure=False,
                              key=f"bigseg-dry-run-{uuid.uuid4().hex[:8]}").result()
        if probe.summary.n_fragments:
            break
    from bigseg.cluster import n_workers
    workers = n_workers(client)
    seconds = _seconds(plan, active, block, probe, _task_overhead(client, workers), workers,
                       _workers_for(client, method.resources()) or workers)
    seconds["segment"] += start
    seconds["total"] += start
    read = sum(region_voxels(b.extended) for b in active)
    owned = sum(region_voxels(b.core) for b in active)
    return Estimate(
        view.image.url, tuple(view.shape), len(grid), plan.blocks_background, grid.block_shape, grid.halo,
        {"id": block.id, "core": region_text(block.core), "tried": tried,
         "fragments": probe.summary.n_fragments, "boundary_fragments": probe.summary.n_boundary,
         "seconds": {k: round(v, 3) for k, v in probe.seconds.items()}},
        read / owned, workers,
        {"peak": probe.rss_peak, "baseline": probe.rss_start, "block": probe.rss_peak - probe.rss_start}, seconds)


def _seconds(plan: Plan, active: list[Block], block: Block, probe: BlockProbe, overhead: float, workers: int,
             segment_workers: int) -> dict:
    """Seconds per stage of the job, from the probe of ``block`` (the model of the module's docstring)."""
    view, s = plan.view, probe.seconds
    read, owned = region_voxels(plan.read_region(block)), region_voxels(block.core)
    out = {"segment": s.get("warm-up", 0.0) + _stage([s["segment"] * region_voxels(plan.read_region(b)) / read
                                                      for b in active], segment_workers, overhead)}
    summary = probe.summary
    has_objects = summary.n_fragments > 0
    out["stitch"] = _stage([s.get("stitch", 0.0)] * _stitch_tasks(plan, active), workers, overhead)
    out["relabel"] = _stage([s.get("relabel", 0.0) * region_voxels(b.core) / owned for b in active]
                            if has_objects else [], workers, overhead)
    out["pyramid"] = 0.0
    if "pyramid" in s:
        per_voxel = s["pyramid"] / max(probe.pyramid_voxels, 1)
        for level in range(view.level + 1, len(view.image.levels)):
            lv = view.at_level(level)
            chunks = tuple(min(c, n) for c, n in zip(lv.chunks, lv.shape))
            out["pyramid"] += _stage([per_voxel * region_voxels(r) for r in regions(lv.shape, chunks)], workers,
                                     overhead)
    interior = summary.n_fragments > summary.n_boundary
    out["measure"] = _stage([s.get("measure", 0.0)] * (len(active) if interior else 0), workers, overhead)
    resolved, table = _client_seconds(plan, summary, len(active))
    out["stitch"] += resolved
    out["measure"] += table
    out["finalize"] = _picture_seconds(view, len(view.image.levels) - view.level)
    out["total"] = sum(out.values())
    return out


def _stage(seconds: list[float], workers: int, overhead: float) -> float:
    """A stage of tasks of these seconds (plus the per-task overhead each) on ``workers`` workers."""
    if not seconds:
        return 0.0
    tasks = [t + overhead for t in seconds]
    return max(sum(tasks) / max(workers, 1), max(tasks))


def _stitch_tasks(plan: Plan, active: list[Block]) -> int:
    """The stitch rule's tasks for a job whose every active block has boundary fragments."""
    grid, method = plan.grid, plan.method
    if method.output() is Output.CLASSES:
        return 0
    ids = {b.id for b in active}
    assumed = [BlockSummary(i, 2, 1, np.ones(1, np.uint8), 0.0) if i in ids else BlockSummary.empty(i)
               for i in range(len(grid))]
    _, tasks = method.stitch_rule(plan.view.ndim).edge_tasks(grid, JobFiles(""), assumed,
                                                             plan.spec.stitch.iou_threshold)
    return len(tasks)


def _client_seconds(plan: Plan, summary, n_blocks: int) -> tuple[float, float]:
    """Seconds of the client's stitch resolution (the union of boundary fragments: counts and edges only),
    timed on copies of the block's summary (one per block, up to CLIENT_COPIES) and scaled to ``n_blocks``, and
    of the client's part of the measure stage (planning the merge of objects across blocks)."""
    if plan.method.output() is Output.CLASSES or not summary.n_boundary:
        return 0.0, 0.0
    from dataclasses import replace

    from bigseg.measure import stage as measure_stage
    copies = min(n_blocks, CLIENT_COPIES)
    view = plan.view

    def timed(n: int) -> tuple[float, float]:
        summaries = [replace(summary, block_id=i) for i in range(n)]
        t0 = time.perf_counter()
        lookup = resolve(summaries, n, no_edges(), plan.min_size)
        t1 = time.perf_counter()
        measure_stage.merge_steps(lookup, JobFiles("memory://bigseg-dry-run"),
                                  measure_stage.TableArgs(view.scale, view.translation, view.shape,
                                                          view.channel_names, plan.measure.extras,
                                                          plan.measure.parent))
        return t1 - t0, time.perf_counter() - t1

    timed(1)  # imports and first calls, which this process has paid whatever the job
    resolved, table = timed(copies)
    return resolved * n_blocks / copies, table * n_blocks / copies


def _picture_seconds(view, n_levels: int) -> float:
    """The QC picture of the finalize stage: its plane of the image read twice (image, labels), drawn."""
    import imageio.v3 as iio

    from bigseg import qc
    lv = view.at_level(view.level + qc.picture_level(view, n_levels))
    t0 = time.perf_counter()
    plane = lv.read(qc.picture_plane(lv)).reshape(lv.shape[-2:])
    t1 = time.perf_counter()
    iio.imwrite("<bytes>", qc.overlay(plane, np.zeros(plane.shape, np.uint32)), extension=".png")
    return 2 * (t1 - t0) + time.perf_counter() - t1


def _task_overhead(client, workers: int) -> float:
    """Seconds the stage runner adds to each task on this cluster (scheduling, the task's record, collecting
    results), from a stage of empty tasks whose records stay in memory."""
    from bigseg.engine.journal import Journal
    from bigseg.engine.runner import StageRunner
    from bigseg.io import store
    n, work = 4 * workers, f"memory://bigseg-dry-run-{uuid.uuid4().hex}"
    t0 = time.perf_counter()
    StageRunner(client, Journal(work), uuid.uuid4().hex[:8]).run("overhead", _nothing, list(range(n)))
    seconds = time.perf_counter() - t0
    client.run(store.remove, work)  # the workers' records
    store.remove(work)  # the client's checkpoint
    return seconds * workers / n


def _nothing(i: int) -> int:
    return i


def _workers_for(client, resources: dict | None) -> int:
    """Workers that may run tasks needing ``resources`` (e.g. GPU workers); 0 when there are no such needs."""
    if not resources:
        return 0
    info = client.scheduler_info().get("workers", {}).values()
    return sum(1 for w in info if all(w.get("resources", {}).get(k, 0) >= v for k, v in resources.items()))


