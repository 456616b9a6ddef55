"""Benchmark of the core pipeline (issue 2): block-wise vs monolithic, on one machine, in one run.

    python benchmarks/bench_core.py [--shape 128,1024,1024] [--workers 2] [--dir /tmp/bigseg-bench]

Cases
  watershed: bigseg block-wise on a local cluster of N workers vs the same method run monolithically
             in one process (read, segment, write labels, regionprops table).
  threshold: bigseg block-wise vs dask-image (gaussian_filter > t, ndmeasure.label, to_zarr) on the
             same cluster.
Prints a table of times and ratios, bigseg's seconds per stage, peak memory, and object fidelity.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time

import psutil
import zarr

import bigseg
from bigseg.synthetic import nuclei, write_ome_zarr

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from matching import match, same_partition  # noqa: E402

MONOLITHIC = r"""
import json, resource, sys, time
import numpy as np, zarr
from skimage.measure import regionprops_table
from bigseg.methods import get_method
from bigseg.units import VoxelSize
path, method, threshold, out = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
t0 = time.perf_counter()
image = zarr.open_array(path + "/s0", mode="r")[:]
t1 = time.perf_counter()
labels = get_method(method, threshold=threshold)(image, VoxelSize.isotropic(image.ndim))
t2 = time.perf_counter()
chunks = (64, 256, 256) if labels.ndim == 3 else (1024, 1024)
zarr.create_array(out, data=labels.astype(np.uint32), chunks=chunks, overwrite=True)
regionprops_table(labels, image, properties=("label", "area", "centroid", "bbox", "intensity_mean",
                                             "intensity_min", "intensity_max"))
t3 = time.perf_counter()
print(json.dumps({"read": t1 - t0, "segment": t2 - t1, "write+measure": t3 - t2, "total": t3 - t0,
                  "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))
"""


class Sampler:
    """Calls ``sample()`` every ``interval`` seconds in a thread while in a ``with`` block."""

    interval = 0.05

    def __init__(self):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        raise NotImplementedError

    def _run(self):
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


class PeakMemory(Sampler):
    """Samples the largest RSS of the cluster's worker processes (``peak_worker``) and of this, the client's,
    process (``peak_client``)."""

    def __init__(self, client):
        super().__init__()
        self.pids = list(client.run(os.getpid).values())
        self.peak_worker = 0
        self.peak_client = 0
        self._me = psutil.Process()

    def sample(self) -> None:
        for pid in self.pids:
            try:
                self.peak_worker = max(self.peak_worker, psutil.Process(pid).memory_info().rss)
            except psutil.NoSuchProcess:
                pass
        self.peak_client = max(self.peak_client, self._me.memory_info().rss)


DASK_IMAGE = r"""
import sys, time
import numpy as np, dask.array as da
from distributed import Client
from dask_image import ndfilters, ndmeasure
address, path, threshold, out = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
with Client(address):
    t0 = time.perf_counter()
    image = da.from_zarr(path + "/s0").astype(np.float32)
    smooth = ndfilters.gaussian_filter(image, 1.0, mode="nearest", truncate=4.0)
    labels, n = ndmeasure.label(smooth > threshold, structure=np.ones((3,) * image.ndim))
    labels.astype(np.uint32).to_zarr(out, overwrite=True)
    print(time.perf_counter() - t0)
"""


def dask_image_threshold(client, path: str, threshold: float, out: str, timeout: float):
    """Seconds dask-image took on the same cluster (graph building included), or None past ``timeout``."""
    try:
        proc = subprocess.run([sys.executable, "-c", DASK_IMAGE, client.scheduler.address, path, str(threshold),
                               out], capture_output=True, text=True, timeout=timeout, check=True)
    except subprocess.TimeoutExpired:
        client.restart()  # drop whatever it left running on the workers
        return None
    return float(proc.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="128,1024,1024")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--dir", default="/tmp/bigseg-bench")
    ap.add_argument("--skip-dask-image", action="store_true")
    ap.add_argument("--dask-image-timeout", type=float, default=600.0, help="seconds before giving up on it")
    args = ap.parse_args()
    shape = tuple(int(v) for v in args.shape.split(","))
    shutil.rmtree(args.dir, ignore_errors=True)
    os.makedirs(args.dir)
    path = os.path.join(args.dir, "bench.zarr")
    t0 = time.perf_counter()
    image, truth = nuclei(shape, seed=0)
    write_ome_zarr(path, image, "zyx", (64, 256, 256), version="0.5")
    del image
    print(f"# data: {shape} uint16, {truth.max()} nuclei, written in {time.perf_counter() - t0:.0f}s", flush=True)

    from distributed import Client, LocalCluster
    rows, details = [], {}
    with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                      memory_limit="10GB") as cluster, Client(cluster) as client:
        for method in ("watershed", "threshold"):
            with PeakMemory(client) as mem:
                ours = bigseg.segment(path, method, name=method, client=client, overwrite=True)
            details[method] = (ours, mem.peak_worker)
            print(f"# bigseg {method}: {json.dumps(ours.summary()['seconds'])}", flush=True)
        threshold = details["watershed"][0].threshold
        mono = {}
        for method, (ours, mem_ours) in details.items():
            mono_out = os.path.join(args.dir, f"mono-{method}.zarr")
            proc = subprocess.run([sys.executable, "-c", MONOLITHIC, path, method, str(threshold), mono_out],
                                  capture_output=True, text=True, check=True)
            mono[method] = json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"# monolithic {method}: {mono[method]}", flush=True)
            ref = zarr.open_array(mono_out, mode="r")[:]
            labels = zarr.open_array(ours.labels + "/0", mode="r")[:]
            if method == "threshold":
                fid = f"identical partition: {same_partition(ref, labels)}"
            else:
                m = match(ref, labels)
                fid = f"F1 {m.f1:.4f}, splits {m.splits}, merges {m.merges} of {m.n_ref}"
            share = (ours.seconds["stitch"] + ours.seconds["measure"]) / ours.seconds["total"]
            rows.append((method, "monolithic, 1 process", ours.seconds["total"], mono[method]["total"], fid,
                         mem_ours, mono[method]["peak_gb"] * 2**30, share))
        if not args.skip_dask_image:
            di_out = os.path.join(args.dir, "dask_image.zarr")
            with PeakMemory(client) as mem:
                t_di = dask_image_threshold(client, path, threshold, di_out, args.dask_image_timeout)
            th, th_mem = details["threshold"]
            th_sm = th.seconds["stitch"] + th.seconds["measure"]
            if t_di is None:
                rows.append(("threshold", "dask-image label", th.seconds["total"], float("nan"),
                             f"dask-image did not finish in {args.dask_image_timeout:.0f}s", th_mem,
                             mem.peak_worker, th_sm / th.seconds["total"]))
            else:
                exact = same_partition(zarr.open_array(di_out, mode="r")[:],
                                       zarr.open_array(th.labels + "/0", mode="r")[:])
                rows.append(("threshold", "dask-image label", th.seconds["total"], t_di,
                             f"identical partition: {exact}", th_mem, mem.peak_worker, th_sm / th.seconds["total"]))

    print()
    print("| method | reference | bigseg s | reference s | speed-up | fidelity vs reference | "
          "bigseg peak worker GB | reference peak GB | stitch+measure share |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, ref_name, t_ours, t_ref, fid, mem_ours, mem_ref, share in rows:
        print(f"| {name} | {ref_name} | {t_ours:.1f} | {t_ref:.1f} | {t_ref / t_ours:.2f}x | {fid} | "
              f"{mem_ours / 2**30:.2f} | {mem_ref / 2**30:.2f} | {100 * share:.1f}% |")
    print()
    print("seconds per stage:")
    for method, (res, _) in details.items():
        print(f"  bigseg {method:<9} " + ", ".join(f"{k} {v:.1f}" for k, v in res.seconds.items()) +
              f"  ({res.blocks} blocks of {res.block_shape}, halo {res.halo}, {res.objects} objects)")
    for method, times in mono.items():
        print(f"  monolithic {method}: " + ", ".join(f"{k} {v:.1f}" for k, v in times.items() if k != "peak_gb"))


if __name__ == "__main__":
    main()
