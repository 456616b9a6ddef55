"""The crop pass's shape features equal scikit-image's regionprops on the stitched labels read back whole."""
from __future__ import annotations

import hashlib
import math
import os
import shutil
import uuid
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
from bigseg.measure import crops, hull
from bigseg.measure.parts import join_part
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
        too_large = _run_pass(client, res.table, res.labels, case["shape"], spacing)
        out[ndim] = res, spacing, too_large
    return out


def _run_pass(client, table, labels, shape, spacing, max_voxels=None) -> int:
    """The crop pass's two steps on the workers; returns the objects too large for it."""
    work = os.path.join(os.path.dirname(table), f"work-{uuid.uuid4().hex[:8]}")
    measure, join = crops.crop_steps(table, work, labels, "0", 3, shape, spacing, max_voxels)
    too_large = sum(client.gather(client.map(crops.measure_crops, measure, pure=False)))
    client.gather(client.map(join_part, join, pure=False))
    return too_large


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
    assert _run_pass(client, res.table, res.labels, CASES[3]["shape"], spacing) == 0
    assert _checksums(res.table) == before
    # a pass interrupted after some parts (the others without the columns) finishes with the same bytes
    copy = tmp_path / "parts"
    shutil.copytree(res.table, copy)
    names = sorted(os.listdir(copy))
    for name in names[::2]:
        part = pq.read_table(copy / name)
        pq.write_table(part.drop_columns(list(crops.CROP_COLUMNS[3])), copy / name)
    assert _checksums(copy) != before
    _run_pass(client, str(copy), res.labels, CASES[3]["shape"], spacing)
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
    assert _run_pass(client, str(copy), res.labels, CASES[3]["shape"], spacing, bound) \
        == (boxes > bound).sum() > 0
    table, whole = read_table(str(copy)), read_table(res.table)
    over = boxes[table["label"] - 1] > bound
    for name in ("solidity", "surface_area", "sphericity"):
        assert table[name][over].isna().all() and table[name][~over].notna().all()
        np.testing.assert_allclose(table[name][~over], whole[name][~over], rtol=1e-12)
    np.testing.assert_array_equal(table["extent"], whole["extent"])  # from the row: set for every object
    # the bound raised: a rerun measures the objects it had left out
    assert _run_pass(client, str(copy), res.labels, CASES[3]["shape"], spacing) == 0
    table = read_table(str(copy))
    for name in ("solidity", "surface_area", "sphericity"):
        np.testing.assert_allclose(table[name], whole[name], rtol=1e-12)


def test_a_part_reads_the_label_image_once_per_cell_its_objects_start_in(jobs):
    res, _, _ = jobs[3]
    shape = CASES[3]["shape"]
    chunks = zarr.open_array(res.labels + "/0", mode="r").chunks
    cell = crops.read_cell(chunks, shape)
    assert all(c <= s for c, s in zip(cell, shape)) and math.prod(cell) <= crops.CELL_VOXELS
    n_reads = 0
    for name in sorted(os.listdir(res.table)):
        part = pq.read_table(os.path.join(res.table, name)).to_pandas()
        lo = part[[f"bbox_min_{a}" for a in "zyx"]].to_numpy()
        hi = part[[f"bbox_max_{a}" for a in "zyx"]].to_numpy()
        reads = list(crops.crop_reads(lo, hi, np.arange(len(part)), shape, cell, 2**27))
        assert len(reads) == len({tuple(b) for b in lo // np.asarray(cell)})
        assert sorted(np.concatenate([r for r, _, _ in reads]).tolist()) == list(range(len(part)))
        for rows, r_lo, r_hi in reads:
            assert (r_lo <= lo[rows]).all() and (hi[rows] <= r_hi).all()
            assert ((lo[rows] // np.asarray(cell)) == lo[rows[0]] // np.asarray(cell)).all()
        n_reads += len(reads)
    assert n_reads >= len(os.listdir(res.table))


def test_read_cells_hold_a_few_mb():
    assert crops.read_cell((64, 256, 256), (128, 1024, 1024)) == (64, 128, 256)  # halved: 2**21 voxels
    assert crops.read_cell((8, 16, 16), (24, 96, 80)) == (24, 96, 80)  # grown, up to the whole array
    assert crops.read_cell((1, 4096, 4096), (1, 100000, 100000)) == (1, 1024, 2048)
    assert crops.read_cell((32, 32), (200, 5000)) == (200, 4096)  # grown, y up to the array


def test_chunk_cache_reads_equal_the_array_and_decode_each_chunk_once(tmp_path):
    from bigseg.io.chunk_cache import ChunkCache
    data = np.arange(3 * 40 * 50, dtype=np.uint32).reshape(3, 40, 50)
    array = zarr.create_array(store=str(tmp_path / "a.zarr"), shape=data.shape, chunks=(1, 16, 16),
                              dtype=data.dtype)
    array[:] = data
    cache = ChunkCache(array, max_bytes=2**20)
    regions = [(1, slice(3, 30), slice(10, 49)), (slice(0, 3), slice(0, 40), slice(0, 50)),
               (slice(2, 3), slice(15, 17), slice(31, 33)), (0, 5, slice(0, 50))]
    for region in regions:
        np.testing.assert_array_equal(cache.read(region), data[region])
    assert cache.decoded == 3 * 3 * 4  # every chunk once: all of them fit
    small = ChunkCache(array, max_bytes=4 * 16 * 16 * 4)  # four chunks kept
    for region in regions:
        np.testing.assert_array_equal(small.read(region), data[region])
    assert small.decoded > 3 * 3 * 4


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


def _widened_hull_voxels(mask: np.ndarray) -> int:
    """The voxel centres of ``mask``'s box in the hull of its voxels' face centres (skimage's widened hull,
    taken directly: defined for flat and line-like objects too), by brute force."""
    from scipy.spatial import ConvexHull
    centres = np.argwhere(mask).astype(float)
    offsets = np.concatenate([np.eye(mask.ndim), -np.eye(mask.ndim)]) / 2
    equations = ConvexHull((centres[:, None] + offsets).reshape(-1, mask.ndim)).equations
    grid = np.indices(mask.shape).reshape(mask.ndim, -1).T
    return int(((grid @ equations[:, :-1].T + equations[:, -1]) < 1e-10).all(axis=1).sum())


def test_3d_hull_voxels_of_flat_and_thin_objects():
    shapes = [np.ones((1, 1, 1), bool), np.ones((1, 1, 7), bool), np.eye(6, dtype=bool)[None],
              np.ones((1, 5, 4), bool), np.zeros((5, 5, 5), bool), np.zeros((4, 9, 3), bool)]
    for i in range(5):
        shapes[4][i, i, i] = True  # a diagonal line: its voxel centres on one line
    shapes[5][0, 0, 0] = shapes[5][3, 8, 2] = shapes[5][1, 4, 0] = True  # three scattered voxels
    for mask in shapes:
        assert hull.hull_voxels(mask) == _widened_hull_voxels(mask), mask.shape
