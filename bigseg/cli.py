"""The command line: ``bigseg demo``, ``info``, ``segment`` (``--dry-run``), ``preview``, ``measure``, ``spec``,
``profiles``, ``train-pixel-classifier``, ``serve`` (the job service) and its clients ``submit``, ``jobs``, ``job``, ``cancel``,
``retry``, ``logs``.

User mistakes (:class:`~bigseg.errors.BigsegError`) are printed as one line and exit 2; anything
else is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback

from bigseg.cli_client import CLIENT_COMMANDS, add_client_commands, run_client_command
from bigseg.cli_flags import add_job_arguments, add_measure_arguments, job_spec, measure_kwargs
from bigseg.cli_render import ConsoleObserver, estimate_lines, not_an_event
from bigseg.cli_serve import add_serve_command, run_serve
from bigseg.errors import BigsegError, ParameterError


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a comma-separated list of integers, e.g. 64,256,256")


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
    add_job_arguments(seg)
    run = seg.add_argument_group("where it runs")
    run.add_argument("--profile", default=None, help="cluster profile from Dask's config (bigseg profiles lists "
                     "them; default: bigseg.profile, i.e. local)")
    run.add_argument("--workers", type=int, default=None, help="local cluster size (default: from cores and memory)")
    run.add_argument("--scheduler", default=None, help="address of an existing Dask scheduler, e.g. tcp://host:8786")
    run.add_argument("--gpus", default=None, help="GPU workers to start beside the CPU workers: a count or 'auto'")
    seg.add_argument("--dry-run", action="store_true", help="plan the job and run one block on the cluster, then "
                     "print the blocks, halo overhead, peak memory per worker and seconds the job will take; "
                     "writes nothing")
    seg.add_argument("--json", action="store_true", help="print the summary as one JSON object on the last line")

    pv = sub.add_parser("preview", help="segment one region as the full job would (its threshold and "
                        "normalisation, objects cut by the region seen whole), in this process, writing nothing")
    add_job_arguments(pv)
    pv.add_argument("--region", required=True, help="start:stop per axis (z,y,x), e.g. 0:32,1000:1512,2000:2512 "
                    "(':' is the whole axis)")
    pv.add_argument("--png", default=None, help="write the region's image with the label outlines (its middle "
                    "plane in 3D) to this PNG file")
    pv.add_argument("--profile", default=None, help="the full job's cluster profile (its size sets the default "
                    "blocks, which watershed and deep models depend on)")
    pv.add_argument("--workers", type=int, default=None, help="the full job's number of workers (same purpose)")
    pv.add_argument("--json", action="store_true", help="print the summary as one JSON object on the last line")

    ms = sub.add_parser("measure", help="measure a label image that exists (bigseg's or any NGFF label image of the "
                        "image) into its measurements table, replacing the table there")
    ms.add_argument("image", help="OME-Zarr image: a local path or a URL")
    ms.add_argument("--labels", required=True, help="the label image's name (IMAGE/labels/NAME)")
    add_measure_arguments(ms)
    ms.add_argument("--block", type=_ints, default=None, help="voxels per task (z,y,x), whole chunks")
    ms.add_argument("--profile", default=None, help="cluster profile (as for segment)")
    ms.add_argument("--workers", type=int, default=None, help="local cluster size")
    ms.add_argument("--scheduler", default=None, help="address of an existing Dask scheduler")
    ms.add_argument("--json", action="store_true", help="print the summary as one JSON object on the last line")

    spec = sub.add_parser("spec", help="print the job file a command line means (YAML), or the job file's schema")
    add_job_arguments(spec)
    spec.add_argument("--schema", action="store_true", help="print the JSON schema of a job file")

    sub.add_parser("profiles", help="the cluster profiles configured, and where each comes from")
    add_serve_command(sub)

    tr = sub.add_parser("train-pixel-classifier", help="train an ilastik-style pixel classifier from scribbles")
    tr.add_argument("image", help="OME-Zarr image")
    tr.add_argument("--scribbles", required=True, help="label image of scribbles (0 = unlabelled, 1..K = classes), "
                    "e.g. IMAGE.zarr/labels/scribbles")
    tr.add_argument("--out", required=True, help="where to save the classifier (.joblib)")
    tr.add_argument("--foreground", type=int, default=2, help="the class that becomes objects (default 2)")
    tr.add_argument("--channel", type=int, default=None)
    tr.add_argument("--sigma-max", type=float, default=8.0, help="largest feature scale in pixels")
    add_client_commands(sub)
    for sp in sub.choices.values():
        sp.add_argument("-v", "--verbose", action="store_true", help="log diagnostics")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _log_to_stderr(args.verbose)
    try:
        return {"demo": _demo, "info": _info, "segment": _segment, "preview": _preview, "measure": _measure,
                "spec": _spec,
                "profiles": _profiles, "train-pixel-classifier": _train, "serve": run_serve,
                **dict.fromkeys(CLIENT_COMMANDS, run_client_command)}[args.command](args)
    except BigsegError as err:
        if args.verbose:
            traceback.print_exc()
        print(f"bigseg: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bigseg: interrupted; the output is marked incomplete (not a valid label image): run the same "
              "command again to resume", file=sys.stderr)
        return 130


def _log_to_stderr(verbose: bool) -> None:
    """bigseg's diagnostics on stderr (once per process, however often ``main`` runs); -v adds INFO lines."""
    logger = logging.getLogger("bigseg")
    if not any(getattr(h, "bigseg_cli", False) for h in logger.handlers):
        handler = logging.StreamHandler()
        handler.bigseg_cli = True
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        handler.addFilter(not_an_event)  # the console observer shows those
        logger.addHandler(handler)
    logger.setLevel(logging.INFO if verbose else logging.WARNING)


def _segment(args) -> int:
    import bigseg
    if args.dry_run:
        summary = bigseg.dry_run(job_spec(args), profile=args.profile, scheduler=args.scheduler,
                                 workers=args.workers, gpus=args.gpus).summary()
        for line in estimate_lines(summary):
            print(line)
        if args.json:
            print(json.dumps(summary))
        return 0
    bigseg.segment(job_spec(args), profile=args.profile, scheduler=args.scheduler, workers=args.workers,
                   gpus=args.gpus, observer=ConsoleObserver(args.json))
    return 0


def _measure(args) -> int:
    import bigseg
    result = bigseg.measure(args.image, args.labels, block=args.block, profile=args.profile,
                            scheduler=args.scheduler, workers=args.workers, **measure_kwargs(args))
    print(f"measured {result.objects} objects of {args.labels} in {result.blocks} blocks "
          f"({result.seconds.get('total', 0):.1f} s): {result.table}")
    if args.json:
        print(json.dumps(result.summary()))
    return 0


def _preview(args) -> int:
    import numpy as np

    import bigseg
    from bigseg.pipeline import open_view
    from bigseg.previews import write_picture
    from bigseg.stitch_rules import Output
    if args.png is not None and not os.path.isdir(os.path.dirname(os.path.abspath(args.png))):
        raise ParameterError(f"--png {args.png}: no such folder; give a path in an existing folder")
    spec = job_spec(args)
    labels = bigseg.preview(spec, region=args.region, profile=args.profile, workers=args.workers)
    kind = "classes" if spec.method.output() is Output.CLASSES else "objects"
    found = int(np.count_nonzero(np.unique(labels)))
    summary = {"region": args.region, "shape": list(labels.shape), kind: found, "method": spec.method.name}
    print(f"preview  {args.region} {tuple(labels.shape)}: {found} {kind}, method {spec.method.name}")
    if args.png is not None:
        summary["png"] = write_picture(open_view(spec), args.region, labels, args.png)
        plane = ", middle plane" if labels.ndim == 3 else ""
        print(f"png      {args.png}  (label outlines over the image{plane})")
    if args.json:
        print(json.dumps(summary))
    return 0


def _spec(args) -> int:
    from bigseg.io import store
    from bigseg.spec import schema, to_yaml
    if args.schema:
        print(json.dumps(schema(), indent=1))
        return 0
    spec = job_spec(args)
    if not store.is_url(spec.input.url):  # the file works from any folder
        spec = spec.model_copy(update={"input": spec.input.model_copy(update={"url": os.path.abspath(spec.input.url)})})
    print(to_yaml(spec), end="")
    return 0


def _profiles(args) -> int:
    from bigseg.cluster import describe_profiles
    rows = describe_profiles()
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        default = " (default)" if r.get("default") else ""
        print(f"{r['name']:<{width}}  {r['kind']:<10}  {r['source']}{default}")
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
    write_ome_zarr(args.path, image, "zyx"[-len(args.shape):], chunks, version="0.5", unit="micrometer")
    print(f"demo: {truth.max()} nuclei drawn")
    print(f"image    {args.path}  (view: napari --plugin napari-ome-zarr {args.path})")
    bigseg.segment(args.path, "watershed", "nuclei", workers=args.workers, overwrite=True,
                   observer=ConsoleObserver(args.json))
    return 0


if __name__ == "__main__":
    sys.exit(main())
