"""Benchmark of previews (issue 9): seconds for a crop of a large image, split into the plan (the job sample
and the job-wide values) and the preview itself.

    python benchmarks/bench_preview.py [--dir /tmp/bigseg-bench] [--block-3d 128,256,256] [--block-2d 1024,1024]

Writes (once, chunk by chunk, with an isotropic pyramid) a 1024^3 uint16 3D image (chunks 128^3, 4 levels)
and a 16384^2 2D image (chunks 1024^2, 3 levels): a jittered lattice of blobs (period 24 voxels) with noise.
Times 32x512x512 (3D) and 512x512 (2D) crops for threshold and watershed, with the default blocks (planned
for 2 workers) and with the given smaller job blocks (watershed replays the job's blocks, so its cost follows
them).
"""
from __future__ import annotations

import argparse
import itertools
import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import zarr

from bigseg import previews
from bigseg.api import as_spec
from bigseg.pipeline import plan_segmentation


def blobs(coords: list[np.ndarray], period: float = 24.0) -> np.ndarray:
    out = None
    for t in coords:
        c = (0.5 + 0.5 * np.cos(2 * np.pi * (t / period + 0.08 * np.sin(t / 97.0)))) ** 3
        out = c if out is None else np.multiply.outer(out, c)
    return out


def write_image(path: str, shape: tuple[int, ...], chunks: tuple[int, ...], levels: int) -> str:
    """An NGFF 0.5 image written chunk by chunk; each level sampled from the same function (no downsampling)."""
    if os.path.exists(os.path.join(path, "zarr.json")):
        return path
    nd, axes = len(shape), "zyx"[-len(shape):]
    root = zarr.open_group(path, mode="w", zarr_format=3)
    datasets = []
    for lv in range(levels):
        f = 2**lv
        s = tuple(max(1, n // f) for n in shape)
        arr = root.create_array(f"s{lv}", shape=s, chunks=tuple(min(c, n) for c, n in zip(chunks, s)),
                                dtype=np.uint16, fill_value=0, dimension_names=list(axes))

        def one(starts, arr=arr, s=s, f=f):
            region = tuple(slice(a, min(a + c, n)) for a, c, n in zip(starts, arr.chunks, s))
            rng = np.random.default_rng(abs(hash(starts)) % 2**32)
            v = 150 + 900 * blobs([np.arange(r.start, r.stop) * f + (f - 1) / 2 for r in region])
            v += rng.normal(0, 25, v.shape)
            arr[region] = np.clip(v, 0, 65535).astype(np.uint16)
        with ThreadPoolExecutor(os.cpu_count() or 2) as pool:
            list(pool.map(one, itertools.product(*[range(0, n, c) for n, c in zip(s, arr.chunks)])))
        datasets.append({"path": f"s{lv}", "coordinateTransformations": [
            {"type": "scale", "scale": [float(f)] * nd}, {"type": "translation", "translation": [(f - 1) / 2] * nd}]})
    root.attrs["ome"] = {"version": "0.5", "multiscales": [
        {"axes": [{"name": a, "type": "space"} for a in axes], "datasets": datasets, "name": "bench"}]}
    return path


def timed(path: str, method: str, region: str, **params) -> str:
    t0 = time.perf_counter()
    plan = plan_segmentation(as_spec(path, method, **params), 2)
    t1 = time.perf_counter()
    labels = previews.preview(plan, region)
    t2 = time.perf_counter()
    return (f"{os.path.basename(path):10} {method:9} {region:24} block {str(plan.grid.block_shape):16} "
            f"plan {t1 - t0:6.1f}s  preview {t2 - t1:6.1f}s  total {t2 - t0:6.1f}s  objects {labels.max()}")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--dir", default="/tmp/bigseg-bench")
    p.add_argument("--block-3d", default="128,256,256")
    p.add_argument("--block-2d", default="1024,1024")
    args = p.parse_args()
    os.makedirs(args.dir, exist_ok=True)
    big3d = write_image(os.path.join(args.dir, "big3d.zarr"), (1024,) * 3, (128,) * 3, 4)
    big2d = write_image(os.path.join(args.dir, "big2d.zarr"), (16384,) * 2, (1024,) * 2, 3)
    block3d, block2d = (tuple(int(v) for v in b.split(",")) for b in (args.block_3d, args.block_2d))
    region3d, region2d = "16:48,256:768,256:768", "1000:1512,1000:1512"
    for line in (timed(big2d, "threshold", region2d), timed(big2d, "watershed", region2d),
                 timed(big2d, "watershed", region2d, block=block2d), timed(big3d, "threshold", region3d),
                 timed(big3d, "watershed", region3d, block=block3d)):
        print(line, flush=True)


if __name__ == "__main__":
    main()
