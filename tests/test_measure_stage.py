"""Objects across blocks: stitching gets counts and edges only, their statistics are merged on the workers by
tasks that read a bounded number of files, and the table equals one computed on the stitched labels whole."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import zarr

import bigseg
from bigseg.measure import stage as measure_stage
from bigseg.engine import EventLog, events
from bigseg.segment_blocks import BlockSummary, JobFiles
from bigseg.stitch import DROP, resolve
from bigseg.synthetic import nuclei
from conftest import add_corner_objects, write_image


def _summary(block_id: int, n_fragments: int, counts: list[int]) -> BlockSummary:
    return BlockSummary(block_id, n_fragments, len(counts), np.array(counts, np.uint16), 0.0)


def test_resolve_judges_min_size_on_whole_objects_from_counts_alone():
    # block 0: fragments 1, 2 (+ 2 interior); block 1: 1, 2, 3; block 2: 1, 2
    summaries = [_summary(2, 2, [50, 120]), _summary(0, 4, [300, 10]), _summary(1, 3, [200, 5, 7])]
    edges = [np.array([[0, 1, 1, 1], [1, 1, 2, 1]], np.int32),  # A: 300 + 200 + 50 voxels
             np.array([[0, 2, 1, 2], [1, 3, DROP, 0]], np.int64)]  # B: 10 + 5; fragment 3 of block 1 a sliver
    lookup = resolve(summaries, 3, edges, min_size=100)
    # A is kept although its fragment in block 2 alone is too small; B (15 voxels) is dropped, the sliver too;
    # C (fragment 2 of block 2, 120 voxels) is kept: numbered by first fragment, A then C
    assert lookup.n_boundary_objects == 2 and lookup.n_objects == 2 + 2  # block 0's 2 interior objects
    assert {b: ids.tolist() for b, ids in lookup.boundary_ids.items()} == {0: [1, 0], 1: [1, 0, 0], 2: [1, 2]}
    assert lookup.interior_base.tolist() == [2, 4, 4]
    assert lookup.row_labels.tolist() == [1, 0, 1, 0, 0, 1, 2] and lookup.row_prefix.tolist() == [0, 2, 5, 7]
    assert lookup.row_labels.dtype == np.uint32  # compact: 4 bytes a boundary fragment
    with pytest.raises(AssertionError, match="not a boundary fragment"):
        resolve(summaries, 3, np.array([[0, 3, 1, 1]]), min_size=0)


def test_merge_tasks_read_a_bounded_number_of_files_and_take_every_row_once():
    # 12 blocks in a row, 4 boundary fragments each: fragment 1 of every block is one long object, fragment
    # 2 joins the next block's fragment 3, fragment 4 is alone
    n = 12
    summaries = [_summary(b, 4, [10, 20, 30, 40]) for b in range(n)]
    edges = np.array([[b, 1, b + 1, 1] for b in range(n - 1)] + [[b, 2, b + 1, 3] for b in range(n - 1)])
    lookup = resolve(summaries, n, edges, min_size=0)
    files = JobFiles("/work")
    steps = measure_stage.merge_steps(lookup, files, ("args",), objects_per_task=3, blocks_per_task=2)
    written = set()
    taken = {}
    finals = []
    for level, tasks in enumerate(steps):
        for task in tasks:
            assert len(task.blocks) + len(task.merged) <= 2
            assert set(task.merged) <= written  # an earlier step wrote them
            assert not (task.blocks and task.merged)
            for i, url in enumerate(task.blocks):
                b = int(url.rsplit("/", 1)[1].split(".")[0])
                assert url == files.boundary_stats(b)
                rows = task.rows[task.starts[i]:task.starts[i + 1]]
                for r, label in zip(rows, task.labels[task.starts[i]:task.starts[i + 1]]):
                    assert (b, int(r)) not in taken
                    taken[b, int(r)] = task.first_label + int(label)
            if task.table_args is None:
                written.add(task.out_url)
            else:
                finals.append((task.first_label, task.n_labels))
    assert len(steps) > 2  # the long object's 12 blocks: merged in steps of 2 files
    expected = {(b, r): int(lookup.row_labels[lookup.row_prefix[b] + r]) for b in range(n) for r in range(4)}
    assert taken == {key: label for key, label in expected.items() if label}
    assert sorted(finals) == [(1 + 3 * t, min(3, lookup.n_boundary_objects - 3 * t))
                              for t in range(-(-lookup.n_boundary_objects // 3))]


def _reference(labels: np.ndarray, image: np.ndarray, block: tuple[int, ...]) -> pd.DataFrame:
    """Per label, from the whole label image: voxel count, intensity statistics, bounding box and the number of
    blocks it has voxels in."""
    idx = np.flatnonzero(labels.ravel())
    lab, value = labels.ravel()[idx], image.ravel()[idx].astype(np.float64)
    coords = np.unravel_index(idx, labels.shape)
    block_of = np.ravel_multi_index([c // b for c, b in zip(coords, block)],
                                    [-(-s // b) for s, b in zip(labels.shape, block)])
    df = pd.DataFrame({"label": lab, "v": value, "block": block_of, **{f"c{d}": c for d, c in enumerate(coords)}})
    g = df.groupby("label")
    out = pd.DataFrame({"voxel_count": g.size(), "mean": g["v"].mean(), "std": g["v"].std(ddof=0),
                        "min": g["v"].min(), "max": g["v"].max(), "blocks": g["block"].nunique()})
    for d in range(labels.ndim):
        out[f"lo{d}"], out[f"hi{d}"] = g[f"c{d}"].min(), g[f"c{d}"].max() + 1
    return out.reset_index()


def _check_table(res, image: np.ndarray, block: tuple[int, ...], axes: str) -> pd.DataFrame:
    labels = zarr.open_array(res.labels + "/0", mode="r")[:]
    table = pd.read_parquet(res.table)
    assert table["label"].tolist() == sorted(table["label"])  # parts in label order, as written
    ref = _reference(labels, image, block)
    assert table["label"].tolist() == ref["label"].tolist() and len(table) == res.objects
    np.testing.assert_array_equal(table["voxel_count"], ref["voxel_count"])
    np.testing.assert_array_equal(table["blocks_spanned"], ref["blocks"])
    for d, a in enumerate(axes):
        np.testing.assert_array_equal(table[f"bbox_min_{a}"], ref[f"lo{d}"])
        np.testing.assert_array_equal(table[f"bbox_max_{a}"], ref[f"hi{d}"])
    np.testing.assert_allclose(table["mean_intensity_c0"], ref["mean"], rtol=1e-12)
    np.testing.assert_allclose(table["std_intensity_c0"], ref["std"], rtol=1e-9, atol=1e-9)
    np.testing.assert_array_equal(table["min_intensity_c0"], ref["min"])
    np.testing.assert_array_equal(table["max_intensity_c0"], ref["max"])
    return table


def _steps(log: EventLog) -> list[str]:
    return [e.stage for e in log.events if isinstance(e, events.StageStarted) and e.stage.startswith("measure")]


def test_objects_in_many_blocks_are_measured_in_steps_that_read_two_files_each(client, tmp_path, monkeypatch):
    monkeypatch.setattr(measure_stage, "OBJECTS_PER_TASK", 4)  # planned on the client: the tasks carry it
    monkeypatch.setattr(measure_stage, "BLOCKS_PER_TASK", 2)
    image, _ = nuclei((32, 64, 96), seed=12)
    block = (16, 32, 32)
    image = add_corner_objects(image, block, radius=6, value=1500)  # balls in 8 blocks each
    path = write_image(tmp_path / "img.zarr", image, "zyx", (16, 32, 32), levels=1)
    log = EventLog()
    res = bigseg.segment(path, "threshold", name="t", client=client, block=block, min_size=30, observer=log)
    assert res.blocks == 12
    table = _check_table(res, image, block, "zyx")
    assert table["blocks_spanned"].max() == 8
    assert _steps(log)[:3] == ["measure", "measure-1", "measure-2"]  # 8 blocks' files, 2 a task: 3 steps


def test_a_class_map_is_merged_by_class_in_bounded_steps(client, tmp_path, monkeypatch):
    from deep_models import train_pixel_classifier
    model = train_pixel_classifier(str(tmp_path / "classifier.joblib"))
    monkeypatch.setattr(measure_stage, "BLOCKS_PER_TASK", 3)
    image, _ = nuclei((192, 256), seed=5)
    path = write_image(tmp_path / "img.zarr", image, "yx", (64, 64), levels=1)
    log = EventLog()
    res = bigseg.segment(path, "pixel-classifier", name="c", client=client, block=(64, 64), model=model,
                         instances="classes", observer=log)
    assert res.blocks == 12
    table = _check_table(res, image, (64, 64), "yx")
    assert table["label"].tolist() == [1, 2]  # background and nuclei
    assert _steps(log) == ["measure", "measure-1", "measure-2"]  # 12 blocks -> 4 files -> 2 -> the table
