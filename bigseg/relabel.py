"""The relabel stage: one task per non-empty block turns its fragments into final ids in level 0."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bigseg.blocks import Block
from bigseg.io.ome import open_array


@dataclass(frozen=True)
class RelabelTask:
    block: Block
    fragments_url: str
    labels_url: str
    labels_path: str
    zarr_format: int
    boundary_ids: np.ndarray  # final id of fragments 1..k (0 = dropped)
    interior_base: int        # fragment k + j -> interior_base + j
    n_fragments: int
    dtype: str


def relabel_block(task: RelabelTask) -> int:
    """Write the block's final labels; returns the number of voxels written."""
    lut = final_ids(task.boundary_ids, task.interior_base, task.n_fragments, task.dtype)
    fragments = open_array(task.fragments_url, "", 3)[task.block.core]
    out = open_array(task.labels_url, task.labels_path, task.zarr_format, mode="r+")
    out[task.block.core] = lut[fragments]
    return int(fragments.size)


def final_ids(boundary_ids: np.ndarray, interior_base: int, n_fragments: int, dtype="u4") -> np.ndarray:
    """Lookup fragment -> final id of one block: boundary fragments 1..k as resolved, interior fragment k + j
    -> ``interior_base + j``, 0 -> 0."""
    k = boundary_ids.size
    lut = np.empty(n_fragments + 1, dtype)
    lut[0] = 0
    lut[1:k + 1] = boundary_ids
    lut[k + 1:] = interior_base + np.arange(1, n_fragments - k + 1)
    return lut
