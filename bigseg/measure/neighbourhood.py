"""The neighbourhood features: centroid neighbours (:mod:`~bigseg.measure.neighbours`) and, for a label image,
touching objects (:mod:`~bigseg.measure.touching`), as one pass of three steps over a table folder: each step
holds both families' tasks, and the last rewrites each part once."""
from __future__ import annotations

from bigseg.measure import neighbours, parts, touching

#: The worker function of each task type.
WORKERS = {
    neighbours.BucketTask: neighbours.bucket_part,
    neighbours.RegionTask: neighbours.measure_region,
    touching.PairsTask: touching.block_pairs,
    touching.CountTask: touching.count_touching,
    parts.JoinTask: parts.join_part,
}


def neighbourhood_steps(parts_url: str, work_url: str, radius: float | None, labels_url: str | None = None,
                        path: str = "0", block: tuple[int, ...] | None = None, objects_per_task: int | None = None,
                        labels_per_task: int | None = None) -> list[list]:
    """The tasks, step by step, for the table ``parts_url``: centroid neighbours (``radius``: see
    :func:`~bigseg.measure.neighbours.neighbour_steps`) and, with ``labels_url``, the touching objects of the label
    array ``path`` in it (see :func:`~bigseg.measure.touching.touching_steps`)."""
    near = neighbours.neighbour_steps(parts_url, work_url, radius, objects_per_task)
    if labels_url is None:
        return near
    touch = touching.touching_steps(parts_url, labels_url, work_url, path, block, labels_per_task)
    return [near[0] + touch[0], near[1] + touch[1], parts.merge_joins(near[2], touch[2])]


def neighbourhood_task(task):
    """The worker function for every task of either family."""
    return WORKERS[type(task)](task)
