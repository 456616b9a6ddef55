"""Touching objects: for every object of a label image, the number of distinct other labels that share a face with
it (6-connectivity in 3D, 4 in 2D: voxels one apart along one axis), exact across blocks.

Three steps, planned on the client by :func:`touching_steps` from the label array's shape and the parts' label
ranges (footers):

1. per block of the label array (:func:`block_pairs`): the block's core plus one voxel on the + side of each axis,
   so that each pair of face neighbours is seen by one block only (the block of its lower voxel); the block's
   distinct pairs of different nonzero labels, both ways round, into one file per label range of the first label.
2. per label range (:func:`count_touching`): the pairs of every block deduplicated (two objects that both cross
   block faces can meet in several blocks) and counted per first label.
3. per part (:func:`bigseg.measure.parts.join_part`): the counts joined by label (0: touches no other object).

Every pair goes through step 2, also those of objects inside one block: in a label image that bigseg did not
write an id can mark voxels far apart, so no block can tell that it sees all of an object; the pairs are a small
fraction of the label voxels that step 1 reads. Ids may be any uint64.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import math
from dataclasses import dataclass

import numba
import numpy as np
import zarr

from bigseg.errors import InputError, ParameterError
from bigseg.io import store
from bigseg.measure import parts
from bigseg.measure.parts import Column, JoinTask

#: Voxels of a block task, about (the label array's chunks are grown up to it).
BLOCK_VOXELS = 2**22
#: Objects per count task, about (the parts' rows, grouped in label order).
LABELS_PER_TASK = 200_000

TOUCHING = Column("touching_objects", "int64", 0)


@dataclass(frozen=True)
class PairsTask:
    """Find the face-neighbour label pairs of the block ``start``..``stop`` of the array ``path`` of
    ``labels_url``; write them to ``folder/<range>/<block>.npz`` by label range (``bounds``: the ranges'
    first labels but the first's)."""

    labels_url: str
    path: str
    start: tuple[int, ...]
    stop: tuple[int, ...]
    bounds: np.ndarray
    folder: str
    block: int


@dataclass(frozen=True)
class CountTask:
    """Count the distinct partners of each label of one label range from the pair files in ``folder``."""

    folder: str
    out_url: str


def touching_steps(parts_url: str, labels_url: str, work_url: str, path: str = "0",
                   block: tuple[int, ...] | None = None, labels_per_task: int | None = None) -> list[list]:
    """The pass's tasks, step by step (pairs, counts, joins) for the table ``parts_url`` of the label array
    ``path`` of ``labels_url`` (spatial axes only: (y, x) or (z, y, x)). ``block``: voxels per block task
    (default: the array's chunks, grown to about ``BLOCK_VOXELS``). Intermediate files go to a folder of
    ``work_url`` named for the plan."""
    urls = parts.part_urls(parts_url)
    rows, low, high = parts.ranges(urls, ("label",), np.uint64)
    full = np.flatnonzero(rows)
    if not full.size:
        return [[], [], [JoinTask(u, (), (TOUCHING,)) for u in urls]]
    array = zarr.open_array(store=labels_url, path=path, mode="r")
    shape = tuple(array.shape)
    if len(shape) not in (2, 3):
        raise InputError(f"{labels_url}: labels of {len(shape)} axes; give a label array of axes (y, x) or "
                         "(z, y, x)")
    block = _check_block(block, shape) if block is not None else default_block(shape, _chunks(array))
    bounds = label_bounds(rows[full], low[full, 0], labels_per_task or LABELS_PER_TASK)
    folder = store.join(work_url, "touching-" + _fingerprint(labels_url, path, shape, block, bounds, urls))
    pairs_folder = store.join(folder, "pairs")
    grid = [range(0, s, b) for s, b in zip(shape, block)]
    pairs = [PairsTask(labels_url, path, start, tuple(min(a + b, s) for a, b, s in zip(start, block, shape)),
                       bounds, pairs_folder, i)
             for i, start in enumerate(itertools.product(*grid))]
    counts = [CountTask(store.join(pairs_folder, f"{j:06d}"), _count_url(folder, j)) for j in range(bounds.size + 1)]
    first = np.searchsorted(bounds, low[:, 0], side="right")
    last = np.searchsorted(bounds, high[:, 0], side="right")
    joins = [JoinTask(u, tuple(_count_url(folder, j) for j in range(first[i], last[i] + 1)) if rows[i] else (),
                      (TOUCHING,)) for i, u in enumerate(urls)]
    return [pairs, counts, joins]


def _count_url(folder: str, j: int) -> str:
    return store.join(folder, "counts", f"{j:06d}.npz")


def _chunks(array: zarr.Array) -> tuple[int, ...]:
    return tuple(array.shards or array.chunks)


def _check_block(block, shape: tuple[int, ...]) -> tuple[int, ...]:
    if len(block) != len(shape) or not all(isinstance(b, (int, np.integer)) and b >= 1 for b in block):
        raise ParameterError(f"block must be {len(shape)} whole numbers of voxels of 1 or more, one per axis of "
                             f"the labels {shape}, not {tuple(block)}")
    return tuple(int(b) for b in block)


def default_block(shape: tuple[int, ...], chunks: tuple[int, ...]) -> tuple[int, ...]:
    """The chunks, doubled along the axes in turn (last first) up to about ``BLOCK_VOXELS`` or the shape."""
    block = [min(c, s) for c, s in zip(chunks, shape)]
    grown = True
    while grown and math.prod(block) * 2 <= BLOCK_VOXELS:
        grown = False
        for d in reversed(range(len(block))):
            if block[d] < shape[d] and math.prod(block) * 2 <= BLOCK_VOXELS:
                block[d] = min(2 * block[d], shape[d])
                grown = True
    return tuple(block)


def label_bounds(rows: np.ndarray, first_labels: np.ndarray, per_task: int) -> np.ndarray:
    """The label ranges of the count tasks: the parts in label order, grouped up to ``per_task`` rows; the first
    label of each range but the first (a label's range: ``searchsorted(bounds, label, "right")``)."""
    order = np.argsort(first_labels, kind="stable")
    bounds, held = [], 0
    for j in order:
        if held and held + rows[j] > per_task:
            bounds.append(first_labels[j])
            held = 0
        held += rows[j]
    return np.unique(np.array(bounds, np.uint64))


def _fingerprint(labels_url, path, shape, block, bounds, urls) -> str:
    h = hashlib.sha1(json.dumps([labels_url, path, shape, block, urls]).encode())
    h.update(bounds.tobytes())
    return h.hexdigest()[:12]


def face_pairs(labels: np.ndarray, core: tuple[int, ...]) -> np.ndarray:
    """The distinct pairs (lower id, higher id), shape (n, 2) uint64, of different nonzero labels at voxels one
    apart along one axis, the first voxel in ``labels[:core]`` (``labels`` may reach one voxel past it)."""
    if labels.ndim == 2:
        labels, core = labels[None], (1, *core)
    if labels.ndim != 3:
        raise ValueError(f"face_pairs needs 2D or 3D labels, not shape {labels.shape}")
    return unique_pairs(_face_pairs_3d(np.ascontiguousarray(labels), *(min(c, s) for c, s in zip(core, labels.shape))))


@numba.njit(cache=True, nogil=True)
def _face_pairs_3d(labels, cz, cy, cx):
    """:func:`face_pairs` before deduplication (a pair repeated along a line is written once)."""
    out = np.empty((1024, 2), np.uint64)
    n = 0
    last_lo, last_hi = np.uint64(0), np.uint64(0)
    for z in range(cz):
        for y in range(cy):
            for x in range(cx):
                a = labels[z, y, x]
                if a == 0:
                    continue
                for d in range(3):
                    nz, ny, nx = z + (d == 0), y + (d == 1), x + (d == 2)
                    if nz >= labels.shape[0] or ny >= labels.shape[1] or nx >= labels.shape[2]:
                        continue
                    b = labels[nz, ny, nx]
                    if b == 0 or b == a:
                        continue
                    lo, hi = np.uint64(min(a, b)), np.uint64(max(a, b))
                    if lo == last_lo and hi == last_hi:
                        continue
                    if n == out.shape[0]:
                        grown = np.empty((2 * n, 2), np.uint64)
                        grown[:n] = out
                        out = grown
                    out[n, 0], out[n, 1] = lo, hi
                    last_lo, last_hi = lo, hi
                    n += 1
    return out[:n]


def unique_pairs(pairs: np.ndarray) -> np.ndarray:
    """The distinct rows of an (n, 2) uint64 array."""
    pairs = np.ascontiguousarray(pairs, np.uint64)
    return np.unique(pairs.view(np.dtype((np.void, 16))).ravel()).view(np.uint64).reshape(-1, 2)


def block_pairs(task: PairsTask) -> int:
    """Write the block's pairs, both ways round, by label range of the first; returns the distinct pairs."""
    array = zarr.open_array(store=task.labels_url, path=task.path, mode="r")
    reach = tuple(slice(a, min(b + 1, s)) for a, b, s in zip(task.start, task.stop, array.shape))
    pairs = face_pairs(np.asarray(array[reach]), tuple(b - a for a, b in zip(task.start, task.stop)))
    first = np.concatenate([pairs[:, 0], pairs[:, 1]])
    other = np.concatenate([pairs[:, 1], pairs[:, 0]])
    ranges = np.searchsorted(task.bounds, first, side="right")
    order = np.argsort(ranges, kind="stable")
    ranges, first, other = ranges[order], first[order], other[order]
    cuts = np.flatnonzero(np.r_[True, ranges[1:] != ranges[:-1], True]) if ranges.size else np.zeros(1, int)
    for s, e in zip(cuts[:-1], cuts[1:]):
        url = store.join(task.folder, f"{ranges[s]:06d}", f"{task.block:09d}.npz")
        store.save_arrays(url, {"label": first[s:e], "other": other[s:e]})
    return int(len(pairs))


def count_touching(task: CountTask) -> int:
    """Write each label's number of distinct partners (``label``, ``touching_objects``); returns the labels."""
    names = sorted(n for n in store.children(task.folder) if n.endswith(".npz")) \
        if store.exists(task.folder) else []
    found = [np.column_stack([a["label"], a["other"]])
             for a in store.iter_arrays([store.join(task.folder, n) for n in names])]
    pairs = unique_pairs(np.concatenate(found)) if found else np.zeros((0, 2), np.uint64)
    label, count = np.unique(pairs[:, 0], return_counts=True)
    store.save_arrays(task.out_url, {"label": label, TOUCHING.name: count.astype(np.int64)})
    return int(label.size)
