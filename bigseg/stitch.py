"""The stitch stage: join fragments of one object across block boundaries, then number objects.

Two rules, chosen by the method (:mod:`bigseg.stitch_rules`):

* ``touch`` — fragments in neighbouring cores that touch across the boundary are one object. Exact
  for connected components. One task per face reads the two voxel planes on either side of it
  (with a one-voxel margin, so that edge and corner contacts count too).
* ``iou`` — for every pair of adjacent blocks, each block's prediction over the other's core (its
  halo) is compared with the other's own fragments; fragments whose predictions overlap with an
  IoU above the threshold are one object. A boundary fragment that matches the other block's
  interior (complete) object is a sliver of it and is dropped.

Semantic class maps (an output kind, not a rule): the values are class numbers, the same in every block,
so nothing is compared; the statistics are merged by class (:func:`resolve_classes`).

The rule objects (:mod:`bigseg.stitch_rules`) choose the face tasks; this module holds what they run.

Only boundary fragments (ids 1..k of a block) enter the graph; interior fragments get their final id
by arithmetic. Tasks return edges as (block A, fragment A, block B, fragment B) rows.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from bigseg.blocks import BlockGroup, BlockGrid, intersect
from bigseg.io import store
from bigseg.io.ome import open_array
from bigseg.segment_blocks import BlockSummary, JobFiles

EDGE_COLUMNS = 4
#: Block id of an edge (block, fragment, DROP, 0) that drops a fragment instead of joining two.
DROP = -1


@dataclass(frozen=True)
class TouchTask:
    """The faces of a group of blocks: every face between two of its blocks, and those to the blocks after it
    along each axis."""

    group: BlockGroup
    files: JobFiles
    connectivity: int


@dataclass(frozen=True)
class OverlapTask:
    grid: BlockGrid
    files: JobFiles
    a: tuple[int, ...]
    offset: tuple[int, ...]
    n_boundary_a: int
    n_boundary_b: int
    n_fragments_a: int
    n_fragments_b: int
    iou_threshold: float


def no_edges() -> np.ndarray:
    return np.zeros((0, EDGE_COLUMNS), np.int64)


def touch_edges(task: TouchTask) -> np.ndarray:
    """Fragment pairs that touch across the faces of a group of blocks.

    The read: the group's cores and one voxel more after them along each axis (clipped to the image), in one
    piece, or, for a group of one block, only the two voxel planes either side of each face. A contact across
    a face is a pair of voxels on either side of it, laterally at most one voxel apart; the group finds (at
    least) those whose voxel before the face, and whose smaller lateral coordinates, lie in its cores: so every
    contact is found by some group, within its read."""
    group, grid = task.group, task.group.grid
    region = tuple(slice(s.start, min(s.stop + (d >= grid.batch), n))  # no faces across batch axes (time)
                   for d, (s, n) in enumerate(zip(group.core, grid.shape)))
    fragments = open_array(task.files.fragments, "", 3)
    whole = None if math.prod(np.subtract(group.hi, group.lo)) == 1 else np.asarray(fragments[region])
    sides = {}  # axis -> (face positions, the planes before them, the planes after them)
    for d in range(grid.batch, len(grid.shape)):
        planes = np.arange(group.lo[d] + 1, group.hi[d] + 1) * grid.block_shape[d]  # the faces' positions
        planes = planes[planes < grid.shape[d]]
        if planes.size == 0:
            continue
        if whole is None:  # one face along d: read the planes either side of it
            slab = np.asarray(fragments[region[:d] + (slice(planes[0] - 1, planes[0] + 1),) + region[d + 1:]])
            sides[d] = planes, np.take(slab, [0], axis=d), np.take(slab, [1], axis=d)
        else:
            local = planes - region[d].start
            sides[d] = planes, np.take(whole, local - 1, axis=d), np.take(whole, local, axis=d)
    n_ids = max([int(side.max(initial=0)) for _, *both in sides.values() for side in both], default=0) + 1
    keys = _FragmentKeys(group, tuple(s.start for s in region), n_ids)
    pairs = [np.zeros((2, 0), np.int64)]
    for d, (planes, low, high) in sides.items():
        pairs += _contacts(keys, d, planes, low, high, task.connectivity)
    return keys.edges(_unique_pairs(np.concatenate(pairs, axis=1), keys.n_keys))


class _FragmentKeys:
    """The fragments of a group's read as one int64 key each: (block, in the box of blocks the read touches)
    x fragment id."""

    def __init__(self, group: BlockGroup, origin: tuple[int, ...], n_ids: int):
        self.group, self.origin, self.n_ids = group, origin, n_ids
        self.box = tuple(h - lo + (d >= group.grid.batch)  # the group's blocks and the next ones (not in time)
                         for d, (lo, h) in enumerate(zip(group.lo, group.hi)))
        self.n_keys = math.prod(self.box) * n_ids

    def of(self, ids: np.ndarray, axis: int, positions: np.ndarray) -> np.ndarray:
        """Keys of ``ids``: voxels of the read at global ``positions`` along ``axis``, all along the others."""
        grid, flat = self.group.grid, np.zeros((), np.int64)
        for j, n in enumerate(ids.shape):
            pos = positions if j == axis else self.origin[j] + np.arange(n)
            shape = [1] * ids.ndim
            shape[j] = n
            flat = flat * self.box[j] + (grid.block_of(pos, j) - self.group.lo[j]).reshape(shape)
        return flat * self.n_ids + ids

    def edges(self, pairs: np.ndarray) -> np.ndarray:
        """(block A, fragment A, block B, fragment B) rows of key pairs (2, n)."""
        out = []
        for key in pairs:
            local = np.unravel_index(key // self.n_ids, self.box)
            out += [np.ravel_multi_index(tuple(i + lo for i, lo in zip(local, self.group.lo)),
                                         self.group.grid.grid_shape), key % self.n_ids]
        return np.stack(out, axis=1).astype(np.int64)


def _contacts(keys: _FragmentKeys, d: int, planes: np.ndarray, low_ids: np.ndarray, high_ids: np.ndarray,
              connectivity: int) -> list:
    """Key pairs (2, n) of the contacts across the faces at ``planes`` (the first voxel after each) along ``d``,
    between the planes of fragment ids before them (``low_ids``) and after them (``high_ids``)."""
    low, high = keys.of(low_ids, d, planes - 1), keys.of(high_ids, d, planes)
    out = []
    for step in itertools.product((-1, 0, 1), repeat=low.ndim - 1):
        if sum(map(abs, step)) > connectivity - 1:
            continue
        step = step[:d] + (0,) + step[d:]
        src = tuple(slice(max(0, -s), n - max(0, s)) for s, n in zip(step, low.shape))
        dst = tuple(slice(max(0, s), n - max(0, -s)) for s, n in zip(step, low.shape))
        hit = (low_ids[src] > 0) & (high_ids[dst] > 0)
        a, b = low[src][hit], high[dst][hit]
        first = np.ones(a.size, bool)  # runs along the last axis repeat a pair: cheap to drop before sorting
        first[1:] = (a[1:] != a[:-1]) | (b[1:] != b[:-1])
        out.append(np.stack([a[first], b[first]]))
    return out


def _unique_pairs(pairs: np.ndarray, n_keys: int) -> np.ndarray:
    """The distinct columns of ``pairs`` (2, n) of keys below ``n_keys``: through one int64 code when it fits."""
    if n_keys < 2**31:
        return np.stack(np.divmod(np.unique(pairs[0] * n_keys + pairs[1]), n_keys))
    return np.unique(pairs, axis=1)


def overlap_edges(task: OverlapTask) -> np.ndarray:
    """Fragment pairs of blocks A and B whose predictions over the shared overlap have IoU > threshold."""
    grid = task.grid
    b = tuple(i + o for i, o in zip(task.a, task.offset))
    id_a, id_b = grid.flat_id(task.a), grid.flat_id(b)
    fragments = open_array(task.files.fragments, "", 3)
    in_a = intersect(grid.core(task.a), grid.extended(b))  # A's fragments vs B's halo
    in_b = intersect(grid.core(b), grid.extended(task.a))  # B's fragments vs A's halo
    neg = tuple(-o for o in task.offset)
    view_a = np.concatenate([fragments[in_a].ravel(),
                             store.load_array(task.files.halo_slab(id_a, task.offset)).ravel()]).astype(np.int64)
    view_b = np.concatenate([store.load_array(task.files.halo_slab(id_b, neg)).ravel(),
                             fragments[in_b].ravel()]).astype(np.int64)
    la, lb, inter, iou = overlaps(view_a, view_b)
    same = iou > task.iou_threshold
    a_boundary, b_boundary = la <= task.n_boundary_a, lb <= task.n_boundary_b
    # A boundary fragment that is the same object as the other block's *interior* fragment (a complete
    # object there) is a sliver of that object spilling over the face in this block's prediction: dropped.
    a_interior, b_interior = (la > task.n_boundary_a) & (la <= task.n_fragments_a), \
        (lb > task.n_boundary_b) & (lb <= task.n_fragments_b)
    keep = same & a_boundary & b_boundary
    drop_a, drop_b = same & a_boundary & b_interior, same & b_boundary & a_interior
    rows = [np.stack([np.full(keep.sum(), id_a), la[keep], np.full(keep.sum(), id_b), lb[keep]], axis=1),
            np.stack([np.full(drop_a.sum(), id_a), la[drop_a], np.full(drop_a.sum(), DROP), np.zeros(drop_a.sum())],
                     axis=1),
            np.stack([np.full(drop_b.sum(), id_b), lb[drop_b], np.full(drop_b.sum(), DROP), np.zeros(drop_b.sum())],
                     axis=1)]
    return np.concatenate(rows).astype(np.int64)


def overlaps(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every pair of labels (la, lb) that share voxels in ``a`` and ``b``: the shared voxel count and IoU."""
    a, b = a.ravel().astype(np.int64), b.ravel().astype(np.int64)
    size_a, size_b = np.bincount(a), np.bincount(b)
    both = (a > 0) & (b > 0)
    width = int(b.max(initial=0)) + 1
    pairs, inter = np.unique(a[both] * width + b[both], return_counts=True)
    la, lb = pairs // width, pairs % width
    return la, lb, inter, inter / (size_a[la] + size_b[lb] - inter)


@dataclass(frozen=True)
class Lookup:
    """Final ids. Boundary fragments: ``boundary_ids[block]`` (0 = dropped as too small);
    interior fragment j of a block: ``interior_base[block] + j - n_boundary[block]``.

    The objects of the blocks' boundary statistics (:meth:`~bigseg.segment_blocks.JobFiles.boundary_stats`):
    row i of block b's file is object ``row_labels[row_prefix[b] + i]`` (0 = dropped), for the measure stage
    to merge on the workers. Arrays in compact dtypes: the client holds a few bytes per boundary fragment."""

    n_objects: int
    n_boundary_objects: int
    boundary_ids: dict[int, np.ndarray]
    interior_base: np.ndarray
    row_labels: np.ndarray
    row_prefix: np.ndarray
    #: the object (joined group, before min_size and sliver dropping) of each boundary fragment, by block
    boundary_groups: dict[int, np.ndarray] = field(default_factory=dict)


def resolve(summaries: list[BlockSummary], n_blocks: int, edges, min_size: int) -> Lookup:
    """Union the boundary fragments along ``edges`` (one array of edge rows, or a list of them), judge
    ``min_size`` on the whole objects' voxel counts and number all objects."""
    summaries = sorted(summaries, key=lambda s: s.block_id)
    k = np.zeros(n_blocks, np.int64)
    n = np.zeros(n_blocks, np.int64)
    for s in summaries:
        k[s.block_id], n[s.block_id] = s.n_boundary, s.n_fragments
    prefix = np.concatenate([[0], np.cumsum(k)])
    total = int(prefix[-1])
    src, dst, dropped = fragment_pairs(edges, prefix, k)
    n_comp, comp = components(src, dst, total)
    del src, dst
    counts = [s.counts for s in summaries if s.n_boundary]
    sizes = np.bincount(comp, weights=np.concatenate(counts) if counts else None, minlength=n_comp)
    kept = sizes >= min_size
    kept[comp[dropped]] = False  # slivers are singletons: dropping them drops nothing else
    n_boundary_objects = int(kept.sum())
    final = np.zeros(n_comp, _id_dtype(n_boundary_objects))
    final[kept] = np.arange(1, n_boundary_objects + 1)
    fragment_ids = final[comp]
    interior = n - k
    base = n_boundary_objects + np.concatenate([[0], np.cumsum(interior)[:-1]])
    boundary_ids = {int(b): fragment_ids[prefix[b]:prefix[b + 1]] for b in np.flatnonzero(k)}
    groups = {int(b): comp[prefix[b]:prefix[b + 1]] for b in np.flatnonzero(k)}
    return Lookup(int(n_boundary_objects + interior.sum()), n_boundary_objects, boundary_ids, base,
                  fragment_ids, prefix, groups)


def components(src: np.ndarray, dst: np.ndarray, total: int) -> tuple[int, np.ndarray]:
    """Connected components of ``total`` fragments joined by the pairs (src, dst), numbered in order of
    their first fragment (block order): deterministic ids."""
    graph = coo_matrix((np.ones(src.size, np.int8), (src, dst)), shape=(total, total))
    n_comp, comp = connected_components(graph, directed=False)
    del graph
    first = np.full(n_comp, total, comp.dtype)
    np.minimum.at(first, comp, np.arange(total, dtype=comp.dtype))
    if np.any(first[1:] < first[:-1]):
        rank = np.empty(n_comp, comp.dtype)
        rank[np.argsort(first, kind="stable")] = np.arange(n_comp, dtype=comp.dtype)
        comp = rank[comp]
    return n_comp, comp


def fragment_pairs(edges, prefix: np.ndarray, k: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Edge rows as pairs of global fragment indices (fragments of block b: prefix[b]..prefix[b+1]-1), less
    the pairs with a dropped fragment, and which fragments are dropped. ``edges``: one array of rows, or a list
    of them (taken about ``EDGE_BATCH`` rows at a time: few copies of the edges on the client at once)."""
    total = int(prefix[-1])
    index = np.int32 if total < 2**31 else np.int64
    dropped = np.zeros(total, bool)
    src, dst = [np.zeros(0, index)], [np.zeros(0, index)]
    for batch in _batches([edges] if isinstance(edges, np.ndarray) else edges):
        drops = batch[:, 2] == DROP
        if drops.any():
            dropped[prefix[batch[drops, 0]] + batch[drops, 1] - 1] = True
            batch = batch[~drops]
        if np.any(batch[:, 1] > k[batch[:, 0]]) or np.any(batch[:, 3] > k[batch[:, 2]]):
            raise AssertionError("an edge names a fragment that is not a boundary fragment")
        src.append((prefix[batch[:, 0]] + batch[:, 1] - 1).astype(index))
        dst.append((prefix[batch[:, 2]] + batch[:, 3] - 1).astype(index))
    src, dst = np.concatenate(src), np.concatenate(dst)
    joined = ~(dropped[src] | dropped[dst])  # a dropped sliver joins nothing
    return src[joined], dst[joined], dropped


#: Edge rows converted at a time by :func:`fragment_pairs`.
EDGE_BATCH = 2**20


def _batches(parts):
    """The rows of ``parts`` (arrays of edge rows) as int64 arrays of about ``EDGE_BATCH`` rows."""
    pending, rows = [], 0
    for part in parts:
        pending.append(np.asarray(part).reshape(-1, EDGE_COLUMNS))
        rows += len(pending[-1])
        if rows >= EDGE_BATCH:
            yield np.concatenate(pending).astype(np.int64, copy=False)
            pending, rows = [], 0
    if pending:
        yield np.concatenate(pending).astype(np.int64, copy=False)


def _id_dtype(n: int) -> np.dtype:
    return np.dtype(np.uint32 if n < 2**32 else np.uint64)


def resolve_classes(summaries: list[BlockSummary], n_blocks: int) -> Lookup:
    """A semantic class map: fragment i of every block is class i (identity lookup); the objects are the
    classes present anywhere, their statistics merged by class on the workers."""
    summaries = sorted((s for s in summaries if s.n_fragments), key=lambda s: s.block_id)
    n_classes = max((s.n_fragments for s in summaries), default=0)
    dtype = _id_dtype(n_classes)
    ids = np.arange(1, n_classes + 1, dtype=dtype)
    boundary_ids = {s.block_id: ids[:s.n_fragments] for s in summaries}
    present = [np.flatnonzero(s.counts).astype(dtype) + 1 for s in summaries]
    rows = np.zeros(n_blocks, np.int64)
    for s, p in zip(summaries, present):
        rows[s.block_id] = p.size
    row_labels = np.concatenate(present) if present else np.zeros(0, dtype)
    n_present = int(np.count_nonzero(np.bincount(row_labels, minlength=1)[1:]))
    return Lookup(n_present, n_present, boundary_ids, np.zeros(n_blocks, np.int64), row_labels,
                  np.concatenate([[0], np.cumsum(rows)]))
