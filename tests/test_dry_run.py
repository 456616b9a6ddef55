"""Dry runs: one block run on the job's cluster estimates the job's peak memory per worker and its seconds,
and nothing is written."""
from __future__ import annotations

import json
import os

import pytest

import bigseg
from bigseg.cli import main
from bigseg.synthetic import nuclei
from conftest import checksums, write_image

BLOCK = (32, 96, 96)


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    data, _ = nuclei((32, 192, 192), seed=7)
    return write_image(tmp_path_factory.mktemp("dry") / "img.zarr", data, "zyx", (16, 32, 32))


def _fresh_cluster():
    """A new cluster: its workers carry no memory from earlier tasks."""
    from distributed import Client, LocalCluster
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0")
    return cluster, Client(cluster)


def _peak_worker_memory(client) -> int:
    """The largest worker's own high-water mark of resident memory (VmHWM: ru_maxrss would include the
    parent process's size at the moment the worker was forked)."""
    from bigseg.probe import high_water_mark
    return max(client.run(high_water_mark).values())


def test_dry_run_estimates_the_jobs_memory_and_seconds_and_writes_nothing(image, tmp_path):
    before = checksums(image)
    cluster, client = _fresh_cluster()
    with cluster, client:
        estimate = bigseg.dry_run(image, "watershed", client=client, block=BLOCK, diameter=10)
    assert checksums(image) == before and not os.path.exists(os.path.join(image, "labels"))
    assert estimate.blocks == 4 and estimate.blocks_background == 0 and estimate.workers == 2
    assert estimate.block["fragments"] > 0 and estimate.block["tried"] == 1
    # each block reads 32 x 120 x 120 (a halo of 24 = 4 sigma + 2 diameters on its inner sides), owns 32 x 96 x 96
    assert estimate.halo == (0, 24, 24) and estimate.halo_overhead == pytest.approx(120**2 / 96**2)

    cluster, client = _fresh_cluster()
    with cluster, client:
        result = bigseg.segment(image, "watershed", client=client, block=BLOCK, diameter=10,
                                output=str(tmp_path / "labels.zarr"))
        peak = _peak_worker_memory(client)
    memory, seconds = estimate.memory["peak"], estimate.seconds["total"]
    assert peak / 2 <= memory <= 2 * peak, (memory, peak)
    assert result.seconds["total"] / 3 <= seconds <= 3 * result.seconds["total"], (estimate.seconds, result.seconds)


def test_a_job_whose_every_block_is_background_is_refused(client, image, capsys):
    from bigseg.errors import InputError
    # a foreground threshold above every intensity: the mask is empty, every block is background
    with pytest.raises(InputError, match="every block is background") as err:
        bigseg.dry_run(image, "threshold", block=BLOCK, foreground_threshold=1e9, client=client)
    assert len(str(err.value).splitlines()) == 1
    before = checksums(image)
    assert main(["segment", image, "--method", "threshold", "--block", "32,96,96", "--dry-run",
                 "--foreground-threshold", "1e9", "--scheduler", client.scheduler.address]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "every block is background" in err[0]
    assert checksums(image) == before and not os.path.exists(os.path.join(image, "labels"))


def test_dry_run_command_prints_the_estimate_and_refuses_bad_input(capsys, image):
    before = checksums(image)
    assert main(["segment", image, "--method", "threshold", "--block", "32,96,96", "--dry-run", "--workers", "1",
                 "--json"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(out[-1])
    assert summary["blocks"] == 4 and summary["workers"] == 1 and summary["memory"]["peak"] > 0
    assert any(line.startswith("memory   ~") for line in out) and any(line.startswith("time     ~") for line in out)
    assert main(["segment", image, "--block", "32,40,96", "--dry-run"]) == 2
    assert "not a multiple of the chunk shape" in capsys.readouterr().err
    assert checksums(image) == before and not os.path.exists(os.path.join(image, "labels"))
