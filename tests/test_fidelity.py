"""Block-wise results against the monolithic run of the same method (one block covering the image)."""
from __future__ import annotations

import dask.config
import numpy as np
import pytest
import zarr
from skimage.filters import threshold_otsu

import bigseg
from bigseg.synthetic import nuclei
from conftest import add_corner_objects, write_image
from matching import match, same_partition

CASES_3D = [((16, 32, 32), None), ((16, 64, 64), 6), ((32, 32, 96), None), ((48, 64, 32), 9)]
CASES_2D = [((64, 64), None), ((128, 64), 11), ((64, 192), None), ((96, 96), 7)]
# watershed: the default halo (4 sigma + 2 diameters = 28) and smaller ones, down to about one diameter
WATERSHED_3D = [((16, 64, 64), 16), ((32, 32, 96), 16), ((48, 64, 32), None), ((16, 96, 96), (12, 20, 20))]
WATERSHED_2D = [((64, 64), None), ((128, 64), 16), ((64, 192), 20)]


def _image(tmp_path, ndim, seed):
    shape, chunks = ((48, 160, 160), (16, 32, 32)) if ndim == 3 else ((600, 560), (32, 32))
    image, _ = nuclei(shape, seed=seed)
    corner_block = (16, 64, 64) if ndim == 3 else (64, 64)
    image = add_corner_objects(image, corner_block)
    return write_image(tmp_path / f"img{ndim}d.zarr", image, "zyx"[-ndim:], chunks)


def _labels(result):
    return zarr.open_array(result.labels + "/0", mode="r")[:]


def _run_cases(client, path, method, cases, check):
    """The monolithic run, then block-wise runs of ``cases``: every run computes its own (default) threshold."""
    level0 = zarr.open_array(path + "/s0", mode="r")[:]
    # README: the threshold is Otsu of the finest level with <= 16 M voxels (here level 0), once per job
    assert level0.size <= 2**24
    otsu = threshold_otsu(level0.astype(np.float64))
    mono = bigseg.segment(path, method, name="mono", client=client, block=level0.shape)
    assert mono.blocks == 1 and mono.objects > 100
    assert mono.threshold == pytest.approx(otsu, rel=1e-6)
    ref = _labels(mono)
    for i, (block, halo) in enumerate(cases):
        res = bigseg.segment(path, method, name=f"b{i}", client=client, block=block, halo=halo)
        assert res.blocks > 4
        assert res.threshold == mono.threshold, (block, halo)  # the blocking never changes it
        check(ref, _labels(res), f"block {block} halo {halo}")


@pytest.mark.parametrize("ndim", [2, 3])
def test_threshold_blockwise_equals_monolithic_exactly(client, tmp_path, ndim):
    path = _image(tmp_path, ndim, seed=10 + ndim)

    def check(ref, labels, case):
        assert same_partition(ref, labels), case
    _run_cases(client, path, "threshold", CASES_3D if ndim == 3 else CASES_2D, check)


@pytest.mark.parametrize("ndim", [2, 3])
def test_watershed_blockwise_matches_monolithic(client, tmp_path, ndim):
    path = _image(tmp_path, ndim, seed=20 + ndim)

    def check(ref, labels, case):
        m = match(ref, labels)
        assert m.f1 >= 0.995, (case, m)
        assert m.splits + m.merges <= 0.002 * m.n_ref, (case, m)
    _run_cases(client, path, "watershed", WATERSHED_3D if ndim == 3 else WATERSHED_2D, check)


def test_threshold_stitched_and_relabelled_in_small_groups_equals_monolithic_exactly(client, tmp_path):
    """Groups of 2 blocks per stitch and relabel task: contacts across faces, edges and corners between groups."""
    path = _image(tmp_path, 3, seed=13)

    def check(ref, labels, case):
        assert same_partition(ref, labels), case
    with dask.config.set({"bigseg.group-voxels": 2 * 16 * 32 * 32}):
        _run_cases(client, path, "threshold", [((16, 32, 32), None)], check)


def test_object_crossing_eight_blocks_is_one_label(client, tmp_path):
    image = np.full((32, 64, 64), 100, np.uint16)
    image = add_corner_objects(image, (16, 32, 32), radius=7)  # one ball centred where 8 blocks meet
    path = write_image(tmp_path / "ball.zarr", image, "zyx", (16, 32, 32))
    for method, params in (("threshold", {}), ("watershed", {"diameter": 14, "halo": 16})):
        res = bigseg.segment(path, method, name=method, client=client, block=(16, 32, 32), threshold=500, sigma=0,
                             **params)
        labels = _labels(res)
        assert res.objects == 1
        assert set(np.unique(labels[image > 500])) == {1}
        assert not labels[image <= 500].any()


def test_watershed_finds_the_synthetic_nuclei(client, nuclei3d):
    path, _, truth = nuclei3d
    res = bigseg.segment(path, "watershed", name="ws", client=client, block=(16, 64, 64), halo=16)
    assert match(truth, _labels(res)).f1 > 0.95


@pytest.mark.parametrize("group_voxels", [32 * 32, 2**24])  # stitched one block per task, or all in one
def test_diagonal_contact_across_a_block_corner_is_one_object(client, tmp_path, group_voxels):
    """An 8-connected diagonal line through the point where 4 blocks meet, touching only 2 of them."""
    image = np.full((64, 64), 10, np.uint16)
    i = np.arange(16, 48)
    image[i, i] = 1000
    path = write_image(tmp_path / "diag.zarr", image, "yx", (32, 32), levels=1)
    with dask.config.set({"bigseg.group-voxels": group_voxels}):
        res = bigseg.segment(path, "threshold", name="diag", client=client, block=(32, 32), sigma=0,
                             threshold=500)
    labels = _labels(res)
    assert res.blocks == 4 and res.objects == 1
    assert np.all(labels[i, i] == 1)
    faces_only = bigseg.segment(path, "threshold", name="faces", client=client, block=(32, 32), sigma=0,
                                threshold=500, connectivity=1)
    assert faces_only.objects == 32  # 4-connectivity: every pixel of the line is its own object


def test_min_size_judges_whole_objects_not_fragments(client, tmp_path):
    """A 12x12 square cut in four by the block corner survives min_size 100; a 9x9 one does not."""
    image = np.full((64, 64), 10, np.uint16)
    image[26:38, 26:38] = 1000  # 144 pixels, 36 in each of 4 blocks
    image[2:11, 2:11] = 1000  # 81 pixels inside one block
    path = write_image(tmp_path / "sq.zarr", image, "yx", (32, 32), levels=1)
    res = bigseg.segment(path, "threshold", name="sq", client=client, block=(32, 32), sigma=0, threshold=500,
                         min_size=100)
    labels = _labels(res)
    assert res.objects == 1 and np.all(labels[26:38, 26:38] == 1) and not labels[2:11, 2:11].any()
