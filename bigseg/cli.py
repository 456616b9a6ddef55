"""The command line: ``bigseg demo``, ``bigseg info``, ``bigseg segment``.

User mistakes (:class:`~bigseg.errors.BigsegError`) are printed as one line and exit 2; anything
else is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import traceback

from bigseg.cli_render import ConsoleObserver, not_an_event
from bigseg.errors import BigsegError, ParameterError


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a comma-separated list of integers, e.g. 64,256,256")


def _floats(text: str):
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number or comma-separated numbers, e.g. 1.0 or 0.5,1,1")
    return values[0] if len(values) == 1 else values


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bigseg", description="Segment OME-Zarr images block-wise on a Dask cluster.")
    sub = p.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="write a synthetic OME-Zarr and segment it on a local cluster")
    demo.add_argument("path", nargs="?", default="bigseg-demo.zarr", help="where to write the demo image")
    demo.add_argument("--shape", type=_ints, default=(64, 512, 512), help="Z,Y,X of the demo image")
    demo.add_argument("--workers", type=int, default=None)
    demo.add_argument("--json", action="store_true", help="print the summary as JSON on the last line")

    info = sub.add_parser("info", help="axes, levels, shapes, chunks, scale and labels of an OME-Zarr image")
    info.add_argument("image")
    info.add_argument("--json", action="store_true")

    seg = sub.add_parser("segment", help="segment an OME-Zarr image into NGFF labels and a measurements table")
    seg.add_argument("image", help="OME-Zarr image: a local path or an fsspec URL")
    seg.add_argument("--method", default="watershed",
                     help="threshold | watershed | cellpose | stardist | pixel-classifier (default: watershed)")
    seg.add_argument("--name", default=None, help="label name: IMAGE/labels/NAME (default: the method)")
    seg.add_argument("--channel", type=int, default=None, help="channel to segment (default 0)")
    seg.add_argument("--timepoint", type=int, default=None, help="timepoint to segment (default 0)")
    seg.add_argument("--level", type=int, default=0, help="resolution level to segment (default 0)")
    seg.add_argument("--block", type=_ints, default=None, help="block shape, a multiple of the chunks, e.g. 64,512,512")
    seg.add_argument("--halo", type=_ints, default=None, help="voxels of context per side (default: from the method)")
    seg.add_argument("--workers", type=int, default=None, help="local cluster size (default: from cores and memory)")
    seg.add_argument("--scheduler", default=None, help="address of an existing Dask scheduler, e.g. tcp://host:8786")
    seg.add_argument("--gpus", default=None, help="GPU workers to start beside the CPU workers: a count or 'auto'")
    seg.add_argument("--output", default=None, help="write a standalone label image here instead of IMAGE/labels")
    seg.add_argument("--overwrite", action="store_true",
                     help="replace an existing label image of that name (an unfinished job of the same settings "
                     "is resumed without it)")
    seg.add_argument("--skip-bad-blocks", action="store_true",
                     help="leave blocks whose input cannot be read unlabelled (and report them) instead of failing")
    seg.add_argument("--json", action="store_true", help="print the summary as one JSON object on the last line")
    m = seg.add_argument_group("method parameters")
    m.add_argument("--sigma", type=_floats, default=None, help="Gaussian smoothing in voxels (one or per axis)")
    m.add_argument("--threshold", type=float, default=None, help="intensity threshold (default: computed once)")
    m.add_argument("--threshold-method", default=None, help="otsu | li | triangle | yen | mean (default otsu)")
    m.add_argument("--diameter", type=float, default=None, help="watershed: expected object diameter in voxels")
    m.add_argument("--min-size", type=int, default=None, help="drop objects smaller than this many voxels")
    m.add_argument("--connectivity", type=int, default=None, help="threshold: 1 = faces only, ndim = full")
    m.add_argument("--model", default=None, help="deep methods: a pretrained name (cpsam, cyto3, 2D_versatile_fluo, "
                   "3D_demo) or the path of a trained model / pixel classifier")
    m.add_argument("--gpu", action="store_true", default=None, help="run the model on GPU workers")
    m.add_argument("--prob-thresh", type=float, default=None, help="stardist / pixel-classifier probability")
    m.add_argument("--nms-thresh", type=float, default=None, help="stardist non-maximum suppression IoU")
    m.add_argument("--flow-threshold", type=float, default=None, help="cellpose flow error threshold")
    m.add_argument("--cellprob-threshold", type=float, default=None, help="cellpose cell probability threshold")
    m.add_argument("--object-size", type=float, default=None, help="stardist: largest object diameter (halo)")
    m.add_argument("--instances", default=None, help="pixel-classifier: components | watershed (objects) or classes "
                   "(a semantic class map: one label value per scribble class)")
    seg.add_argument("--iou-threshold", type=float, default=0.5, help="stitching: IoU that joins two fragments")
    tr = sub.add_parser("train-pixel-classifier", help="train an ilastik-style pixel classifier from scribbles")
    tr.add_argument("image", help="OME-Zarr image")
    tr.add_argument("--scribbles", required=True, help="label image of scribbles (0 = unlabelled, 1..K = classes), "
                    "e.g. IMAGE.zarr/labels/scribbles")
    tr.add_argument("--out", required=True, help="where to save the classifier (.joblib)")
    tr.add_argument("--foreground", type=int, default=2, help="the class that becomes objects (default 2)")
    tr.add_argument("--channel", type=int, default=None)
    tr.add_argument("--sigma-max", type=float, default=8.0, help="largest feature scale in pixels")
    for sp in (demo, info, seg, tr):
        sp.add_argument("-v", "--verbose", action="store_true", help="log diagnostics")
    return p


METHOD_FLAGS = ("sigma", "threshold", "threshold_method", "diameter", "min_size", "connectivity", "model", "gpu",
                "prob_thresh", "nms_thresh", "flow_threshold", "cellprob_threshold", "object_size", "instances")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(not_an_event)  # the console observer shows those
    logging.getLogger("bigseg").addHandler(handler)
    logging.getLogger("bigseg").setLevel(logging.INFO if args.verbose else logging.WARNING)
    if args.verbose:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return {"demo": _demo, "info": _info, "segment": _segment,
                "train-pixel-classifier": _train}[args.command](args)
    except BigsegError as err:
        if args.verbose:
            traceback.print_exc()
        print(f"bigseg: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bigseg: interrupted; the output is marked incomplete (not a valid label image): run the same "
              "command again to resume", file=sys.stderr)
        return 130


def _segment(args) -> int:
    import bigseg
    params = {k: getattr(args, k) for k in METHOD_FLAGS if getattr(args, k) is not None}
    halo = args.halo[0] if args.halo and len(args.halo) == 1 else args.halo
    bigseg.segment(args.image, args.method, args.name, scheduler=args.scheduler, workers=args.workers,
                   gpus=args.gpus,
                   level=args.level, channel=args.channel, timepoint=args.timepoint, block=args.block,
                   halo=halo, output=args.output, overwrite=args.overwrite,
                   skip_bad_blocks=args.skip_bad_blocks,
                   iou_threshold=args.iou_threshold, observer=ConsoleObserver(args.json), **params)
    return 0


def _info(args) -> int:
    from bigseg.io.ome import open_image
    from bigseg.io.labels import incomplete_labels
    image = open_image(args.image)
    unfinished = incomplete_labels(image.url)
    info = {"image": image.url, "ngff": image.version, "zarr_format": image.zarr_format,
            "axes": [a.to_json() for a in image.axes],
            "levels": [{"path": lv.path, "shape": list(lv.shape), "chunks": list(lv.chunks), "dtype": lv.dtype,
                        "scale": list(lv.scale)} for lv in image.levels],
            "labels": list(image.labels), "incomplete_labels": unfinished}
    axes = ",".join(f"{a.name}" + (f"[{a.unit}]" if a.unit else "") for a in image.axes)
    print(f"{image.url}: OME-NGFF {image.version} (Zarr v{image.zarr_format}), axes {axes}")
    for i, lv in enumerate(image.levels):
        print(f"  level {i} '{lv.path}': shape {lv.shape} chunks {lv.chunks} {lv.dtype} scale {lv.scale}")
    print(f"  labels: {', '.join(image.labels) if image.labels else '(none)'}")
    if unfinished:
        print(f"  incomplete (unfinished jobs, not valid label images; rerun the job to resume): "
              f"{', '.join(unfinished)}")
    if args.json:
        print(json.dumps(info))
    return 0


def _train(args) -> int:
    from bigseg.io.ome import open_image
    from bigseg.methods.pixel_classifier import train
    view = open_image(args.image).view(0, args.channel, None)
    scribbles = open_image(args.scribbles).view(0, None, None)
    if scribbles.shape != view.shape:
        raise ParameterError(f"scribbles {scribbles.shape} and image {view.shape} differ in shape; draw the "
                             "scribbles on level 0 of the image")
    full = tuple(slice(0, s) for s in view.shape)
    train(view.read(full), scribbles.read(full), args.out, foreground=args.foreground, sigma_max=args.sigma_max)
    print(f"pixel classifier saved to {args.out}; use: bigseg segment IMAGE --method pixel-classifier "
          f"--model {args.out}")
    return 0


def _demo(args) -> int:
    import bigseg
    from bigseg.synthetic import nuclei, write_ome_zarr
    if len(args.shape) not in (2, 3):
        raise ParameterError(f"--shape {args.shape}: give 2 or 3 values, e.g. 64,512,512")
    print(f"demo: writing synthetic nuclei {args.shape} to {args.path}", file=sys.stderr)
    image, truth = nuclei(args.shape, seed=0)
    chunks = tuple(min(s, c) for s, c in zip(args.shape, (32, 128, 128)[-len(args.shape):]))
    write_ome_zarr(args.path, image, "zyx"[-len(args.shape):], chunks, version="0.5")
    print(f"demo: {truth.max()} nuclei drawn")
    print(f"image    {args.path}  (view: napari --plugin napari-ome-zarr {args.path})")
    bigseg.segment(args.path, "watershed", "nuclei", workers=args.workers, overwrite=True,
                   observer=ConsoleObserver(args.json))
    return 0


if __name__ == "__main__":
    sys.exit(main())
