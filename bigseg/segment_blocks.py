"""The segment stage: one task per block, run on the workers.

A task reads its block with the halo, runs the method, keeps the labels of its core as *fragments*
(local ids: those touching a shared face first, 1..k, then interior ones k+1..n), writes them to the
job's fragments array, writes what stitching needs from the halo and every fragment's statistics
(interior and boundary fragments apart), and returns a small :class:`BlockSummary`: counts only, so the
client stays small however many blocks a job has. Interior fragments are whole objects, measured block by
block; the boundary fragments' statistics are merged on the workers once stitching has numbered the objects
(:mod:`bigseg.measure.stage`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from bigseg.measure import partials as measure
from bigseg.blocks import Block, BlockGrid, intersect, region_text, shift
from bigseg.errors import BigsegError, BlockError
from bigseg.io import store
from bigseg.io.ome import ImageView, open_array
from bigseg.methods.base import Method
from bigseg.stitch_rules import Output


@dataclass(frozen=True)
class JobFiles:
    """The job's intermediate files (under the label group's work folder)."""

    work_url: str

    @property
    def fragments(self) -> str:
        return store.join(self.work_url, "fragments")

    def halo_slab(self, block_id: int, offset: tuple[int, ...]) -> str:
        key = "_".join({-1: "m", 0: "0", 1: "p"}[o] for o in offset)
        return store.join(self.work_url, "halo", str(block_id), f"{key}.npy")

    def interior_stats(self, block_id: int) -> str:
        return store.join(self.work_url, "stats", f"{block_id}.npz")

    def boundary_stats(self, block_id: int) -> str:
        """The partials of a block's boundary fragments 1..k (of a class map: its classes present, in order)."""
        return store.join(self.work_url, "boundary-stats", f"{block_id}.npz")

    def merged_stats(self, step: int, index: int) -> str:
        """The partials of one task of a merge step that takes more than one step (objects in many blocks)."""
        return store.join(self.work_url, "merged-stats", str(step), f"{index}.npz")

    @property
    def table_parts(self) -> str:
        return store.join(self.work_url, "table")

    @property
    def tracks(self) -> str:
        """The tracks table (a time-lapse job's, with tracking), moved into place at the end like the table."""
        return store.join(self.work_url, "tracks.parquet")


@dataclass(frozen=True)
class SegmentTask:
    view: ImageView
    method: Method
    grid: BlockGrid
    block: Block
    files: JobFiles
    min_size: int
    skip_unreadable: bool = False
    #: the part of the extended region that is labelled (the foreground mask's box; None: all of it), and what is
    #: read for it (the box with the job's halo, inside the extended region); the rest of the block is 0
    kept: tuple[slice, ...] | None = None
    read: tuple[slice, ...] | None = None
    #: the statistics beyond the basic ones (second moments, colocalization)
    extras: measure.Extras = measure.Extras()
    #: the parent label image's array (url, path, zarr format) whose ids each fragment's voxels are counted in
    parent: tuple[str, str, int] | None = None

    @property
    def read_region(self) -> tuple[slice, ...]:
        return self.block.extended if self.read is None else self.read


@dataclass(frozen=True)
class BlockSummary:
    """What a block task returns to the client: counts only (the statistics stay in the work folder).

    ``counts[i]`` is the voxel count of boundary fragment i + 1 (of a class map: of class i + 1, 0 where
    the block lacks it), in the smallest unsigned dtype that holds it: stitching judges ``min_size`` on whole
    objects from these."""

    block_id: int
    n_fragments: int
    n_boundary: int
    counts: np.ndarray
    seconds: float
    error: str | None = None  # why the block was skipped (unreadable input, with --skip-bad-blocks)

    @classmethod
    def empty(cls, block_id: int, seconds: float = 0.0, error: str | None = None) -> "BlockSummary":
        """A block without fragments (background, or skipped because of ``error``)."""
        return cls(block_id, 0, 0, np.zeros(0, np.uint8), seconds, error)


def segment_block(task: SegmentTask) -> BlockSummary:
    t0 = time.perf_counter()
    block, grid = task.block, task.grid
    where = f"block {block.id} {region_text(block.extended)}"
    read = task.read_region
    view, b = _frame(task)
    try:
        extended = _read(view, read[b:])[(None,) * b]
    except Exception as err:  # noqa: BLE001 - corrupt, truncated or missing chunks
        message = f"{where}: cannot read the input ({type(err).__name__}: {err})"
        if task.skip_unreadable:
            return BlockSummary.empty(block.id, time.perf_counter() - t0, message)
        raise BlockError(message + "; repair the image, or pass --skip-bad-blocks to leave such blocks "
                         "unlabelled") from None
    if extended.dtype.kind == "f" and not np.isfinite(extended).all():
        raise BlockError(f"{where}: the image has NaN or infinite values here; replace them (e.g. with 0) "
                         "before segmenting")
    try:
        labels = np.asarray(task.method.fragment_source(extended[(0,) * b], view.voxel_size))[(None,) * b]
    except BigsegError:
        raise
    except Exception as err:  # not chained: the cause may not unpickle on the client
        raise BlockError(f"{where}: method {task.method.name} failed ({type(err).__name__}: {err})") from None
    if task.kept is not None:  # the kept box's labels in an otherwise empty block
        labels, extended = _in_block(task, labels, read), _in_block(task, extended, read)
    core_slc = block.core_in_extended
    core = labels[core_slc]
    if task.method.output() is Output.CLASSES:
        return _segment_classes(task, view, extended, core, t0)
    rule = task.method.stitch_rule(core.ndim - b)
    core = rule.fragments(core[(0,) * b])[(None,) * b]
    where = np.flatnonzero(core)  # the core's labelled voxels, in raster order
    old_ids = core.ravel()[where]
    lut, n, k = _renumber(core, old_ids, grid.shared_faces(block.index), task.min_size)
    if n == 0:
        return BlockSummary.empty(block.id, time.perf_counter() - t0)
    fragments = lut[core]
    open_array(task.files.fragments, "", 3, mode="r+")[block.core] = fragments
    if rule.keeps_halo:  # what stitching compares; kept whenever the core has fragments
        _save_halo(task, labels, lut, n)
    ids = lut[old_ids]
    if not ids.all():  # small interior fragments were dropped
        where, ids = where[ids > 0], ids[ids > 0]
    partials = measure.voxel_partials(where, ids, core.shape, _channels(task, view, extended), block.origin, n,
                                      task.extras)
    if task.parent is not None:
        partials.update(measure.contingency(ids.astype(np.int64) - 1, _parent_ids(task, where)))
    if n > k:
        store.save_arrays(task.files.interior_stats(block.id), measure.take(partials, slice(k, n)))
    if k:
        store.save_arrays(task.files.boundary_stats(block.id), measure.take(partials, slice(0, k)))
    return BlockSummary(block.id, n, k, compact(partials["count"][:k]), time.perf_counter() - t0)


def _in_block(task: SegmentTask, data: np.ndarray, read: tuple[slice, ...]) -> np.ndarray:
    """``data`` (over ``read``) inside zeros of the block's extended shape, only its kept box."""
    ext = task.block.extended
    out = np.zeros(tuple(s.stop - s.start for s in ext), data.dtype)
    kept = shift(task.kept, tuple(s.start for s in ext))
    out[kept] = data[shift(task.kept, tuple(s.start for s in read))]
    return out


def compact(values: np.ndarray) -> np.ndarray:
    """Non-negative integers in the smallest unsigned dtype that holds them."""
    return values.astype(np.min_scalar_type(int(values.max(initial=0))))


def _read(view: ImageView, region: tuple[slice, ...], attempts: int = 3) -> np.ndarray:
    """Read a region, retrying transient I/O errors: an ``OSError`` (a flaky network file system, a dropped
    connection, a timeout) or an HTTP 429/5xx answer (fsspec's HTTP and object-store clients raise their own
    error, e.g. aiohttp's ``ClientResponseError``, with the ``status``). A missing chunk is no error (zarr
    reads it as the fill value); anything else (a corrupt chunk) fails at once."""
    for attempt in range(attempts):
        try:
            return view.read(region)
        except Exception as err:
            status = getattr(err, "status", None)
            if not (isinstance(err, OSError) or (isinstance(status, int) and (status == 429 or status >= 500))):
                raise
            why = f"{type(err).__name__}: {err}"
        if attempt < attempts - 1:
            time.sleep(0.5 * 2**attempt)
    # raised outside the handler, without the original error: a client library's may not survive pickling
    raise OSError(f"{why} (tried {attempts} times)")


def _frame(task: SegmentTask) -> tuple[ImageView, int]:
    """The view of the block's timepoint and the number of batch axes before the spatial ones in the task's
    regions (1 in a time-lapse job, whose t is a batch axis of the grid: the image is read, and the method
    run, on the spatial axes of one timepoint; the arrays written have the t axis)."""
    b = task.grid.batch
    return (task.view.at_timepoint(task.block.core[0].start), b) if b else (task.view, 0)


def _channels(task: SegmentTask, view: ImageView, extended: np.ndarray) -> np.ndarray:
    """The core's intensities, (C, *core shape), for the statistics."""
    if view.measures_segmented_channel:
        return extended[task.block.core_in_extended][None]
    b = task.grid.batch
    return view.read_channels(task.block.core[b:])[(slice(None),) + (None,) * b]


def _parent_ids(task: SegmentTask, where: np.ndarray) -> np.ndarray:
    """The parent label image's ids at the core's voxels ``where`` (flat indices)."""
    return np.asarray(open_array(*task.parent)[task.block.core]).ravel()[where]


def _segment_classes(task: SegmentTask, view: ImageView, extended: np.ndarray, classes: np.ndarray,
                     t0: float) -> BlockSummary:
    """A semantic class map: class numbers are the final ids, so the core is written as it is; the per-class
    statistics (of the classes present, in order) go to the work folder and their counts back
    (fragments 1..m = classes 1..m, m the block's largest class)."""
    block = task.block
    present = np.unique(classes)
    present = present[present > 0]
    if present.size == 0:
        return BlockSummary.empty(block.id, time.perf_counter() - t0)
    m = int(present[-1])
    open_array(task.files.fragments, "", 3, mode="r+")[block.core] = classes.astype(np.uint32)
    lut = np.zeros(m + 1, np.uint32)
    lut[present] = np.arange(1, present.size + 1, dtype=np.uint32)
    partials = measure.block_partials(lut[classes], _channels(task, view, extended), block.origin, present.size,
                                      task.extras)
    if task.parent is not None:
        where = np.flatnonzero(classes)
        partials.update(measure.contingency(lut[classes.ravel()[where]].astype(np.int64) - 1,
                                            _parent_ids(task, where)))
    store.save_arrays(task.files.boundary_stats(block.id), partials)
    counts = np.zeros(m, np.int64)
    counts[present - 1] = partials["count"]
    return BlockSummary(block.id, m, m, compact(counts), time.perf_counter() - t0)


def _renumber(core: np.ndarray, ids: np.ndarray, faces: list[tuple[int, int]],
              min_size: int) -> tuple[np.ndarray, int, int]:
    """Lookup old label -> fragment id: boundary fragments 1..k, kept interior ones k+1..n. ``ids`` are the
    labels of the core's labelled voxels."""
    counts = np.bincount(ids, minlength=1)
    on_face = np.zeros(counts.size, bool)
    for axis, side in faces:
        on_face[np.take(core, -1 if side else 0, axis=axis).ravel()] = True
    on_face[0] = False
    present = np.flatnonzero(counts)
    present = present[present > 0]
    boundary = present[on_face[present]]
    interior = present[~on_face[present]]
    interior = interior[counts[interior] >= min_size]  # interior fragments are whole objects
    k, n = boundary.size, boundary.size + interior.size
    lut = np.zeros(counts.size, np.uint32)
    lut[boundary] = np.arange(1, k + 1, dtype=np.uint32)
    lut[interior] = np.arange(k + 1, n + 1, dtype=np.uint32)
    return lut, n, k


def _save_halo(task: SegmentTask, labels: np.ndarray, lut: np.ndarray, n: int) -> None:
    """Store this block's prediction over each neighbour's core (the overlap that stitching compares)."""
    block, grid = task.block, task.grid
    full = np.zeros(int(labels.max()) + 1, np.uint32)
    full[: lut.size] = lut
    others = np.flatnonzero(full == 0)[1:]  # objects seen only in the halo: ids above n
    full[others] = np.arange(n + 1, n + 1 + others.size, dtype=np.uint32)
    origin = tuple(s.start for s in block.extended)
    for offset in grid.neighbour_offsets(block.index):
        neighbour = tuple(i + o for i, o in zip(block.index, offset))
        region = intersect(block.extended, grid.core(neighbour))
        if region is not None:
            store.save_array(task.files.halo_slab(block.id, offset), full[labels[shift(region, origin)]])
