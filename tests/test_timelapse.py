"""Time-lapse jobs (``input.timepoints``): every selected timepoint segmented as a job of that one timepoint
would, in one job (tasks over (t, block)), into one NGFF label image with a t axis and one table with a t column;
resume per (t, block); tracking (``track``) from the job's own labels: the synthetic movie's true links and
divisions recovered, the same tracks with one block per frame; bad input as one line."""
from __future__ import annotations

import glob
import os

import numpy as np
import pandas as pd
import pytest
import zarr
from scipy import ndimage as ndi
from skimage.measure import regionprops_table

import bigseg
from bigseg.synthetic import movie, write_ome_zarr
from conftest import checksums, cli_fails
from matching import same_partition

T_SCALE = 2.0  # seconds per frame
SPACING = 0.5  # micrometer
FRAMES, SIZE = 10, 96
JOB = {"diameter": 10, "block": (48, 48)}  # four blocks a frame, watershed (touching nuclei split)
#: a fixed job-wide threshold, so that single-timepoint jobs use the time-lapse's (else each finds its own)
THRESHOLD = 500.0


def write_movie(path, image: np.ndarray) -> str:
    return write_ome_zarr(path, image, "tyx", (1, 48, 48), levels=2, scale={"t": T_SCALE, "y": SPACING,
                                                                             "x": SPACING}, unit="micrometer")


@pytest.fixture(scope="module")
def movie2d(tmp_path_factory):
    """A 2D movie of moving, touching and dividing nuclei (10 x 96 x 96, 3 divisions), its truth and links."""
    image, truth, links = movie((FRAMES, SIZE, SIZE), seed=1)
    return write_movie(tmp_path_factory.mktemp("movie") / "movie.zarr", image), image, truth, links


def level(labels_url: str, i: int) -> np.ndarray:
    return zarr.open_array(os.path.join(labels_url, str(i)), mode="r")[:]


def read(result) -> tuple[np.ndarray, pd.DataFrame]:
    return level(result.labels, 0), pd.read_parquet(result.table).sort_values("label", ignore_index=True)


def test_every_timepoint_is_segmented_as_its_own_job_into_one_label_image_with_a_t_axis(client, tmp_path,
                                                                                        movie2d):
    from ome_zarr_models.v05.image_label import ImageLabel
    from ome_zarr_models.v05.labels import Labels
    path, _, _, _ = movie2d
    before = checksums(path)
    res = bigseg.segment(path, "watershed", name="all", client=client, timepoints="all", threshold=THRESHOLD,
                         features="shape", **JOB)
    assert checksums(path) == before
    labels, table = read(res)
    assert labels.shape == (FRAMES, SIZE, SIZE) and res.timepoints == tuple(range(FRAMES)) and res.blocks == 40
    for t in range(FRAMES):  # each frame as the job of that timepoint alone (same job-wide values, same blocks)
        single = bigseg.segment(path, "watershed", output=str(tmp_path / f"t{t}.zarr"), client=client,
                                timepoint=t, threshold=THRESHOLD, **JOB)
        assert same_partition(labels[t], level(single.labels, 0)), t
    # one id per object over the whole movie, 1..N; the table's t is the frame the object lies in
    frames = [set(np.unique(f[f > 0]).tolist()) for f in labels]
    assert sum(map(len, frames)) == res.objects == len(set().union(*frames)) == labels.max() > 10 * FRAMES
    assert table.label.tolist() == list(range(1, res.objects + 1)) and table.t.dtype.kind == "i"
    expected = []
    for t, frame in enumerate(labels):
        props = pd.DataFrame(regionprops_table(frame, spacing=(SPACING, SPACING), properties=(
            "label", "area", "centroid", "bbox", "axis_major_length", "eccentricity")))
        props["t"] = t
        expected.append(props)
    expected = pd.concat(expected).sort_values("label", ignore_index=True)
    assert table.t.tolist() == expected.t.tolist()
    np.testing.assert_allclose(table.area, expected.area)
    np.testing.assert_allclose(table[["centroid_y", "centroid_x"]], expected[["centroid-0", "centroid-1"]])
    np.testing.assert_array_equal(table[["bbox_min_y", "bbox_min_x", "bbox_max_y", "bbox_max_x"]],
                                  expected[["bbox-0", "bbox-1", "bbox-2", "bbox-3"]])
    np.testing.assert_allclose(table[["axis_major_length", "eccentricity"]],
                               expected[["axis_major_length", "eccentricity"]], atol=1e-6)
    # NGFF: t, y, x with the image's t scale; the pyramid downsamples y, x only
    assert Labels.from_zarr(zarr.open_group(os.path.join(path, "labels"), mode="r")).label_paths == ["all"]
    ImageLabel.from_zarr(zarr.open_group(res.labels, mode="r"))
    ms = zarr.open_group(res.labels, mode="r").attrs["ome"]["multiscales"][0]
    assert [a["name"] for a in ms["axes"]] == ["t", "y", "x"]
    assert [d["coordinateTransformations"][0]["scale"] for d in ms["datasets"]] == [[2.0, 0.5, 0.5], [2.0, 1.0, 1.0]]
    assert np.array_equal(level(res.labels, 1), labels[:, 1::2, 1::2])
    # a selection: the other timepoints stay 0, the selected ones are the same objects
    some = bigseg.segment(path, "watershed", name="some", client=client, timepoints="1:10:4", threshold=THRESHOLD,
                          **JOB)
    chosen, chosen_table = read(some)
    assert some.timepoints == (1, 5, 9) and some.blocks == 12
    assert not chosen[[0, 2, 3, 4, 6, 7, 8]].any()
    assert all(same_partition(chosen[t], labels[t]) for t in (1, 5, 9))
    assert set(chosen_table.t) == {1, 5, 9} and chosen_table.label.tolist() == list(range(1, some.objects + 1))
    assert np.array_equal(level(some.labels, 1), chosen[:, 1::2, 1::2])


def links_of(table: pd.DataFrame) -> set[tuple[int, int]]:
    """The links the track columns say: consecutive objects of a track, and a track's last object to each
    of its daughter tracks' first objects."""
    out, first, last = set(), {}, {}
    tracks = table.sort_values("t").groupby("track_id")
    for track, rows in tracks:
        chain = rows.label.tolist()
        out |= set(zip(chain[:-1], chain[1:]))
        first[track], last[track] = chain[0], chain[-1]
    for track, rows in tracks:
        parent = int(rows.parent_track_id.iloc[0])
        if parent:
            out.add((last[parent], first[track]))
    return out


def by_overlap(a: np.ndarray, b: np.ndarray) -> dict[int, int]:
    """Each label of ``a`` (t, y, x) to the label of ``b`` it overlaps most."""
    out = {}
    both = (a > 0) & (b > 0)
    pairs, count = np.unique(np.stack([a[both], b[both]]), axis=1, return_counts=True)
    for i in np.lexsort((-count, pairs[0])):
        out.setdefault(int(pairs[0, i]), int(pairs[1, i]))
    return out


def lineage(label: int, successors: dict[int, list[int]]) -> list[int]:
    """The object ``label`` and its successors frame by frame, up to a division or the end of its track."""
    out = [label]
    while len(successors.get(out[-1], [])) == 1:
        out.append(successors[out[-1]][0])
    return out


def track_sets(table: pd.DataFrame, tracks: pd.DataFrame, rename: dict[int, int] | None = None) -> dict:
    """Each track as the set of its objects (renamed), with its parent's set and its tracks-table row."""
    objects = {int(t): frozenset(rename[x] if rename else x for x in rows.label.tolist())
               for t, rows in table.groupby("track_id")}
    return {objects[row.track_id]: (objects.get(row.parent_track_id), row.t_start, row.t_end, row.length,
                                    round(row.mean_speed, 9)) for row in tracks.itertuples()}


def test_tracking_recovers_the_true_links_and_divisions_from_the_jobs_own_labels(client, tmp_path, movie2d):
    path, _, truth, true_links = movie2d
    res = bigseg.segment(path, "watershed", output=str(tmp_path / "blocks.zarr"), client=client,
                         timepoints="all", track=True, **JOB)
    first = bigseg.segment(path, "watershed", output=str(tmp_path / "first.zarr"), client=client, timepoint=0,
                           **JOB)
    labels, table = read(res)
    assert res.threshold == first.threshold and same_partition(labels[0], level(first.labels, 0))  # from t 0
    assert res.tracks == os.path.join(res.labels, "tracks.parquet")
    assert zarr.open_group(res.labels, mode="r").attrs["bigseg"]["tracks"] == "tracks.parquet"
    tracks = pd.read_parquet(res.tracks).sort_values("track_id", ignore_index=True)
    assert tracks.track_id.tolist() == list(range(1, len(tracks) + 1)) and set(table.track_id) == set(tracks.track_id)
    # the true links, through each true object's job object (largest overlap)
    job_of = by_overlap(truth, labels)
    found = links_of(table)
    true = [(job_of.get(a), job_of.get(b)) for a, b in true_links.tolist()]
    recovered = sum(link in found for link in true) / len(true)
    print(f"links recovered: {recovered:.3f} of {len(true)}; {len(found)} found")
    assert recovered >= 0.95
    track_of = dict(zip(table.label, table.track_id))
    parent_of = dict(zip(tracks.track_id, tracks.parent_track_id))
    successors = pd.DataFrame(true_links, columns=["a", "b"]).groupby("a").b.apply(list).to_dict()
    mothers = [a for a, b in successors.items() if len(b) == 2]
    assert len(mothers) == 3
    for mother in mothers:  # the daughters start two tracks whose parent is the mother's: at birth, or where the
        lineages = [lineage(d, successors) for d in successors[mother]]  # job first sees them as two objects
        apart = next((job_of[a], job_of[b]) for a, b in zip(*lineages) if job_of[a] != job_of[b])
        assert len({track_of[d] for d in apart}) == 2
        assert all(parent_of[track_of[d]] == track_of[job_of[mother]] for d in apart)
    # the tracks table from the label image alone (scipy centroids, the NGFF t scale)
    centroid = {}
    for t, frame in enumerate(labels):
        ids = np.unique(frame[frame > 0])
        centroid.update(zip(ids.tolist(), np.asarray(ndi.center_of_mass(np.ones_like(frame), frame, ids)) * SPACING))
    for row in tracks.itertuples():
        rows = table[table.track_id == row.track_id].sort_values("t")
        assert (row.t_start, row.t_end, row.length) == (rows.t.iloc[0], rows.t.iloc[-1], len(rows))
        path_length = sum(np.linalg.norm(centroid[b] - centroid[a]) for a, b in zip(rows.label, rows.label[1:]))
        speed = path_length / ((row.t_end - row.t_start) * T_SCALE) if row.length > 1 else np.nan
        assert row.mean_speed == pytest.approx(speed, rel=1e-9, nan_ok=True)  # micrometer per second
    # the same labels tracked over whole frames (one block a frame): the same tracks and track columns
    whole_table, whole_tracks = whole_frame_tracks(client, tmp_path, res.labels, table)
    pd.testing.assert_frame_equal(whole_tracks, tracks)
    pd.testing.assert_frame_equal(whole_table, table)


def whole_frame_tracks(client, tmp_path, labels_url: str, table: pd.DataFrame):
    """The tracker's steps on a job's label image with one region a frame, and a copy of its table without the
    track columns: (the table with the columns added, the tracks table)."""
    from bigseg.io import table as table_io
    from bigseg.measure import tracks
    from bigseg.units import VoxelSize
    part = table_io.part_url(str(tmp_path / "parts"), 0)
    table_io.write_part(table.drop(columns=["track_id", "parent_track_id"]), part)
    steps = tracks.plan((labels_url, "0", 3), [(slice(0, SIZE), slice(0, SIZE))], tuple(range(FRAMES)), [part],
                        VoxelSize((SPACING, SPACING), ("micrometer",) * 2), T_SCALE, tracks.Tracking(),
                        str(tmp_path / "work"), str(tmp_path / "tracks.parquet"))
    for step in steps:
        client.gather(client.map(tracks.run, step, pure=False))
    return table_io.read_table(str(tmp_path / "parts")), tracks.read_tracks(str(tmp_path / "tracks.parquet"))


def test_block_wise_tracks_equal_those_of_one_block_per_frame(client, tmp_path, movie2d):
    """With a method exact block-wise (threshold: the same objects whatever the blocks, touching nuclei merged),
    the jobs' tracks are the same whatever the blocks, too."""
    path, _, _, _ = movie2d
    jobs = [bigseg.segment(path, "threshold", output=str(tmp_path / f"{name}.zarr"), client=client,
                           timepoints="all", track=True, block=block) for name, block in
            (("blocks", (48, 48)), ("whole", (SIZE, SIZE)))]
    (labels, table), (whole_labels, whole_table) = map(read, jobs)
    assert jobs[0].blocks == 4 * jobs[1].blocks == 40
    assert all(same_partition(a, b) for a, b in zip(labels, whole_labels))
    tracks = track_sets(table, pd.read_parquet(jobs[0].tracks))
    assert track_sets(whole_table, pd.read_parquet(jobs[1].tracks), by_overlap(whole_labels, labels)) == tracks
    assert len(tracks) > 10


def _records(label_url: str, step: str) -> int:
    folder = os.path.join(label_url, ".bigseg-work", "done", step)
    return sum(len(glob.glob(os.path.join(folder, f"[0-9]*{suffix}"))) for suffix in (".json", ".npz"))


def test_a_failed_time_lapse_job_resumes_per_timepoint_and_block_to_the_same_result(client, tmp_path, movie2d):
    from faulty_methods import BrokenThreshold
    path, image, _, _ = movie2d
    poisoned = image.copy()
    poisoned[4, 20, 20] = 60000  # t 4, block (0, 0): (t, block) 16 fails, the 39 others finish
    bad = write_movie(tmp_path / "bad.zarr", poisoned)
    out = str(tmp_path / "out.zarr")
    job = {"output": out, "client": client, "timepoints": "all", "track": True, "block": JOB["block"]}
    with pytest.raises(bigseg.BigsegError, match=r"block 16 \[4:5, 0:52, 0:52\]: method threshold failed") as err:
        bigseg.segment(bad, BrokenThreshold(), **job)
    assert "the 39 finished tasks are kept" in str(err.value) and _records(out, "segment") == 39
    zarr.open_array(os.path.join(bad, "s0"), mode="r+")[4] = image[4]  # repaired
    again = bigseg.segment(bad, BrokenThreshold(), **job)
    assert again.resumed == {"segment": 39}  # only the failed (t, block) was segmented, then every later stage
    reference = bigseg.segment(path, BrokenThreshold(), **{**job, "output": str(tmp_path / "reference.zarr")})
    labels, table = read(again)
    ref_labels, ref_table = read(reference)
    assert np.array_equal(labels, ref_labels) and labels.max() > 10 * FRAMES
    pd.testing.assert_frame_equal(table, ref_table)
    pd.testing.assert_frame_equal(pd.read_parquet(again.tracks), pd.read_parquet(reference.tracks))


def test_bad_time_lapse_input_is_one_line_and_writes_nothing(tmp_path, capsys, movie2d):
    from bigseg.synthetic import nuclei
    path, _, _, _ = movie2d
    flat = write_ome_zarr(tmp_path / "flat.zarr", nuclei((64, 64), seed=1)[0], "yx", (32, 32), levels=1)
    images = {path: checksums(path), flat: checksums(flat)}
    labels_before = sorted(os.listdir(os.path.join(path, "labels"))) if os.path.exists(
        os.path.join(path, "labels")) else []
    run = ["--workers", "1", "--name", "bad"]
    cli_fails(capsys, ["segment", flat, "--track", *run], "track:", "no t axis")
    cli_fails(capsys, ["segment", flat, "--timepoints", "all", *run], "input.timepoints:", "no t axis")
    cli_fails(capsys, ["segment", path, "--timepoints", "0:20", *run], "input.timepoints: 0:20 is out of range",
              "10 timepoints (0..9)")
    cli_fails(capsys, ["segment", path, "--timepoints", "3,10", *run], "3,10 is out of range")
    cli_fails(capsys, ["segment", path, "--timepoints", "0:10:0", *run], "input.timepoints:", "e.g. 0:10")
    cli_fails(capsys, ["segment", path, "--timepoints", "4", "--track", *run], "track:", "2 or more")
    cli_fails(capsys, ["segment", path, "--track", *run], "track:", "input.timepoints (e.g. all)")
    cli_fails(capsys, ["segment", path, "--timepoints", "all", "--timepoint", "1", *run], "exclude each other")
    cli_fails(capsys, ["segment", path, "--timepoints", "all", "--dry-run", *run], "input.timepoints: a dry run")
    cli_fails(capsys, ["preview", path, "--timepoints", "all", "--region", "0:48,0:48"], "input.timepoints: a preview")
    assert {p: checksums(p) for p in images} == images
    assert not os.path.exists(os.path.join(flat, "labels"))
    assert (sorted(os.listdir(os.path.join(path, "labels"))) if os.path.exists(os.path.join(path, "labels"))
            else []) == labels_before
