"""Tracking: objects of a label image with a t axis linked between consecutive frames, block by block.

Four steps, each a list of worker tasks (:func:`plan`); the client holds the task lists, never a row:

1. ``OverlapTask`` per (pair of frames ``i, i + 1``, block core): the two frames' contingency over the core
   (label at i, label at i + 1, voxels in both) and each frame's per-label voxel counts and coordinate sums.
   Every voxel lies in one block core, so the sums over a pair's blocks are exact (:func:`block_overlap`).
2. ``LinkTask`` per pair: sums its blocks' files and links each object at i + 1 to a predecessor at i
   (:func:`link`): by largest overlap, or by distance for objects that overlap nothing that fits. An object
   at i that two or more objects at i + 1 each cover enough of divides into them. Memory: the objects of two
   frames.
3. ``AssignTask``, one: the frames in order; a track is a chain of linked objects up to a division (whose
   daughters start tracks of their own, with the mother's track as ``parent_track_id``). Writes each frame's
   (label, track_id, parent_track_id) and the tracks table (Parquet parts). Memory: the objects of two frames
   and the open tracks (one per object of a frame).
4. ``TrackColumnsTask`` per table part: adds ``track_id`` and ``parent_track_id`` (0: none) to the part's rows,
   rewriting it whole.

The tracks table: ``track_id``, ``parent_track_id`` (the track that divided into this one; 0 if none),
``t_start`` and ``t_end`` (the table's ``t`` of its first and last object), ``length`` (frames),
``mean_speed``: path length (centroid to centroid, in the spatial axes' unit) over elapsed time
(``(t_end - t_start) * t_scale``, in the t axis' unit: per frame interval when the t scale is 1); NaN for a
track of one frame.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from bigseg.errors import ParameterError
from bigseg.io import store
from bigseg.io import table as table_io
from bigseg.io.ome import open_array
from bigseg.methods.base import PositiveLength, describe
from bigseg.units import EXAMPLE_LENGTH, VoxelSize

#: Tracks per part of the tracks table.
TRACKS_PER_PART = 200_000
#: How an object at t + 1 got its predecessor (the ``how`` array of a pair's links).
NOT_LINKED, BY_OVERLAP, BY_DISTANCE = 0, 1, 2


class Tracking(BaseModel):
    """How objects are linked between consecutive timepoints."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    min_overlap: float = describe(
        "link an object to the object of the previous timepoint it overlaps most when that overlap is at least "
        "this fraction of the smaller of the two (0-1)", default=0.1, gt=0, le=1)
    division_overlap: float = describe(
        "an object divides when two or more objects of the next timepoint, each linked to it by overlap, each "
        "cover at least this fraction of it (0-1)", default=0.1, gt=0, le=1)
    max_distance: PositiveLength | None = describe(
        f"objects left without an overlap link are linked to the nearest unlinked object of the previous "
        f"timepoint within this distance between centroids ({EXAMPLE_LENGTH}; voxels along x); default: twice "
        "the median equivalent diameter of the previous timepoint's objects", default=None)

    def distance(self, voxel_size: VoxelSize) -> float | None:
        """``max_distance`` in the spatial axes' unit (the unit of the centroids), or None (per pair)."""
        if self.max_distance is None:
            return None
        try:
            return voxel_size.voxels(self.max_distance)[-1] * voxel_size.spacing[-1]
        except ValueError as err:
            raise ParameterError(f"track.max_distance: {err}") from None


@dataclass(frozen=True)
class OverlapTask:
    """The contingency of frames ``frame`` and ``frame + gap`` of a label array over one block core."""

    labels: tuple[str, str, int]  # url, path, zarr format of the label array (t, (z,) y, x), level 0
    frame: int                    # index along the array's t axis
    region: tuple[slice, ...]     # the block's core (spatial axes)
    out_url: str                  # .npz
    gap: int = 1                  # the next frame's index along the t axis, less ``frame``


@dataclass(frozen=True)
class LinkTask:
    """Link the objects of one pair of frames from the files of its blocks."""

    overlaps: tuple[str, ...]     # the pair's OverlapTask outputs
    scale: tuple[float, ...]      # spatial voxel size (level 0): centroids in the axes' unit
    min_overlap: float
    division_overlap: float
    max_distance: float | None    # in the axes' unit; None: twice the median equivalent diameter at frame i
    out_url: str                  # .npz: see :func:`link_pair`


@dataclass(frozen=True)
class AssignTask:
    """Track ids over the whole movie from the pairs' links, frame by frame."""

    links: tuple[str, ...]        # LinkTask outputs, pair 0 first
    frame_t: tuple[float, ...]    # the table's ``t`` of each frame (one more than ``links``)
    t_scale: float                # the t axis' scale (time per unit of ``t``)
    frames_url: str               # folder of per-frame (label, track_id, parent_track_id) files
    tracks_url: str               # the tracks table (folder of Parquet parts)


@dataclass(frozen=True)
class TrackColumnsTask:
    """Add ``track_id`` and ``parent_track_id`` to one table part (rows with ``t`` and ``label``)."""

    part_url: str
    frame_t: tuple[float, ...]
    frames_url: str


def frame_url(frames_url: str, frame: int) -> str:
    return store.join(frames_url, f"frame-{frame:09d}.npz")


def plan(labels: tuple[str, str, int], regions: list[tuple[slice, ...]], frame_t: tuple[float, ...],
         parts: list[str], voxel_size: VoxelSize, t_scale: float, params: Tracking, work_url: str,
         tracks_url: str, frames: tuple[int, ...] | None = None) -> list[list]:
    """The tasks of the four steps, one list per step (a step reads what the steps before it wrote).

    ``labels`` is the label array (level 0) with its t axis first; ``regions`` the block cores that cover
    every object voxel (blocks known to hold only background may be left out); ``frame_t`` the table's ``t``
    of each frame; ``frames`` each frame's index along the array's t axis, increasing (default: 0, 1, ...;
    e.g. the selected timepoints of a label image that has every timepoint of its image); ``parts`` the
    table's parts (each row has ``t`` and ``label``).
    """
    if len(frame_t) < 2:
        raise ParameterError(f"track: the label image has {len(frame_t)} timepoint; tracking links objects "
                             "between timepoints: select 2 or more (timepoints) or turn tracking off")
    distance = params.distance(voxel_size)
    pairs = range(len(frame_t) - 1)
    frames = tuple(range(len(frame_t))) if frames is None else tuple(frames)
    overlaps = [[OverlapTask(labels, frames[i], tuple(region), store.join(work_url, f"overlap-{i:09d}-{b:09d}.npz"),
                             frames[i + 1] - frames[i]) for b, region in enumerate(regions)] for i in pairs]
    link_tasks = [LinkTask(tuple(o.out_url for o in overlaps[i]), tuple(voxel_size.spacing), params.min_overlap,
                           params.division_overlap, distance, store.join(work_url, f"links-{i:09d}.npz"))
                  for i in pairs]
    frames_url = store.join(work_url, "frames")
    assign = AssignTask(tuple(t.out_url for t in link_tasks), tuple(frame_t), t_scale, frames_url, tracks_url)
    columns = [TrackColumnsTask(part, tuple(frame_t), frames_url) for part in parts]
    return [[o for pair in overlaps for o in pair], link_tasks, [assign], columns]


def run(task) -> int:
    """Run one task of :func:`plan` (on a worker)."""
    return WORKERS[type(task)](task)


# Step 1: block-wise overlap ----------------------------------------------------------------------------------

def block_overlap(task: OverlapTask) -> int:
    """Write the block's contingency and per-frame statistics (see :func:`overlap_arrays`); returns the
    number of overlapping label pairs."""
    arr = open_array(*task.labels)
    first = np.asarray(arr[(task.frame, *task.region)])
    second = np.asarray(arr[(task.frame + task.gap, *task.region)])
    out = overlap_arrays(first, second, tuple(r.start for r in task.region))
    store.save_arrays(task.out_url, out)
    return int(out["count"].size)


def overlap_arrays(first: np.ndarray, second: np.ndarray, origin: tuple[int, ...]) -> dict[str, np.ndarray]:
    """Of two frames' labels over one region (starting at voxel ``origin``): the overlapping pairs
    ``a`` (first frame), ``b`` (second), ``count`` (voxels in both; background excluded), and per frame ``k``
    (0, 1) its labels ``labels_k``, their voxel counts ``counts_k`` and coordinate sums ``sums_k`` (labels x
    axes, int64, whole-array voxel indices)."""
    both = (first != 0) & (second != 0)
    a, b, count = contingency(first[both], second[both])
    out = {"a": a, "b": b, "count": count}
    for k, frame in enumerate((first, second)):
        coords = np.nonzero(frame)
        labels, inverse, counts = np.unique(frame[coords], return_inverse=True, return_counts=True)
        sums = np.stack([np.bincount(inverse, weights=c, minlength=labels.size) + o * counts
                         for c, o in zip(coords, origin)], 1) if labels.size else np.zeros((0, frame.ndim))
        out.update({f"labels_{k}": labels, f"counts_{k}": counts.astype(np.int64),
                    f"sums_{k}": sums.astype(np.int64).reshape(labels.size, frame.ndim)})
    return out


def contingency(a: np.ndarray, b: np.ndarray, weights: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The distinct pairs ``(a[i], b[i])`` (sorted) and how many times (or total ``weights``) each occurs."""
    ua, ia = np.unique(a, return_inverse=True)
    ub, ib = np.unique(b, return_inverse=True)
    keys, inverse = np.unique(ia.astype(np.int64) * max(ub.size, 1) + ib, return_inverse=True)
    count = np.bincount(inverse, weights, minlength=keys.size)
    return ua[keys // max(ub.size, 1)], ub[keys % max(ub.size, 1)], count.astype(np.int64)


# Step 2: links between one pair of frames ---------------------------------------------------------------------

@dataclass(frozen=True)
class Objects:
    """One frame's objects: sorted labels, voxel counts, centroids (n x axes, in the axes' unit)."""

    labels: np.ndarray
    counts: np.ndarray
    centroids: np.ndarray


def summed(overlaps: list[str], scale: tuple[float, ...]) -> tuple[dict[str, np.ndarray], Objects, Objects]:
    """A pair's contingency and both frames' objects, summed over its blocks' files."""
    parts = list(store.iter_arrays(list(overlaps)))
    a, b, count = contingency(*(np.concatenate([p[k] for p in parts]) for k in ("a", "b")),
                              weights=np.concatenate([p["count"] for p in parts]))
    frames = []
    for k in (0, 1):
        labels = np.concatenate([p[f"labels_{k}"] for p in parts])
        unique, inverse = np.unique(labels, return_inverse=True)
        counts = np.bincount(inverse, np.concatenate([p[f"counts_{k}"] for p in parts]), unique.size)
        sums = np.concatenate([p[f"sums_{k}"] for p in parts])
        means = np.stack([np.bincount(inverse, sums[:, d], unique.size) for d in range(sums.shape[1])], 1) \
            / np.maximum(counts, 1)[:, None]
        frames.append(Objects(unique, counts.astype(np.int64), means * np.asarray(scale)))
    return {"a": a, "b": b, "count": count}, frames[0], frames[1]


def link(pairs: dict[str, np.ndarray], first: Objects, second: Objects, min_overlap: float,
         division_overlap: float, max_distance: float | None, voxel_volume: float
         ) -> tuple[np.ndarray, np.ndarray]:
    """Each object of ``second``'s predecessor in ``first`` (its index, -1 if none) and how it was found.

    Overlap: the object of ``first`` it shares most voxels with (ties: the lower label), if they share at least
    ``min_overlap`` of the smaller one's voxels. An object of ``first`` that two or more such objects each
    overlap by at least ``division_overlap`` of its voxels divides into them (its daughters); else only the one
    overlapping it most is linked to it, and the others are left unlinked. Distance: the objects of ``second``
    left unlinked and those of ``first`` left without a successor are paired by a linear assignment on centroid
    distances up to ``max_distance`` (most pairs, then least total distance); ``None`` = twice the median
    equivalent diameter of ``first``'s objects (``voxel_volume`` = one voxel's volume, area in 2D).
    """
    predecessor = np.full(second.labels.size, -1, np.int64)
    how = np.full(second.labels.size, NOT_LINKED, np.uint8)
    if pairs["count"].size:
        ia = np.searchsorted(first.labels, pairs["a"])
        ib = np.searchsorted(second.labels, pairs["b"])
        count = pairs["count"].astype(np.int64)
        order = np.lexsort((ia, -count, ib))  # per object at t + 1: largest overlap first, then lower label
        best = order[np.r_[True, ib[order][1:] != ib[order][:-1]]]
        best = best[count[best] >= min_overlap * np.minimum(first.counts[ia[best]], second.counts[ib[best]])]
        best = best[_successors(ia[best], ib[best], count[best], count[best] >= division_overlap *
                                first.counts[ia[best]])]
        predecessor[ib[best]] = ia[best]
        how[ib[best]] = BY_OVERLAP
    ended = np.ones(first.labels.size, bool)
    ended[predecessor[predecessor >= 0]] = False
    ended, unlinked = np.flatnonzero(ended), np.flatnonzero(predecessor < 0)
    if ended.size and unlinked.size:
        if max_distance is None:
            max_distance = 2 * float(np.median(equivalent_diameter(first.counts * voxel_volume,
                                                                   first.centroids.shape[1])))
        i, j = nearest_pairs(first.centroids[ended], second.centroids[unlinked], max_distance)
        predecessor[unlinked[j]] = ended[i]
        how[unlinked[j]] = BY_DISTANCE
    return predecessor, how


def _successors(a: np.ndarray, b: np.ndarray, count: np.ndarray, divides: np.ndarray) -> np.ndarray:
    """Which candidate links ``a -> b`` (overlap ``count``) to keep: all of an object's that ``divides`` where
    two or more do (its daughters), else only its largest (ties: the lower ``b``)."""
    order = np.lexsort((b, -count, a))
    a_sorted = a[order]
    start = np.flatnonzero(np.r_[True, a_sorted[1:] != a_sorted[:-1]])
    rank = np.arange(a.size) - np.repeat(start, np.diff(np.r_[start, a.size]))
    daughters = np.bincount(a, divides, minlength=a.max(initial=0) + 1)[a_sorted] >= 2
    keep = np.zeros(a.size, bool)
    keep[order] = np.where(daughters, divides[order], rank == 0)
    return keep


def equivalent_diameter(volume: np.ndarray, ndim: int) -> np.ndarray:
    """The diameter of the disc (2D) or ball (3D) of each ``volume`` (area)."""
    return 2 * np.sqrt(volume / math.pi) if ndim == 2 else np.cbrt(6 * volume / math.pi)


def nearest_pairs(a: np.ndarray, b: np.ndarray, max_distance: float) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(i, j)`` of points of ``a`` and ``b`` paired one to one within ``max_distance``: the most
    pairs, then the least total distance (a linear assignment per group of points within reach of each
    other)."""
    near = cKDTree(a).sparse_distance_matrix(cKDTree(b), max_distance, output_type="ndarray")
    if not near.size:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    i, j, d = near["i"], near["j"], near["v"]
    graph = coo_matrix((np.ones(i.size), (i, a.shape[0] + j)), shape=(a.shape[0] + b.shape[0],) * 2)
    _, component = connected_components(graph, directed=False)
    group = component[i]
    order = np.argsort(group, kind="stable")
    bounds = np.flatnonzero(np.r_[True, group[order][1:] != group[order][:-1], True])
    out_i, out_j = [], []
    for start, stop in zip(bounds[:-1], bounds[1:]):
        e = order[start:stop]
        rows, ri = np.unique(i[e], return_inverse=True)
        cols, ci = np.unique(j[e], return_inverse=True)
        unreachable = (max_distance + 1) * (min(rows.size, cols.size) + 1)  # dearer than any reachable set
        cost = np.full((rows.size, cols.size), unreachable)
        cost[ri, ci] = d[e]
        r, c = linear_sum_assignment(cost)
        kept = cost[r, c] <= max_distance
        out_i.append(rows[r[kept]])
        out_j.append(cols[c[kept]])
    return np.concatenate(out_i).astype(np.int64), np.concatenate(out_j).astype(np.int64)


def link_pair(task: LinkTask) -> int:
    """Write the pair's links: ``labels_0`` (every object at i), ``labels_1`` (every object at i + 1) with its
    ``predecessor`` (a label at i, 0: none), ``how`` (:data:`BY_OVERLAP`, :data:`BY_DISTANCE`,
    :data:`NOT_LINKED`) and ``step`` (centroid distance to its predecessor, NaN if none); returns the number of
    links."""
    pairs, first, second = summed(list(task.overlaps), task.scale)
    predecessor, how = link(pairs, first, second, task.min_overlap, task.division_overlap,
                             task.max_distance, math.prod(task.scale))
    linked = predecessor >= 0
    step = np.full(second.labels.size, np.nan)
    step[linked] = np.linalg.norm(second.centroids[linked] - first.centroids[predecessor[linked]], axis=1)
    labels = np.zeros(second.labels.size, first.labels.dtype)
    labels[linked] = first.labels[predecessor[linked]]
    store.save_arrays(task.out_url, {"labels_0": first.labels, "labels_1": second.labels, "predecessor": labels,
                                     "how": how, "step": step})
    return int(linked.sum())


# Step 3: track ids, frame by frame ----------------------------------------------------------------------------

@dataclass
class _OpenTracks:
    """The tracks through the current frame, one per object (aligned with its sorted labels)."""

    labels: np.ndarray
    track: np.ndarray
    parent: np.ndarray
    start: np.ndarray   # frame index of the track's first object
    path: np.ndarray    # path length so far

    def take(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        return {"track_id": self.track[rows], "parent_track_id": self.parent[rows], "start": self.start[rows],
                "path": self.path[rows]}


def assign_tracks(task: AssignTask) -> int:
    """Write each frame's track ids and the tracks table; returns the number of tracks."""
    frame_t = np.asarray(task.frame_t, float)
    ended: list[dict[str, np.ndarray]] = []
    parts = n_tracks = 0
    tracks = None
    for i, links in enumerate(store.iter_arrays(list(task.links), batch=1)):
        if tracks is None:  # frame 0: a track per object
            n_tracks = links["labels_0"].size
            tracks = _OpenTracks(links["labels_0"], np.arange(1, n_tracks + 1, dtype=np.int64),
                                 np.zeros(n_tracks, np.int64), np.zeros(n_tracks, np.int64), np.zeros(n_tracks))
        _save_frame(task.frames_url, i, tracks)
        tracks, done = _advance(tracks, links, i + 1, n_tracks + 1)
        n_tracks = max(n_tracks, int(tracks.track.max(initial=0)))  # new tracks got the next ids
        ended.append(done)
        if sum(e["track_id"].size for e in ended) >= TRACKS_PER_PART:
            parts = _write_tracks(task, ended, i, frame_t, parts)
            ended = []
    last = len(task.links)
    _save_frame(task.frames_url, last, tracks)
    ended.append(tracks.take(np.arange(tracks.labels.size)))
    _write_tracks(task, ended, last, frame_t, parts)
    return n_tracks


def _advance(tracks: _OpenTracks, links: dict[str, np.ndarray], frame: int, first_new: int
             ) -> tuple[_OpenTracks, dict[str, np.ndarray]]:
    """The tracks through ``frame`` (from the links into it; new ones numbered from ``first_new``, in the
    order of their labels) and those that ended at the frame before."""
    labels = links["labels_1"]
    linked = links["predecessor"] != 0
    previous = np.searchsorted(tracks.labels, links["predecessor"])
    successors = np.bincount(previous[linked], minlength=tracks.labels.size)
    goes_on = linked.copy()
    goes_on[linked] = successors[previous[linked]] == 1
    daughter = linked & ~goes_on
    track = np.zeros(labels.size, np.int64)
    track[goes_on] = tracks.track[previous[goes_on]]
    track[~goes_on] = np.arange(first_new, first_new + int((~goes_on).sum()))
    parent = np.zeros(labels.size, np.int64)
    parent[goes_on] = tracks.parent[previous[goes_on]]
    parent[daughter] = tracks.track[previous[daughter]]
    start = np.full(labels.size, frame, np.int64)
    start[goes_on] = tracks.start[previous[goes_on]]
    path = np.zeros(labels.size)
    path[goes_on] = tracks.path[previous[goes_on]] + links["step"][goes_on]
    done = tracks.take(np.flatnonzero(successors != 1))
    return _OpenTracks(labels, track, parent, start, path), done


def _save_frame(frames_url: str, frame: int, tracks: _OpenTracks) -> None:
    store.save_arrays(frame_url(frames_url, frame), {"label": tracks.labels, "track_id": tracks.track,
                                                     "parent_track_id": tracks.parent})


def _write_tracks(task: AssignTask, ended: list[dict[str, np.ndarray]], frame: int, frame_t: np.ndarray,
                  part: int) -> int:
    """Write tracks ended at ``frame`` or before as the next part (sorted by track id); returns the next
    part's index. Ended tracks are written after the frames they end in, all ending by ``frame``."""
    rows = {k: np.concatenate([e[k] for e in ended]) for k in ended[0]}
    order = np.argsort(rows["track_id"], kind="stable")
    rows = {k: v[order] for k, v in rows.items()}
    end = _end_frames(ended, frame)[order]
    elapsed = (frame_t[end] - frame_t[rows["start"]]) * task.t_scale
    with np.errstate(invalid="ignore", divide="ignore"):
        speed = np.where(end > rows["start"], rows["path"] / elapsed, np.nan)
    df = pd.DataFrame({"track_id": rows["track_id"], "parent_track_id": rows["parent_track_id"],
                       "t_start": frame_t[rows["start"]], "t_end": frame_t[end],
                       "length": end - rows["start"] + 1, "mean_speed": speed})
    table_io.write_part(df, table_io.part_url(task.tracks_url, part))
    return part + 1


def _end_frames(ended: list[dict[str, np.ndarray]], frame: int) -> np.ndarray:
    """The frame each ended track ends at: entry k of ``ended`` holds the tracks that ended at frame
    ``frame - len(ended) + 1 + k``."""
    first = frame - len(ended) + 1
    return np.concatenate([np.full(e["track_id"].size, first + k, np.int64) for k, e in enumerate(ended)])


# Step 4: the table's columns ----------------------------------------------------------------------------------

def add_track_columns(task: TrackColumnsTask) -> int:
    """Rewrite the part with ``track_id`` and ``parent_track_id`` (replacing any earlier ones: a rerun gives
    the same part); returns its number of rows."""
    fs, path = store.filesystem(task.part_url)
    df = pq.read_table(path, filesystem=fs).to_pandas().drop(columns=["track_id", "parent_track_id"],
                                                             errors="ignore")
    frame = _find(np.asarray(task.frame_t, float), df["t"].to_numpy(float))
    track = np.zeros(len(df), np.int64)
    parent = np.zeros(len(df), np.int64)
    labels = df["label"].to_numpy()
    for f in np.unique(frame[frame >= 0]):
        rows = np.flatnonzero(frame == f)
        ids = store.load_arrays(frame_url(task.frames_url, int(f)))
        at = _find(ids["label"], labels[rows])
        found = at >= 0
        track[rows[found]] = ids["track_id"][at[found]]
        parent[rows[found]] = ids["parent_track_id"][at[found]]
    df["track_id"], df["parent_track_id"] = track, parent
    table_io.write_part(df, task.part_url)
    return len(df)


def _find(keys: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Where each of ``values`` is in the sorted ``keys`` (-1 where it is not)."""
    if not keys.size:
        return np.full(values.size, -1, np.int64)
    at = np.minimum(np.searchsorted(keys, values), keys.size - 1)
    return np.where(keys[at] == values, at, -1)


def read_tracks(tracks_url: str) -> pd.DataFrame:
    """The tracks table, sorted by track id."""
    fs, path = store.filesystem(tracks_url)
    return pq.read_table(path, filesystem=fs).to_pandas().sort_values("track_id", ignore_index=True)


WORKERS = {OverlapTask: block_overlap, LinkTask: link_pair, AssignTask: assign_tracks,
           TrackColumnsTask: add_track_columns}
