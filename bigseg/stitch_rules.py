"""Stitch rules: how a method's fragments of one object in neighbouring blocks are found to be one object.

A method answers :meth:`~bigseg.methods.base.Method.stitch_rule` with one of these objects; the segment stage
asks it what to keep, the stitch stage which face tasks to run. Semantic class maps are not stitched at all:
they are an output kind (:class:`Output`), not a rule.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Callable, ClassVar

import numpy as np

from bigseg.blocks import group_voxels


class Output(enum.Enum):
    """What a method's label values are."""

    #: object ids, local to each block: stitched across blocks and numbered 1..N
    INSTANCES = "instances"
    #: class numbers, the same in every block (a semantic class map): written as they are, measured per class
    CLASSES = "classes"


class StitchRule:
    """A rule for joining fragments across block boundaries."""

    #: the segment stage keeps each block's prediction over its neighbours' cores (for the stitch stage)
    keeps_halo: ClassVar[bool] = False
    #: blocks must overlap (a halo of at least one voxel) for the rule to see both sides
    needs_halo: ClassVar[bool] = False
    #: the stitched objects are the same whatever the blocking (so a preview may use its own window)
    independent_of_blocks: ClassVar[bool] = False

    def fragments(self, core: np.ndarray) -> np.ndarray:
        """The labels of a block's core, as the fragments this rule joins."""
        return core

    def edge_tasks(self, grid, files, summaries: list, iou_threshold: float) -> tuple[Callable, list]:
        """The stitch stage's worker function and its tasks (one per face or block pair that can hold an edge)."""
        raise NotImplementedError


@dataclass(frozen=True)
class Touch(StitchRule):
    """Fragments in neighbouring cores that touch across the boundary are one object. Exact for connected
    components: a block's fragments are the components of its core alone (the halo's edge is smoothed
    without context, so halo voxels may join objects that are apart)."""

    independent_of_blocks: ClassVar[bool] = True
    #: 1 = voxels touch by faces only; ndim = by faces, edges and corners
    connectivity: int

    def fragments(self, core: np.ndarray) -> np.ndarray:
        import skimage.measure
        foreground = core if core.dtype == bool else core > 0
        return skimage.measure.label(foreground, connectivity=min(self.connectivity, core.ndim))

    def edge_tasks(self, grid, files, summaries, iou_threshold):
        from bigseg.stitch import TouchTask, touch_edges
        boundary = [s.n_boundary for s in summaries]  # summaries are in block order
        # a group is read if a face it holds has boundary fragments on either side (every contact it finds has
        # a voxel on the two sides of one of its faces)
        tasks = [TouchTask(group, files, self.connectivity) for group in grid.groups(group_voxels())
                 if any(boundary[b.id] or boundary[grid.flat_id(_next(b.index, axis))]
                        for b in group.blocks() for axis in range(grid.batch, len(b.index))
                        if b.index[axis] + 1 < grid.grid_shape[axis])]
        return touch_edges, tasks


@dataclass(frozen=True)
class Overlap(StitchRule):
    """Each block's prediction over a neighbour's core (its halo) is compared with the neighbour's own
    fragments; fragments whose predictions overlap with IoU above the job's threshold are one object."""

    keeps_halo: ClassVar[bool] = True
    needs_halo: ClassVar[bool] = True

    def edge_tasks(self, grid, files, summaries, iou_threshold):
        from bigseg.stitch import OverlapTask, overlap_edges
        tasks = []
        for a, off in grid.neighbour_pairs():
            sa, sb = summaries[grid.flat_id(a)], summaries[grid.flat_id(tuple(i + o for i, o in zip(a, off)))]
            if (sa.n_boundary and sb.n_fragments) or (sb.n_boundary and sa.n_fragments):
                tasks.append(OverlapTask(grid, files, a, off, sa.n_boundary, sb.n_boundary, sa.n_fragments,
                                         sb.n_fragments, iou_threshold))
        return overlap_edges, tasks


def _next(index: tuple[int, ...], axis: int) -> tuple[int, ...]:
    return tuple(i + (j == axis) for j, i in enumerate(index))
