"""Previews: a region segmented with the full job's job-wide values equals the full job's labels there."""
from __future__ import annotations

import logging
import os

import dask.config
import imageio.v3 as iio
import numpy as np
import pytest
import zarr

import bigseg
from bigseg.cli import main
from bigseg.synthetic import nuclei
from conftest import add_corner_objects, checksums, cli_fails, write_image
from matching import same_partition

# regions that cross block boundaries (blocks 64 in y, x; 16 in z), touch the image's edges, and cut objects
REGIONS_2D = [(slice(40, 100), slice(50, 130)), (slice(0, 64), slice(0, 64)), (slice(100, 160), slice(3, 150)),
              (slice(60, 70), slice(0, 160))]
REGIONS_3D = [(slice(8, 24), slice(40, 90), slice(50, 96)), (slice(0, 32), slice(60, 70), slice(0, 96)),
              (slice(20, 32), slice(0, 96), slice(70, 96)), (slice(15, 17), slice(63, 65), slice(10, 90))]


def _image(tmp_path, ndim):
    shape, chunks, block = ((160, 160), (32, 32), (64, 64)) if ndim == 2 else ((32, 96, 96), (16, 32, 32),
                                                                              (16, 64, 64))
    image, _ = nuclei(shape, seed=40 + ndim)
    image = add_corner_objects(image, block)  # objects where blocks meet
    return write_image(tmp_path / f"img{ndim}d.zarr", image, "zyx"[-ndim:], chunks), block


@pytest.mark.parametrize("ndim", [2, 3])
# watershed with a halo below its default (2 diameters): more objects are decided by the stitching
@pytest.mark.parametrize("method, params", [("threshold", {"min_size": 40}),
                                            ("watershed", {"diameter": 10, "halo": 12})])
def test_preview_equals_the_full_job_over_the_region(client, tmp_path, ndim, method, params):
    path, block = _image(tmp_path, ndim)
    full = bigseg.segment(path, method, client=client, block=block, **params)
    labels = zarr.open_array(full.labels + "/0", mode="r")[:]
    assert full.blocks >= 8
    for region in REGIONS_2D if ndim == 2 else REGIONS_3D:
        expected = labels[region]
        got = bigseg.preview(path, method, region=region, block=block, **params)
        assert got.shape == expected.shape and got.dtype == np.uint32
        assert same_partition(got, expected), (method, region)
        n = len(np.unique(expected)) - 1
        assert n > 0 and got.max() == n and set(np.unique(got)) == set(range(n + 1))  # ids 1..n


def test_objects_cut_by_the_region_are_judged_whole(tmp_path, caplog):
    """A U whose arms enter the region apart is one object; min_size counts the part outside the region."""
    image = np.full((64, 64), 10, np.uint16)
    image[10:40, 10:14] = image[10:40, 30:34] = image[36:40, 10:34] = 1000  # a U, open at the top (216 px)
    image[50:60, 40:50] = 1000  # a 10x10 square (100 px)
    path = write_image(tmp_path / "u.zarr", image, "yx", (32, 32), levels=1)
    params = dict(sigma=0, threshold=500, min_size=110)
    got = bigseg.preview(path, "threshold", region="10:20,0:64", **params)
    assert np.array_equal(np.unique(got[:, 10:14]), [1]) and np.array_equal(np.unique(got[:, 30:34]), [1])
    assert got.max() == 1  # the arms are one object, 40 px of it inside the region
    square = bigseg.preview(path, "threshold", region="45:55,35:64", **params)
    assert not square.any()  # 100 px < min_size, 50 of them inside the region
    assert bigseg.preview(path, "threshold", region="45:55,35:64", **{**params, "min_size": 90}).max() == 1
    with dask.config.set({"bigseg.preview.max-voxels": 800}), caplog.at_level(logging.WARNING):
        capped = bigseg.preview(path, "threshold", region="10:20,0:64", **params)  # the window may not grow
    assert "reach beyond" in caplog.text and not capped.any()  # each arm alone is below min_size


def _classifier(path) -> str:
    """A small random forest (10 trees) from 200 foreground and 200 background scribbles."""
    from bigseg.methods.pixel_classifier import train
    image, truth = nuclei((96, 96), seed=300, radius=(5, 8))
    scribbles = np.zeros(truth.shape, np.uint8)
    rng = np.random.default_rng(0)
    for coords, cls in ((np.argwhere(truth > 0), 2), (np.argwhere(truth == 0), 1)):
        scribbles[tuple(coords[rng.choice(len(coords), 200, replace=False)].T)] = cls
    return train(image, scribbles, str(path), foreground=2, sigma_max=2.0, n_estimators=10)


def test_class_map_preview_is_the_full_jobs_classes(client, tmp_path):
    model = _classifier(tmp_path / "classifier.joblib")
    path, block = _image(tmp_path, 2)
    params = dict(block=block, model=model, instances="classes")
    full = bigseg.segment(path, "pixel-classifier", client=client, **params)
    labels = zarr.open_array(full.labels + "/0", mode="r")[:]
    region = (slice(30, 150), slice(60, 140))
    got = bigseg.preview(path, "pixel-classifier", region=region, **params)
    assert np.array_equal(got, labels[region]) and set(np.unique(got)) == {1, 2}


def test_preview_command_prints_the_objects_and_draws_them(capsys, tmp_path):
    path, block = _image(tmp_path, 3)
    before = checksums(path)
    png = tmp_path / "preview.png"
    assert main(["preview", path, "--region", "8:24,30:90,20:90", "--method", "threshold", "--block",
                 "16,64,64", "--png", str(png), "--json"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    expected = bigseg.preview(path, "threshold", region="8:24,30:90,20:90")
    assert f"{expected.max()} objects" in out[0] and '"objects": %d' % expected.max() in out[-1]
    picture = iio.imread(png)
    assert picture.shape == (60 * 8, 70 * 8, 3)  # the middle plane, enlarged to >= 512 pixels a side
    assert checksums(path) == before and not os.path.exists(os.path.join(path, "labels"))


def test_preview_bad_regions_are_one_line_and_write_nothing(capsys, tmp_path):
    path, _ = _image(tmp_path, 3)
    before = checksums(path)
    png = tmp_path / "p.png"
    base = ["preview", path, "--method", "threshold", "--png", str(png), "--region"]
    cli_fails(capsys, base + ["0:8,0:64,0:200"], "region: x 0:200 is outside the image", "0:96")
    cli_fails(capsys, base + ["0:8,0:64,-4:20"], "outside the image")
    cli_fails(capsys, base + ["0:8,30:30,0:64"], "region: y 30:30 is empty")
    cli_fails(capsys, base + ["0:8,0:64"], "region: has 2 ranges but the image is 3D")
    cli_fails(capsys, base + ["0:8,0:64,x"], "region: 'x' is not start:stop")
    cli_fails(capsys, ["preview", path, "--region", "0:8,0:8,0:8", "--png", str(tmp_path / "no" / "p.png")],
           "no such folder")
    assert main(["preview", path, "--method", "threshold", "--region", ":,0:8,:"]) == 0  # ':' = the whole axis
    assert checksums(path) == before and not os.path.exists(os.path.join(path, "labels")) and not png.exists()
    with pytest.raises(bigseg.BigsegError, match="region: give the region"):
        bigseg.preview(path, "threshold")
