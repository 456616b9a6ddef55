"""Benchmark of the client at scale: what stitching's resolve costs the client for a 10^12-voxel light sheet.

    python benchmarks/bench_resolve_scale.py [--blocks 1000 4000 31000] [--fragments 1500] [--old-up-to 4000]

A 10^12-voxel image is ~31,000 blocks of 32 M voxels with ~1,500 fragments on each block's faces. Each row
is one fresh subprocess (its peak RSS is the client's peak): it builds what the client receives from the
segment and stitch stages, for a grid of blocks as near a cube as the block count allows (the blocks of
the grid are counted), ``--fragments`` boundary fragments per block, a sixth of them on each face, each joined
to the fragment facing it in the neighbour (one edge array per face, as the face tasks return them), then
times what the client does with it:

* ``new``: block summaries of counts only; :func:`bigseg.stitch.resolve` (components, min_size, numbering)
  and the planning of the measure stage's merge tasks (:func:`bigseg.measure.stage.merge_steps`).
* ``old``: the former way: summaries with every boundary fragment's partials (count, coordinate sum, box and
  per-channel sum, m2, min, max of one channel), the same components, then the statistics merged and the
  boundary objects' table built on the client. Blocks above ``--old-up-to`` are not run (the old way needs
  ~20 GB at 31,000 blocks): they are extrapolated linearly from the two largest measured rows and marked so.

Other benchmarks import :func:`run` (rows of dicts) for their tables.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass

import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

from bigseg.measure import columns, partials as measure  # noqa: E402
from bigseg.measure.stage import merge_steps  # noqa: E402
from bigseg.segment_blocks import BlockSummary, JobFiles  # noqa: E402
from bigseg.stitch import EDGE_COLUMNS, fragment_pairs, components, resolve  # noqa: E402

MIN_SIZE = 500
INTERIOR = 500  # interior fragments per block (they never reach the client; only counted)


def grid_of(n_blocks: int) -> tuple[int, int, int]:
    """A grid of at least ``n_blocks`` blocks, as near a cube as possible."""
    side = math.ceil(n_blocks ** (1 / 3) - 1e-9)
    return math.ceil(n_blocks / side ** 2), side, side


def edges_of(grid: tuple[int, int, int], k: int) -> list[np.ndarray]:
    """One edge array per face between neighbouring blocks: fragment j of the low block's face joins
    fragment j of the high block's facing face (fragments 1..k, k // 6 on each face: -z, +z, -y, +y, -x, +x)."""
    per_face = k // 6
    j = np.arange(1, per_face + 1, dtype=np.int64)
    out = []
    for index in np.ndindex(*grid):
        a = np.ravel_multi_index(index, grid)
        for axis in range(3):
            if index[axis] + 1 < grid[axis]:
                b = a + int(np.prod(grid[axis + 1:]))
                high_face, low_face = 2 * axis + 1, 2 * axis  # a's + face meets b's - face
                rows = np.empty((per_face, EDGE_COLUMNS), np.int64)
                rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3] = a, high_face * per_face + j, b, low_face * per_face + j
                out.append(rows)
    return out


@dataclass(frozen=True)
class _FormerSummary:
    """The former block summary: counts and every boundary fragment's partials."""

    block_id: int
    n_fragments: int
    n_boundary: int
    boundary: dict


def _counts(rng, k: int) -> np.ndarray:
    return rng.integers(1, 5000, k).astype(np.uint16)


def _partials(rng, count: np.ndarray, origin) -> dict:
    k, count = count.size, count.astype(np.int64)
    lo = rng.integers(0, 300, (k, 3)) + np.asarray(origin)
    mean = rng.random((k, 1)) * 1000
    return {"count": count, "coord_sum": (lo + 10.0) * count[:, None], "bbox_min": lo, "bbox_max": lo + 20,
            "sum": mean * count[:, None], "m2": rng.random((k, 1)) * count[:, None],
            "min": mean - 50, "max": mean + 50}


def _new(n_blocks: int, k: int) -> dict:
    grid = grid_of(n_blocks)
    rng = np.random.default_rng(0)
    summaries = [BlockSummary(b, k + INTERIOR, k, _counts(rng, k), 0.0) for b in range(int(np.prod(grid)))]
    edges = edges_of(grid, k)
    t0 = time.perf_counter()
    lookup = resolve(summaries, len(summaries), edges, MIN_SIZE)
    steps = merge_steps(lookup, JobFiles("/tmp/bench-resolve-scale"), ((1.0,) * 3, (0.0,) * 3, (1,) * 3, ("c0",)))
    seconds = time.perf_counter() - t0
    return {"blocks": len(summaries), "seconds": seconds, "objects": lookup.n_boundary_objects,
            "tasks": sum(map(len, steps))}


def _old(n_blocks: int, k: int) -> dict:
    grid = grid_of(n_blocks)
    rng = np.random.default_rng(0)
    other = np.random.default_rng(1)
    summaries = [_FormerSummary(b, k + INTERIOR, k, _partials(other, _counts(rng, k), np.unravel_index(b, grid)))
                 for b in range(int(np.prod(grid)))]
    edges = edges_of(grid, k)
    t0 = time.perf_counter()
    n = len(summaries)
    kk = np.array([s.n_boundary for s in summaries], np.int64)
    prefix = np.concatenate([[0], np.cumsum(kk)])
    total = int(prefix[-1])
    src, dst, dropped = fragment_pairs(edges, prefix, kk)
    n_comp, comp = components(src, dst, total)
    merged = measure.merge(measure.concat([s.boundary for s in summaries]), comp, n_comp)
    block_of_fragment = np.repeat(np.arange(n), kk)
    spanned = np.bincount(np.unique(np.stack([comp, block_of_fragment], 1), axis=0)[:, 0], minlength=n_comp)
    kept = merged["count"] >= MIN_SIZE
    final = np.zeros(n_comp, np.int64)
    final[kept] = np.arange(1, kept.sum() + 1)
    fragment_ids = final[comp]
    boundary_ids = {b: fragment_ids[prefix[b]:prefix[b + 1]] for b in np.flatnonzero(kk)}
    table = columns.table(measure.take(merged, kept), np.arange(1, kept.sum() + 1), spanned[kept], (1.0,) * 3,
                          (0.0,) * 3, (1,) * 3, ["c0"])
    seconds = time.perf_counter() - t0
    assert len(boundary_ids) == n
    return {"blocks": n, "seconds": seconds, "objects": len(table), "tasks": 0}


def _child(way: str, n_blocks: int, k: int) -> None:
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    row = (_new if way == "new" else _old)(n_blocks, k)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({**row, "way": way, "peak_gb": peak / 2**20, "growth_gb": (peak - base) / 2**20}))


def measure_row(way: str, n_blocks: int, k: int) -> dict:
    """One measured row, in a fresh process."""
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", way, str(n_blocks), str(k)],
                         check=True, capture_output=True, text=True).stdout
    return {**json.loads(out.strip().splitlines()[-1]), "measured": True}


def run(blocks_list=(1000, 4000, 31000), fragments: int = 1500, old_up_to: int = 4000) -> list[dict]:
    """Rows (way, blocks, seconds, peak_gb, growth_gb, measured) for each block count, new way and old."""
    rows = [measure_row("new", b, fragments) for b in blocks_list]
    old = [measure_row("old", b, fragments) for b in blocks_list if b <= old_up_to]
    for b in blocks_list:
        if b > old_up_to:
            if len(old) < 2:
                raise ValueError("extrapolating the old way needs two measured block counts at or below old_up_to")
            (x0, r0), (x1, r1) = [(r["blocks"], r) for r in old[-2:]]
            n = int(np.prod(grid_of(b)))
            row = {"way": "old", "blocks": n, "measured": False, "objects": None, "tasks": 0}
            for key in ("seconds", "peak_gb", "growth_gb"):
                row[key] = r1[key] + (r1[key] - r0[key]) / (x1 - x0) * (n - x1)
            old.append(row)
    return rows + old


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
        return
    p = argparse.ArgumentParser()
    p.add_argument("--blocks", type=int, nargs="+", default=[1000, 4000, 31000])
    p.add_argument("--fragments", type=int, default=1500)
    p.add_argument("--old-up-to", type=int, default=4000)
    args = p.parse_args()
    print(f"{'way':<4} {'blocks':>7} {'seconds':>8} {'peak GB':>8} {'growth GB':>10}  {'objects':>9} {'tasks':>6}")
    for r in run(args.blocks, args.fragments, args.old_up_to):
        note = "" if r["measured"] else "  (extrapolated)"
        print(f"{r['way']:<4} {r['blocks']:>7} {r['seconds']:>8.2f} {r['peak_gb']:>8.2f} {r['growth_gb']:>10.2f}  "
              f"{r['objects'] if r['objects'] is not None else '-':>9} {r['tasks']:>6}{note}")


if __name__ == "__main__":
    main()
