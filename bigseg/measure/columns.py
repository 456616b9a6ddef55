"""The measurements table's columns from merged partials: one row per object, physical units."""
from __future__ import annotations

import numpy as np
import pandas as pd

AXES = {2: ("y", "x"), 3: ("z", "y", "x")}


def table(partials: dict, labels: np.ndarray, n_blocks: np.ndarray, scale, translation,
          shape: tuple[int, ...], channel_names: list[str]) -> pd.DataFrame:
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
    return pd.DataFrame(cols)
