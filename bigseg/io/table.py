"""The measurements table: a Parquet dataset (a folder of parts, ordered by label), moved to its
final path only when complete."""
from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from bigseg.io import store


def part_url(parts_url: str, index: int) -> str:
    return store.join(parts_url, f"part-{index:09d}.parquet")


def write_part(df: pd.DataFrame, url: str) -> None:
    """Write one part whole: one put on an object store (atomic there), else written aside and renamed."""
    fs, path = store.filesystem(url)
    table = pa.Table.from_pandas(df, preserve_index=False)
    if store.is_object_store(fs):
        pq.write_table(table, path, filesystem=fs)
        return
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    pq.write_table(table, path + ".partial", filesystem=fs)
    fs.mv(path + ".partial", path)


def read_table(url: str) -> pd.DataFrame:
    """The whole table (all parts), sorted by label."""
    fs, path = store.filesystem(url)
    return pq.read_table(path, filesystem=fs).to_pandas().sort_values("label", ignore_index=True)
