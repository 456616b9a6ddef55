"""A dry run's block, on a worker: one block through the job's own worker functions (segment, relabel,
pyramid, stitch, measure), timed, with the worker's peak memory measured, and every file it makes kept in the
worker's memory (an in-memory file system), so that nothing is written."""
from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, replace

import numpy as np
import zarr

from bigseg.measure import stage as measure_stage
from bigseg.blocks import BlockGroup, intersect
from bigseg.io import store
from bigseg.io.ome import ImageView
from bigseg.io.table import part_url
from bigseg.methods.base import Method
from bigseg.pipeline import inner_chunks
from bigseg.pyramid import DownsampleTask, downsample
from bigseg.relabel import BlockIds, RelabelTask, relabel_group
from bigseg.segment_blocks import BlockSummary, JobFiles, SegmentTask, segment_block
from bigseg.stitch_rules import Output

#: Seconds between two readings of the worker's resident memory while the block runs.
SAMPLE_SECONDS = 0.005


@dataclass(frozen=True)
class BlockProbe:
    """What one block cost on a worker: seconds per stage's task, and the worker's resident memory (bytes)
    when the block started and at its highest while it ran."""

    summary: BlockSummary
    seconds: dict
    #: voxels written to level 1 by the pyramid task (0: the image has one level)
    pyramid_voxels: int
    rss_start: int
    rss_peak: int


class PeakMemory:
    """The process's resident memory at its highest inside the ``with`` block: sampled by a thread, and the
    kernel's high-water mark of this process (``VmHWM``, Linux) when the block raised it (a peak between two
    samples). Not ``ru_maxrss``: a spawned worker's starts at its parent's size when it was forked."""

    def __enter__(self) -> "PeakMemory":
        import psutil
        self._process = psutil.Process()
        self.start = self.peak = self._process.memory_info().rss
        self._mark = high_water_mark()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._done.wait(SAMPLE_SECONDS):
            self.peak = max(self.peak, self._process.memory_info().rss)

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)
        mark = high_water_mark()
        if mark is not None and self._mark is not None and mark > self._mark:
            self.peak = max(self.peak, mark)


def high_water_mark() -> int | None:
    """The most resident memory this process has had, in bytes (Linux ``/proc/self/status`` VmHWM; None
    elsewhere)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def probe_block(task: SegmentTask) -> BlockProbe:
    """Run the block of a segment task as the job would, with its files in memory (``task.files`` is not used);
    measure it."""
    view, grid, block = task.view, task.grid, task.block
    files = JobFiles(f"memory://bigseg-dry-run-{uuid.uuid4().hex}")
    task = replace(task, files=files)
    seconds, pyramid_voxels = {}, 0
    try:
        with PeakMemory() as memory:
            zarr.create_array(store=files.fragments, shape=view.shape, shards=grid.block_shape,
                              chunks=inner_chunks(grid.block_shape), dtype=np.uint32, fill_value=0, zarr_format=3)
            t0 = time.perf_counter()
            _warm_up(task.method, view)
            seconds["warm-up"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            summary = segment_block(task)
            seconds["segment"] = time.perf_counter() - t0
            n, k = summary.n_fragments, summary.n_boundary
            if n:
                labels = store.join(files.work_url, "labels")
                levels = [view.at_level(i) for i in
                          range(view.level, min(view.level + 2, len(view.image.levels)))]
                for i, lv in enumerate(levels):
                    zarr.create_array(store=labels, name=str(i), shape=lv.shape, dtype=np.uint32, fill_value=0,
                                      chunks=tuple(min(c, s) for c, s in zip(lv.chunks, lv.shape)))
                t0 = time.perf_counter()
                group = BlockGroup(grid, block.index, tuple(i + 1 for i in block.index))
                relabel_group(RelabelTask(group, (BlockIds(block, np.arange(1, k + 1), k, n),), files.fragments,
                                          labels, 3, "u4", ("0",), (levels[0].shape,)))
                seconds["relabel"] = time.perf_counter() - t0
                if len(levels) > 1:
                    region = tuple(slice(c.start * d // s, -(-c.stop * d // s))
                                   for c, s, d in zip(block.core, levels[0].shape, levels[1].shape))
                    t0 = time.perf_counter()
                    pyramid_voxels = downsample(DownsampleTask(labels, "0", "1", 3, levels[0].shape,
                                                               levels[1].shape, region))
                    seconds["pyramid"] = time.perf_counter() - t0
                stitch = _stitch_task(task, files, summary)
                if stitch is not None:
                    t0 = time.perf_counter()
                    stitch[0](stitch[1])
                    seconds["stitch"] = time.perf_counter() - t0
                if n > k:
                    t0 = time.perf_counter()
                    names = view.channel_names
                    args = measure_stage.TableArgs(view.scale, view.translation, view.shape, names,
                                                   task.extras, task.parent and "parent")
                    measure_stage.measure_block(measure_stage.MeasureTask(
                        files.interior_stats(block.id), part_url(store.join(files.work_url, "table"), 0), k + 1,
                        args))
                    seconds["measure"] = time.perf_counter() - t0
    finally:
        store.remove(files.work_url)
    return BlockProbe(summary, seconds, pyramid_voxels, memory.start, memory.peak)


def start_up(task: SegmentTask) -> None:
    """What a fresh worker does before its first block of a job: unpickle a task (imports bigseg and the
    method's modules), and import what the stages' functions import on first use."""
    import pandas  # noqa: F401 - the measure stage's tables
    import pyarrow.parquet  # noqa: F401


def _stitch_task(task: SegmentTask, files: JobFiles, summary: BlockSummary):
    """(function, task) of one of the stitch rule's tasks between the block and a neighbour taken to be like it
    (its fragments empty, its halo prediction empty), or None (a class map, a grid of one block)."""
    grid, block = task.grid, task.block
    if task.method.output() is Output.CLASSES or not summary.n_boundary or len(grid) == 1:
        return None
    offset = grid.neighbour_offsets(block.index)[0]
    other = tuple(i + o for i, o in zip(block.index, offset))
    summaries = [BlockSummary.empty(i) for i in range(len(grid))]
    summaries[block.id] = summary
    summaries[grid.flat_id(other)] = BlockSummary(grid.flat_id(other), summary.n_fragments, summary.n_boundary,
                                                  summary.counts, 0.0)
    rule = task.method.stitch_rule(task.view.ndim)
    if rule.keeps_halo:  # the neighbour's prediction over this block's core, as the segment stage saves it
        region = intersect(grid.extended(other), block.core)
        store.save_array(files.halo_slab(grid.flat_id(other), tuple(-o for o in offset)),
                         np.zeros(tuple(r.stop - r.start for r in region), np.uint32))
    fn, tasks = rule.edge_tasks(grid, files, summaries, 0.5)
    return (fn, tasks[0]) if tasks else None


def _warm_up(method: Method, view: ImageView) -> None:
    """What a worker does once, before its first block (lazy imports, loading a model), done on a small empty
    block so that the block's own seconds are what every block costs."""
    try:
        method(np.zeros(tuple(min(32, s) for s in view.shape), view.dtype), view.voxel_size)
    except Exception:  # noqa: BLE001 - a method may refuse an empty block; then the block pays for it
        pass
