"""The parent's side of parent-child measurements: each object of the parent label image gets its number of
children (``n_<child>``) and their total size (``<child>_total_volume`` in 3D, ``_total_area`` in 2D, physical
units), from the children's table (its ``parent_<parent>`` column).

Two steps on the workers, the client holding part names and label ranges only: per child part, the children
counted and summed by parent id and filed by the parent table's part (from the parts' label ranges); per parent
part, those files summed and joined into a copy of the part. The copy replaces the parent's table whole
(:func:`bigseg.io.table.replace`), so the table is never a mix of old and new parts.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bigseg.io import store
from bigseg.measure import parts


@dataclass(frozen=True)
class CountTask:
    """Count one child part's children by parent id, one file per parent part whose label range holds some."""

    child_part: str
    parent_column: str
    ranges: np.ndarray       # (parent parts, 2): each parent part's smallest and largest label
    out_folder: str
    index: int
    voxel_size: float        # physical size of a voxel


@dataclass(frozen=True)
class JoinChildrenTask:
    """Sum the children files of one parent part and write the part, with the children's columns, to ``out_url``."""

    part_url: str
    sources: tuple[str, ...]
    summed_url: str
    out_url: str
    columns: tuple[str, str]


def count_children(task: CountTask) -> tuple[int, ...]:
    """Returns the parent parts a file was written for."""
    cols = parts.read_columns(task.child_part, (task.parent_column, "voxel_count"))
    parent = cols[task.parent_column].astype(np.uint64)
    keep = parent > 0
    ids, inverse = np.unique(parent[keep], return_inverse=True)
    n = np.bincount(inverse, minlength=ids.size).astype(np.int64)
    size = np.bincount(inverse, weights=cols["voxel_count"][keep], minlength=ids.size) * task.voxel_size
    written = []
    for j, (lo, hi) in enumerate(task.ranges):
        inside = (ids >= lo) & (ids <= hi)
        if inside.any():
            store.save_arrays(_file(task.out_folder, j, task.index),
                              {"label": ids[inside], "n": n[inside], "size": size[inside]})
            written.append(j)
    return tuple(written)


def join_children(task: JoinChildrenTask) -> int:
    labels, n, size = [np.zeros(0, np.uint64)], [np.zeros(0, np.int64)], [np.zeros(0)]
    for found in store.iter_arrays(list(task.sources)):
        labels.append(found["label"])
        n.append(found["n"])
        size.append(found["size"])
    ids, inverse = np.unique(np.concatenate(labels), return_inverse=True)
    n_name, size_name = task.columns
    store.save_arrays(task.summed_url, {
        "label": ids, n_name: np.bincount(inverse, np.concatenate(n), ids.size).astype(np.int64),
        size_name: np.bincount(inverse, np.concatenate(size), ids.size)})
    columns = (parts.Column(n_name, "int64", 0), parts.Column(size_name, "float64", 0.0))
    return parts.join_part(parts.JoinTask(task.part_url, (task.summed_url,), columns, task.out_url))


def column_names(child: str, ndim: int) -> tuple[str, str]:
    return f"n_{child}", f"{child}_total_{'volume' if ndim == 3 else 'area'}"


def count_steps(child_parts_url: str, parent_table_url: str, work_url: str, parent: str,
                voxel_size: float) -> tuple[list[str], list[CountTask]]:
    """The parent table's parts and the first step's tasks."""
    parent_parts = parts.part_urls(parent_table_url)
    rows, low, high = parts.ranges(parent_parts, ("label",), np.uint64)
    ranges = np.stack([low[:, 0], high[:, 0]], axis=1).astype(np.uint64)
    ranges[rows == 0] = (1, 0)  # an empty part holds no label
    folder = store.join(work_url, "children")
    tasks = [CountTask(url, f"parent_{parent}", ranges, folder, i, voxel_size)
             for i, url in enumerate(parts.part_urls(child_parts_url))]
    return parent_parts, tasks


def join_steps(parent_parts: list[str], written: list[tuple[int, ...]], work_url: str, out_folder: str,
               columns: tuple[str, str]) -> list[JoinChildrenTask]:
    """The second step: one task per parent part, from the first step's results."""
    folder = store.join(work_url, "children")
    sources: list[list[str]] = [[] for _ in parent_parts]
    for i, js in enumerate(written):
        for j in js:
            sources[j].append(_file(folder, j, i))
    return [JoinChildrenTask(url, tuple(sources[j]), store.join(folder, f"summed-{j}.npz"),
                             store.join(out_folder, url.rsplit("/", 1)[-1]), columns)
            for j, url in enumerate(parent_parts)]


def _file(folder: str, part: int, index: int) -> str:
    return store.join(folder, str(part), f"{index}.npz")


def children_task(task):
    """The worker function of both steps."""
    return count_children(task) if isinstance(task, CountTask) else join_children(task)
