"""The measurements table: a Parquet dataset (a folder of parts, ordered by label), moved to its
final path only when complete."""
from __future__ import annotations

import uuid

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from bigseg.io import store


def part_url(parts_url: str, index: int, piece: int | None = None) -> str:
    """Part ``index``, or piece ``piece`` of it; the names sort in the order of the parts and their pieces."""
    name = f"part-{index:09d}" if piece is None else f"part-{index:09d}-{piece:09d}"
    return store.join(parts_url, name + ".parquet")


def write_part(df: pd.DataFrame, url: str) -> None:
    """Write one part whole (a part holds one block's objects: small), as :func:`bigseg.io.store.save_bytes`
    writes any file."""
    buffer = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), buffer)
    store.save_bytes(url, buffer.getvalue().to_pybytes())


def replace(parts_url: str, table_url: str) -> None:
    """Move a folder of parts to ``table_url``: a table already there is moved aside first and removed last, so
    that the path holds the old table or the new one, never a mix of their parts."""
    if not store.exists(table_url):
        store.publish(parts_url, table_url)
        return
    old = f"{table_url}.old-{uuid.uuid4().hex[:8]}"
    store.publish(table_url, old)
    store.publish(parts_url, table_url)
    store.remove(old)


def read_part(url: str, columns: list[str] | None = None) -> pd.DataFrame:
    """One part (or only its ``columns``)."""
    fs, path = store.filesystem(url)
    return pq.read_table(path, columns=columns, filesystem=fs).to_pandas()



def read_table(url: str) -> pd.DataFrame:
    """The whole table (all parts), sorted by label."""
    fs, path = store.filesystem(url)
    return pq.read_table(path, filesystem=fs).to_pandas().sort_values("label", ignore_index=True)
