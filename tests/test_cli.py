"""The command line: bad input gives one clear line and a non-zero exit, nothing written; --json; demo."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import zarr

from bigseg.cli import main
from conftest import checksums, cli_fails as _fails, write_image


@pytest.fixture
def image2d(tmp_path):
    from bigseg.synthetic import nuclei
    image, _ = nuclei((128, 128), seed=1)
    return write_image(tmp_path / "img2d.zarr", image, "yx", (32, 32), levels=2)


def test_bad_input_is_one_line_and_writes_nothing(capsys, tmp_path, image2d, nuclei3d):
    path3d = nuclei3d[0]
    plain = tmp_path / "plain.zarr"
    zarr.open_group(str(plain), mode="w")
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    before = {p: checksums(p) for p in (image2d, path3d)}
    _fails(capsys, ["segment", str(tmp_path / "missing.zarr")], "no such file")
    _fails(capsys, ["segment", str(a_file)], "not a Zarr")
    _fails(capsys, ["segment", str(tmp_path)], "not a Zarr group")
    _fails(capsys, ["segment", str(plain)], "without OME-NGFF")
    _fails(capsys, ["segment", image2d, "--level", "5"], "level 5", "0..1")
    _fails(capsys, ["segment", image2d, "--channel", "1"], "--channel 1", "1 channels")
    _fails(capsys, ["segment", image2d, "--timepoint", "2"], "--timepoint 2")
    _fails(capsys, ["segment", image2d, "--sigma", "1,1,1"], "method.sigma: has 3 values", "2D")
    _fails(capsys, ["segment", path3d, "--block", "64,64"], "--block has 2 values", "3D")
    _fails(capsys, ["segment", path3d, "--block", "16,40,32"], "not a multiple of the chunk shape")
    _fails(capsys, ["segment", path3d, "--block", "16,32,32", "--halo", "40"], "halo 40 is larger")
    _fails(capsys, ["segment", path3d, "--halo", "1,2"], "blocks.halo: has 2 values")
    _fails(capsys, ["segment", path3d, "--method", "magic"], "unknown method 'magic'")
    _fails(capsys, ["segment", path3d, "--name", "../../x"], "not allowed")
    _fails(capsys, ["segment", path3d, "--workers", "2", "--scheduler", "tcp://127.0.0.1:1"], "exclude")
    _fails(capsys, ["segment", path3d, "--scheduler", "tcp://127.0.0.1:1"], "cannot reach")
    _fails(capsys, ["segment", path3d, "--output", str(a_file / "out.zarr")], "cannot write")
    _fails(capsys, ["info", str(plain)], "without OME-NGFF")
    for p, sums in before.items():
        assert checksums(p) == sums
        assert not os.path.exists(os.path.join(p, "labels"))


def test_unwritable_output_is_one_line_without_traceback(tmp_path, nuclei3d):
    """As a separate process: exit code 2 and one line, not a traceback (root ignores permissions, so the
    output is placed under a file, which nobody can write into)."""
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder should be")
    proc = subprocess.run([sys.executable, "-m", "bigseg.cli", "segment", nuclei3d[0], "--output",
                           str(blocker / "out.zarr"), "--workers", "1"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("bigseg: error: cannot write") and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_segment_json_summary_is_the_last_line(tmp_path, image2d):
    proc = subprocess.run([sys.executable, "-m", "bigseg.cli", "segment", image2d, "--method", "watershed",
                           "--name", "nuclei", "--workers", "2", "--block", "64,64", "--json"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["labels"] == os.path.join(image2d, "labels", "nuclei")
    assert summary["table"].endswith("measurements.parquet") and os.path.exists(summary["table"])
    assert summary["blocks"] == 4 and summary["objects"] > 15
    assert set(summary["seconds"]) >= {"segment", "stitch", "relabel", "pyramid", "measure", "total"}
    assert "dashboard" in proc.stderr  # the dashboard link is shown
    labels = zarr.open_array(os.path.join(summary["labels"], "0"))[:]
    assert len(np.unique(labels)) - 1 == summary["objects"]


def test_info_lists_levels_and_labels(capsys, nuclei3d):
    assert main(["info", nuclei3d[0], "--json"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    info = json.loads(out[-1])
    assert [a["name"] for a in info["axes"]] == ["z", "y", "x"]
    assert info["levels"][0]["shape"] == [48, 160, 160] and info["levels"][0]["chunks"] == [16, 32, 32]
    assert info["ngff"] == "0.5" and info["labels"] == []
    assert "level 2" in "\n".join(out)


@pytest.mark.slow
def test_demo_writes_and_segments_a_synthetic_image(tmp_path):
    path = tmp_path / "demo.zarr"
    proc = subprocess.run([sys.executable, "-m", "bigseg.cli", "demo", str(path), "--shape", "32,128,128",
                           "--workers", "2", "--json"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    drawn = int(proc.stdout.split(" nuclei drawn")[0].rsplit(" ", 1)[-1])
    assert abs(summary["objects"] - drawn) <= 0.05 * drawn
    assert os.path.exists(summary["table"])


def test_segment_on_an_existing_scheduler(capsys, image2d):
    """--scheduler runs every block on that cluster's workers; nothing local is started (no new process)."""
    import threading

    import psutil
    from distributed import Client, LocalCluster
    me = psutil.Process()
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster) as client:  # a cluster of its own: its workers have run nothing else
        before = {p.pid for p in me.children()}
        seen, stop = set(), threading.Event()

        def watch():  # processes this one starts while the CLI runs (a local cluster's would show)
            while not stop.is_set():
                seen.update(p.pid for p in me.children())
                stop.wait(0.02)
        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            code = main(["segment", image2d, "--method", "threshold", "--name", "remote",
                         "--scheduler", cluster.scheduler_address, "--json"])
        finally:
            stop.set()
            watcher.join()
        ran = client.run(lambda dask_worker: [str(entry[0]) for entry in dask_worker.state.log
                                              if "bigseg-segment-" in str(entry[0]) and entry[2] == "memory"])
    assert code == 0
    assert seen == before
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # README: blocks of whole chunks, four per worker: 2 workers, 128x128 in 32x32 chunks -> 32x64 blocks
    assert summary["objects"] > 15 and summary["blocks"] == 8
    keys = [k for worker_keys in ran.values() for k in worker_keys]
    assert len(keys) == len(set(keys)) == 8  # each block ran once, on that cluster's workers
