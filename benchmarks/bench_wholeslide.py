"""Whole-slide benchmark (issue 9): bigseg on a local cluster vs the references, measured in one run, one table.

    python benchmarks/bench_wholeslide.py [--quick] [--cases a,b,...] [--workers 2] [--dir /tmp/bigseg-wholeslide]

Cases (default sizes; --quick sizes in brackets). bigseg runs on a local cluster of --workers single-threaded
worker processes; "s" is the wall time of the whole ``bigseg.segment`` call (planning included); the references
run in one fresh process each (peak memory from ``resource.getrusage``).

  a stardist-2d   ``synthetic.slide`` 16384^2 [4096^2], 40% tissue (nuclei r 4-7), 60% glass: bigseg ``stardist``
                  (a tiny model trained here like tests/deep_models.py, loaded by path; bigseg's default blocks)
                  vs StarDist's ``predict_instances_big`` in one process: same model, same job-wide normalisation
                  (``global_percentiles``, applied to the whole image, ``normalizer=None``), ``block_size``
                  2048^2 [1024^2] (``Sizes.stardist_block``), ``min_overlap`` = bigseg's halo, ``context`` =
                  StarDist's default (the receptive field). F1 at IoU 0.5 of bigseg vs predict_instances_big.
                  ``--repeat N``: N runs of each, alternating, on fresh workers; the fastest of each side counts
                  (on a shared 2-core machine one run of either side varied by up to 35%).
  b watershed-2d  the same slide, bigseg ``watershed`` (default blocks) vs the same method on the whole array in one
                  process (bench_core's MONOLITHIC: read, segment, write, regionprops); F1 vs monolithic.
  c threshold-3d  ``synthetic.nuclei`` 128x1024x1024 [64x512x512]: bigseg ``threshold`` vs monolithic; identical
                  partition.
  d small-blocks  the same volume in blocks of 16x128x128 [8x64x64] (512 blocks): job seconds and the stitch
                  stage's share of them.
  e scaling       the same watershed job (diameter 4.5, blocks 512^2 [256^2]) on slides of small nuclei (r 1.5-3,
                  fill 0.3, all tissue) of 1024^2, 2896^2, 8192^2 [512^2, 1448^2, 4096^2] pixels (1x, 8x, 64x;
                  1.27 million nuclei [0.32 million] at 64x): seconds, client (this process) and worker peak RSS.
  f resolve-scale ``benchmarks/bench_resolve_scale.run()``: the client-side resolve at 1,000 / 4,000 / 31,000
                  [1,000 / 4,000] synthetic blocks (10^12 voxels at 31,000), vs the former way as the reference.
  g gpu           case a with ``gpus="auto"`` where ``nvidia-smi`` lists a GPU and TensorFlow sees it (GPU
                  utilisation, blocks/s); else "no GPU".

Writes its data and outputs under --dir (removed first; about 2 GB at the default sizes). The default sizes took
25 minutes on 2 cores shared with other work (load 4-8), --quick about 10.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace

import numpy as np
import psutil
import zarr

import bigseg
from bigseg.io.ome import open_image
from bigseg.methods._sample import global_percentiles
from bigseg.synthetic import nuclei, slide, tissue_mask, write_ome_zarr

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from bench_core import MONOLITHIC, PeakMemory, Sampler  # noqa: E402
from matching import match, same_partition  # noqa: E402

GB = 2**30


@dataclass(frozen=True)
class Sizes:
    slide: int                       # edge of the whole-slide image (cases a, b, g)
    stardist_block: int              # predict_instances_big's block_size (a, g)
    volume: tuple[int, int, int]     # cases c, d
    small_block: tuple[int, int, int]
    scaling: tuple[int, int, int]    # slide edges at 1x, 8x, 64x pixels (e)
    scaling_block: int


FULL = Sizes(16384, 2048, (128, 1024, 1024), (16, 128, 128), (1024, 2896, 8192), 512)
QUICK = Sizes(4096, 1024, (64, 512, 512), (8, 64, 64), (512, 1448, 4096), 256)
#: Bytes per pixel the monolithic watershed needs (image, smoothed, distance, markers, labels, regionprops).
MONOLITHIC_BYTES_PER_VOXEL = 48


@dataclass
class Row:
    case: str
    data: str
    ours: str
    seconds: float | None = None
    reference: str = "-"
    ref_seconds: float | None = None
    target: str = ""
    worker_gb: float | None = None
    client_gb: str = ""
    ref_gb: float | None = None
    result: str = ""


@dataclass
class Job:
    """One bigseg job as measured here."""

    result: object
    seconds: float
    worker_gb: float
    client_gb: float
    client_start_gb: float

    @property
    def labels(self) -> str:
        return self.result.labels + "/0"

    def blocks_text(self) -> str:
        r = self.result
        return (f"{r.blocks} blocks of {'x'.join(map(str, r.block_shape))}, {r.blocks_background} background, "
                f"halo {max(r.halo)}")

    def client_text(self) -> str:
        return f"{self.client_gb:.2f} ({self.client_gb - self.client_start_gb:+.2f})"


@dataclass
class Bench:
    """What the cases share: options, the cluster, and data made once per run."""

    args: argparse.Namespace
    sizes: Sizes
    client: object
    made: dict = field(default_factory=dict)

    def path(self, name: str) -> str:
        return os.path.join(self.args.dir, name)

    def once(self, key, make):
        if key not in self.made:
            self.made[key] = make()
        return self.made[key]

    def slide(self) -> str:
        """The whole-slide image of cases a, b and g (written once)."""
        def make():
            n = self.sizes.slide
            glass = 1 - tissue_mask((n, n), tissue=0.4, seed=0).mean()
            return write_image(self.path("slide.zarr"), lambda: slide((n, n), tissue=0.4, seed=0), 1024,
                               f"{100 * glass:.0f}% glass")
        return self.once("slide", make)

    def volume(self, chunks: tuple[int, ...] = (64, 256, 256)) -> str:
        """The 3D nuclei volume of cases c and d (bench_core's image; its chunks by default), made once and
        rewritten for other chunks."""
        def make():
            name = f"volume-{'x'.join(map(str, chunks))}.zarr"
            if "volume" not in self.made:
                self.made["volume"] = write_image(self.path(name), lambda: nuclei(self.sizes.volume, seed=0), chunks)
                return self.made["volume"]
            return write_image(self.path(name), lambda: (zarr.open_array(self.made["volume"] + "/s0")[:], None),
                               chunks)
        return self.once(("volume", chunks), make)

    def stardist_model(self) -> str:
        def make():
            from deep_models import train_stardist
            t0 = time.perf_counter()
            model = train_stardist(self.path("models"), 2)
            print(f"# stardist model trained in {time.perf_counter() - t0:.0f}s: {model}", flush=True)
            return model
        return self.once("model", make)

    def job(self, path: str, method: str, name: str, **params) -> Job:
        """A bigseg job on the benchmark's cluster, with its wall time and peak memory."""
        start = psutil.Process().memory_info().rss
        with PeakMemory(self.client) as mem:
            t0 = time.perf_counter()
            result = bigseg.segment(path, method, name=name, client=self.client, overwrite=True, **params)
            seconds = time.perf_counter() - t0
        job = Job(result, seconds, mem.peak_worker / GB, mem.peak_client / GB, start / GB)
        stages = ", ".join(f"{k} {v:.1f}" for k, v in result.seconds.items())
        print(f"# bigseg {name}: {seconds:.1f}s ({stages}); {job.blocks_text()}; {result.objects} objects", flush=True)
        return job


def write_image(path: str, make, chunks, note: str = "") -> str:
    """Make an image (``make() -> (image, truth or None)``) and write it as OME-Zarr 0.5, levels down to <= 1024
    (in this process: not through the benchmark's cluster)."""
    import dask
    t0 = time.perf_counter()
    image, truth = make()
    t1 = time.perf_counter()
    chunks = (chunks,) * image.ndim if isinstance(chunks, int) else chunks
    levels = max(3, 1 + math.ceil(math.log2(max(image.shape[-2:]) / 1024)))
    with dask.config.set(scheduler="threads"):
        write_ome_zarr(path, image, "zyx"[-image.ndim:], chunks, version="0.5", levels=levels)
    what = "" if truth is None else f", {truth.max()} nuclei, {100 * (truth == 0).mean():.0f}% background"
    what += f", {note}" if note else ""
    print(f"# data {os.path.basename(path)}: {'x'.join(map(str, image.shape))} uint16{what}, chunks {chunks}; "
          f"made in {t1 - t0:.0f}s, written in {time.perf_counter() - t1:.0f}s", flush=True)
    return path


def reference(script: str, *args) -> dict:
    """Run a reference in a fresh process; its last stdout line is a JSON dict (seconds, ``peak_gb``)."""
    proc = subprocess.run([sys.executable, "-c", script, *map(str, args)], capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"reference failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"# reference: {json.dumps({k: round(v, 2) for k, v in out.items()})}", flush=True)
    return out


def memory_check(voxels: int, bytes_per_voxel: float) -> str | None:
    """Why a monolithic reference cannot run here (None: it can)."""
    need, available = voxels * bytes_per_voxel / GB, psutil.virtual_memory().available / GB
    if need > 0.9 * available:
        return f"skipped: the monolithic run needs ~{need:.0f} GB, {available:.0f} GB available"
    return None


def foreground(ref_url: str, test_url: str) -> tuple[np.ndarray, np.ndarray]:
    """Both label images at the voxels where either has an object, read in slabs: all that ``match`` and
    ``same_partition`` look at (voxels background in both never count), at a fraction of the memory."""
    a, b = zarr.open_array(ref_url, mode="r"), zarr.open_array(test_url, mode="r")
    step = max(1, 2**24 // math.prod(a.shape[1:]))
    parts_a, parts_b = [], []
    for start in range(0, a.shape[0], step):
        x, y = a[start:start + step], b[start:start + step]
        either = (x > 0) | (y > 0)
        parts_a.append(x[either].astype(np.int64))
        parts_b.append(y[either].astype(np.int64))
    return np.concatenate(parts_a), np.concatenate(parts_b)


def f1_text(ref_url: str, test_url: str) -> tuple[str, float]:
    m = match(*foreground(ref_url, test_url))
    return f"F1 {m.f1:.4f} ({m.n_test} vs {m.n_ref} objects, {m.splits} splits, {m.merges} merges)", m.f1


def slide_text(b: Bench) -> str:
    return f"slide {b.sizes.slide}^2, 40% tissue"


STARDIST_BIG = r"""
import json, resource, sys, time
import numpy as np, zarr
from bigseg.methods import get_method
path, model, lo, hi, block, overlap, out = sys.argv[1:8]
method = get_method("stardist", model=model, intensity_range=(float(lo), float(hi)))
t0 = time.perf_counter()
x = method.normalized(zarr.open_array(path + "/s0", mode="r")[:])  # bigseg's job-wide normalisation, whole image
t1 = time.perf_counter()
sd = method.load(x.ndim)
t2 = time.perf_counter()
labels, _ = sd.predict_instances_big(x, axes="YX", block_size=json.loads(block), min_overlap=json.loads(overlap),
                                     context=None, normalizer=None, show_progress=False, labels_out_dtype=np.uint32)
t3 = time.perf_counter()
zarr.create_array(out, data=labels, chunks=(1024, 1024), overwrite=True)
t4 = time.perf_counter()
print(json.dumps({"read+normalise": t1 - t0, "load model": t2 - t1, "predict": t3 - t2, "write": t4 - t3,
                  "total": t4 - t0, "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))
"""


def stardist_2d(b: Bench) -> list[Row]:
    path, model = b.slide(), b.stardist_model()
    edge = b.sizes.stardist_block
    lo, hi = global_percentiles(open_image(path).view(0))  # what the job normalised with
    out = b.path("ref-stardist.zarr")
    jobs, refs = [], []
    for i in range(b.args.repeat):  # alternating; the fastest of each side is reported
        if i:
            b.client.restart()  # fresh workers: each run pays TensorFlow's start-up, as each reference does
        jobs.append(b.job(path, "stardist", "stardist", model=model))  # bigseg's default blocks
        refs.append(reference(STARDIST_BIG, path, model, lo, hi, json.dumps([edge, edge]),
                              json.dumps(list(jobs[0].result.halo)), out))
    job, ref = min(jobs, key=lambda j: j.seconds), min(refs, key=lambda r: r["total"])
    fid, f1 = f1_text(out, job.labels)
    target = "F1 >= 0.99: " + ("met" if f1 >= 0.99 else "NOT met")
    return [Row("a stardist-2d", slide_text(b), f"stardist, {job.blocks_text()}", job.seconds,
                "predict_instances_big, 1 process", ref["total"], ">= 2x", job.worker_gb, job.client_text(),
                ref["peak_gb"], f"{fid}; {target}")]


def watershed_2d(b: Bench) -> list[Row]:
    path = b.slide()
    job = b.job(path, "watershed", "watershed")
    n = b.sizes.slide
    row = Row("b watershed-2d", slide_text(b), f"watershed, {job.blocks_text()}", job.seconds,
              "monolithic, 1 process", target=">= 2x", worker_gb=job.worker_gb, client_gb=job.client_text())
    row.result = memory_check(n * n, MONOLITHIC_BYTES_PER_VOXEL) or ""
    if not row.result:
        out = b.path("mono-watershed.zarr")
        ref = reference(MONOLITHIC, path, "watershed", job.result.threshold, out)
        row.ref_seconds, row.ref_gb = ref["total"], ref["peak_gb"]
        row.result = f1_text(out, job.labels)[0]
    return [row]


def threshold_3d(b: Bench) -> list[Row]:
    path = b.volume()
    job = b.job(path, "threshold", "threshold")
    out = b.path("mono-threshold.zarr")
    ref = reference(MONOLITHIC, path, "threshold", job.result.threshold, out)
    b.made["mono-threshold"] = out
    exact = same_partition(*foreground(out, job.labels))
    return [Row("c threshold-3d", f"nuclei {'x'.join(map(str, b.sizes.volume))}", f"threshold, {job.blocks_text()}",
                job.seconds, "monolithic, 1 process", ref["total"], ">= 1.5x", job.worker_gb, job.client_text(),
                ref["peak_gb"], f"identical partition: {exact}; {job.result.objects} objects")]


def small_blocks(b: Bench) -> list[Row]:
    path = b.volume(b.sizes.small_block)  # blocks are whole chunks
    job = b.job(path, "threshold", "threshold-small", block=b.sizes.small_block)
    share = job.result.seconds.get("stitch", 0.0) / job.result.seconds["total"]
    result = f"stitch {job.result.seconds.get('stitch', 0.0):.1f}s = {100 * share:.1f}% of the job"
    if "mono-threshold" in b.made:  # case c ran: the small blocks must still give the monolithic partition
        exact = same_partition(*foreground(b.made["mono-threshold"], job.labels))
        result += f"; identical partition to monolithic: {exact}"
    return [Row("d small-blocks", f"nuclei {'x'.join(map(str, b.sizes.volume))}", f"threshold, {job.blocks_text()}",
                job.seconds, target="stitch <= 15%", worker_gb=job.worker_gb, client_gb=job.client_text(),
                result=result)]


def scaling(b: Bench) -> list[Row]:
    rows = []
    base = b.sizes.scaling[0] ** 2
    block = (b.sizes.scaling_block,) * 2
    for n in b.sizes.scaling:
        path = write_image(b.path(f"scaling-{n}.zarr"),
                           lambda: slide((n, n), tissue=1.0, seed=0, radius=(1.5, 3.0), fill=0.3), block[0])
        job = b.job(path, "watershed", "watershed", diameter=4.5, block=block)
        rows.append(Row("e scaling", f"small nuclei {n}^2 ({n * n / base:.0f}x pixels)",
                        f"watershed, {job.blocks_text()}", job.seconds,
                        target="client < 1 GB at 1e6 objects; workers flat", worker_gb=job.worker_gb,
                        client_gb=job.client_text(), result=f"{job.result.objects} objects"))
        shutil.rmtree(path, ignore_errors=True)
    return rows


def resolve_scale(b: Bench) -> list[Row]:
    """``bench_resolve_scale.run()``: the client-side resolve, the current way (bigseg) vs the former one (the
    reference column), each in a fresh process, at each block count."""
    try:
        import bench_resolve_scale
    except ImportError as err:
        return [Row("f resolve-at-10^12", "-", "-", result=f"unavailable ({err})")]
    found = bench_resolve_scale.run((1000, 4000)) if b.args.quick else bench_resolve_scale.run()
    old = {r["blocks"]: r for r in found if r["way"] == "old"}
    out = []
    for new in (r for r in found if r["way"] == "new"):
        ref = old.get(new["blocks"], {})
        note = "" if ref.get("measured", True) else "; former way extrapolated"
        out.append(Row("f resolve-at-10^12", f"{new['blocks']} synthetic blocks", "client-side resolve",
                       new["seconds"], "former way (partials on the client)", ref.get("seconds"),
                       client_gb=f"{new['peak_gb']:.2f} ({new['growth_gb']:+.2f})", ref_gb=ref.get("peak_gb"),
                       result=f"{new['objects']} boundary objects, {new['tasks']} merge tasks{note}"))
    return out


TENSORFLOW_GPUS = "import tensorflow as tf; print(len(tf.config.list_physical_devices('GPU')))"


class GpuUtilisation(Sampler):
    """Samples ``nvidia-smi``'s GPU utilisation (percent, averaged over the GPUs) twice a second."""

    interval = 0.5

    def __init__(self):
        super().__init__()
        self.samples: list[float] = []

    def sample(self) -> None:
        if shutil.which("nvidia-smi") is None:
            return
        out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, check=False).stdout.split()
        if out:
            self.samples.append(sum(map(float, out)) / len(out))


def gpu(b: Bench) -> list[Row]:
    from bigseg.cluster.local import detect_gpus
    n = detect_gpus()  # what gpus="auto" starts GPU workers for
    if not n:
        return [Row("g gpu", slide_text(b), "stardist, gpus='auto'", result="no GPU")]
    seen = subprocess.run([sys.executable, "-c", TENSORFLOW_GPUS], capture_output=True, text=True).stdout.split()
    if not seen or seen[-1] == "0":
        return [Row("g gpu", slide_text(b), "stardist, gpus='auto'",
                    result=f"{n} GPU(s), but TensorFlow sees none (tensorflow-cpu? install tensorflow[and-cuda])")]
    path, model, edge = b.slide(), b.stardist_model(), b.sizes.stardist_block
    with GpuUtilisation() as util:
        t0 = time.perf_counter()
        result = bigseg.segment(path, "stardist", name="stardist-gpu", overwrite=True, model=model, gpu=True,
                                gpus="auto", workers=b.args.workers, **({"block": (edge, edge)} if edge else {}))
        seconds = time.perf_counter() - t0
    active = result.blocks - result.blocks_background
    busy = f"GPU utilisation mean {np.mean(util.samples):.0f}%, max {np.max(util.samples):.0f}%" if util.samples \
        else "GPU utilisation not sampled (no nvidia-smi)"
    return [Row("g gpu", slide_text(b), f"stardist on {n} GPU(s) + {b.args.workers} CPU workers", seconds,
                result=f"{busy}; {active / result.seconds['segment']:.2f} blocks/s ({active} blocks)")]


CASES = {"a": ("stardist-2d", stardist_2d), "b": ("watershed-2d", watershed_2d), "c": ("threshold-3d", threshold_3d),
         "d": ("small-blocks", small_blocks), "e": ("scaling", scaling), "f": ("resolve-scale", resolve_scale),
         "g": ("gpu", gpu)}
#: The order cases run in: scaling first (its client memory is the client's as fresh as it gets), the deep ones
#: last (stardist's planning loads TensorFlow into the client).
RUN_ORDER = "ebcdafg"


def chosen_cases(text: str) -> list[str]:
    by_name = {name: key for key, (name, _) in CASES.items()}
    keys = [by_name.get(c.strip(), c.strip()) for c in text.split(",") if c.strip()]
    unknown = [k for k in keys if k not in CASES]
    if unknown:
        raise SystemExit(f"--cases: unknown {', '.join(unknown)}; choose from "
                         + ", ".join(f"{k} ({name})" for k, (name, _) in CASES.items()))
    return sorted(set(keys), key=RUN_ORDER.index)


def number(v, fmt="{:.1f}") -> str:
    return "-" if v is None else fmt.format(v)


def print_table(rows: list[Row], workers: int) -> None:
    print(f"\n| case | data | bigseg ({workers} workers) | bigseg s | reference | reference s | speed-up (target) | "
          "bigseg peak GB: worker | client (+ during job) | reference peak GB | result |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: r.case):
        ratio = f"{r.ref_seconds / r.seconds:.2f}x" if r.seconds and r.ref_seconds else "-"
        print(f"| {r.case} | {r.data} | {r.ours} | {number(r.seconds)} | {r.reference} | {number(r.ref_seconds)} | "
              f"{ratio} ({r.target or '-'}) | {number(r.worker_gb, '{:.2f}')} | {r.client_gb or '-'} | "
              f"{number(r.ref_gb, '{:.2f}')} | {r.result} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes (a few minutes)")
    ap.add_argument("--cases", default=",".join(CASES), help="letters or names, e.g. a,b or stardist-2d")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--stardist-block", type=int, help="predict_instances_big's block_size in cases a and g")
    ap.add_argument("--repeat", type=int, default=1,
                    help="runs of case a's job and reference, alternating (the fastest of each is reported)")
    ap.add_argument("--dir", default="/tmp/bigseg-wholeslide")
    args = ap.parse_args()
    cases = chosen_cases(args.cases)
    sizes = QUICK if args.quick else FULL
    if args.stardist_block is not None:
        sizes = replace(sizes, stardist_block=args.stardist_block)
    shutil.rmtree(args.dir, ignore_errors=True)
    os.makedirs(args.dir)
    print(f"# {'quick' if args.quick else 'default'} sizes: {sizes}; cases {', '.join(cases)}; "
          f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}, "
          f"{psutil.virtual_memory().available / GB:.0f} GB available", flush=True)
    from distributed import Client, LocalCluster
    rows: list[Row] = []
    t0 = time.perf_counter()
    with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, memory_limit="10GB",
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        bench = Bench(args, sizes, client)
        for key in cases:
            name, fn = CASES[key]
            t_case = time.perf_counter()
            rows += fn(bench)
            print(f"# case {key} ({name}) took {time.perf_counter() - t_case:.0f}s", flush=True)
    print_table(rows, args.workers)
    print(f"\n{time.perf_counter() - t0:.0f}s in all; load average at the end {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
