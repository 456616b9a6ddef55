"""The relabel stage: one task per group of blocks turns their fragments into final ids in level 0, and in the
lower levels sampled from inside the group alone (see :func:`bigseg.pyramid.fused_levels`)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bigseg.blocks import Block, BlockGroup, shift
from bigseg.io.ome import open_array
from bigseg.pyramid import sample


@dataclass(frozen=True)
class BlockIds:
    """How one block's fragments become final ids."""

    block: Block
    boundary_ids: np.ndarray  # final id of fragments 1..k (0 = dropped)
    interior_base: int        # fragment k + j -> interior_base + j
    n_fragments: int

    def lut(self, dtype: str) -> np.ndarray:
        return final_ids(self.boundary_ids, self.interior_base, self.n_fragments, dtype)


@dataclass(frozen=True)
class RelabelTask:
    group: BlockGroup
    blocks: tuple[BlockIds, ...]  # the group's blocks with fragments
    fragments_url: str
    labels_url: str
    zarr_format: int
    dtype: str
    #: path of each level, level 0 first
    level_paths: tuple[str, ...]
    level_shapes: tuple[tuple[int, ...], ...]
    #: the lower levels this task writes too (indices into level_paths)
    fused: tuple[int, ...] = ()


def relabel_group(task: RelabelTask) -> int:
    """Write the group's final labels (level 0, and its fused levels); returns the number of voxels written."""
    region = task.group.core
    fragments = np.asarray(open_array(task.fragments_url, "", 3)[region])
    if len(task.blocks) == 1 and task.blocks[0].block.core == region:
        labels = task.blocks[0].lut(task.dtype)[fragments]
    else:
        labels = np.zeros(fragments.shape, task.dtype)
        for ids in task.blocks:
            core = shift(ids.block.core, tuple(s.start for s in region))
            labels[core] = ids.lut(task.dtype)[fragments[core]]
    _write(task, 0, region, labels)
    for i in task.fused:
        part = sample(labels, region, list(task.level_shapes[:i + 1]))
        if part is not None:
            _write(task, i, *part)
    return int(labels.size)


def _write(task: RelabelTask, level: int, region: tuple[slice, ...], values: np.ndarray) -> None:
    open_array(task.labels_url, task.level_paths[level], task.zarr_format, mode="r+")[region] = values


def final_ids(boundary_ids: np.ndarray, interior_base: int, n_fragments: int, dtype="u4") -> np.ndarray:
    """Lookup fragment -> final id of one block: boundary fragments 1..k as resolved, interior fragment k + j
    -> ``interior_base + j``, 0 -> 0."""
    k = boundary_ids.size
    lut = np.empty(n_fragments + 1, dtype)
    lut[0] = 0
    lut[1:k + 1] = boundary_ids
    lut[k + 1:] = interior_base + np.arange(1, n_fragments - k + 1)
    return lut
