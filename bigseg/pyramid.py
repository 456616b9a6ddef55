"""The pyramid stage: each lower level from the one above by nearest-neighbour sampling (never
interpolation, which would invent ids), one task per group of output chunks.

A level whose every chunk is sampled from inside one relabel task's region (:func:`fused_levels`) is written by
that task, from the labels it holds (:func:`sample`): no pyramid task reads level 0 for it. Sampling level 0
through the chain of levels (:func:`level0_index`) gives the same values as sampling level by level."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from bigseg.io.ome import open_array

#: Output voxels per pyramid task (4 M: a level of a few chunks is still shared out between workers).
TASK_VOXELS = 2**22


@dataclass(frozen=True)
class DownsampleTask:
    url: str
    src_path: str
    dst_path: str
    zarr_format: int
    src_shape: tuple[int, ...]
    dst_shape: tuple[int, ...]
    region: tuple[slice, ...]


def source_index(dst: np.ndarray, src_size: int, dst_size: int) -> np.ndarray:
    """Nearest source index of each output index (pixel centres aligned)."""
    return np.minimum(((dst + 0.5) * src_size / dst_size).astype(np.int64), src_size - 1)


def level0_index(dst: np.ndarray, sizes: list[int]) -> np.ndarray:
    """Level-0 index of each index ``dst`` of the last level, along one axis of ``sizes`` (its size at level 0,
    1, ...), each level sampled from the one above."""
    for src_size, dst_size in reversed(list(zip(sizes[:-1], sizes[1:]))):
        dst = source_index(dst, src_size, dst_size)
    return dst


def fused_levels(shapes: list[tuple[int, ...]], chunks: list[tuple[int, ...]],
                 region_shape: tuple[int, ...]) -> list[int]:
    """The lower levels (1, 2, ...) each of whose chunks is sampled from inside one region of a regular grid of
    ``region_shape`` over level 0 (the relabel tasks' regions)."""
    out = []
    for i in range(1, len(shapes)):
        inside = True
        for d, (c, r) in enumerate(zip(chunks[i], region_shape)):
            first = np.arange(0, shapes[i][d], c)
            last = np.minimum(first + c, shapes[i][d]) - 1
            sizes = [s[d] for s in shapes[:i + 1]]
            inside &= bool(np.all(level0_index(first, sizes) // r == level0_index(last, sizes) // r))
        if inside:
            out.append(i)
    return out


def sample(labels: np.ndarray, region: tuple[slice, ...], shapes: list[tuple[int, ...]]):
    """The part of the last level of ``shapes`` (level 0 first) sampled from ``labels`` of level 0's ``region``:
    (its region in that level, its values), or None where it samples nothing there."""
    out_region, index = [], []
    for d, r in enumerate(region):
        sizes = [s[d] for s in shapes]
        src = level0_index(np.arange(sizes[-1]), sizes)
        lo, hi = np.searchsorted(src, r.start), np.searchsorted(src, r.stop)
        if lo == hi:
            return None
        out_region.append(slice(int(lo), int(hi)))
        index.append(_as_slice(src[lo:hi] - r.start))
    if all(isinstance(i, slice) for i in index):  # a regular step on every axis: a view, not a gather
        return tuple(out_region), labels[tuple(index)]
    return tuple(out_region), labels[np.ix_(*[np.arange(i.start, i.stop, i.step) if isinstance(i, slice) else i
                                              for i in index])]


def _as_slice(index: np.ndarray):
    """``index`` (increasing) as a slice where its steps are all equal, else itself."""
    steps = np.diff(index)
    if index.size == 1 or (steps[0] > 0 and np.all(steps == steps[0])):
        step = int(steps[0]) if index.size > 1 else 1
        return slice(int(index[0]), int(index[-1]) + 1, step)
    return index


def downsample(task: DownsampleTask) -> int:
    idx = [source_index(np.arange(r.start, r.stop), s, d)
           for r, s, d in zip(task.region, task.src_shape, task.dst_shape)]
    read = tuple(slice(int(i[0]), int(i[-1]) + 1) for i in idx)
    src = open_array(task.url, task.src_path, task.zarr_format)[read]
    out = src[np.ix_(*[i - r.start for i, r in zip(idx, read)])]
    open_array(task.url, task.dst_path, task.zarr_format, mode="r+")[task.region] = out
    return int(out.size)


def regions(shape: tuple[int, ...], chunks: tuple[int, ...]) -> list[tuple[slice, ...]]:
    """Chunk-aligned regions of about TASK_VOXELS voxels covering ``shape``."""
    step = list(chunks)
    for d in range(len(shape) - 1, -1, -1):  # grow the fastest axes first
        while step[d] < shape[d] and math.prod(step) * 2 <= TASK_VOXELS:
            step[d] *= 2
    grid = [range(0, s, st) for s, st in zip(shape, step)]
    out = []
    for starts in np.ndindex(*[len(g) for g in grid]):
        out.append(tuple(slice(g[i], min(g[i] + st, s)) for g, i, st, s in zip(grid, starts, step, shape)))
    return out
