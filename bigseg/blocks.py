"""The block grid: core regions that tile the image, each read with a halo around it."""
from __future__ import annotations

import heapq
import itertools
import math
from dataclasses import dataclass

import numpy as np

from bigseg.errors import ParameterError

#: Default budget of core voxels per block (before the halo).
DEFAULT_BLOCK_VOXELS = 2**25
#: Default budget of a block's working memory: with a method's bytes per voxel it bounds the default block
#: (StarDist's ~500 bytes a voxel make 4 M-voxel blocks, the classical methods' ~40 the full 32 M).
DEFAULT_BLOCK_BYTES = 2**31
#: Default blocks are at most a 1/(this x workers) of the image, so that every worker gets several blocks (balance,
#: and background skipping has blocks to skip).
BLOCKS_PER_WORKER = 4
#: Default blocks are at least this many halos along each axis (where memory allows), so that the halo read
#: around a block stays a fraction of it (a block of 4 halos reads 1.5x its core per axis).
HALOS_PER_BLOCK = 4
#: A block task's fixed cost (scheduling, opening arrays, its faces in the stitch) in voxels of segmenting work:
#: background skipping weighs it against the halo and the background that larger blocks read.
TASK_VOXELS = 2**18
#: Background skipping tries default blocks down to this many in a grid.
MAX_SKIPPING_BLOCKS = 2**16


def block_budget(shape: tuple[int, ...], n_workers: int, bytes_per_voxel: int) -> tuple[int, int]:
    """(voxels a default block aims at, voxels it may not exceed): the memory bound from the method's bytes per
    voxel, and within it a share of the image that gives each worker :data:`BLOCKS_PER_WORKER` blocks."""
    memory = max(1, min(DEFAULT_BLOCK_VOXELS, DEFAULT_BLOCK_BYTES // max(bytes_per_voxel, 1)))
    return max(1, min(memory, math.prod(shape) // (BLOCKS_PER_WORKER * max(n_workers, 1)))), memory


def finer_grids(shape: tuple[int, ...], chunks: tuple[int, ...], halo: tuple[int, ...], budget: int,
                align: tuple[int, ...] | None, memory: int) -> list["BlockGrid"]:
    """The default grid and those of ever smaller default blocks (half the budget each; at least
    :data:`HALOS_PER_BLOCK` halos per axis, at most :data:`MAX_SKIPPING_BLOCKS` blocks): the blocks that
    background skipping chooses from."""
    grids = [plan_grid(shape, chunks, halo, None, budget, align, memory)]
    while budget > 1:
        budget //= 2
        grid = plan_grid(shape, chunks, halo, None, budget, align, memory)
        if len(grid) > MAX_SKIPPING_BLOCKS:
            break
        if grid.block_shape != grids[-1].block_shape:
            grids.append(grid)
    return grids


def makespan(costs: list[int], n_workers: int) -> float:
    """The segment stage's length in voxels of work: each task costs the voxels it reads (``costs``) and
    :data:`TASK_VOXELS`, handed largest first to the least loaded worker (the order the stage submits them)."""
    loads = [0.0] * max(n_workers, 1)
    for cost in sorted(costs, reverse=True):
        heapq.heapreplace(loads, loads[0] + cost + TASK_VOXELS)
    return max(loads)


def group_voxels() -> int:
    """Core voxels of the blocks that one stitch (touch rule) or relabel task handles (``bigseg.group-voxels``)."""
    import dask.config
    return int(dask.config.get("bigseg.group-voxels", default=2**24))


def region_voxels(region: tuple[slice, ...]) -> int:
    """Voxels of a region."""
    return math.prod(s.stop - s.start for s in region)


def region_text(region: tuple[slice, ...]) -> str:
    """A region as users read it in messages: ``[0:16, 32:64]``."""
    return "[" + ", ".join(f"{s.start}:{s.stop}" for s in region) + "]"


@dataclass(frozen=True)
class Block:
    """One block: its grid index, its core (owned voxels) and its extended (core + halo) region."""

    id: int
    index: tuple[int, ...]
    core: tuple[slice, ...]
    extended: tuple[slice, ...]

    @property
    def core_in_extended(self) -> tuple[slice, ...]:
        return tuple(slice(c.start - e.start, c.stop - e.start) for c, e in zip(self.core, self.extended))

    @property
    def origin(self) -> tuple[int, ...]:
        return tuple(s.start for s in self.core)


@dataclass(frozen=True)
class BlockGrid:
    """A regular grid of blocks over an image of ``shape``; the last block on an axis may be smaller."""

    shape: tuple[int, ...]
    block_shape: tuple[int, ...]
    halo: tuple[int, ...]
    #: Extended regions start at multiples of this (networks with pooling are shift-equivariant only
    #: for shifts by their total downsampling factor).
    align: tuple[int, ...] | None = None
    #: Leading axes that are a batch (a time-lapse's t): blocks of 1 and no halo along them, and no block is
    #: next to another across them (no faces, no neighbours, no group spans them): objects never join there.
    batch: int = 0

    def over(self, n: int) -> "BlockGrid":
        """This grid repeated along a new leading batch axis of ``n`` (e.g. the timepoints of a time-lapse)."""
        return BlockGrid((n, *self.shape), (1, *self.block_shape), (0, *self.halo),
                         None if self.align is None else (1, *self.align), self.batch + 1)

    @property
    def frame(self) -> "BlockGrid":
        """The grid of one batch entry (the spatial grid of one timepoint): the grid itself without batch axes."""
        b = self.batch
        return BlockGrid(self.shape[b:], self.block_shape[b:], self.halo[b:],
                         None if self.align is None else self.align[b:])

    @property
    def grid_shape(self) -> tuple[int, ...]:
        return tuple(math.ceil(s / b) for s, b in zip(self.shape, self.block_shape))

    def __len__(self) -> int:
        return math.prod(self.grid_shape)

    def flat_id(self, index: tuple[int, ...]) -> int:
        return int(np.ravel_multi_index(index, self.grid_shape))

    def core(self, index: tuple[int, ...]) -> tuple[slice, ...]:
        return tuple(slice(i * b, min((i + 1) * b, s)) for i, b, s in zip(index, self.block_shape, self.shape))

    def extended(self, index: tuple[int, ...]) -> tuple[slice, ...]:
        return extend(self.core(index), self.halo, self.shape, self.align)

    def block(self, index: tuple[int, ...]) -> Block:
        index = tuple(int(i) for i in index)
        return Block(self.flat_id(index), index, self.core(index), self.extended(index))

    def __iter__(self):
        for index in np.ndindex(*self.grid_shape):
            yield self.block(index)

    def neighbour_offsets(self, index: tuple[int, ...]) -> list[tuple[int, ...]]:
        """Offsets (-1, 0, 1 per axis, not all 0) of the blocks next to ``index`` (faces, edges, corners)."""
        out = []
        for off in itertools.product((-1, 0, 1), repeat=len(index) - self.batch):
            off = (0,) * self.batch + off
            if any(off) and all(0 <= i + o < g for i, o, g in zip(index, off, self.grid_shape)):
                out.append(off)
        return out

    def shared_faces(self, index: tuple[int, ...]) -> list[tuple[int, int]]:
        """(axis, side) of the core faces that touch another block; side is 0 (low) or 1 (high)."""
        return [(d, side) for d in range(self.batch, len(index)) for side in (0, 1)
                if 0 <= index[d] + (1 if side else -1) < self.grid_shape[d]]

    def block_of(self, positions: np.ndarray, axis: int) -> np.ndarray:
        return positions // self.block_shape[axis]

    def face_pairs(self) -> list[tuple[int, tuple[int, ...]]]:
        """(axis, low block index) for every pair of blocks that share a face."""
        out = []
        for index in np.ndindex(*self.grid_shape):
            for d in range(self.batch, len(index)):
                if index[d] + 1 < self.grid_shape[d]:
                    out.append((d, tuple(int(i) for i in index)))
        return out

    def group_counts(self, max_voxels: int) -> tuple[int, ...]:
        """Blocks per axis of a group (:meth:`groups`) of at most ``max_voxels`` core voxels, or one block (one
        along the batch axes)."""
        counts = [1] * len(self.grid_shape)
        while True:  # grow the axis whose group extent (in voxels) is smallest, as default_block_shape does
            growable = [d for d, (k, g) in enumerate(zip(counts, self.grid_shape)) if k < g and d >= self.batch]
            if not growable:
                break
            d = min(growable, key=lambda i: counts[i] * self.block_shape[i])
            grown = list(counts)
            grown[d] = min(2 * counts[d], self.grid_shape[d])
            if math.prod(min(k * b, s) for k, b, s in zip(grown, self.block_shape, self.shape)) > max_voxels:
                break
            counts = grown
        return tuple(counts)

    def groups(self, max_voxels: int) -> list["BlockGroup"]:
        """Boxes of neighbouring blocks tiling the grid (regularly, from block 0), each of at most ``max_voxels``
        core voxels or one block: a stage with little work per block runs one task per group."""
        counts = self.group_counts(max_voxels)
        return [BlockGroup(self, start, tuple(min(s + k, g) for s, k, g in zip(start, counts, self.grid_shape)))
                for start in itertools.product(*[range(0, g, k) for g, k in zip(self.grid_shape, counts)])]

    def neighbour_pairs(self) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
        """(index A, offset) for every unordered pair of adjacent blocks, A first in raster order."""
        out = []
        for index in np.ndindex(*self.grid_shape):
            for off in self.neighbour_offsets(index):
                if off > (0,) * len(off):  # lexicographically positive: each pair once
                    out.append((tuple(int(i) for i in index), off))
        return out


def extend(region: tuple[slice, ...], halo: tuple[int, ...], shape: tuple[int, ...],
           align: tuple[int, ...] | None = None) -> tuple[slice, ...]:
    """``region`` with ``halo`` voxels around it, inside ``shape``, starting at a multiple of ``align``."""
    align = align or (1,) * len(shape)
    return tuple(slice(max((r.start - h) // a * a, 0), min(r.stop + h, s))
                 for r, h, s, a in zip(region, halo, shape, align))


@dataclass(frozen=True)
class BlockGroup:
    """A box of blocks of a grid: block indices ``lo`` (first) to ``hi`` (one past the last) along each axis."""

    grid: BlockGrid
    lo: tuple[int, ...]
    hi: tuple[int, ...]

    @property
    def core(self) -> tuple[slice, ...]:
        """The voxels the group's blocks own."""
        first, last = self.grid.core(self.lo), self.grid.core(tuple(h - 1 for h in self.hi))
        return tuple(slice(a.start, b.stop) for a, b in zip(first, last))

    def blocks(self) -> list[Block]:
        return [self.grid.block(tuple(i + o for i, o in zip(index, self.lo)))
                for index in np.ndindex(*[h - lo for lo, h in zip(self.lo, self.hi)])]


def intersect(a: tuple[slice, ...], b: tuple[slice, ...]) -> tuple[slice, ...] | None:
    out = tuple(slice(max(x.start, y.start), min(x.stop, y.stop)) for x, y in zip(a, b))
    return None if any(s.start >= s.stop for s in out) else out


def shift(region: tuple[slice, ...], origin: tuple[int, ...]) -> tuple[slice, ...]:
    """A global region in the coordinates of an array that starts at ``origin``."""
    return tuple(slice(s.start - o, s.stop - o) for s, o in zip(region, origin))


def plan_grid(shape: tuple[int, ...], chunks: tuple[int, ...], halo: tuple[int, ...],
              block_shape: tuple[int, ...] | None = None,
              max_voxels: int = DEFAULT_BLOCK_VOXELS, align: tuple[int, ...] | None = None,
              memory_voxels: int = DEFAULT_BLOCK_VOXELS) -> BlockGrid:
    """Choose (or check) a block shape: a multiple of the chunk shape, halo smaller than the block."""
    ndim = len(shape)
    chunks = tuple(min(c, s) for c, s in zip(chunks, shape))
    if block_shape is None:
        block_shape = default_block_shape(shape, chunks, max_voxels, tuple(HALOS_PER_BLOCK * int(h) for h in halo),
                                          memory_voxels)
    else:
        block_shape = tuple(int(b) for b in block_shape)
        if len(block_shape) != ndim:
            raise ParameterError(f"--block has {len(block_shape)} values but the image is {ndim}D "
                                 f"(shape {shape}); give {ndim} values, e.g. --block {','.join(map(str, chunks))}")
        for d, (b, c, s) in enumerate(zip(block_shape, chunks, shape)):
            if b <= 0 or (b % c and b < s):
                raise ParameterError(
                    f"block {block_shape} is not a multiple of the chunk shape {chunks}; "
                    "blocks must be whole chunks so that concurrent writes are safe")
        block_shape = tuple(min(b, s) for b, s in zip(block_shape, shape))
    if len(halo) != ndim:
        raise ParameterError(f"--halo has {len(halo)} values but the image is {ndim}D; give 1 or {ndim} values")
    grid_shape = [math.ceil(s / b) for s, b in zip(shape, block_shape)]
    halo = tuple(0 if g == 1 else int(h) for h, g in zip(halo, grid_shape))
    for d, (h, b) in enumerate(zip(halo, block_shape)):
        if h < 0:
            raise ParameterError(f"halo {h} is negative; give a halo of 0 or more voxels")
        if h > b:
            raise ParameterError(
                f"halo {h} is larger than the block ({b} voxels) along axis {d}; "
                "use a larger --block or a smaller --halo")
    return BlockGrid(tuple(shape), block_shape, halo, tuple(align) if align else None)


def default_block_shape(shape, chunks, max_voxels, min_edge=None, memory_voxels=DEFAULT_BLOCK_VOXELS):
    """Whole chunks, at least ``min_edge`` voxels along each axis (within the memory bound ``memory_voxels``),
    then grown smallest axis first until the block reaches ``max_voxels``."""
    block = list(chunks)
    if min_edge is not None:
        whole = [math.ceil(s / c) * c for s, c in zip(shape, chunks)]
        wanted = [min(max(c, math.ceil(e / c) * c), w) for c, e, w in zip(chunks, min_edge, whole)]
        cap = max(memory_voxels, math.prod(chunks))
        if math.prod(wanted) > cap:  # memory first: shrink every axis alike, to whole chunks
            ratio = (cap / math.prod(wanted)) ** (1 / len(wanted))
            wanted = [max(c, int(w * ratio) // c * c) for w, c in zip(wanted, chunks)]
        block = wanted
        max_voxels = max(max_voxels, math.prod(block))
    while True:
        growable = [d for d in range(len(block)) if block[d] < shape[d]]
        if not growable:
            break
        d = min(growable, key=lambda i: block[i])
        step = block[d] + chunks[d] if block[d] < chunks[d] * 2 else block[d] * 2
        new = min(step, math.ceil(shape[d] / chunks[d]) * chunks[d])
        if math.prod(block) // block[d] * new > max_voxels:
            break
        block[d] = new
    return tuple(min(b, s) for b, s in zip(block, shape))
