"""Tracking between timepoints: a synthetic movie's true links and divisions recovered from its true labels,
block-wise tracks identical to those from whole-frame (numpy) overlaps, the distance fallback for a fast mover."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage as ndi

from bigseg.blocks import BlockGrid
from bigseg.errors import ParameterError
from bigseg.io import store
from bigseg.io import table as table_io
from bigseg.io.ome import open_image
from bigseg.measure import tracks
from bigseg.synthetic import movie, write_ome_zarr
from bigseg.units import VoxelSize

T_SCALE = 2.0  # seconds per frame
SPACING = {"z": 1.0, "y": 0.5, "x": 0.5}  # micrometer


def write_labels(path, truth: np.ndarray) -> tuple[str, str, int]:
    """The movie's labels as a level-0 label array with a t axis (t, (z,) y, x); returns (url, path, format)."""
    axes = "t" + "zyx"[-(truth.ndim - 1):]
    scale = {"t": T_SCALE, **{a: SPACING[a] for a in axes[1:]}}
    url = write_ome_zarr(path, truth, axes, (1,) + tuple(min(16, s) for s in truth.shape[1:]), levels=1,
                         scale=scale, unit="micrometer")
    image = open_image(url)
    assert image.axis_names == tuple(axes) and image.levels[0].scale[0] == T_SCALE
    return url, image.levels[0].path, image.zarr_format


def voxel_size(ndim: int) -> VoxelSize:
    return VoxelSize(tuple(SPACING[a] for a in "zyx"[-ndim:]), ("micrometer",) * ndim)


def objects_table(parts_url: str, truth: np.ndarray) -> list[str]:
    """A table part per frame with the columns the track columns need (t, label) and one more."""
    urls = []
    for t, frame in enumerate(truth):
        labels = np.unique(frame[frame > 0])
        df = pd.DataFrame({"label": labels, "t": np.full(labels.size, t), "voxel_count": np.bincount(
            frame.ravel())[labels]})
        urls.append(table_io.part_url(parts_url, t))
        table_io.write_part(df, urls[-1])
    return urls


def numpy_overlap(a: np.ndarray, b: np.ndarray) -> dict[str, np.ndarray]:
    """The overlap file of two whole frames, computed with numpy and scipy (the monolithic reference)."""
    both = (a > 0) & (b > 0)
    pairs, count = np.unique(np.stack([a[both], b[both]]), axis=1, return_counts=True)
    out = {"a": pairs[0], "b": pairs[1], "count": count}
    index = np.indices(a.shape)
    for k, frame in enumerate((a, b)):
        labels = np.unique(frame[frame > 0])
        out[f"labels_{k}"] = labels
        out[f"counts_{k}"] = np.bincount(frame.ravel())[labels].astype(np.int64)
        out[f"sums_{k}"] = np.stack([ndi.sum_labels(index[d], frame, labels) for d in range(frame.ndim)],
                                    1).astype(np.int64).reshape(labels.size, frame.ndim)
    return out


def track(client, tmp_path, name: str, labels, truth: np.ndarray, block: tuple[int, ...] | None,
          params: tracks.Tracking = tracks.Tracking()) -> dict:
    """Run the four steps on the workers; ``block=None``: the overlaps from whole frames with numpy instead
    of step 1. Returns the links, the per-frame track ids, the tracks table and the table parts."""
    work, frames = tmp_path / name, truth.shape[0]
    grid = BlockGrid(truth.shape[1:], block or truth.shape[1:], (0,) * (truth.ndim - 1))
    parts = objects_table(str(work / "table"), truth)
    steps = tracks.plan(labels, [b.core for b in grid], tuple(range(frames)), parts, voxel_size(truth.ndim - 1),
                        T_SCALE, params, str(work / "work"), str(work / "tracks.parquet"))
    if block is None:
        for task in steps[0]:
            store.save_arrays(task.out_url, numpy_overlap(truth[task.frame], truth[task.frame + 1]))
        steps = steps[1:]
    for step in steps:
        client.gather(client.map(tracks.run, step, pure=False))
    links = [store.load_arrays(t.out_url) for t in steps[-3]]
    ids = [store.load_arrays(tracks.frame_url(steps[-2][0].frames_url, i)) for i in range(frames)]
    return {"links": links, "ids": ids, "tracks": tracks.read_tracks(str(work / "tracks.parquet")),
            "table": table_io.read_table(str(work / "table")), "columns": steps[-1]}


def found_links(result) -> set[tuple[int, int]]:
    return {(int(p), int(b)) for d in result["links"] for p, b in zip(d["predecessor"], d["labels_1"]) if p}


def true_tracks(truth: np.ndarray, links: np.ndarray) -> pd.DataFrame:
    """The movie's tracks from its true links (a track runs until its object divides), each named by its
    first object: first, last, length, parent (the mother track's first object, 0) and mean speed (scipy
    centroids, micrometer per second)."""
    succ: dict[int, list[int]] = {}
    for a, b in links.tolist():
        succ.setdefault(a, []).append(b)
    pred = {b: a for a, b in links.tolist()}
    scale = np.array([SPACING[a] for a in "zyx"[-(truth.ndim - 1):]])
    centroid = {}
    for frame in truth:
        labels = np.unique(frame[frame > 0])
        for label, c in zip(labels, ndi.center_of_mass(np.ones_like(frame), frame, labels)):
            centroid[int(label)] = np.asarray(c) * scale
    start = {}  # each object's track, named by its first object (labels grow frame by frame)
    for label in sorted(centroid):
        p = pred.get(label)
        start[label] = start[p] if p is not None and len(succ[p]) == 1 else label
    rows = []
    for label in sorted(centroid):
        if start[label] != label:
            continue
        path, chain = [label], label
        while len(succ.get(chain, [])) == 1:
            chain = succ[chain][0]
            path.append(chain)
        steps = [np.linalg.norm(centroid[b] - centroid[a]) for a, b in zip(path, path[1:])]
        p = pred.get(label)
        rows.append({"first": label, "last": path[-1], "length": len(path), "parent": 0 if p is None else start[p],
                     "mean_speed": sum(steps) / (T_SCALE * len(steps)) if steps else np.nan})
    return pd.DataFrame(rows)


def named_tracks(result) -> pd.DataFrame:
    """The tracks table with each track (and its parent) named by its first object, as :func:`true_tracks`."""
    first, last = {}, {}
    for d in result["ids"]:  # frames in order
        for label, t in zip(d["label"].tolist(), d["track_id"].tolist()):
            first.setdefault(t, label)
            last[t] = label
    df = result["tracks"]
    return pd.DataFrame({"first": df.track_id.map(first), "last": df.track_id.map(last), "length": df.length,
                         "parent": df.parent_track_id.map(lambda p: first.get(p, 0)),
                         "mean_speed": df.mean_speed})


@pytest.fixture(scope="module")
def movie2d(tmp_path_factory):
    image, truth, links = movie((12, 128, 128), seed=1)
    return truth, links, write_labels(tmp_path_factory.mktemp("movie") / "labels.zarr", truth)


def test_movie_has_moving_touching_and_dividing_nuclei_and_is_reproducible():
    image, truth, links = movie((12, 128, 128), seed=1)
    assert image.shape == truth.shape == (12, 128, 128) and image.dtype == np.uint16 and truth.dtype == np.uint32
    labels = [np.unique(f[f > 0]) for f in truth]
    assert np.array_equal(np.concatenate(labels), np.arange(1, truth.max() + 1))  # unique over the movie
    assert all(20 <= len(l) <= 60 for l in labels)
    touching = [np.unique(np.stack([f[:, 1:][(f[:, 1:] != f[:, :-1]) & (f[:, 1:] > 0) & (f[:, :-1] > 0)]]))
                for f in truth]  # labels meeting a different label along x
    assert all(len(t) >= 2 for t in touching)
    parents, children = np.unique(links[:, 0], return_counts=True)
    assert (children == 2).sum() == 3 and children.max() == 2  # three divisions
    cm = {int(l): np.asarray(c) for f in truth for l, c in zip(
        np.unique(f[f > 0]), ndi.center_of_mass(np.ones_like(f), f, np.unique(f[f > 0])))}
    same = links[~np.isin(links[:, 0], parents[children == 2])]
    step = np.array([np.linalg.norm(cm[b] - cm[a]) for a, b in same.tolist()])
    assert 1 < np.median(step) < 3 and step.max() < 6  # a few pixels per frame
    again = movie((12, 128, 128), seed=1)
    assert np.array_equal(image, again[0]) and np.array_equal(truth, again[1]) and np.array_equal(links, again[2])
    assert not np.array_equal(truth, movie((12, 128, 128), seed=2)[1])


def test_tracks_recover_the_true_links_divisions_and_speeds(client, tmp_path, movie2d):
    truth, links, labels = movie2d
    result = track(client, tmp_path, "blocks", labels, truth, (32, 64))
    true, found = {tuple(l) for l in links.tolist()}, found_links(result)
    assert len(true & found) >= 0.95 * len(true) and len(true & found) >= 0.95 * len(found)
    expected, got = true_tracks(truth, links), named_tracks(result)
    assert len(expected) == len(got)
    both = expected.merge(got, on=["first", "last", "length", "parent"], suffixes=("", "_found"))
    assert len(both) >= 0.95 * len(expected)  # whole tracks, with their parents
    assert np.allclose(both.mean_speed, both.mean_speed_found, equal_nan=True, rtol=1e-9)
    divided = expected[expected.parent > 0]
    same = ["first", "last", "length", "parent"]
    assert len(divided) == 6 and len(divided.merge(got, on=same)) == 6  # every daughter track, with its mother
    assert set(got.parent[got.parent > 0]) == set(divided.parent)  # no other division
    table = result["table"]
    ids = pd.concat([pd.DataFrame(d) for d in result["ids"]])
    assert table[["label", "track_id", "parent_track_id"]].sort_values("label", ignore_index=True).equals(
        ids.sort_values("label", ignore_index=True)[["label", "track_id", "parent_track_id"]])
    for task in result["columns"]:  # a rerun of the column step gives the same parts
        tracks.run(task)
    assert table_io.read_table(str(tmp_path / "blocks" / "table")).equals(table)


@pytest.mark.parametrize("block", [(16, 16), (48, 80), (128, 32)])
def test_blockwise_tracks_equal_whole_frame_tracks(client, tmp_path, movie2d, block):
    truth, _, labels = movie2d
    reference = track(client, tmp_path, "whole", labels, truth, None)
    result = track(client, tmp_path, "blocks", labels, truth, block)
    for got, expected in zip(result["links"] + result["ids"], reference["links"] + reference["ids"]):
        assert got.keys() == expected.keys()
        for key in got:
            assert np.array_equal(got[key], expected[key], equal_nan=True), key
    pd.testing.assert_frame_equal(result["tracks"], reference["tracks"])


def test_3d_movie_tracks_blockwise_equal_whole_frames_and_recover_the_links(client, tmp_path):
    _, truth, links = movie((10, 16, 48, 48), radius=(4.0, 6.0), seed=2)
    labels = write_labels(tmp_path / "labels.zarr", truth)
    reference = track(client, tmp_path, "whole", labels, truth, None)
    result = track(client, tmp_path, "blocks", labels, truth, (8, 16, 32))
    pd.testing.assert_frame_equal(result["tracks"], reference["tracks"])
    assert found_links(result) == found_links(reference)
    true, found = {tuple(l) for l in links.tolist()}, found_links(result)
    assert len(true & found) >= 0.95 * len(true) and len(true & found) >= 0.95 * len(found)
    assert (result["tracks"].parent_track_id > 0).sum() == 6  # three divisions


def fast_mover(frames: int = 4) -> np.ndarray:
    """A disc jumping 16 px (8 um) right each frame (radius 5: it never overlaps itself), a still disc, and from
    frame 2 a new disc far from both."""
    yy, xx = np.mgrid[:64, :96]
    truth = np.zeros((frames, 64, 96), np.uint32)
    next_id = 1
    for t in range(frames):
        for (cy, cx) in [(16, 10 + 16 * t), (48, 20)] + ([(48, 85)] if t >= 2 else []):
            truth[t][(yy - cy) ** 2 + (xx - cx) ** 2 <= 25] = next_id
            next_id += 1
    return truth


def test_distance_fallback_links_a_fast_mover_without_overlap(client, tmp_path):
    truth = fast_mover()
    labels = write_labels(tmp_path / "fast.zarr", truth)
    for name, params in (("default", tracks.Tracking()), ("10um", tracks.Tracking(max_distance="10um"))):
        result = track(client, tmp_path, name, labels, truth, (32, 32), params)
        jumps = [(int(truth[t, 16, 10 + 16 * t]), int(truth[t + 1, 16, 26 + 16 * t])) for t in range(3)]
        assert jumps == [(1, 3), (3, 5), (5, 8)]
        assert set(jumps) <= found_links(result)
        how = {int(b): int(h) for d in result["links"] for b, h in zip(d["labels_1"], d["how"])}
        assert [how[b] for _, b in jumps] == [tracks.BY_DISTANCE] * 3 and how[2 + 2] == tracks.BY_OVERLAP
        assert how[7] == tracks.NOT_LINKED  # the newcomer is too far from any object
        mover = result["tracks"].iloc[0]
        assert (mover.length, mover.t_start, mover.t_end) == (4, 0, 3)
        assert mover.mean_speed == pytest.approx(8 / T_SCALE)  # um per second
    result = track(client, tmp_path, "4um", labels, truth, (32, 32), tracks.Tracking(max_distance="4um"))
    assert not {(1, 3), (3, 5), (5, 8)} & found_links(result)  # beyond 4 um: a new track each frame


def test_nearest_pairs_finds_the_most_pairs_not_the_nearest_first():
    a, b = np.array([[0.0], [9.0]]), np.array([[5.0], [14.0]])  # 9-5 is the nearest pair, but it leaves 0 and 14
    i, j = tracks.nearest_pairs(a, b, 6.0)
    assert sorted(zip(i.tolist(), j.tolist())) == [(0, 0), (1, 1)]


def test_tracking_refuses_one_timepoint_and_a_unit_the_image_lacks():
    with pytest.raises(ParameterError, match="2 or more"):
        tracks.plan(("x", "0", 3), [], (0,), [], voxel_size(2), 1.0, tracks.Tracking(), "w", "t")
    with pytest.raises(ParameterError, match="track.max_distance"):
        tracks.Tracking(max_distance="8um").distance(VoxelSize((1.0, 1.0), (None, None)))
    assert tracks.Tracking(max_distance=4).distance(voxel_size(2)) == 2.0  # 4 voxels along x of 0.5 um


def test_track_ids_stay_unique_when_the_newest_track_ends_before_an_older_one(client, tmp_path):
    """A still disc (frames 0-3), a disc seen at frame 1 only, and a disc far from both appearing at frame 3:
    the last gets a new track id, not the ended track's."""
    yy, xx = np.mgrid[:64, :96]
    truth = np.zeros((4, 64, 96), np.uint32)
    next_id = 1
    for t, centres in enumerate([[(16, 16)], [(16, 16), (48, 80)], [(16, 16)], [(16, 16), (48, 20)]]):
        for cy, cx in centres:
            truth[t][(yy - cy) ** 2 + (xx - cx) ** 2 <= 25] = next_id
            next_id += 1
    result = track(client, tmp_path, "ids", write_labels(tmp_path / "ids.zarr", truth), truth, (32, 32),
                   tracks.Tracking(max_distance="4um"))
    got = result["tracks"]
    assert got.track_id.tolist() == [1, 2, 3] and got.length.tolist() == [4, 1, 1]
    assert got.t_start.tolist() == [0, 1, 3]
    table = result["table"].set_index("label")
    assert table.track_id.to_dict() == {1: 1, 2: 1, 3: 2, 4: 1, 5: 1, 6: 3}
