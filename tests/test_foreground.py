"""Foreground skipping: blocks without foreground in a low-resolution mask are never read, and no object is lost."""
from __future__ import annotations

import json

import dask.config
import numpy as np
import pytest
import zarr

import bigseg
from bigseg.api import as_spec
from bigseg.pipeline import plan_segmentation
from bigseg.cli import main
from bigseg.synthetic import nuclei
from conftest import checksums, write_image
from matching import same_partition

#: small enough that the test images' coarse levels are "whole-slide-like" (a mask level coarser than level 0)
BUDGET = {"bigseg.foreground-voxels": 20_000}


def _slide(shape=(1024, 1024), seed=1) -> np.ndarray:
    """Tissue in the left 400 columns (the block boundary at 384 leaves a 16-column strip in the next block
    column, with nuclei cut by it), one nucleus alone on the glass across a block corner, glass elsewhere."""
    image, _ = nuclei(shape, seed=seed)
    rng = np.random.default_rng(seed)
    glass = (200 + rng.normal(0, 40, shape)).clip(0).astype(np.uint16)
    out = np.where(np.arange(shape[1])[None, :] < 400, image, glass)
    yy, xx = np.ogrid[:shape[0], :shape[1]]
    alone = (yy - 767.5) ** 2 + (xx - 767.5) ** 2 <= 36
    out[alone] = 1000
    return out


@pytest.fixture
def slide(tmp_path):
    return write_image(tmp_path / "slide.zarr", _slide(), "yx", (64, 64), levels=4)


def _labels(result) -> np.ndarray:
    return zarr.open_array(result.labels + "/0", mode="r")[:]


@pytest.mark.parametrize("method", ["threshold", "watershed"])
def test_skipping_background_blocks_gives_the_labels_of_a_full_run(client, slide, method):
    with dask.config.set(BUDGET):
        full = bigseg.segment(slide, method, name="full", client=client, block=(128, 128), skip_background=False)
        skipped = bigseg.segment(slide, method, name="skipped", client=client, block=(128, 128))
    assert full.blocks == skipped.blocks == 64 and full.blocks_background == 0
    # tissue covers block columns 0-3 (the 4th holds a 16-column strip); the lone nucleus keeps its 4 blocks and
    # the dilation by the halo may keep their neighbours: at least half of the 32 glass-only blocks are skipped
    assert 16 <= skipped.blocks_background <= 28
    assert skipped.objects == full.objects > 100
    assert np.array_equal(_labels(skipped), _labels(full))  # same ids too: background blocks have no fragments
    meta = zarr.open_group(skipped.labels, mode="r").attrs["ome"]
    bigseg_meta = zarr.open_group(skipped.labels, mode="r").attrs["bigseg"]
    assert meta["multiscales"][0]["name"] == "skipped"
    assert bigseg_meta["blocks_background"] == skipped.blocks_background
    assert bigseg_meta["foreground"]["source"] == "level 3"
    assert skipped.summary()["blocks_background"] == skipped.blocks_background
    # the blocks of the 16-column strip are labelled (and read) only around the tissue's edge, not whole
    with dask.config.set(BUDGET):
        plan = plan_segmentation(as_spec(slide, method, block=(128, 128)), 2)
    cropped = [b for b in plan.active_blocks() if plan.kept_region(b) is not None]
    assert cropped and all(b.core[1].start == 384 for b in cropped if b.core[0].start not in (640, 768))
    assert all(plan.kept_region(b)[1].stop < b.extended[1].stop for b in cropped if b.core[1].start == 384)


def test_images_without_a_coarser_level_are_read_whole_by_default(client, tmp_path):
    path = write_image(tmp_path / "small.zarr", _slide((256, 256)), "yx", (64, 64), levels=1)
    res = bigseg.segment(path, "threshold", name="t", client=client, block=(64, 64))
    assert res.blocks == 16 and res.blocks_background == 0


def test_an_explicit_threshold_and_the_cli_flags(client, slide, capsys):
    with dask.config.set(BUDGET):
        assert main(["segment", slide, "--method", "threshold", "--name", "t", "--block", "128,128",
                     "--foreground-threshold", "5000", "--scheduler", client.scheduler.address, "--json"]) == 0
        summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert summary["blocks_background"] == 64 and summary["objects"] == 0  # nothing is that bright
        assert main(["segment", slide, "--method", "threshold", "--name", "t2", "--block", "128,128",
                     "--no-skip-background", "--scheduler", client.scheduler.address, "--json"]) == 0
        summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert summary["blocks_background"] == 0 and summary["objects"] > 100


def test_a_label_image_as_the_mask(client, slide):
    from ome_zarr.writer import write_labels
    # a tissue mask drawn on level 2 of the image (256 x 256): the tissue's 400 columns are 100 there
    tissue = np.zeros((256, 256), np.uint8)
    tissue[:, :100] = 1
    write_labels(tissue, zarr.open_group(slide, mode="r+"), name="tissue", axes="yx", scaler=None)
    with dask.config.set(BUDGET):
        full = bigseg.segment(slide, "threshold", name="full", client=client, block=(128, 128),
                              skip_background=False)
        masked = bigseg.segment(slide, "threshold", name="masked", client=client, block=(128, 128), mask="tissue")
    assert masked.blocks_background == 32  # block columns 4-7: glass, and the lone nucleus is outside the mask
    full_labels = _labels(full)
    full_labels[:, 512:] = 0  # ... and so does the nucleus (the mask says where to look)
    assert same_partition(_labels(masked), full_labels)


def test_a_mask_that_fits_no_level_and_a_missing_mask_are_one_line_errors(client, slide, capsys):
    from ome_zarr.writer import write_labels
    group = zarr.open_group(slide, mode="r+")
    write_labels(np.ones((100, 100), np.uint8), group, name="odd", axes="yx", scaler=None)
    before = checksums(slide)
    for mask, expected in (("odd", "none of which is the shape of a level"), ("nope", "has no label image 'nope'")):
        code = main(["segment", slide, "--method", "threshold", "--name", "x", "--mask", mask,
                     "--scheduler", client.scheduler.address])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and expected in err[0], err
    assert checksums(slide) == before
    assert "x" not in zarr.open_group(slide + "/labels", mode="r")


def test_the_mask_is_part_of_the_resume_identity(client, slide, tmp_path):
    import threading

    from bigseg.engine import events
    from bigseg.errors import JobCancelled, OutputError

    class AfterFirstBlocks(events.Observer):
        def __init__(self):
            self.reached = threading.Event()

        def on_event(self, event):
            if isinstance(event, events.StageAdvanced) and event.stage == "segment" and event.done >= 2:
                self.reached.set()

    out = str(tmp_path / "out.zarr")
    with dask.config.set(BUDGET):
        reference = bigseg.segment(slide, "watershed", output=str(tmp_path / "ref.zarr"), client=client,
                                   block=(128, 128), skip_background=False)
        spy = AfterFirstBlocks()
        handle = bigseg.submit(slide, "watershed", output=out, client=client, block=(128, 128), observer=spy)
        assert spy.reached.wait(240)
        handle.cancel()
        with pytest.raises(JobCancelled):
            handle.result(timeout=60)
        with pytest.raises(OutputError, match="different settings .foreground, foreground.skip_background"):
            bigseg.segment(slide, "watershed", output=out, client=client, block=(128, 128), skip_background=False)
        again = bigseg.segment(slide, "watershed", output=out, client=client, block=(128, 128))
    assert again.resumed["segment"] >= 2 and again.blocks_background >= 16
    assert np.array_equal(_labels(again), _labels(reference))
