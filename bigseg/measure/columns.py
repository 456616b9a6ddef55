"""The measurements table's columns from merged partials: one row per object, physical units.

Shape from second moments (partials with ``coord_m2``), as scikit-image's ``regionprops`` with ``spacing``
defines them: the inertia tensor T = trace(C) I - C of the coordinates' covariance C (physical units),
``inertia_tensor_eigvals-k`` (descending), ``axis_major_length`` / ``axis_minor_length`` (2D: 4 sqrt of the
largest / smallest eigenvalue; 3D: sqrt(10 (l0 + l1 - l2)) / sqrt(10 (-l0 + l1 + l2))), and in 2D
``eccentricity`` and ``orientation`` (radians, between the row axis and the major axis).

Colocalization (partials with ``cross_m2`` and ``coloc_sum``), for each pair of channels a < b:
``pearson_<a>_<b>`` (Pearson's r of the two channels over the object's voxels), ``manders_m1_<a>_<b>`` (the share
of channel a's intensity above its threshold that lies where channel b is above its threshold, too) and
``manders_m2_<a>_<b>`` (the same for b).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from bigseg.measure.partials import pairs

AXES = {2: ("y", "x"), 3: ("z", "y", "x")}


def table(partials: dict, labels: np.ndarray, n_blocks: np.ndarray, scale, translation,
          shape: tuple[int, ...], channel_names: list[str], parent: str | None = None) -> pd.DataFrame:
    """The measurements table: one row per object, physical units from ``scale``/``translation``."""
    ndim = len(shape)
    axes = AXES[ndim]
    count = partials["count"]
    scale = np.asarray(scale, np.float64)
    cols: dict[str, np.ndarray] = {"label": np.asarray(labels, np.uint64), "voxel_count": count}
    cols["volume" if ndim == 3 else "area"] = count * float(np.prod(scale))
    centroid = partials["coord_sum"] / np.maximum(count, 1)[:, None]
    for d, a in enumerate(axes):
        cols[f"centroid_{a}"] = np.asarray(translation[d]) + centroid[:, d] * scale[d]
    for d, a in enumerate(axes):
        cols[f"bbox_min_{a}"] = partials["bbox_min"][:, d]
    for d, a in enumerate(axes):
        cols[f"bbox_max_{a}"] = partials["bbox_max"][:, d]
    for c, cname in enumerate(channel_names):
        total = partials["sum"][:, c]
        cols[f"mean_intensity_{cname}"] = total / np.maximum(count, 1)
        cols[f"min_intensity_{cname}"] = partials["min"][:, c]
        cols[f"max_intensity_{cname}"] = partials["max"][:, c]
        cols[f"std_intensity_{cname}"] = np.sqrt(np.maximum(partials["m2"][:, c], 0) / np.maximum(count, 1))
        cols[f"sum_intensity_{cname}"] = total
    touches = np.zeros(len(count), bool)
    for d in range(ndim):
        touches |= (partials["bbox_min"][:, d] == 0) | (partials["bbox_max"][:, d] == shape[d])
    cols["touches_border"] = touches
    cols["blocks_spanned"] = np.asarray(n_blocks, np.int64)
    if "coord_m2" in partials:
        cols.update(shape_columns(partials["coord_m2"], count, scale))
    if "cross_m2" in partials:
        cols.update(colocalization_columns(partials, channel_names))
    if "contingency_row" in partials:
        cols.update(parent_columns(partials, count, parent or "parent"))
    return pd.DataFrame(cols)


def parent_columns(partials: dict, count: np.ndarray, name: str) -> dict[str, np.ndarray]:
    """``parent_<name>``: the parent object holding most of each object's voxels (the smallest id of a tie; 0:
    none), ``parent_<name>_overlap``: the share of the object's voxels inside it."""
    rows, ids, n = partials["contingency_row"], partials["contingency_id"], partials["contingency_count"]
    parent, overlap = np.zeros(count.size, np.uint64), np.zeros(count.size)
    if rows.size:
        order = np.lexsort((ids, -n, rows))
        best = order[np.r_[True, rows[order][1:] != rows[order][:-1]]]
        parent[rows[best]] = ids[best]
        overlap[rows[best]] = n[best] / count[rows[best]]
    return {f"parent_{name}": parent, f"parent_{name}_overlap": overlap}


def shape_columns(coord_m2: np.ndarray, count: np.ndarray, scale: np.ndarray) -> dict[str, np.ndarray]:
    """Second-moment shape columns from the coordinates' central co-moments (voxel units, :func:`pairs` order)."""
    ndim = len(scale)
    cov = np.zeros((count.size, ndim, ndim))
    for k, (a, b) in enumerate(pairs(ndim)):
        cov[:, a, b] = cov[:, b, a] = coord_m2[:, k] * scale[a] * scale[b] / np.maximum(count, 1)
    tensor = np.trace(cov, axis1=1, axis2=2)[:, None, None] * np.eye(ndim) - cov
    ev = np.clip(np.linalg.eigvalsh(tensor), 0, None)[:, ::-1]  # descending, as scikit-image
    cols = {f"inertia_tensor_eigvals-{k}": ev[:, k] for k in range(ndim)}
    if ndim == 2:
        cols["axis_major_length"] = 4 * np.sqrt(ev[:, 0])
        cols["axis_minor_length"] = 4 * np.sqrt(ev[:, 1])
        with np.errstate(invalid="ignore", divide="ignore"):
            cols["eccentricity"] = np.where(ev[:, 0] == 0, 0.0, np.sqrt(np.clip(1 - ev[:, 1] / ev[:, 0], 0, 1)))
        a, b, c = tensor[:, 0, 0], tensor[:, 0, 1], tensor[:, 1, 1]
        cols["orientation"] = np.where(a - c == 0, np.where(b < 0, np.pi / 4, -np.pi / 4),
                                       0.5 * np.arctan2(-2 * b, c - a))
    else:
        cols["axis_major_length"] = np.sqrt(np.maximum(0, 10 * (ev[:, 0] + ev[:, 1] - ev[:, 2])))
        cols["axis_minor_length"] = np.sqrt(np.maximum(0, 10 * (-ev[:, 0] + ev[:, 1] + ev[:, 2])))
    return cols


def colocalization_columns(partials: dict, channel_names: list[str]) -> dict[str, np.ndarray]:
    """Pearson's r and Manders' M1/M2 of each pair of channels."""
    m2, cross, coloc = partials["m2"], partials["cross_m2"], partials["coloc_sum"]
    c = len(channel_names)
    cols = {}
    with np.errstate(invalid="ignore", divide="ignore"):
        for k, (a, b) in enumerate(pairs(c, diagonal=False)):
            pair = f"{channel_names[a]}_{channel_names[b]}"
            cols[f"pearson_{pair}"] = cross[:, k] / np.sqrt(m2[:, a] * m2[:, b])
            cols[f"manders_m1_{pair}"] = coloc[:, a * c + b] / coloc[:, a * c + a]
            cols[f"manders_m2_{pair}"] = coloc[:, b * c + a] / coloc[:, b * c + b]
    return cols
