"""Neighbourhood features over a table folder: centroid neighbours equal scipy's cKDTree over the whole table,
touching counts equal a numpy count over the whole label array; exact across regions and blocks, idempotent."""
from __future__ import annotations

import hashlib
import os

import numpy as np
import pandas as pd
import pytest
import zarr
from scipy.spatial import cKDTree

import bigseg
from bigseg.errors import ParameterError
from bigseg.io import table as table_io
from bigseg.measure import neighbours, touching
from bigseg.measure.neighbourhood import neighbourhood_steps, neighbourhood_task
from bigseg.synthetic import nuclei, write_ome_zarr


def _run(client, steps, fn) -> list[list]:
    """Each step's tasks on the workers, one step after the other."""
    return [client.gather(client.map(fn, step, pure=False)) for step in steps]


def _sparse_nuclei(shape, seed):
    """Nuclei in the half x < size/2 and two lone ones far out in the other half."""
    image, _ = nuclei(shape, radius=(3.0, 4.5), seed=seed)
    rng = np.random.default_rng(seed)
    half = shape[-1] // 2
    image[..., half:] = np.clip(rng.normal(200, 40, image[..., half:].shape), 0, None).astype(np.uint16)
    grids = np.ogrid[tuple(slice(0, s) for s in shape)]
    for f in ((0.5, 0.3, 0.62), (0.5, 0.8, 0.95)):
        centre = np.array(shape) * np.array(f[-len(shape):])
        image[sum(((g - c) / 5.0) ** 2 for g, c in zip(grids, centre)) <= 1] = 1000
    return image


@pytest.fixture(scope="module", params=[3, 2], ids=["3d", "2d"])
def job(request, client, tmp_path_factory):
    """A watershed job on an anisotropic image, its table read back and its labels."""
    ndim = request.param
    shape, block = ((24, 96, 128), (12, 48, 64)) if ndim == 3 else ((160, 200), (80, 100))
    scale = {"z": 2.0, "y": 0.5, "x": 0.4} if ndim == 3 else {"y": 0.4, "x": 0.25}
    path = write_ome_zarr(tmp_path_factory.mktemp("nb") / "img.zarr", _sparse_nuclei(shape, 5), "zyx"[-ndim:],
                          block, scale=scale, levels=2, translation={a: 1.5 for a in scale})
    res = bigseg.segment(path, "watershed", name="n", client=client, block=block,
                         halo=(6, 10, 10) if ndim == 3 else 10, diameter=8)
    assert res.blocks >= 4 and res.objects > 50
    return res, ndim


def _centroids(table, ndim):
    return table[[f"centroid_{a}" for a in "zyx"[-ndim:]]].to_numpy()


def test_neighbours_equal_ckdtree_over_the_whole_table(client, job, tmp_path):
    res, ndim = job
    radius = 6.0 if ndim == 3 else 4.0
    steps = neighbours.neighbour_steps(res.table, str(tmp_path / "work"), radius, objects_per_task=10)
    results = _run(client, steps, neighbourhood_task)
    table = table_io.read_table(res.table)
    assert len(table) == res.objects

    xyz = _centroids(table, ndim)
    tree = cKDTree(xyz)
    dist, index = tree.query(xyz, k=3)
    assert np.all(dist[:, 2] > dist[:, 1])  # no ties: the nearest label is unambiguous
    np.testing.assert_array_equal(table["nearest_neighbour_distance"], dist[:, 1])
    np.testing.assert_array_equal(table["nearest_neighbour_label"], table["label"].to_numpy()[index[:, 1]])
    within = tree.query_ball_point(xyz, radius, return_length=True) - 1
    np.testing.assert_array_equal(table["neighbours_within_radius"], within)
    assert within.max() >= 3

    grid = steps[0][0].grid
    assert len(steps[1]) >= 8 and grid.edge >= radius  # many regions, at least the radius wide
    region = grid.index(xyz)
    pairs = np.array(sorted(tree.query_pairs(radius)))
    crossing = np.any(region[pairs[:, 0]] != region[pairs[:, 1]], axis=1)
    assert crossing.sum() >= 5  # counted pairs whose centroids lie in different regions
    # the lone nuclei: their nearest neighbours lie beyond the margin, found by the wider search
    assert (dist[:, 1] > grid.margin).sum() >= 2
    assert sum(r["widened"] for r in results[1]) >= 2
    assert sum(r["objects"] for r in results[1]) == res.objects


def _touching_reference(labels: np.ndarray) -> dict:
    """Distinct other labels at face neighbours of each label, over the whole array."""
    found = set()
    for d in range(labels.ndim):
        a = np.moveaxis(labels, d, 0)
        x, y = a[:-1].ravel(), a[1:].ravel()
        keep = (x != y) & (x != 0) & (y != 0)
        found |= set(zip(x[keep].tolist(), y[keep].tolist())) | set(zip(y[keep].tolist(), x[keep].tolist()))
    count = {int(v): 0 for v in np.unique(labels) if v}
    for a, _ in found:
        count[a] += 1
    return count


def test_touching_equals_numpy_on_the_whole_label_image(client, job, tmp_path):
    res, ndim = job
    block = (5, 20, 23) if ndim == 3 else (37, 41)  # not the job's blocks, nor the chunks
    steps = touching.touching_steps(res.table, res.labels, str(tmp_path / "work"), block=block, labels_per_task=20)
    assert len(steps[0]) >= 20 and len(steps[1]) >= 3
    _run(client, steps, neighbourhood_task)
    table = table_io.read_table(res.table)
    ref = _touching_reference(zarr.open_array(res.labels + "/0", mode="r")[:])
    assert sorted(ref) == table["label"].tolist()
    np.testing.assert_array_equal(table["touching_objects"], [ref[v] for v in table["label"].tolist()])
    assert table["touching_objects"].max() >= 2 and (table["touching_objects"] == 0).any()


def _hashes(folder: str) -> dict[str, str]:
    return {n: hashlib.sha256(open(os.path.join(folder, n), "rb").read()).hexdigest()
            for n in sorted(os.listdir(folder))}


def test_a_rerun_rewrites_the_same_bytes_and_one_merged_pass_equals_two(client, job, tmp_path):
    res, ndim = job
    work = str(tmp_path / "work")
    block = (12, 32, 32) if ndim == 3 else (64, 64)
    _run(client, neighbourhood_steps(res.table, work, 4.0, res.labels, block=block, objects_per_task=25),
         neighbourhood_task)
    first = _hashes(res.table)
    table = table_io.read_table(res.table)
    # each family again, on its own, from its first step; then a join step alone
    near = neighbours.neighbour_steps(res.table, work, 4.0, objects_per_task=25)
    _run(client, near, neighbourhood_task)
    _run(client, touching.touching_steps(res.table, res.labels, work, block=block), neighbourhood_task)
    assert _hashes(res.table) == first
    _run(client, [near[2]], neighbourhood_task)
    assert _hashes(res.table) == first
    assert list(table.columns[-4:]) == ["nearest_neighbour_distance", "nearest_neighbour_label",
                                        "neighbours_within_radius", "touching_objects"]


def _write_parts(folder, label, columns: dict, n_parts):
    """A table folder written directly (not by bigseg): ``n_parts`` parts in label order."""
    order = np.argsort(label)
    for i, rows in enumerate(np.array_split(order, n_parts)):
        df = pd.DataFrame({"label": label[rows].astype(np.uint64), **{k: v[rows] for k, v in columns.items()}})
        table_io.write_part(df, table_io.part_url(folder, i))


def test_touching_with_arbitrary_uint64_ids_and_an_id_in_several_places(client, tmp_path):
    rng = np.random.default_rng(4)
    coarse = rng.integers(0, 40, (6, 9, 8))  # an id in several places: pieces far apart
    cells = np.kron(coarse, np.ones((3, 5, 5), np.int64))[:17, :44, :39]
    ids = np.r_[0, np.uint64(2**63) + rng.choice(2**40, 39, replace=False).astype(np.uint64) * np.uint64(2**22)]
    labels = ids.astype(np.uint64)[cells]
    url = str(tmp_path / "labels.zarr")
    zarr.create_array(url, shape=labels.shape, chunks=(8, 16, 16), dtype=np.uint64)[:] = labels
    present = np.unique(labels[labels > 0])
    assert present.max() > 2**63
    _write_parts(str(tmp_path / "table"), present, {"centroid_y": np.zeros(present.size),
                                                   "centroid_x": np.zeros(present.size)}, 4)
    steps = touching.touching_steps(str(tmp_path / "table"), url, str(tmp_path / "work"), path="",
                                    block=(4, 10, 12), labels_per_task=6)
    _run(client, steps, neighbourhood_task)
    table = table_io.read_table(str(tmp_path / "table"))
    ref = _touching_reference(labels)
    assert table["label"].tolist() == sorted(ref)
    np.testing.assert_array_equal(table["touching_objects"], [ref[v] for v in table["label"].tolist()])


def test_lattice_ties_and_radius_on_the_region_faces(client, tmp_path):
    """Centroids on a lattice: every distance ties and every radius count reaches points exactly at the
    radius, some on region faces; the nearest label is the smallest among the nearest."""
    yx = np.stack(np.meshgrid(np.arange(14.0), np.arange(11.0), indexing="ij"), -1).reshape(-1, 2) * 0.5 + 3.0
    rng = np.random.default_rng(2)
    label = rng.permutation(yx.shape[0]).astype(np.uint64) * np.uint64(1_000_003) + np.uint64(5)
    _write_parts(str(tmp_path / "table"), label, {"centroid_y": yx[:, 0], "centroid_x": yx[:, 1]}, 5)
    steps = neighbours.neighbour_steps(str(tmp_path / "table"), str(tmp_path / "work"), 0.5, objects_per_task=6)
    assert len(steps[1]) >= 12
    _run(client, steps, neighbourhood_task)
    table = table_io.read_table(str(tmp_path / "table"))
    xy, lab = table[["centroid_y", "centroid_x"]].to_numpy(), table["label"].to_numpy()
    d = np.sqrt(((xy[:, None] - xy[None]) ** 2).sum(-1))  # brute force over all pairs
    np.fill_diagonal(d, np.inf)
    nearest = d.min(axis=1)
    np.testing.assert_array_equal(table["nearest_neighbour_distance"], nearest)
    np.testing.assert_array_equal(table["nearest_neighbour_label"],
                                  [lab[d[i] == nearest[i]].min() for i in range(len(lab))])
    np.testing.assert_array_equal(table["neighbours_within_radius"], (d <= 0.5).sum(axis=1))
    assert set(table["neighbours_within_radius"]) == {2, 3, 4}


def test_a_lone_object_and_empty_parts(client, tmp_path):
    """One object: no neighbour (NaN, label 0, count 0); an empty part gets the columns."""
    folder = str(tmp_path / "table")
    table_io.write_part(pd.DataFrame({"label": np.array([], np.uint64), "centroid_y": np.array([], float),
                                      "centroid_x": np.array([], float)}), table_io.part_url(folder, 0))
    table_io.write_part(pd.DataFrame({"label": np.array([7], np.uint64), "centroid_y": [1.0],
                                      "centroid_x": [2.0]}), table_io.part_url(folder, 1))
    _run(client, neighbours.neighbour_steps(folder, str(tmp_path / "work"), 3.0), neighbourhood_task)
    empty = pd.read_parquet(table_io.part_url(folder, 0))
    assert len(empty) == 0 and "nearest_neighbour_distance" in empty
    table = table_io.read_table(folder)
    assert np.isnan(table["nearest_neighbour_distance"][0])
    assert table["nearest_neighbour_label"][0] == 0 and table["neighbours_within_radius"][0] == 0


def test_a_negative_radius_is_a_parameter_error(tmp_path):
    with pytest.raises(ParameterError, match="neighbour_radius"):
        neighbours.neighbour_steps(str(tmp_path), str(tmp_path / "work"), -1.0)
