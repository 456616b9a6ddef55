"""Benchmark of the deep methods (issue 3): block-wise on N workers vs the same model run monolithically
(the whole image as one ``eval`` / ``predict_instances`` call in one process), in one run.

    python benchmarks/bench_deep.py [--shape 2048,2048] [--workers 2] [--cellpose-model PATH] [--stardist-model DIR]

Without model paths it trains the tests' small models first (about 1.5 minutes), offline. Prints a table of
times, ratios and block-wise vs monolithic fidelity. The Cellpose case also runs the peer,
``cellpose.contrib.distributed_segmentation.distributed_eval`` (needs ``pip install dask-jobqueue``), on the same
cluster, image, model, normalisation and block shape, through a shim for zarr 3's keyword-only ``zarr.open``.
It runs on the 3D image only: on 2D images the peer segments every block, then fails while merging
(``scipy.ndimage.label``: "structure and input must have equal rank" - its face structure is hard-coded 3D).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

import numpy as np
import zarr

import bigseg
import bigseg.io.ome
from bigseg.methods import get_method
from bigseg.synthetic import nuclei, write_ome_zarr

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from matching import match  # noqa: E402


def monolithic(path: str, method, view_args=()) -> tuple[np.ndarray, float]:
    """The same method object, prepared the same way, on the whole image in this process."""
    from bigseg.io.ome import open_image
    view = open_image(path).view(0)
    prepared = method.prepare(view)
    image = zarr.open_array(path + "/s0", mode="r")[:]
    prepared(image[:64, :64], view.voxel_size)  # load the model before timing, as a worker does once
    t0 = time.perf_counter()
    labels = prepared(image, view.voxel_size)
    return labels, time.perf_counter() - t0


def _normalize(image, method, crop=None):
    """The peer's preprocessing step: bigseg's job-wide normalisation, so both feed the model the same input."""
    return method.normalized(image)


def peer_cellpose(client, path: str, method, block_shape, workdir: str) -> tuple[np.ndarray, float]:
    """cellpose.contrib.distributed_segmentation on the same client; returns its labels and wall time."""
    import types
    try:
        from cellpose.contrib import distributed_segmentation as peer
    except ImportError as err:
        raise SystemExit(f"peer not available ({err}); pip install dask-jobqueue") from None
    # zarr 3 made zarr.open's mode keyword-only; the peer passes it positionally
    peer.zarr = types.SimpleNamespace(open=lambda store, mode="a", **kw: zarr.open(store=store, mode=mode, **kw),
                                      core=zarr.core)
    image = zarr.open_array(path + "/s0", mode="r")
    eval_kwargs = dict(diameter=method.diameter, flow_threshold=method.flow_threshold,
                       cellprob_threshold=method.cellprob_threshold, normalize=False, channels=[0, 0])
    if image.ndim == 3:
        eval_kwargs.update(do_3D=True, z_axis=0, anisotropy=method.anisotropy)
    cwd = os.getcwd()
    os.chdir(workdir)  # the peer writes worker logs into the current directory
    try:
        t0 = time.perf_counter()
        out, _ = peer.distributed_eval(image, list(block_shape), os.path.join(workdir, "peer.zarr"),
                                       preprocessing_steps=[(_normalize, {"method": method})],
                                       model_kwargs={"pretrained_model": method.model, "gpu": False},
                                       eval_kwargs=eval_kwargs, cluster=types.SimpleNamespace(client=client),
                                       temporary_directory=workdir)
        return out[:], time.perf_counter() - t0
    finally:
        os.chdir(cwd)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="2048,2048", help="2D image for cellpose and stardist")
    ap.add_argument("--shape3d", default="48,192,192", help="3D image for cellpose, bigseg vs the peer")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--cellpose-model")
    ap.add_argument("--stardist-model")
    ap.add_argument("--no-peer", action="store_true", help="skip cellpose.contrib.distributed_segmentation")
    ap.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "bigseg-bench-deep"))
    args = ap.parse_args()
    shutil.rmtree(args.dir, ignore_errors=True)
    os.makedirs(args.dir)
    from deep_models import train_cellpose, train_stardist
    t0 = time.perf_counter()
    cp_model = args.cellpose_model or train_cellpose(os.path.join(args.dir, "cellpose"))
    sd_model = args.stardist_model or train_stardist(os.path.join(args.dir, "stardist"), 2)
    print(f"# models ready in {time.perf_counter() - t0:.0f}s", flush=True)
    images = {}
    for key, arg, axes, chunks in (("2D", args.shape, "yx", (512, 512)), ("3D", args.shape3d, "zyx", (48, 96, 96))):
        shape = tuple(int(v) for v in arg.split(","))
        image, truth = nuclei(shape, seed=0, radius=(5, 8))
        images[key] = (write_ome_zarr(os.path.join(args.dir, f"deep{key}.zarr"), image, axes, chunks[-len(shape):],
                                      version="0.5"), truth)
    cases = [("2D", "cellpose", {"model": cp_model, "diameter": 13}, False),
             ("2D", "stardist", {"model": sd_model}, False),
             ("3D", "cellpose", {"model": cp_model, "diameter": 13}, not args.no_peer)]
    from distributed import Client, LocalCluster
    rows, peers = [], []
    with LocalCluster(n_workers=args.workers, threads_per_worker=1) as cluster, Client(cluster) as client:
        for key, name, params, with_peer in cases:
            path, truth = images[key]
            ours = bigseg.segment(path, name, name=name, client=client, overwrite=True, **params)
            labels = zarr.open_array(ours.labels + "/0", mode="r")[:]
            ref, t_mono = monolithic(path, get_method(name, **params))
            m = match(ref, labels)
            blocks_per_s = ours.blocks / ours.seconds["segment"]
            rows.append((f"{name} {key}", ours, t_mono, m, blocks_per_s, match(truth, labels).f1))
            print(f"# {name} {key}: {ours.summary()['seconds']}", flush=True)
            if with_peer:
                prepared = get_method(name, **params).prepare(bigseg.io.ome.open_image(path).view(0))
                peer_labels, t_peer = peer_cellpose(client, path, prepared, ours.block_shape, args.dir)
                peers.append((key, ours.block_shape, t_peer, ours.seconds["total"], match(ref, peer_labels),
                              match(truth, peer_labels).f1))
    print(f"\n| method | bigseg s ({args.workers} workers, whole job) | monolithic s (model only) | speed-up | "
          f"blocks | blocks/s | F1 block-wise vs monolithic | splits | merges | F1 vs truth |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, ours, t_mono, m, bps, f1_truth in rows:
        print(f"| {name} | {ours.seconds['total']:.1f} | {t_mono:.1f} | {t_mono / ours.seconds['total']:.2f}x | "
              f"{ours.blocks} | {bps:.2f} | {m.f1:.4f} | {m.splits} | {m.merges} | {f1_truth:.3f} |")
    for key, block, t_peer, t_ours, m, f1_truth in peers:
        print(f"\n| cellpose {key}, blocks {block} | peer s | bigseg s | bigseg speed-up | peer F1 vs monolithic | "
              f"peer splits | peer merges | peer F1 vs truth |\n|---|---|---|---|---|---|---|---|\n"
              f"| distributed_segmentation | {t_peer:.1f} | {t_ours:.1f} | {t_peer / t_ours:.2f}x | {m.f1:.4f} | "
              f"{m.splits} | {m.merges} | {f1_truth:.3f} |")


if __name__ == "__main__":
    main()
