"""The pyramid stage: each lower level from the one above by nearest-neighbour sampling (never
interpolation, which would invent ids), one task per group of output chunks."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from bigseg.io.ome import open_array

#: Output voxels per pyramid task.
TASK_VOXELS = 2**24


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
