"""Benchmark of the journal's listing: reading N task records at resume time.

    python benchmarks/bench_journal.py [--records 10000] [--url memory://bench] [--url /tmp/bench] [--url s3://b/p]

For each URL: writes N segment-stage records (a block summary with a few boundary fragments, as NPZ) and
times ``Journal.finished`` (one listing, one batched ``fs.cat``) against the former way (exists, listing,
then one read per record): after one untimed pass (servers cache what was read), each is timed twice,
alternately, and the better time is shown. Then the client's checkpoints are added as a job writes them (one
per ``CHECKPOINT_EVERY`` tasks, the last ``--uncovered`` records left to the tasks' own records, as after a
kill) and ``finished()`` is timed again. s3:// URLs take their credentials and endpoint from the AWS_*
environment.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from bigseg.engine import records  # noqa: E402
from bigseg.engine.journal import CHECKPOINT_EVERY, Journal  # noqa: E402
from bigseg.io import store  # noqa: E402
from bigseg.segment_blocks import BlockSummary  # noqa: E402


def _record(i: int) -> bytes:
    rng = np.random.default_rng(i)
    n = 1 + i % 8
    return records.encode(BlockSummary(i, n + 3, n, rng.integers(1, 1000, n).astype(np.uint16), 0.5))[1]


def _write(journal: Journal, n: int) -> None:
    fs, _ = store.filesystem(journal.step_url("segment"))
    payload = {store.filesystem(journal.record_stem("segment", i) + ".npz")[1]: _record(i) for i in range(n)}
    if "memory" in fs.protocol or "file" in fs.protocol:
        fs.makedirs(store.filesystem(journal.step_url("segment"))[1], exist_ok=True)
    fs.pipe(payload)


def _one_by_one(journal: Journal) -> dict:
    """The former listing: exists, ls, then one read per record."""
    folder = journal.step_url("segment")
    if not store.exists(folder):
        return {}
    return {int(name[:-4]): records.decode(".npz", store.load_bytes(store.join(folder, name)))
            for name in store.children(folder) if name.endswith(".npz")}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--records", type=int, default=10000)
    p.add_argument("--url", action="append", default=None)
    p.add_argument("--uncovered", type=int, default=500, help="records written after the last checkpoint")
    p.add_argument("--checkpointed-only", action="store_true",
                   help="skip the record-by-record and batched timings (they take minutes at 10^5 records)")
    args = p.parse_args()
    urls = args.url or ["memory://bigseg-bench-journal", tempfile.mkdtemp(prefix="bigseg-bench-journal-")]
    print(f"{'store':<10} {'records':>8} {'write s':>8} {'finished() s':>13} {'one-by-one s':>13} {'ratio':>6} "
          f"{'checkpointed s':>15} {'ratio':>6}")
    for url in urls:
        journal = Journal(store.join(url, "work"))
        t0 = time.perf_counter()
        _write(journal, args.records)
        written = time.perf_counter() - t0
        batched = journal.finished("segment")  # untimed: warms the server's caches
        times = {"batched": [], "single": []}
        for _ in range(0 if args.checkpointed_only else 2):
            t0 = time.perf_counter()
            batched = journal.finished("segment")
            times["batched"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            single = _one_by_one(journal)
            times["single"].append(time.perf_counter() - t0)
            assert sorted(batched) == sorted(single) == list(range(args.records))
        covered = max(args.records - args.uncovered, 0)
        for start in range(0, covered, CHECKPOINT_EVERY):
            journal.checkpoint("segment", {i: batched[i] for i in range(start, min(start + CHECKPOINT_EVERY, covered))})
        journal.finished("segment")
        t0 = time.perf_counter()
        resumed = journal.finished("segment")
        t_checkpointed = time.perf_counter() - t0
        assert sorted(resumed) == list(range(args.records))
        t_batched, t_single = (min(times[k], default=float("nan")) for k in ("batched", "single"))
        kind = url.split("://")[0] if "://" in url else "local"
        print(f"{kind:<10} {args.records:>8} {written:>8.2f} {t_batched:>13.2f} {t_single:>13.2f} "
              f"{t_single / t_batched:>6.1f} {t_checkpointed:>15.2f} {t_single / t_checkpointed:>6.1f}")
        store.remove(journal.work_url)


if __name__ == "__main__":
    main()
