"""``stardist``: star-convex polygons / polyhedra (StarDist 2D and 3D), pretrained or user-trained."""
from __future__ import annotations

import math
import os
from typing import Literal

import numpy as np
from pydantic import PrivateAttr

from bigseg.errors import ParameterError
from bigseg.io import store
from bigseg.methods import _models
from bigseg.methods._deep import DeepMethod
from bigseg.methods.base import PositiveLength, describe, length_help
from bigseg.units import VoxelSize

PRETRAINED_HINT = ("StarDist cannot download pretrained models offline: download the model folder elsewhere "
                   "(e.g. StarDist2D.from_pretrained on a connected machine, then copy ~/.keras/models/...) and "
                   "pass --model /path/to/model_folder")


class StarDist(DeepMethod):
    """``model``: a pretrained name (``2D_versatile_fluo``, ``2D_paper_dsb2018``, ``3D_demo``) or the folder of a
    trained model (with ``config.json`` and weights). The halo covers the network's receptive field and
    ``object_size`` (largest object diameter, voxels)."""

    name: Literal["stardist"] = "stardist"
    description = "StarDist star-convex objects (2D/3D), pretrained or a trained model folder"
    bytes_per_voxel = 500  # measured: 400-650 B/px per worker with 2048^2 blocks (benchmarks/bench_wholeslide.py)
    package = ("stardist", "stardist")
    model: str = describe("2D_versatile_fluo | 2D_paper_dsb2018 | 3D_demo | a trained model folder",
                          default="2D_versatile_fluo")
    prob_thresh: float | None = describe("object probability threshold; default: the model's", default=None,
                                         ge=0, le=1)
    nms_thresh: float | None = describe("non-maximum suppression IoU; default: the model's", default=None,
                                        ge=0, le=1)
    object_size: PositiveLength = describe(length_help("largest object diameter (sets the halo)"), default=32.0)
    # the network's receptive field and downsampling factor, read from the model once per job
    _receptive_field: tuple[int, ...] | None = PrivateAttr(None)
    _divisor: tuple[int, ...] | None = PrivateAttr(None)

    def check(self, voxel_size: VoxelSize) -> None:
        super().check(voxel_size)
        ndim = voxel_size.ndim
        if self.is_path():
            import json
            config = os.path.join(self.model, "config.json")
            if not os.path.exists(config):
                raise ParameterError(f"{self.model} is not a StarDist model folder (no config.json)")
            n_dim = json.load(open(config)).get("n_dim", 2)
            if n_dim != ndim:
                raise ParameterError(f"StarDist model {self.model} is {n_dim}D but the image is {ndim}D; "
                                     f"use a {ndim}D model")
        elif not self.model.startswith(f"{ndim}D"):
            raise ParameterError(f"pretrained StarDist model '{self.model}' does not fit a {ndim}D image; "
                                 f"use a {ndim}D model (e.g. {'2D_versatile_fluo' if ndim == 2 else '3D_demo'})")

    def prepare(self, view) -> "StarDist":
        method = super().prepare(view)
        if method._receptive_field is None:  # once per model: cached, else measured outside the client
            method = method.model_copy()
            method._receptive_field, method._divisor = network_geometry(self.model, view.ndim)
        return method

    def alignment(self, ndim: int) -> tuple[int, ...]:
        return self._divisor or (1,) * ndim

    def halo(self, voxel_size: VoxelSize) -> tuple[int, ...]:
        field = self._receptive_field or (0,) * voxel_size.ndim
        size = self.voxels(self.object_size, voxel_size, "method.object_size")
        return tuple(max(int(f), int(math.ceil(s))) for f, s in zip(field, size))

    def load(self, ndim: int):
        try:
            from stardist.models import StarDist2D, StarDist3D
        except ImportError:
            raise _models.missing_package("stardist", "stardist", "stardist") from None
        _limit_tensorflow_threads()
        cls = StarDist3D if ndim == 3 else StarDist2D
        if self.is_path():
            path = os.path.abspath(self.model)
            return cls(None, name=os.path.basename(path), basedir=os.path.dirname(path))
        try:
            model = cls.from_pretrained(self.model)
        except Exception as err:
            raise ParameterError(f"cannot load pretrained StarDist model '{self.model}' ({type(err).__name__}). "
                                 + PRETRAINED_HINT) from None
        if model is None:
            raise ParameterError(f"'{self.model}' is not a pretrained StarDist model name. " + PRETRAINED_HINT)
        return model

    def __call__(self, block: np.ndarray, voxel_size: VoxelSize) -> np.ndarray:
        model = self.loaded(block.ndim)
        labels, _ = model.predict_instances(self.normalized(block), prob_thresh=self.prob_thresh,
                                            nms_thresh=self.nms_thresh, verbose=False, show_tile_progress=False)
        return labels


#: Measures a model's receptive field and size divisor in a child process (prints one JSON line).
_GEOMETRY_CODE = """
import json, sys
from bigseg.errors import BigsegError
from bigseg.methods.stardist import StarDist
model, ndim = sys.argv[1], int(sys.argv[2])
try:
    net, axes = StarDist(model=model).load(ndim), "ZYX"[-ndim:]
    print(json.dumps({"field": [int(o) for o in net._axes_tile_overlap(axes)],
                      "divisor": [int(d) for d in net._axes_div_by(axes)]}))
except BigsegError as err:
    print(json.dumps({"error": str(err)}))
"""


def network_geometry(model: str, ndim: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The network's receptive field and the factor its input sizes must divide by, per axis: from the cache
    (:func:`geometry_cache`, keyed by the model folder's files, or a pretrained name and the stardist version),
    else measured by StarDist in a child process, so that the client never imports
    TensorFlow (seconds and about 1 GB of a notebook's memory)."""
    import json
    import subprocess
    import sys
    key = _model_key(model, ndim)
    cache = geometry_cache()
    known = _read_json(cache).get(key)
    if known is None:
        proc = subprocess.run([sys.executable, "-c", _GEOMETRY_CODE, model, str(ndim)], capture_output=True,
                              text=True)
        lines = proc.stdout.strip().splitlines()
        if proc.returncode or not lines:
            error = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise ParameterError(f"cannot load StarDist model {model} ({error}); give a trained StarDist model "
                                 "folder (config.json and weights)")
        known = json.loads(lines[-1])
        if "error" in known:
            raise ParameterError(known["error"])
        _write_json(cache, {**_read_json(cache), key: known})
    return tuple(known["field"]), tuple(known["divisor"])


def _model_key(model: str, ndim: int) -> str:
    """What the geometry depends on: a model folder's top-level files (names, sizes, modification times), or a
    pretrained name with the installed stardist version."""
    import hashlib
    from importlib.metadata import version
    if os.path.isdir(model):
        files = sorted((e for e in os.scandir(model) if e.is_file()), key=lambda e: e.name)
        stamp = [(e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in files]
        return f"{ndim}D:" + hashlib.sha256(repr((os.path.abspath(model), stamp)).encode()).hexdigest()[:24]
    return f"{ndim}D:{model}@stardist-{version('stardist')}"


def geometry_cache() -> str:
    """``$BIGSEG_CACHE_DIR/stardist-geometry.json``, by default in ``$XDG_CACHE_HOME/bigseg`` (``~/.cache``)."""
    base = os.environ.get("BIGSEG_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "bigseg")
    return os.path.join(base, "stardist-geometry.json")


def _read_json(path: str) -> dict:
    import json
    try:
        return json.loads(store.load_bytes(path))
    except (OSError, ValueError):  # none yet, or unreadable: measure again
        return {}


def _write_json(path: str, data: dict) -> None:
    """A cache folder that cannot be written only costs the next job a measurement."""
    import json
    try:
        store.save_bytes(path, json.dumps(data).encode())
    except OSError:
        pass


def _limit_tensorflow_threads() -> None:
    """In a Dask worker, TensorFlow computes on the worker's threads, not one per core each (two single-threaded
    workers on two cores would otherwise run four busy threads). Its inter-op pool keeps at least 2 threads:
    with 1, a function call (Keras' predict) can wait forever for the thread it holds (tensorflow#38969; seen
    here as a block task that hung in ``predict`` in one of five 80-block slide jobs)."""
    threads = _models.worker_threads()
    if threads is None:
        return
    import tensorflow as tf
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(max(2, threads))
    except RuntimeError:  # TensorFlow already started in this process: its pools are set
        pass
