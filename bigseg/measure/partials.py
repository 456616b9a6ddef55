"""The partials algebra: per-fragment statistics computed per block and merged exactly.

A *partial* is a dict of arrays with one row per fragment (the part of an object inside one block's
core). Sums, minima and maxima merge exactly; variances merge with Chan et al.'s pairwise formula,
so the table needs no second pass over voxels.
"""
from __future__ import annotations

import math

import numpy as np

def block_partials(labels: np.ndarray, channels: np.ndarray, origin: tuple[int, ...], n: int) -> dict:
    """Statistics of labels 1..n of a block core (every label must be present).

    ``channels`` has shape (C, *labels.shape); ``origin`` is the core's global position.
    """
    flat = labels.ravel()
    where = np.flatnonzero(flat)
    return voxel_partials(where, flat[where], labels.shape, channels, origin, n)


def voxel_partials(where: np.ndarray, lab: np.ndarray, shape: tuple[int, ...], channels: np.ndarray,
                   origin: tuple[int, ...], n: int) -> dict:
    """:func:`block_partials` from a core's labelled voxels: their flat indices ``where`` (in raster order)
    and their labels ``lab`` (1..n, each present)."""
    if n == 0:
        return empty_partials(len(shape), len(channels))
    count = np.bincount(lab, minlength=n + 1)
    if count.size != n + 1 or not count[1:].all():
        raise ValueError("block_partials needs labels 1..n, each present")
    count = count[1:].astype(np.int64)
    # each label's voxels in raster order, one run per label (a stable radix sort while ids fit 16 bits)
    order = np.argsort(lab.astype(np.uint16) if n < 2**16 else lab, kind="stable")
    where, coord = where[order], order  # the order's buffer is reused for each axis' coordinates in turn
    starts = np.r_[0, np.cumsum(count)[:-1]]
    out, reduced = {"count": count}, []
    for d, (size, o) in enumerate(zip(shape, origin)):
        np.floor_divide(where, math.prod(shape[d + 1:]), out=coord)
        if d:
            np.remainder(coord, size, out=coord)
        reduced.append((np.add.reduceat(coord, starts) + o * count, np.minimum.reduceat(coord, starts) + o,
                        np.maximum.reduceat(coord, starts) + (o + 1)))  # integer sums: exact
    del coord, order
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
    return out


def take(partials: dict, rows) -> dict:
    return {k: v[rows] for k, v in partials.items()}


def concat(parts: list[dict]) -> dict:
    keys = parts[0].keys()
    return {k: np.concatenate([p[k] for p in parts]) for k in keys}


def merge(partials: dict, group: np.ndarray, n_groups: int) -> dict:
    """Merge fragment rows into ``n_groups`` objects; ``group[i]`` is row i's object."""
    if n_groups == 0:
        return empty_partials(partials["coord_sum"].shape[1], partials["sum"].shape[1])
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
    # Chan et al.: M2 = sum(M2_i + n_i * (mean_i - mean)^2)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_i = partials["sum"] / partials["count"][:, None]
        mean = out["sum"] / count[:, None]
    dev = partials["count"][:, None] * (mean_i - mean[group]) ** 2
    out["m2"] = np.stack([np.bincount(group, weights=m + d, minlength=n_groups)
                          for m, d in zip(partials["m2"].T, dev.T)], axis=1).reshape(n_groups, -1)
    return out


def empty_partials(ndim: int, n_channels: int) -> dict:
    return {"count": np.zeros(0, np.int64), "coord_sum": np.zeros((0, ndim)), "bbox_min": np.zeros((0, ndim), np.int64),
            "bbox_max": np.zeros((0, ndim), np.int64), "sum": np.zeros((0, n_channels)),
            "m2": np.zeros((0, n_channels)), "min": np.zeros((0, n_channels)), "max": np.zeros((0, n_channels))}
