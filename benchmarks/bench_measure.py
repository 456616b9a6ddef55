"""Benchmark of the measurement features (issue 10): what the full table costs on top of the segmentation job.

    python benchmarks/bench_measure.py [--shape 128,1024,1024] [--workers 2] [--dir /tmp/bigseg-measure] [--repeat N]

One image (``synthetic.nuclei`` plus a second channel correlated with it), measured in one run on one local
cluster:
  job            the watershed job, basic table (size, position, bounding box, intensities): the reference
  job + table    the same job with ``features=shape,colocalization,neighbours`` (second moments, the crop
                 pass, Pearson/Manders, nearest neighbours, neighbours within 5 voxels, touching objects):
                 target at most 1.25x the reference's seconds; the client's peak RSS beside the reference's;
                 and the same without the crop pass (``crops=False``: second-moment shape columns only)
  measure        ``bigseg.measure`` of the job's labels with the same features (the table of a label image
                 that exists), and scikit-image's ``regionprops_table`` on the whole arrays in one process
                 (shape columns and intensities) as what a user would run instead
Prints one table: seconds, ratio to the reference, peak worker and client RSS. ``--repeat N``: the three jobs
run N times in turn on the same workers, the fastest of each counts (this machine's runs vary by up to a third).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np

import bigseg
from bigseg.synthetic import nuclei, write_ome_zarr

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_core import PeakMemory  # noqa: E402

GB = 2**30
FEATURES = "shape,colocalization,neighbours"

REGIONPROPS = r"""
import json, resource, sys, time
import numpy as np, zarr
from skimage.measure import regionprops_table
image_url, labels_url = sys.argv[1:3]
t0 = time.perf_counter()
image = zarr.open_array(image_url + "/s0", mode="r")[:]
labels = zarr.open_array(labels_url + "/0", mode="r")[:]
regionprops_table(labels, np.moveaxis(image, 0, -1), properties=(
    "label", "area", "centroid", "bbox", "intensity_mean", "intensity_min", "intensity_max", "axis_major_length",
    "axis_minor_length", "inertia_tensor_eigvals", "solidity", "extent", "equivalent_diameter_area"))
print(json.dumps({"total": time.perf_counter() - t0,
                  "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))
"""


def timed(client, fn):
    with PeakMemory(client) as mem:
        t0 = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - t0
    return result, seconds, mem.peak_worker / GB, mem.peak_client / GB


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="128,1024,1024")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--dir", default="/tmp/bigseg-measure")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each job, in turn; the fastest of each counts")
    args = ap.parse_args()
    shape = tuple(int(v) for v in args.shape.split(","))
    shutil.rmtree(args.dir, ignore_errors=True)
    os.makedirs(args.dir)
    a, _ = nuclei(shape, seed=0)
    rng = np.random.default_rng(0)
    b = (0.5 * a + rng.normal(200, 30, shape)).clip(0).astype(np.uint16)
    path = write_ome_zarr(os.path.join(args.dir, "two.zarr"), np.stack([a, b]), "czyx", (1, 64, 256, 256),
                          levels=3, scale={"c": 1.0, "z": 1.0, "y": 1.0, "x": 1.0})
    del a, b
    from distributed import Client, LocalCluster
    rows = []
    with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, memory_limit="10GB",
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        jobs = {"basic": {}, "full": dict(features=FEATURES, neighbour_radius=5),
                "moments": dict(features=FEATURES, neighbour_radius=5, crops=False)}
        runs = {name: [] for name in jobs}
        for _ in range(args.repeat):  # the jobs in turn; the fastest run of each counts
            for name, options in jobs.items():
                runs[name].append(timed(client, lambda: bigseg.segment(path, "watershed", name=name, client=client,
                                                                       overwrite=True, **options)))
        (base, s0, w0, c0), (full, s1, w1, c1), (moments, s3, w3, c3) = (min(runs[n], key=lambda r: r[1])
                                                                         for n in jobs)
        rows.append(("job (basic table)", s0, None, w0, c0, f"{base.objects} objects, {base.blocks} blocks"))
        stages = ", ".join(f"{k} {v:.1f}" for k, v in full.seconds.items())
        rows.append((f"job + {FEATURES}", s1, s1 / s0, w1, c1, f"target <= 1.25x; {stages}"))
        stages = ", ".join(f"{k} {v:.1f}" for k, v in moments.seconds.items())
        rows.append((f"job + {FEATURES}, no crop pass", s3, s3 / s0, w3, c3, f"target <= 1.25x; {stages}"))
        meas, s2, w2, c2 = timed(client, lambda: bigseg.measure(path, "basic", client=client, features=FEATURES,
                                                                 neighbour_radius=5))
        rows.append((f"bigseg measure, {FEATURES}", s2, s2 / s0, w2, c2, f"{meas.objects} objects"))
    proc = subprocess.run([sys.executable, "-c", REGIONPROPS, path, base.labels], capture_output=True, text=True,
                          check=True)
    ref = json.loads(proc.stdout.strip().splitlines()[-1])
    rows.append(("regionprops_table, whole arrays, 1 process", ref["total"], ref["total"] / s0, None,
                 ref["peak_gb"], "shape + intensity columns only"))
    print(f"\n| {'x'.join(map(str, shape))}, 2 channels | seconds | x the basic job | worker peak GB | "
          "client peak GB | notes |")
    print("|---|---|---|---|---|---|")
    for name, s, ratio, w, c, note in rows:
        print(f"| {name} | {s:.1f} | {'-' if ratio is None else f'{ratio:.2f}x'} | "
              f"{'-' if w is None else f'{w:.2f}'} | {c:.2f} | {note} |")


if __name__ == "__main__":
    main()
