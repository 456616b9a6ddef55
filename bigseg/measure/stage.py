"""The measure stage: each block's interior objects (whole) and, merged on the workers, the objects with
fragments in several blocks.

The segment stage leaves each block's boundary-fragment partials in the work folder
(:meth:`~bigseg.segment_blocks.JobFiles.boundary_stats`); stitching tells which object each of their rows is
(:class:`~bigseg.stitch.Lookup`), so the client never holds a statistic. The objects are cut into ranges of
consecutive labels, ``OBJECTS_PER_TASK`` each (labels follow the blocks of the objects' first fragments, so a
range lies in few, neighbouring blocks); a task reads the files of the blocks its objects lie in, merges their
rows by object (:func:`bigseg.measure.partials.merge`) and writes one table part. Objects in more than
``BLOCKS_PER_TASK`` blocks (a class map's classes, a vessel tree) are merged in steps: groups of blocks into
partials files, then groups of those, so that no task reads more than ``BLOCKS_PER_TASK`` files.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from bigseg.measure import columns, partials
from bigseg.io import store
from bigseg.io import table as table_io

if TYPE_CHECKING:
    from bigseg.segment_blocks import JobFiles
    from bigseg.stitch import Lookup

#: Objects (consecutive labels) per task.
OBJECTS_PER_TASK = 20000
#: Files a task reads at most: blocks' partials, or an earlier step's.
BLOCKS_PER_TASK = 512


@dataclass(frozen=True)
class TableArgs:
    """What turns merged partials into table rows: the image's geometry, the measured channels' names and the
    extra statistics the partials hold."""

    scale: tuple[float, ...]
    translation: tuple[float, ...]
    shape: tuple[int, ...]
    channel_names: tuple[str, ...]
    extras: partials.Extras = partials.Extras()
    #: the parent label image's name (its columns: parent_<name>, parent_<name>_overlap)
    parent: str | None = None
    #: axes of the partials before the spatial ones (a time-lapse's t: each object lies at one timepoint,
    #: the table's ``t`` column)
    batch: int = 0

    def table(self, merged: dict, labels: np.ndarray, blocks: np.ndarray):
        if self.batch:
            where, merged = partials.split_batch(merged, self.batch)
        df = columns.table(merged, labels, blocks, self.scale, self.translation, self.shape,
                           list(self.channel_names), self.parent)
        if self.batch:
            df.insert(1, "t", where[:, 0])
        return df


@dataclass(frozen=True)
class MergeTask:
    """Merge rows into objects ``first_label`` .. ``first_label + n_labels - 1`` and write them: a table part
    (``table_args`` given) or the partials of a step of a longer
    merge (with each object's ``label`` and the number of ``blocks`` it has fragments in so far)."""

    blocks: tuple[str, ...]  # boundary partials of blocks: rows[starts[i]:starts[i + 1]] of blocks[i] are taken
    starts: np.ndarray
    rows: np.ndarray
    labels: np.ndarray       # label - first_label of each row taken
    merged: tuple[str, ...]  # an earlier step's partials, taken whole
    first_label: int
    n_labels: int
    out_url: str
    table_args: TableArgs | None


def merge_objects(task: MergeTask) -> int:
    """Write the merged objects (those present) of ``task``; returns how many there are."""
    parts, labels, spanned, weights = [], [], [], []
    for i, part in enumerate(store.iter_arrays(list(task.blocks))):
        taken = slice(task.starts[i], task.starts[i + 1])
        parts.append(partials.take(part, task.rows[taken]))
        labels.append(task.labels[taken].astype(np.int64))
        objects = np.unique(labels[-1])  # a block counts once for each object in it
        spanned.append(objects)
        weights.append(np.ones(objects.size, np.int64))
    for part in store.iter_arrays(list(task.merged)):
        labels.append(part.pop("label") - task.first_label)
        spanned.append(labels[-1])
        weights.append(part.pop("blocks"))
        parts.append(part)
    if parts:
        merged = partials.merge(partials.concat(parts), np.concatenate(labels), task.n_labels)
        blocks = np.bincount(np.concatenate(spanned), np.concatenate(weights), task.n_labels).astype(np.int64)
        present = np.flatnonzero(merged["count"])
        merged, blocks = partials.take(merged, present), blocks[present]
    else:  # no boundary objects at all: an empty part, which gives the table its columns
        present = blocks = np.zeros(0, np.int64)
        args = task.table_args
        merged = partials.empty_partials(args.batch + len(args.shape), len(args.channel_names), args.extras)
    label = task.first_label + present
    if task.table_args is None:
        store.save_arrays(task.out_url, {**merged, "label": label, "blocks": blocks})
    else:
        table_io.write_part(task.table_args.table(merged, label, blocks), task.out_url)
    return int(present.size)


def merge_steps(lookup: Lookup, files: JobFiles, table_args: TableArgs, objects_per_task: int | None = None,
                blocks_per_task: int | None = None) -> list[list[MergeTask]]:
    """The tasks that measure ``lookup``'s boundary objects (or a class map's classes), step by step: a step's
    tasks read what the steps before it wrote. At least one task: with no such object it writes an empty part."""
    per_task = objects_per_task or OBJECTS_PER_TASK
    per_read = blocks_per_task or BLOCKS_PER_TASK
    labels, prefix = lookup.row_labels, lookup.row_prefix
    n_labels = int(labels.max(initial=0))
    n_tasks = max(1, math.ceil(n_labels / per_task))
    task_of_row = np.full(labels.size, n_tasks, np.min_scalar_type(n_tasks))
    kept = labels > 0
    task_of_row[kept] = (labels[kept] - 1) // per_task
    order = np.argsort(task_of_row, kind="stable")  # by task, then block, then row
    ends = np.cumsum(np.bincount(task_of_row, minlength=n_tasks + 1))
    rows_per_block = np.diff(prefix)
    row_dtype = np.min_scalar_type(int(rows_per_block.max(initial=0)))
    block_of_row = np.repeat(np.arange(rows_per_block.size, dtype=np.min_scalar_type(rows_per_block.size)),
                             rows_per_block)
    label_dtype = np.min_scalar_type(per_task)
    steps: list[list[MergeTask]] = [[]]
    for t in range(n_tasks):
        rows = order[ends[t - 1] if t else 0:ends[t]]
        block = block_of_row[rows]
        starts = np.flatnonzero(np.r_[True, block[1:] != block[:-1], True])
        first = 1 + t * per_task
        sources = [(files.boundary_stats(int(block[s])), s, e) for s, e in zip(starts[:-1], starts[1:])] \
            if rows.size else []
        _add(steps, (rows - prefix[block]).astype(row_dtype), (labels[rows] - first).astype(label_dtype), sources,
             first, min(per_task, n_labels - first + 1), table_io.part_url(files.table_parts, 0, t), table_args,
             files, per_read)
    return steps


def _add(steps: list, rows: np.ndarray, labels: np.ndarray, sources: list, first: int, n: int, out_url: str,
         table_args: TableArgs, files: JobFiles, per_read: int) -> None:
    """Add the tasks that merge ``sources`` (a block's file, with the span of its rows in ``rows``) into one
    table part: in steps of ``per_read`` files while there are more."""
    level, merged = 0, []
    while max(len(sources), len(merged)) > per_read:  # one of the two is empty
        if len(steps) == level + 1:
            steps.append([])
        outs = []
        for i in range(0, max(len(sources), len(merged)), per_read):
            outs.append(files.merged_stats(level, len(steps[level])))
            steps[level].append(_task(rows, labels, sources[i:i + per_read], merged[i:i + per_read], first, n,
                                      outs[-1], None))
        sources, merged, level = [], outs, level + 1
    steps[level].append(_task(rows, labels, sources, merged, first, n, out_url, table_args))


def _task(rows, labels, sources, merged, first, n, out_url, table_args) -> MergeTask:
    lo, hi = (sources[0][1], sources[-1][2]) if sources else (0, 0)
    starts = np.array([s for _, s, _ in sources] + [hi], np.int64) - lo
    return MergeTask(tuple(u for u, _, _ in sources), starts, rows[lo:hi], labels[lo:hi], tuple(merged), first,
                     n, out_url, table_args)


@dataclass(frozen=True)
class MeasureTask:
    """Write the table rows of one block's interior objects (whole objects, ids by arithmetic)."""

    stats_url: str
    part_url: str
    first_label: int
    table_args: TableArgs


def measure_block(task: MeasureTask) -> int:
    part = store.load_arrays(task.stats_url)
    n = part["count"].size
    table_io.write_part(task.table_args.table(part, task.first_label + np.arange(n), np.ones(n, np.int64)),
                        task.part_url)
    return n


def measure_task(task: MergeTask | MeasureTask) -> int:
    """The measure stage's worker function: a merge of objects across blocks, or one block's interior objects."""
    return merge_objects(task) if isinstance(task, MergeTask) else measure_block(task)
