"""The NGFF label image: read back by ome-zarr-py, validated by ome-zarr-models, input untouched."""
from __future__ import annotations

import contextlib
import os
import re
import time

import dask.config
import numpy as np
import pandas as pd
import pytest
import zarr
from skimage.filters import threshold_otsu

import bigseg
from bigseg.synthetic import nuclei
from conftest import checksums, write_image
from matching import same_partition


def _validate(image_path: str, version: str, name: str):
    if version == "0.5":
        from ome_zarr_models.v05.image_label import ImageLabel
        from ome_zarr_models.v05.labels import Labels
        labels = Labels.from_zarr(zarr.open_group(os.path.join(image_path, "labels"), mode="r"))
        assert name in labels.label_paths
        ImageLabel.from_zarr(zarr.open_group(os.path.join(image_path, "labels", name), mode="r"))
    else:
        from ome_zarr_models.v04.image_label import ImageLabel
        from ome_zarr_models.v04.labels import Labels
        labels = Labels.from_zarr(zarr.open_group(os.path.join(image_path, "labels"), mode="r", zarr_format=2))
        assert name in labels.attributes.labels
        ImageLabel.from_zarr(zarr.open_group(os.path.join(image_path, "labels", name), mode="r", zarr_format=2))


def _read_with_ome_zarr(image_path: str):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Reader
    nodes = list(Reader(parse_url(image_path))())
    return [n for n in nodes if n.load(Label)]


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_labels_are_valid_ngff_next_to_an_untouched_image(client, tmp_path, version):
    image, _ = nuclei((32, 96, 96), seed=5)
    path = write_image(tmp_path / "img.zarr", image, "zyx", (16, 32, 32), version=version, levels=3,
                       scale={"z": 2.0, "y": 0.5, "x": 0.5})
    before = checksums(path)
    res = bigseg.segment(path, "watershed", name="nuclei", client=client, block=(32, 64, 64))
    assert checksums(path) == before  # the image's own arrays and metadata are byte-identical
    assert res.labels == os.path.join(path, "labels", "nuclei")
    _validate(path, version, "nuclei")
    label_nodes = _read_with_ome_zarr(path)
    assert len(label_nodes) == 1
    node = label_nodes[0]
    assert len(node.data) == 3  # as many levels as the image
    assert [d.shape for d in node.data] == [(32, 96, 96), (32, 48, 48), (32, 24, 24)]
    assert all(d.dtype == np.uint32 for d in node.data)
    assert node.metadata["name"] == "nuclei"
    level0 = np.asarray(node.data[0])
    assert len(np.unique(level0)) - 1 == res.objects
    # nearest downsampling: every id of a lower level exists at level 0
    assert set(np.unique(np.asarray(node.data[2]))) <= set(np.unique(level0))
    assert np.array_equal(np.asarray(node.data[1]), level0[:, 1::2, 1::2])
    group = zarr.open_group(res.labels, mode="r")
    ome = group.attrs.asdict() if version == "0.4" else group.attrs["ome"]
    assert ome["image-label"]["source"]["image"] == "../../"
    scales = [d["coordinateTransformations"][0]["scale"] for d in ome["multiscales"][0]["datasets"]]
    assert scales == [[2.0, 0.5, 0.5], [2.0, 1.0, 1.0], [2.0, 2.0, 2.0]]
    assert not os.path.exists(os.path.join(res.labels, ".bigseg-work"))
    import imageio.v3 as iio
    qc = iio.imread(res.qc)
    assert qc.shape == (96, 96, 3)  # level 0 is small enough; middle plane
    outlined = (qc[..., 0] != qc[..., 1]) | (qc[..., 1] != qc[..., 2])  # coloured = outline pixels
    assert outlined.sum() > 100 and np.all(level0[16][outlined] > 0)


def test_existing_label_is_refused_without_overwrite_and_replaced_with_it(client, tmp_path, nuclei3d):
    path, _, _ = nuclei3d
    first = bigseg.segment(path, "threshold", name="cells", client=client)
    first_levels = _levels(first.labels)
    with pytest.raises(bigseg.BigsegError, match="already exists.*--overwrite"):
        bigseg.segment(path, "threshold", name="cells", client=client)
    assert all(np.array_equal(a, b) for a, b in zip(_levels(first.labels), first_levels))  # refused: untouched
    # a high threshold: a few small objects, and blocks left empty whose old labels must go too
    settings = {"threshold": 1000.0}
    again = bigseg.segment(path, "threshold", name="cells", client=client, overwrite=True, **settings)
    fresh = bigseg.segment(path, "threshold", output=str(tmp_path / "fresh.zarr"), client=client, **settings)
    assert again.blocks_empty > first.blocks_empty
    stored = _levels(again.labels)
    assert len(stored) == len(first_levels)
    assert all(np.array_equal(a, b) for a, b in zip(stored, _levels(fresh.labels)))
    assert not same_partition(stored[0], first_levels[0]) and np.any((first_levels[0] > 0) & (stored[0] == 0))
    table = pd.read_parquet(again.table).sort_values("label", ignore_index=True)
    assert table["label"].tolist() == list(range(1, again.objects + 1)) and again.objects > 0
    np.testing.assert_array_equal(table["voxel_count"], np.bincount(stored[0].ravel())[1:])
    pd.testing.assert_frame_equal(table, pd.read_parquet(fresh.table).sort_values("label", ignore_index=True))
    assert bigseg.open_image(path).labels == ("cells",)  # listed once


def _levels(labels_url: str) -> list[np.ndarray]:
    group = zarr.open_group(labels_url, mode="r")
    return [group[d["path"]][:] for d in group.attrs["ome"]["multiscales"][0]["datasets"]]


def test_standalone_output_for_a_read_only_input(client, tmp_path, nuclei3d):
    path, _, _ = nuclei3d
    before = checksums(path)
    os.chmod(path, 0o555)
    try:
        out = str(tmp_path / "out" / "nuclei.zarr")
        res = bigseg.segment(path, "watershed", name="nuclei", client=client, output=out)
    finally:
        os.chmod(path, 0o755)
    assert res.labels == out and os.path.exists(res.table)
    assert checksums(path) == before and not os.path.exists(os.path.join(path, "labels"))
    from ome_zarr_models.v05.image_label import ImageLabel
    model = ImageLabel.from_zarr(zarr.open_group(out, mode="r"))
    assert model.attributes.ome.image_label.source.image == path
    assert zarr.open_array(out + "/0").shape == (48, 160, 160)


def test_two_channel_time_series_segments_the_chosen_channel_and_timepoint(client, tmp_path):
    a, _ = nuclei((24, 64, 64), seed=1)
    b, _ = nuclei((24, 64, 64), seed=2)
    d, _ = nuclei((24, 64, 64), seed=3)
    # (t, c, z, y, x); the chosen t=1, c=0 is b. Every other (t, c) has other objects (and a scaled copy would
    # give the same labels), so taking it, or its threshold, gives another threshold and other labels
    data = np.stack([np.stack([a, d * 2]), np.stack([b, a * 3])])
    path = write_image(tmp_path / "tc.zarr", data, "tczyx", (1, 1, 12, 32, 32), levels=2)
    level0 = zarr.open_array(path + "/s0", mode="r")[:]
    assert level0[0, 0].size <= 2**24  # README: Otsu of the finest level with <= 16 M voxels, here level 0
    otsu = {(t, c): threshold_otsu(level0[t, c].astype(np.float64)) for t in range(2) for c in range(2)}
    assert all(abs(otsu[k] - otsu[1, 0]) > 10 for k in otsu if k != (1, 0))
    res = bigseg.segment(path, "threshold", name="t1c0", client=client, channel=0, timepoint=1)
    assert res.threshold == pytest.approx(otsu[1, 0], rel=1e-6)
    labels = _level0(res.labels)
    assert labels.shape == (24, 64, 64) and res.objects > 10
    single = write_image(tmp_path / "b.zarr", b, "zyx", (12, 32, 32), levels=2)
    ref = bigseg.segment(single, "threshold", name="b", client=client)  # its own threshold, from b alone
    assert ref.threshold == res.threshold
    assert np.array_equal(labels, _level0(ref.labels))
    for t, c in ((0, 0), (0, 1), (1, 1)):  # the wrong timepoint or channel, or the right one at its threshold
        wrong = bigseg.segment(path, "threshold", name=f"t{t}c{c}", client=client, channel=c, timepoint=t)
        assert wrong.threshold == pytest.approx(otsu[t, c], rel=1e-6)
        assert not same_partition(labels, _level0(wrong.labels)), (t, c)
        wrong_threshold = bigseg.segment(single, "threshold", name=f"at{t}{c}", client=client, threshold=otsu[t, c])
        assert not same_partition(labels, _level0(wrong_threshold.labels)), (t, c)


def _level0(labels_url: str) -> np.ndarray:
    return zarr.open_array(labels_url + "/0", mode="r")[:]


def test_fsspec_url_input(client, nuclei3d, tmp_path):
    """A file:// URL, and a read-only http:// URL served from this machine (labels to --output)."""
    path, _, _ = nuclei3d
    local = bigseg.segment(path, "threshold", name="local", client=client)
    via_file = bigseg.segment("file://" + os.path.abspath(path), "threshold", name="viafile", client=client)
    assert via_file.objects == local.objects > 0
    with _http_server(os.path.dirname(path)) as (root, served):
        out = str(tmp_path / "from_http.zarr")
        via_http = bigseg.segment(f"{root}/{os.path.basename(path)}", "threshold", name="viahttp", client=client,
                                  output=out)
    assert any(p.endswith("/s0/c/0/0/0") and status == 200 for p, status in served)  # read over HTTP
    assert via_http.objects == local.objects
    reference = zarr.open_array(local.labels + "/0")[:]
    assert np.array_equal(zarr.open_array(os.path.join(path, "labels", "viafile", "0"))[:], reference)
    assert np.array_equal(zarr.open_array(out + "/0")[:], reference)


def test_http_503s_are_retried_inside_the_block_task(client, tmp_path):
    """Every level-0 chunk is answered 503 once, on its first read after the job's sample (read on the client):
    each block task retries its read and succeeds, no task fails, and the labels equal the local run's."""
    image, _ = nuclei((96, 96), seed=5)
    path = write_image(tmp_path / "img.zarr", image, "yx", (32, 32), levels=1)
    local = bigseg.segment(path, "threshold", output=str(tmp_path / "local.zarr"), client=client, block=(32, 32))
    chunk = re.compile(r"/img\.zarr/s0/c/\d+/\d+$")
    with _http_server(str(tmp_path), fail=lambda p, n: bool(chunk.search(p)) and n == 2) as (root, served):
        t0 = time.time()
        res = bigseg.segment(f"{root}/img.zarr", "threshold", output=str(tmp_path / "http.zarr"), client=client,
                             block=(32, 32))
        erred = client.run_on_scheduler(_erred_tasks, "segment", t0)
    refused = [p for p, status in served if status == 503]
    assert len(refused) == len(set(refused)) == 9  # each of the 3x3 chunks once...
    assert all((p, 200) in served[served.index((p, 503)):] for p in refused)  # ...and served when asked again
    assert erred == []  # retried inside the task: no task failed (Dask's task retries did not step in)
    assert res.blocks == 9 and np.array_equal(_level0(res.labels), _level0(local.labels))


def test_a_chunk_that_always_fails_names_its_block_in_one_line(client, tmp_path):
    image, _ = nuclei((96, 96), seed=5)
    write_image(tmp_path / "img.zarr", image, "yx", (32, 32), levels=1)
    bad = "/img.zarr/s0/c/2/2"  # read by block 8 only: sigma 0 needs no halo
    with _http_server(str(tmp_path), fail=lambda p, n: p == bad and n >= 2) as (root, served), \
            pytest.raises(bigseg.errors.BlockError) as info:  # n >= 2: the job's sample reads it first
        bigseg.segment(f"{root}/img.zarr", "threshold", output=str(tmp_path / "http.zarr"), client=client,
                       block=(32, 32), sigma=0)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("block 8 [64:96, 64:96]: cannot read the input (")
    assert "503" in message and bad in message and "the 8 finished tasks are kept" in message
    # README: reads are tried 3 times in the task, and each task twice more by Dask
    assert [p for p, status in served if status == 503] == [bad] * 9


@contextlib.contextmanager
def _http_server(folder: str, fail=lambda path, n: False):
    """A threaded HTTP server of ``folder`` on 127.0.0.1 (a free port), ready when entered. It answers 503 to
    the ``n``-th GET of ``path`` (counted from 1) where ``fail(path, n)``; yields its root URL and the list of
    ``(path, status)`` of every GET, in order."""
    import functools
    import http.server
    import threading
    served, counts, lock = [], {}, threading.Lock()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            with lock:
                counts[self.path] = n = counts.get(self.path, 0) + 1
                refuse = fail(self.path, n)
                served.append((self.path, 503 if refuse else 200))
            if refuse:
                self.send_error(503)
            else:
                super().do_GET()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=folder))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", served
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _erred_tasks(stage: str, since: float, dask_scheduler=None) -> list[str]:
    """Keys of the stage's tasks that raised on a worker since ``since`` (the scheduler's transition log)."""
    return [str(key) for key, _, _, _, stimulus, when in dask_scheduler.transition_log
            if f"bigseg-{stage}-" in str(key) and str(stimulus).startswith("task-erred") and when >= since]


def test_segmenting_a_lower_level_gives_labels_at_that_resolution(client, tmp_path):
    image, _ = nuclei((16, 128, 128), seed=4, radius=(6, 9))
    path = write_image(tmp_path / "lv.zarr", image, "zyx", (16, 32, 32), levels=3, scale={"z": 1.0, "y": 0.5,
                                                                                        "x": 0.5})
    res = bigseg.segment(path, "threshold", name="coarse", client=client, level=1)
    group = zarr.open_group(res.labels, mode="r")
    datasets = group.attrs["ome"]["multiscales"][0]["datasets"]
    assert [d["path"] for d in datasets] == ["0", "1"]  # levels 1 and 2 of the image
    assert group["0"].shape == (16, 64, 64) and group["1"].shape == (16, 32, 32)
    assert datasets[0]["coordinateTransformations"][0]["scale"] == [1.0, 1.0, 1.0]
    table = pd.read_parquet(res.table)
    assert len(table) == res.objects > 0
    np.testing.assert_allclose(table["volume"], table["voxel_count"] * 1.0)


@pytest.mark.parametrize("group_voxels, pyramid_steps", [(32 * 32, ["pyramid-2", "pyramid-3"]), (2**24, [])])
def test_every_level_samples_the_one_above_whichever_stage_writes_it(client, tmp_path, group_voxels,
                                                                     pyramid_steps):
    """A level each of whose chunks lies in one relabel task's blocks is written by that task, the others by the
    pyramid stage (level by level): either way every level is the nearest sample of the one above."""
    from bigseg.engine import EventLog, events
    image, _ = nuclei((96, 160), seed=7)
    path = write_image(tmp_path / "img.zarr", image, "yx", (16, 32), levels=4)
    log = EventLog()
    with dask.config.set({"bigseg.group-voxels": group_voxels}):  # 32 * 32: one block (32 x 64) per task
        res = bigseg.segment(path, "threshold", client=client, block=(32, 64), observer=log)
    assert [e.stage for e in log.events if isinstance(e, events.StageStarted) and "pyramid" in e.stage] == \
        pyramid_steps  # level 1 (chunks of 32 x 64 voxels of level 0) comes from the relabel tasks
    levels = [zarr.open_array(os.path.join(res.labels, str(i)), mode="r")[:] for i in range(4)]
    assert [lv.shape for lv in levels] == [(96, 160), (48, 80), (24, 40), (12, 20)]
    for above, level in zip(levels, levels[1:]):
        centres = [np.minimum(((np.arange(n) + 0.5) * m / n).astype(int), m - 1)
                   for m, n in zip(above.shape, level.shape)]
        assert np.array_equal(level, above[np.ix_(*centres)])
    assert len(np.unique(levels[0])) - 1 == res.objects > 10
