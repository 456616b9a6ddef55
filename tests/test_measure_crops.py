"""The crop pass's shape features equal scikit-image's regionprops on the stitched labels read back whole."""
from __future__ import annotations

import hashlib
import math
import os
import shutil
import warnings

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import zarr
from scipy import ndimage as ndi
from skimage.measure import marching_cubes, mesh_surface_area, regionprops, regionprops_table
from skimage.morphology import convex_hull_image

import bigseg
from bigseg.io.table import read_table
from bigseg.measure import crop_shape, crops, hull
from bigseg.synthetic import nuclei, write_ome_zarr

CASES = {2: dict(shape=(256, 224), chunks=(32, 32), block=(96, 96), scale={"y": 0.5, "x": 0.5}),
         3: dict(shape=(24, 96, 80), chunks=(8, 16, 16), block=(16, 48, 48), scale={"z": 2.0, "y": 0.5, "x": 0.5})}


@pytest.fixture(scope="module")
def jobs(client, tmp_path_factory):
    """One watershed job per dimension on small explicit blocks (objects cross them), then the crop pass."""
    out = {}
    for ndim, case in CASES.items():
        image, _ = nuclei(case["shape"], seed=20 + ndim)
        path = write_ome_zarr(tmp_path_factory.mktemp(f"crops{ndim}") / "img.zarr", image, "zyx"[-ndim:],
                              case["chunks"], scale=case["scale"], levels=2)
        res = bigseg.segment(path, "watershed", name="n", client=client, block=case["block"], halo=14)
        spacing = tuple(case["scale"][a] for a in "zyx"[-ndim:])
        too_large = _run_pass(client, res.table, res.labels, case["shape"], res.block_shape, spacing)
        out[ndim] = res, spacing, too_large
    return out


def _run_pass(client, table, labels, shape, block_shape, spacing, max_voxels=None) -> int:
    steps = crops.crop_steps(table, labels, "0", 3, shape, block_shape, spacing, max_voxels)
    return sum(sum(client.gather(client.map(crops.measure_crops, step, pure=False))) for step in steps)


def _reference(labels, spacing) -> tuple[pd.DataFrame, dict]:
    """regionprops_table's columns, and the regions (for the columns scikit-image lacks)."""
    names = ["label", "area", "solidity", "extent", "equivalent_diameter_area", "bbox"]
    if labels.ndim == 2:
        names.append("perimeter")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a flat 3D object: "Failed to get convex hull image", solidity inf
        ref = pd.DataFrame(regionprops_table(labels, spacing=spacing, properties=names))
    return ref.sort_values("label", ignore_index=True), {r.label: r for r in regionprops(labels, spacing=spacing)}


@pytest.mark.parametrize("ndim", [2, 3])
def test_crop_columns_equal_regionprops_on_the_stitched_labels(jobs, ndim):
    res, spacing, too_large = jobs[ndim]
    assert too_large == 0
    labels = zarr.open_array(res.labels + "/0", mode="r")[:]
    table = read_table(res.table)
    ref, regions = _reference(labels, spacing)
    assert len(table) == len(ref) == res.objects > 20
    assert np.array_equal(table["label"], ref["label"])
    assert (table["blocks_spanned"] > 1).sum() >= 5  # objects that cross block faces, read whole
    np.testing.assert_allclose(table["extent"], ref["extent"], rtol=1e-12)
    np.testing.assert_allclose(table["equivalent_diameter_area"], ref["equivalent_diameter_area"], rtol=1e-12)
    flat = ~np.isfinite(ref["solidity"])  # 3D objects one slice thick: skimage's hull fails (see crops.py)
    np.testing.assert_allclose(table["solidity"][~flat], ref["solidity"][~flat], rtol=1e-12)
    assert ((table["solidity"][flat] > 0) & (table["solidity"][flat] <= 1)).all()
    area = ref["area"].to_numpy()
    if ndim == 2:
        np.testing.assert_allclose(table["perimeter"], ref["perimeter"], rtol=1e-9)
        np.testing.assert_allclose(table["circularity"], 4 * math.pi * area / ref["perimeter"] ** 2, rtol=1e-9)
        return
    surface = []
    for label in ref["label"]:  # the whole labels' crop of each object, closed by a margin of background
        verts, faces, _, _ = marching_cubes(np.pad(regions[label].image, 1).astype(np.float32), 0.5,
                                            spacing=spacing)
        surface.append(mesh_surface_area(verts, faces))
    np.testing.assert_allclose(table["surface_area"], surface, rtol=1e-6)
    np.testing.assert_allclose(table["sphericity"], np.pi ** (1 / 3) * (6 * area) ** (2 / 3) / surface, rtol=1e-6)


def _checksums(folder) -> dict[str, str]:
    return {n: hashlib.sha256(open(os.path.join(folder, n), "rb").read()).hexdigest()
            for n in sorted(os.listdir(folder))}


def test_a_rerun_of_the_pass_leaves_the_parts_byte_identical(client, jobs, tmp_path):
    res, spacing, _ = jobs[3]
    before = _checksums(res.table)
    assert _run_pass(client, res.table, res.labels, CASES[3]["shape"], res.block_shape, spacing) == 0
    assert _checksums(res.table) == before
    # a pass interrupted after some parts (the others without the columns) finishes with the same bytes
    copy = tmp_path / "parts"
    shutil.copytree(res.table, copy)
    names = sorted(os.listdir(copy))
    for name in names[::2]:
        part = pq.read_table(copy / name)
        pq.write_table(part.drop_columns(list(crops.CROP_COLUMNS[3])), copy / name)
    assert _checksums(copy) != before
    _run_pass(client, str(copy), res.labels, CASES[3]["shape"], res.block_shape, spacing)
    assert _checksums(copy) == before


def test_objects_over_the_bound_get_nan_and_are_counted(client, jobs, tmp_path):
    res, spacing, _ = jobs[3]
    copy = tmp_path / "parts"
    shutil.copytree(res.table, copy)
    for name in os.listdir(copy):
        part = pq.read_table(copy / name)
        pq.write_table(part.drop_columns(list(crops.CROP_COLUMNS[3])), copy / name)
    labels = zarr.open_array(res.labels + "/0", mode="r")[:]
    boxes = np.array([math.prod(s.stop - s.start for s in sl) for sl in ndi.find_objects(labels)])
    bound = int(np.median(boxes))
    assert _run_pass(client, str(copy), res.labels, CASES[3]["shape"], res.block_shape, spacing, bound) \
        == (boxes > bound).sum() > 0
    table, whole = read_table(str(copy)), read_table(res.table)
    over = boxes[table["label"] - 1] > bound
    for name in ("solidity", "surface_area", "sphericity"):
        assert table[name][over].isna().all() and table[name][~over].notna().all()
        np.testing.assert_allclose(table[name][~over], whole[name][~over], rtol=1e-12)
    np.testing.assert_array_equal(table["extent"], whole["extent"])  # from the row: set for every object
    # the bound raised: a rerun measures the objects it had left out
    assert _run_pass(client, str(copy), res.labels, CASES[3]["shape"], res.block_shape, spacing) == 0
    table = read_table(str(copy))
    for name in ("solidity", "surface_area", "sphericity"):
        np.testing.assert_allclose(table[name], whole[name], rtol=1e-12)


def test_a_part_reads_the_label_image_once_per_block_its_objects_start_in(jobs):
    res, _, _ = jobs[3]
    shape, block = CASES[3]["shape"], np.asarray(res.block_shape)
    n_interior = 0
    for name in sorted(os.listdir(res.table)):
        part = pq.read_table(os.path.join(res.table, name)).to_pandas()
        lo = part[[f"bbox_min_{a}" for a in "zyx"]].to_numpy()
        hi = part[[f"bbox_max_{a}" for a in "zyx"]].to_numpy()
        reads = list(crops.crop_reads(lo, hi, np.arange(len(part)), shape, tuple(block), 2**27))
        starts = {tuple(b) for b in lo // block}
        assert len(reads) == len(starts)
        assert sorted(np.concatenate([r for r, _, _ in reads]).tolist()) == list(range(len(part)))
        for rows, r_lo, r_hi in reads:
            assert (r_lo <= lo[rows]).all() and (hi[rows] <= r_hi).all()
        if len(part) and (part["blocks_spanned"] == 1).all():  # one block's interior objects: one read
            n_interior += 1
            assert len(reads) == 1
    assert n_interior >= 4


def test_crop_features_of_a_square_a_disc_and_a_cube():
    square = np.ones((5, 5), bool)
    f = crops.crop_features(square, (1.0, 1.0))
    assert f == pytest.approx({"solidity": 1.0, "extent": 1.0, "equivalent_diameter_area": math.sqrt(100 / math.pi),
                               "perimeter": 16.0, "circularity": 4 * math.pi * 25 / 256})
    # a rectangle's perimeter runs through its border pixels' centres, each axis at its own pixel size
    assert crops.crop_features(np.ones((4, 7), bool), (2.0, 0.5))["perimeter"] == pytest.approx(
        2 * 3 * 2.0 + 2 * 6 * 0.5)
    yy, xx = np.mgrid[-20:21, -20:21]
    disc = yy ** 2 + xx ** 2 <= 400
    ref = regionprops(disc.astype(np.uint8), spacing=(0.5, 0.5))[0]
    f = crops.crop_features(disc, (0.5, 0.5))
    assert f["solidity"] == pytest.approx(ref.solidity, rel=1e-12)
    assert f["perimeter"] == pytest.approx(ref.perimeter, rel=1e-12)
    assert f["perimeter"] == pytest.approx(2 * math.pi * 10, rel=0.06)  # skimage's estimate: about 5% long
    # a physical circle on pixels twice as tall as wide: its perimeter within 10% of 2 pi r
    yy, xx = np.mgrid[-21:22, -41:42]
    ellipse = (yy * 1.0) ** 2 + (xx * 0.5) ** 2 <= 400
    assert crops.crop_features(ellipse, (1.0, 0.5))["perimeter"] == pytest.approx(2 * math.pi * 20, rel=0.1)
    # a cube of n voxels a side: marching cubes at 0.5 gives flat faces, chamfered edges and cut corners
    for n in (1, 4):
        f = crops.crop_features(np.ones((n, n, n), bool), (1.0, 1.0, 1.0))
        area = 6 * (n - 1) ** 2 + 6 * math.sqrt(2) * (n - 1) + math.sqrt(3)
        assert f["surface_area"] == pytest.approx(area, rel=1e-6) and f["solidity"] == 1.0
        assert f["sphericity"] == pytest.approx(math.pi ** (1 / 3) * (6 * n ** 3) ** (2 / 3) / area, rel=1e-6)
    # a 3D object one slice thick (skimage's 3D hull fails on it): its 2D solidity
    plate = np.zeros((1, 9, 9), bool)
    plate[0, :, :3] = plate[0, -3:, :] = True
    solidity = regionprops(plate[0].astype(np.uint8))[0].solidity
    assert crops.crop_features(plate, (2.0, 1.0, 1.0))["solidity"] == pytest.approx(solidity, rel=1e-12)
    assert solidity < 0.8
    g = np.mgrid[-10:11, -10:11, -10:11]
    ball = (g ** 2).sum(0) <= 100
    f = crops.crop_features(ball, (1.0, 1.0, 1.0))
    assert f["surface_area"] == pytest.approx(4 * math.pi * 100, rel=0.12)  # marching cubes on voxels: ~9% over
    assert f["equivalent_diameter_area"] == pytest.approx(20, rel=0.01)


@pytest.mark.parametrize("ndim", [2, 3])
def test_hull_voxels_equal_skimage_convex_hull_image(ndim):
    rng = np.random.default_rng(4 + ndim)
    compared = 0
    for i in range(40):
        shape = tuple(rng.integers(2, 40 if ndim == 2 else 20, ndim))
        if i % 2:  # blobs, or scattered voxels (a hull needs no connected object)
            mask = ndi.gaussian_filter(rng.random(shape), 1.5) > 0.5
        else:
            mask = rng.random(shape) < 0.05
        if not mask.any():
            continue
        mask = mask[ndi.find_objects(mask.astype(np.uint8))[0]]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = np.count_nonzero(convex_hull_image(mask))
        if expected == 0:  # skimage's 3D hull fails on coplanar voxel centres (see crops.py)
            continue
        assert hull.hull_voxels(mask) == expected, (i, mask.shape)
        compared += 1
    assert compared >= 25


def test_3d_features_do_not_depend_on_the_slabs_a_region_is_cut_into(monkeypatch):
    _, labels = nuclei((16, 64, 64), seed=5)
    regions = regionprops(labels)
    boxes = np.array([r.bbox for r in regions])
    args = (labels, (0, 0, 0), np.array([r.label for r in regions]), boxes[:, :3], boxes[:, 3:], (2.0, 0.5, 0.5))
    whole = crop_shape.region_features(*args)
    monkeypatch.setattr(hull, "_SLAB_VOXELS", 3 * labels.shape[-1])  # slabs of a few planes of the strips
    cut = crop_shape.region_features(*args)
    assert len(regions) > 5
    for name in whole:
        np.testing.assert_allclose(cut[name], whole[name], rtol=1e-12)
