"""The passes over a finished table's parts that a job's measure settings ask for, run step by step on the
workers with the job's :class:`~bigseg.engine.runner.StageRunner`: shape features from object crops,
neighbourhoods (centroid neighbours and touching objects) and the parent's side of parent-child counts. The
segment job and the measure job run the same passes."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np

from bigseg.io import store
from bigseg.io import table as table_io
from bigseg.io.lock import JobLock
from bigseg.measure import children, crops, parts
from bigseg.measure.neighbourhood import neighbourhood_steps, neighbourhood_task
from bigseg.measure.settings import MeasurePlan


@dataclass(frozen=True)
class TableAt:
    """Where a table's parts are, and what they measure: the label image (its level 0) and its image."""

    parts_url: str
    work_url: str
    labels_url: str
    level_path: str
    zarr_format: int
    image_url: str
    name: str
    shape: tuple[int, ...]
    spacing: tuple[float, ...]  # the level's scale
    batch: int = 0  # leading axes of the label array before the spatial ones (a time-lapse's t)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def voxel_size(self) -> float:
        """The physical size of a voxel."""
        return float(np.prod(self.spacing))


def run_passes(stages, measure: MeasurePlan, at: TableAt) -> list[str]:
    """Run the passes; returns warnings for the user (objects too large for the crop pass). The crop pass and
    the neighbourhood pass run as one, step by step (the workers pack the crop tasks with the first step's), and
    their last steps as one join per part."""
    warnings, steps, too_large = [], [], 0
    name = "+".join(n for n, on in (("crops", measure.crops), ("neighbours", measure.neighbour_radius is not None))
                    if on)
    with stages.local(name) if name else contextlib.nullcontext():
        if measure.crops:
            bound = crops.crop_voxels()
            steps = crops.crop_steps(at.parts_url, at.work_url, at.labels_url, at.level_path, at.zarr_format,
                                     at.shape, at.spacing, bound, at.batch)
        if measure.neighbour_radius is not None:
            near = neighbourhood_steps(at.parts_url, at.work_url, measure.neighbour_radius, at.labels_url,
                                       at.level_path)
            steps = [steps[0] + near[0], *near[1:-1], parts.merge_joins(steps[-1], near[-1])] if steps else near
    for i, tasks in enumerate(steps):
        results = stages.run(name, pass_task, tasks, step=f"{name}-{i}")
        too_large += sum(r or 0 for t, r in zip(tasks, results) if isinstance(t, crops.CropTask))
    if too_large:
        warnings.append(crops.too_large_message(too_large, bound))
    if measure.parent is not None:
        _children(stages, measure.parent, at)
    return warnings


def pass_task(task):
    """The worker function of the passes' tasks: a crop task's count of objects too large, or a neighbourhood
    task's result."""
    return crops.measure_crops(task) if isinstance(task, crops.CropTask) else neighbourhood_task(task)


def _children(stages, parent: str, at: TableAt) -> None:
    """The parent's table gets its children's count and total size; it is replaced whole, under its lock."""
    parent_url = store.join(at.image_url, "labels", parent)
    parent_table = store.join(parent_url, "measurements.parquet")
    with stages.local("children"):
        parent_parts, tasks = children.count_steps(at.parts_url, parent_table, at.work_url, parent, at.voxel_size)
    written = stages.run("children", children.children_task, tasks, step="children-0")
    out = store.join(at.work_url, "parent-table")
    joins = children.join_steps(parent_parts, written, at.work_url, out, children.column_names(at.name, at.ndim))
    stages.run("children", children.children_task, joins, step="children-1", results=False)
    with stages.local("children"), JobLock(parent_url):
        table_io.replace(out, parent_table)
