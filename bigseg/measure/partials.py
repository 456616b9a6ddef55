"""The partials algebra: per-fragment statistics computed per block and merged exactly.

A *partial* is a dict of arrays with one row per fragment (the part of an object inside one block's
core). Sums, minima and maxima merge exactly; variances and co-moments merge with Chan et al.'s pairwise
formula, so the table needs no second pass over voxels.

Always there: ``count``, ``coord_sum``, ``bbox_min``/``bbox_max`` (voxel indices, max exclusive) and per channel
``sum``, ``m2``, ``min``, ``max``. With :class:`Extras`: ``coord_m2`` (the coordinates' central co-moments, pairs
of :func:`pairs`, voxel units: the shape's second moments), ``cross_m2`` (the channels' central co-moments, pairs
``i < j``) and ``coloc_sum`` (C x C: the sum of channel i over the voxels where channels i and j are both above
their thresholds; the diagonal is channel i above its own). With a parent label image, the sparse
*contingency* ``contingency_row`` / ``contingency_id`` / ``contingency_count`` (not one row per fragment: entries
naming a row): how many of the row's voxels lie in each parent object (nonzero ids only); sums, merged exactly.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Extras:
    """Statistics beyond the basic ones: the shape's second moments, the channels' co-moments and Manders'
    sums above per-channel ``thresholds`` (None: no colocalization)."""

    moments: bool = False
    thresholds: tuple[float, ...] | None = None
    #: a parent label image is read beside the labels (its contingency is added by :func:`contingency`)
    parent: bool = False

#: The keys of the sparse contingency (entries, not rows).
CONTINGENCY = ("contingency_row", "contingency_id", "contingency_count")


def pairs(k: int, diagonal: bool = True) -> list[tuple[int, int]]:
    """Index pairs (a, b), a <= b (a < b without the ``diagonal``), in the order of the co-moment columns."""
    return [(a, b) for a, b in itertools.combinations_with_replacement(range(k), 2) if diagonal or a != b]

def block_partials(labels: np.ndarray, channels: np.ndarray, origin: tuple[int, ...], n: int,
                   extras: Extras = Extras()) -> dict:
    """Statistics of labels 1..n of a block core (every label must be present).

    ``channels`` has shape (C, *labels.shape); ``origin`` is the core's global position.
    """
    flat = labels.ravel()
    where = np.flatnonzero(flat)
    return voxel_partials(where, flat[where], labels.shape, channels, origin, n, extras)


def voxel_partials(where: np.ndarray, lab: np.ndarray, shape: tuple[int, ...], channels: np.ndarray,
                   origin: tuple[int, ...], n: int, extras: Extras = Extras()) -> dict:
    """:func:`block_partials` from a core's labelled voxels: their flat indices ``where`` (in raster order)
    and their labels ``lab`` (1..n, each present)."""
    if n == 0:
        return empty_partials(len(shape), len(channels), extras)
    count = np.bincount(lab, minlength=n + 1)
    if count.size != n + 1 or not count[1:].all():
        raise ValueError("block_partials needs labels 1..n, each present")
    count = count[1:].astype(np.int64)
    # each label's voxels in raster order, one run per label (a stable radix sort while ids fit 16 bits)
    order = np.argsort(lab.astype(np.uint16) if n < 2**16 else lab, kind="stable")
    where, coord = where[order], order  # the order's buffer is reused for each axis' coordinates in turn
    starts = np.r_[0, np.cumsum(count)[:-1]]
    out, reduced, coords = {"count": count}, [], []
    for d, (size, o) in enumerate(zip(shape, origin)):
        np.floor_divide(where, math.prod(shape[d + 1:]), out=coord)
        if d:
            np.remainder(coord, size, out=coord)
        reduced.append((np.add.reduceat(coord, starts) + o * count, np.minimum.reduceat(coord, starts) + o,
                        np.maximum.reduceat(coord, starts) + (o + 1)))  # integer sums: exact
        if extras.moments:  # each axis' coordinates, kept for the products
            coords.append(coord.astype(np.int32 if max(shape) < 2**31 else np.int64))
    if extras.moments:
        local = [r[0] - o * count for r, o in zip(reduced, origin)]  # the block's own coordinates' sums
        out["coord_m2"] = _comoments(coords, local, count, starts, pairs(len(shape)))
    del coord, order, coords
    for key, i in (("coord_sum", 0), ("bbox_min", 1), ("bbox_max", 2)):
        out[key] = np.stack([r[i] for r in reduced], axis=1)
    out["coord_sum"] = out["coord_sum"].astype(np.float64)
    values = [ch.ravel()[where] for ch in channels]  # as they are: float64 sums, minima and maxima are exact
    sums = [np.add.reduceat(v, starts, dtype=np.float64) for v in values]
    out["sum"] = np.stack(sums, axis=1)
    m2 = []
    for v, total in zip(values, sums):
        deviation = np.repeat(total / count, count)
        np.subtract(v, deviation, out=deviation)
        m2.append(np.add.reduceat(np.square(deviation, out=deviation), starts))
    out["m2"] = np.stack(m2, axis=1)
    out["min"] = np.stack([np.minimum.reduceat(v, starts).astype(np.float64) for v in values], axis=1)
    out["max"] = np.stack([np.maximum.reduceat(v, starts).astype(np.float64) for v in values], axis=1)
    if extras.thresholds is not None:
        out["cross_m2"] = _comoments(values, sums, count, starts, pairs(len(values), diagonal=False))
        out["coloc_sum"] = _coloc_sums(values, extras.thresholds, starts)
    return out


def _comoments(values: list[np.ndarray], sums: list[np.ndarray], count: np.ndarray, starts: np.ndarray,
               which: list[tuple[int, int]]) -> np.ndarray:
    """Per fragment, the central co-moments sum((a - mean a) (b - mean b)) of the pairs ``which`` of ``values``
    (each fragment's voxels one run, from ``starts``): integers (coordinates) as sum(a b) - sum(a) sum(b) / n with
    the products summed exactly in int64; intensities from their deviations (two passes, no cancellation)."""
    out = np.empty((count.size, len(which)))
    deviations: dict[int, np.ndarray] = {}

    def deviation(a: int) -> np.ndarray:
        if a not in deviations:
            deviations[a] = values[a] - np.repeat(np.asarray(sums[a], np.float64) / count, count)
        return deviations[a]

    for k, (a, b) in enumerate(which):
        if values[a].dtype.kind in "iu" and values[b].dtype.kind in "iu":
            total = np.add.reduceat(np.multiply(values[a], values[b], dtype=np.int64), starts).astype(np.float64)
            out[:, k] = total - np.asarray(sums[a], np.float64) * np.asarray(sums[b], np.float64) / count
        else:
            out[:, k] = np.add.reduceat(deviation(a) * deviation(b), starts)
    return out


def _coloc_sums(values: list[np.ndarray], thresholds: tuple[float, ...], starts: np.ndarray) -> np.ndarray:
    """Per fragment, C x C (flattened): the sum of channel i over its voxels where channels i and j are both above
    their thresholds (Manders' numerators; the diagonal: channel i above its own threshold)."""
    above = [v > t for v, t in zip(values, thresholds)]
    c = len(values)
    out = np.empty((starts.size, c * c))
    for i, j in itertools.product(range(c), repeat=2):
        both = above[i] if i == j else above[i] & above[j]
        out[:, i * c + j] = np.add.reduceat(np.where(both, values[i], 0), starts, dtype=np.float64)
    return out


def contingency(rows: np.ndarray, other: np.ndarray) -> dict:
    """The contingency of voxels' ``rows`` with another label image's ids ``other`` there: one entry per (row,
    nonzero id) present, with its voxel count."""
    keep = other > 0
    return _combine(rows[keep].astype(np.int64), other[keep].astype(np.uint64), None)


def _combine(rows: np.ndarray, ids: np.ndarray, counts: np.ndarray | None) -> dict:
    """Contingency entries with their (row, id) pairs made unique, counts summed (each pair counts 1 without
    ``counts``)."""
    if rows.size == 0:
        return _no_contingency()
    order = np.lexsort((ids, rows))
    rows, ids = rows[order], ids[order]
    starts = np.flatnonzero(np.r_[True, (rows[1:] != rows[:-1]) | (ids[1:] != ids[:-1])])
    total = np.diff(np.r_[starts, rows.size]) if counts is None else np.add.reduceat(counts[order], starts)
    return {"contingency_row": rows[starts], "contingency_id": ids[starts],
            "contingency_count": total.astype(np.int64)}


def _no_contingency() -> dict:
    return {"contingency_row": np.zeros(0, np.int64), "contingency_id": np.zeros(0, np.uint64),
            "contingency_count": np.zeros(0, np.int64)}


def _dense(partials: dict) -> dict:
    return {k: v for k, v in partials.items() if k not in CONTINGENCY}


def take(partials: dict, rows) -> dict:
    out = {k: v[rows] for k, v in _dense(partials).items()}
    if "contingency_row" in partials:
        n = partials["count"].size
        new = np.full(n, -1, np.int64)
        new[rows] = np.arange(out["count"].size)
        at = new[partials["contingency_row"]]
        keep = at >= 0
        out.update({"contingency_row": at[keep], "contingency_id": partials["contingency_id"][keep],
                    "contingency_count": partials["contingency_count"][keep]})
    return out


def concat(parts: list[dict]) -> dict:
    out = {k: np.concatenate([p[k] for p in parts]) for k in _dense(parts[0])}
    if "contingency_row" in parts[0]:
        offsets = np.cumsum([0] + [p["count"].size for p in parts[:-1]])
        out["contingency_row"] = np.concatenate([p["contingency_row"] + o for p, o in zip(parts, offsets)])
        for key in CONTINGENCY[1:]:
            out[key] = np.concatenate([p[key] for p in parts])
    return out


def merge(partials: dict, group: np.ndarray, n_groups: int) -> dict:
    """Merge fragment rows into ``n_groups`` objects; ``group[i]`` is row i's object."""
    if n_groups == 0:
        return empty_partials(partials["coord_sum"].shape[1], partials["sum"].shape[1], extras_of(partials))
    count = np.bincount(group, weights=partials["count"], minlength=n_groups).astype(np.int64)
    out = {"count": count}
    for key in ("coord_sum", "sum"):
        out[key] = np.stack([np.bincount(group, weights=col, minlength=n_groups) for col in partials[key].T],
                            axis=1).reshape(n_groups, -1)
    for key, fn, init in (("bbox_min", np.minimum, np.iinfo(np.int64).max), ("bbox_max", np.maximum, -1),
                          ("min", np.minimum, np.inf), ("max", np.maximum, -np.inf)):
        col = partials[key]
        acc = np.full((n_groups, col.shape[1]), init, dtype=col.dtype)
        fn.at(acc, group, col)
        out[key] = acc
    n_i = partials["count"]
    with np.errstate(invalid="ignore", divide="ignore"):
        channels_i, channels = partials["sum"] / n_i[:, None], out["sum"] / count[:, None]
        coords_i, coords = partials["coord_sum"] / n_i[:, None], out["coord_sum"] / count[:, None]
    channel_dev = channels_i - channels[group]
    c = channel_dev.shape[1]
    out["m2"] = _chan(partials["m2"], channel_dev, n_i, [(k, k) for k in range(c)], group, n_groups)
    if "coord_m2" in partials:
        coord_dev = coords_i - coords[group]
        out["coord_m2"] = _chan(partials["coord_m2"], coord_dev, n_i, pairs(coord_dev.shape[1]), group, n_groups)
    if "cross_m2" in partials:
        out["cross_m2"] = _chan(partials["cross_m2"], channel_dev, n_i, pairs(c, diagonal=False), group, n_groups)
    if "coloc_sum" in partials:
        out["coloc_sum"] = _sum_by(partials["coloc_sum"], group, n_groups)
    if "contingency_row" in partials:
        out.update(_combine(np.asarray(group)[partials["contingency_row"]].astype(np.int64),
                            partials["contingency_id"], partials["contingency_count"]))
    return out


def _chan(m2: np.ndarray, dev: np.ndarray, n_i: np.ndarray, which: list[tuple[int, int]], group: np.ndarray,
          n_groups: int) -> np.ndarray:
    """Chan et al.'s merge of central co-moments: M_ab = sum(M_ab_i + n_i (mean_a_i - mean_a)(mean_b_i - mean_b)),
    ``dev`` holding each row's mean less its group's."""
    terms = np.stack([m2[:, k] + n_i * dev[:, a] * dev[:, b] for k, (a, b) in enumerate(which)], axis=1) \
        if which else np.zeros((n_i.size, 0))
    return _sum_by(terms, group, n_groups)


def _sum_by(columns: np.ndarray, group: np.ndarray, n_groups: int) -> np.ndarray:
    return np.stack([np.bincount(group, weights=col, minlength=n_groups) for col in columns.T],
                    axis=1).reshape(n_groups, -1)


def extras_of(partials: dict) -> Extras:
    """The :class:`Extras` that partials were computed with (the thresholds' values are not kept: a placeholder
    of the right length)."""
    c = partials["sum"].shape[1]
    return Extras("coord_m2" in partials, (0.0,) * c if "coloc_sum" in partials else None,
                  "contingency_row" in partials)


def split_batch(partials: dict, k: int) -> tuple[np.ndarray, dict]:
    """Of objects that each lie at one position along the first ``k`` axes (a time-lapse's t, a batch axis of
    the blocks): those positions (objects x k) and the partials of the other axes alone."""
    ndim = partials["coord_sum"].shape[1]
    out = {**partials, **{key: partials[key][:, k:] for key in ("coord_sum", "bbox_min", "bbox_max")}}
    if "coord_m2" in partials:
        out["coord_m2"] = partials["coord_m2"][:, [i for i, (a, _) in enumerate(pairs(ndim)) if a >= k]]
    return partials["bbox_min"][:, :k], out


def empty_partials(ndim: int, n_channels: int, extras: Extras = Extras()) -> dict:
    out = {"count": np.zeros(0, np.int64), "coord_sum": np.zeros((0, ndim)),
           "bbox_min": np.zeros((0, ndim), np.int64), "bbox_max": np.zeros((0, ndim), np.int64),
           "sum": np.zeros((0, n_channels)), "m2": np.zeros((0, n_channels)), "min": np.zeros((0, n_channels)),
           "max": np.zeros((0, n_channels))}
    if extras.moments:
        out["coord_m2"] = np.zeros((0, len(pairs(ndim))))
    if extras.thresholds is not None:
        out["cross_m2"] = np.zeros((0, len(pairs(n_channels, diagonal=False))))
        out["coloc_sum"] = np.zeros((0, n_channels * n_channels))
    if extras.parent:
        out.update(_no_contingency())
    return out
