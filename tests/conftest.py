"""Shared fixtures: one real local cluster of worker processes, and OME-Zarr images written with ome-zarr-py."""
from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest

from bigseg.synthetic import nuclei, write_ome_zarr


@pytest.fixture(scope="session", autouse=True)
def bigseg_cache(tmp_path_factory):
    """bigseg's cache folder (StarDist networks' geometry) for this run only: the tests' models are new each run."""
    os.environ["BIGSEG_CACHE_DIR"] = str(tmp_path_factory.mktemp("bigseg-cache"))
    yield os.environ["BIGSEG_CACHE_DIR"]


@pytest.fixture(scope="session")
def client():
    """A real distributed cluster: 2 single-threaded worker processes (CI has 2 cores)."""
    from distributed import Client, LocalCluster
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster) as c:
        yield c


def write_image(path, data, axes: str, chunks, version="0.5", levels=3, scale=None) -> str:
    return write_ome_zarr(path, data, axes, chunks, version=version, levels=levels, scale=scale)


@pytest.fixture
def nuclei3d(tmp_path):
    """A 3D NGFF 0.5 image of touching nuclei (48x160x160, chunks 16x32x32) and its ground truth."""
    image, truth = nuclei((48, 160, 160), seed=3)
    return write_image(tmp_path / "nuclei3d.zarr", image, "zyx", (16, 32, 32)), image, truth


def checksums(root) -> dict[str, str]:
    """Hash of every file under ``root`` except the labels folder (the image's own arrays and metadata)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        if rel == "labels" or rel.startswith("labels" + os.sep):
            continue
        for f in filenames:
            p = os.path.join(dirpath, f)
            out[os.path.relpath(p, root)] = hashlib.sha256(open(p, "rb").read()).hexdigest()
    return out


def add_corner_objects(image: np.ndarray, block: tuple[int, ...], radius: float = 5.0,
                       value: int = 1200) -> np.ndarray:
    """Bright balls centred where 4 (2D) or 8 (3D) blocks meet, so that objects cross block corners."""
    out = image.copy()
    grids = np.ogrid[tuple(slice(0, s) for s in image.shape)]
    for corner in np.ndindex(*[max(1, s // b) for s, b in zip(image.shape, block)]):
        c = [(i + 1) * b - 0.5 for i, b in zip(corner, block)]
        if any(ci >= s - 1 for ci, s in zip(c, image.shape)):
            continue
        inside = sum(((g - ci) / radius) ** 2 for g, ci in zip(grids, c)) <= 1
        out[inside] = value
    return out


def cli_fails(capsys, argv, *words) -> str:
    """Runs the CLI in-process; checks exit 2, one stderr line naming the problem (with ``words``), no
    traceback; returns the line."""
    from bigseg.cli import main
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("bigseg: error: "), err
    for w in words:
        assert w in err[0], err[0]
    return err[0]
