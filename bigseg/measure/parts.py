"""The table's parts as a post-table pass sees them: their names, small per-part summaries read from the Parquet
footers (row count, a column's smallest and largest value), some of their columns, and the rewrite that joins new
columns into a part by label (atomic, idempotent).

A pass plans from the summaries on the client (one footer per part, never the rows) and leaves the rows to its
worker tasks; its last step is one :class:`JoinTask` per part.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow.parquet as pq

from bigseg.errors import InputError
from bigseg.io import store
from bigseg.io import table as table_io

SPATIAL_AXES = ("z", "y", "x")
#: Footers read at once.
FOOTER_READERS = 16


def part_urls(parts_url: str) -> list[str]:
    """The parts of a table folder (``part-*.parquet``), in name order (the order of their labels)."""
    if not store.exists(parts_url):
        raise InputError(f"{parts_url}: no such table folder; give the folder of a measurements table's parts")
    names = sorted(n for n in store.children(parts_url) if n.startswith("part-") and n.endswith(".parquet"))
    return [store.join(parts_url, n) for n in names]


def centroid_columns(urls: list[str]) -> tuple[str, ...]:
    """``centroid_z, centroid_y, centroid_x`` (3D) or ``centroid_y, centroid_x`` (2D), from the first part's
    schema."""
    names = set(_schema(urls[0]).names) if urls else set()
    columns = tuple(f"centroid_{a}" for a in SPATIAL_AXES if f"centroid_{a}" in names)
    if len(columns) < 2 or "label" not in names:
        raise InputError(f"{urls[0] if urls else 'the table'}: a measurements table needs the columns label and "
                         "centroid_y, centroid_x (and centroid_z in 3D); measure the labels first")
    return columns


def ranges(urls: list[str], columns: tuple[str, ...], dtype) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, low, high) of each part: its row count and each column's smallest and largest value (``low``,
    ``high``: shape (parts, columns); 0 for empty parts), from the footers' statistics (a part whose footer has
    none is read)."""
    rows = np.zeros(len(urls), np.int64)
    low = np.zeros((len(urls), len(columns)), dtype)
    high = np.zeros((len(urls), len(columns)), dtype)
    with ThreadPoolExecutor(FOOTER_READERS) as pool:  # one small read per part: concurrent on object stores
        for i, (n, lo, hi) in enumerate(pool.map(lambda u: _range(u, columns), urls)):
            rows[i] = n
            if n:
                low[i], high[i] = lo, hi
    return rows, low, high


def _range(url: str, columns: tuple[str, ...]):
    fs, path = store.filesystem(url)
    meta = pq.read_metadata(path, filesystem=fs)
    if not meta.num_rows:
        return 0, None, None
    return (meta.num_rows, *(_footer_range(meta, columns) or _read_range(url, columns)))


def _footer_range(meta, columns: tuple[str, ...]):
    """(low, high) of ``columns`` over the row groups' statistics, or None where a statistic is missing."""
    index = {meta.schema.column(i).name: i for i in range(meta.num_columns)}
    low, high = [], []
    for name in columns:
        stats = [meta.row_group(g).column(index[name]).statistics for g in range(meta.num_row_groups)]
        if not all(s is not None and s.has_min_max for s in stats):
            return None
        low.append(min(s.min for s in stats))
        high.append(max(s.max for s in stats))
    return low, high


def _read_range(url: str, columns: tuple[str, ...]):
    values = read_columns(url, columns)
    return [values[c].min() for c in columns], [values[c].max() for c in columns]


def read_columns(url: str, columns: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Some columns of one part, as numpy arrays."""
    fs, path = store.filesystem(url)
    table = pq.read_table(path, columns=list(columns), filesystem=fs)
    return {c: table.column(c).to_numpy() for c in columns}


def _schema(url: str):
    fs, path = store.filesystem(url)
    return pq.read_schema(path, filesystem=fs)


@dataclass(frozen=True)
class Column:
    """A column a pass adds: its name, dtype and the value of rows no result names."""

    name: str
    dtype: str
    fill: float | int


@dataclass(frozen=True)
class JoinTask:
    """Join ``columns`` from the result files ``results`` (.npz: ``label`` and one array per column) into the part
    ``part_url`` by label, and rewrite the part."""

    part_url: str
    results: tuple[str, ...]
    columns: tuple[Column, ...]


def join_part(task: JoinTask) -> int:
    """Rewrite a part with ``task``'s columns (replaced in place where the part has them already, else appended),
    written whole and then renamed into place: a rerun rewrites the same bytes. Returns the part's rows."""
    fs, path = store.filesystem(task.part_url)
    df = pq.read_table(path, filesystem=fs).to_pandas()
    labels = df["label"].to_numpy(np.uint64)
    order = np.argsort(labels, kind="stable")
    values = {c.name: np.full(len(df), c.fill, c.dtype) for c in task.columns}
    for result in store.iter_arrays(list(task.results)):
        at = np.searchsorted(labels[order], result["label"])
        found = at < labels.size
        found[found] &= labels[order[at[found]]] == result["label"][found]
        for c in task.columns:
            if c.name in result:  # a merged join's results come from several passes
                values[c.name][order[at[found]]] = result[c.name][found]
    for name, column in values.items():
        df[name] = column
    table_io.write_part(df, task.part_url)
    return len(df)


def merge_joins(*steps: list[JoinTask]) -> list[JoinTask]:
    """One join per part from the join steps of several passes (one rewrite of each part instead of one per
    pass); the columns in the order of the passes."""
    merged: dict[str, JoinTask] = {}
    for step in steps:
        for t in step:
            prev = merged.get(t.part_url)
            merged[t.part_url] = t if prev is None else JoinTask(t.part_url, prev.results + t.results,
                                                                 prev.columns + t.columns)
    return list(merged.values())
