"""The job spec: one model behind the CLI flags, job files and the Python API; physical units; clear errors."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml
import zarr

import bigseg
from bigseg.cli import main
from bigseg.methods import METHODS, Watershed, parameters
from bigseg.spec import JobSpec, from_file, from_kwargs, schema
from bigseg.synthetic import nuclei, write_ome_zarr
from bigseg.units import VoxelSize, parse
from conftest import checksums
from matching import match


@pytest.fixture
def image2d(tmp_path):
    image, _ = nuclei((128, 128), seed=1)
    return write_ome_zarr(tmp_path / "img2d.zarr", image, "yx", (32, 32), levels=2, scale={"y": 0.5, "x": 0.5},
                          unit="micrometer")


def _spec_cli(capsys, *argv) -> str:
    assert main(["spec", *argv]) == 0
    return capsys.readouterr().out


def test_flags_job_file_and_python_are_one_model(capsys, tmp_path, image2d):
    text = _spec_cli(capsys, image2d, "--method", "watershed", "--diameter", "6um", "--sigma", "0.5um",
                     "--block", "64,64", "--name", "nuclei", "--min-size", "5um^2")
    from_flags = yaml.safe_load(text)
    assert from_flags["method"] == {"name": "watershed", "sigma": "0.5um", "threshold_method": "otsu",
                                    "diameter": "6um", "min_size": "5um^2", "local_window": 31.0,
                                    "local_offset": 0.0, "dark_objects": False, "background": "none",
                                    "background_radius": 20.0, "split": "distance"}
    assert from_flags["blocks"]["shape"] == [64, 64] and from_flags["input"]["url"] == image2d
    job = tmp_path / "job.yaml"
    job.write_text(text)
    python = from_kwargs(image2d, "watershed", "nuclei", diameter="6um", sigma="0.5um", block=(64, 64),
                         min_size="5um^2")
    by_hand = JobSpec(input={"url": image2d}, method=Watershed(diameter="6um", sigma="0.5um", min_size="5um^2"),
                      blocks={"shape": [64, 64]}, output={"name": "nuclei"})
    assert from_file(job) == JobSpec.from_file(job) == python == by_hand
    assert JobSpec.from_file(job, ["method.diameter=7um"]).method.diameter == "7um"
    assert JobSpec.model_validate_json(json.dumps(python.to_dict())) == python  # JSON spelling too
    method_only = tmp_path / "method.yaml"  # a job file without an input: the image comes from the command line
    method_only.write_text(yaml.safe_dump({"method": {"name": "threshold", "sigma": "1um"}}))
    out = yaml.safe_load(_spec_cli(capsys, image2d, "--spec", str(method_only), "--set", "output.name=t"))
    assert out["input"]["url"] == image2d and out["method"]["sigma"] == "1um" and out["output"]["name"] == "t"


def test_a_job_file_runs_like_its_flags_and_set_overrides_it(tmp_path, image2d):
    """`segment --spec job.yaml --set ...` writes the same labels as the equivalent flags."""
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({"version": 1, "input": {"url": image2d},
                                   "method": {"name": "watershed", "diameter": "3um"},
                                   "blocks": {"shape": [64, 64]}, "output": {"name": "fromfile"}}))
    run = [sys.executable, "-m", "bigseg.cli", "segment", "--workers", "2", "--json"]
    a = subprocess.run(run + ["--spec", str(job), "--set", "method.diameter=6um", "--set", "method.sigma=0.5um"],
                       capture_output=True, text=True, timeout=300)
    b = subprocess.run(run + [image2d, "--diameter", "12", "--sigma", "1", "--block", "64,64", "--name", "flags"],
                       capture_output=True, text=True, timeout=300)
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    sa, sb = (json.loads(p.stdout.strip().splitlines()[-1]) for p in (a, b))
    assert sa["labels"].endswith("fromfile") and sb["labels"].endswith("flags")
    labels_a, labels_b = (zarr.open_array(s["labels"] + "/0")[:] for s in (sa, sb))
    assert sa["objects"] == sb["objects"] > 15
    assert np.array_equal(labels_a, labels_b)  # 6um = 12 voxels of 0.5um: the same job


def test_every_method_parameter_has_a_flag_that_reaches_the_model(capsys, image2d):
    help_text = subprocess.run([sys.executable, "-m", "bigseg.cli", "segment", "--help"], capture_output=True,
                               text=True).stdout
    for cls in METHODS.values():
        for field in parameters(cls):
            assert "--" + field.replace("_", "-") in help_text, field
    out = yaml.safe_load(_spec_cli(capsys, image2d, "--method", "cellpose", "--anisotropy", "2.5",
                                   "--percentiles", "2,99.5", "--model", "/models/cp", "--gpu"))
    assert out["method"]["anisotropy"] == 2.5 and out["method"]["percentiles"] == [2.0, 99.5]
    assert out["method"]["gpu"] is True and out["method"]["model"] == "/models/cp"
    out = yaml.safe_load(_spec_cli(capsys, image2d, "--min-distance", "3"))
    assert out["method"]["min_distance"] == 3


def test_schema_is_the_job_file_format(capsys):
    import jsonschema
    assert main(["spec", "--schema"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == schema()
    good = from_kwargs("x.zarr", "stardist", object_size="10um").to_dict()
    jsonschema.validate(good, printed)
    names = {m["properties"]["name"]["const"] for m in printed["$defs"].values() if "name" in m.get("properties", {})
             and "const" in m["properties"]["name"]}
    assert names == set(METHODS)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**good, "blocks": {"shape": [0, 64]}}, printed)


@pytest.mark.parametrize("content, words", [
    ({"input": {"url": "x.zarr"}, "method": {"name": "watershed", "diameter": -3}}, ["method.diameter: must be positive"]),
    ({"input": {"url": "x.zarr"}, "method": {"name": "watershed", "diamter": 3}},
     ["method.diamter: unknown field", "did you mean 'diameter'"]),
    ({"input": {"url": "x.zarr", "chanel": 1}}, ["input.chanel: unknown field", "'channel'"]),
    ({"input": {"url": "x.zarr"}, "method": "magic"}, ["unknown method 'magic'", "watershed"]),
    ({"version": 7, "input": {"url": "x.zarr"}}, ["version 7 is newer", "upgrade bigseg"]),
    ({"input": {"url": "x.zarr"}, "method": {"name": "threshold", "sigma": "2 furlongs"}}, ["unknown unit"]),
    ({"input": {"url": "x.zarr"}, "method": {"name": "watershed", "min_size": "3um"}}, ["is a length, not a volume"]),
])
def test_bad_job_files_are_one_line_naming_the_field(capsys, tmp_path, content, words):
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(content))
    assert main(["segment", "--spec", str(job)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"bigseg: error: job file {job}: "), err
    for w in words:
        assert w in err[0], err[0]


def test_other_spec_errors_write_nothing(capsys, tmp_path, image2d):
    before = checksums(image2d)
    for argv, word in [(["segment", image2d, "--diameter", "0"], "method.diameter: must be positive"),
                       (["segment", image2d, "--set", "method.diameter"], "write section.field=value"),
                       (["segment", "--spec", str(tmp_path / "none.yaml")], "no such file"),
                       (["segment"], "give an image"),
                       (["segment", image2d, "--diameter", "8um", "--sigma", "1um,1um,1um"], "has 3 values"),
                       (["segment", image2d, "--threshold-method", "magic"], "method.threshold_method")]:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and word in err[0], (argv, err)
    assert checksums(image2d) == before and not os.path.exists(os.path.join(image2d, "labels"))


def test_lengths_in_physical_units_follow_the_voxel_size():
    vs = VoxelSize((2.0, 0.5, 0.5), ("micrometer",) * 3)
    assert vs.voxels("8um") == (4.0, 16.0, 16.0)
    assert vs.voxels("8 µm") == vs.voxels("8000nm") == vs.voxels("0.008 mm") == (4.0, 16.0, 16.0)
    assert vs.voxels(3) == (3.0, 3.0, 3.0) and vs.voxels([1, "1um", 2]) == (1.0, 2.0, 2.0)
    assert vs.volume_voxels("20um^3") == pytest.approx(20 / 0.5) and vs.volume_voxels(7) == 7
    assert vs.volume_voxels("20 µm³") == vs.volume_voxels("20um3")
    ws = Watershed(diameter="8um", sigma="1um")
    assert ws.halo(vs) == (2 + 8, 8 + 32, 8 + 32)  # 4 sigma + 2 diameters, per axis
    assert ws.seed_radius(vs) == (1, 4, 4)
    assert ws.object_min_size(vs) == int(0.1 * np.pi / 6 * 4 * 16 * 16)
    with pytest.raises(ValueError, match="no unit"):
        VoxelSize((1.0, 1.0), (None, None)).voxels("3um")
    with pytest.raises(ValueError, match="not a length"):
        parse("3um^3")


def test_anisotropic_volume_gives_the_objects_of_the_isotropic_one(client, tmp_path):
    """A light-sheet-like volume sampled every 4 um in z (xy 1 um) and the isotropic volume it was sampled
    from, both segmented block-wise with lengths in micrometres: the same nuclei. Lengths in voxels on the
    anisotropic volume (the old behaviour) do not give them."""
    iso, _ = nuclei((96, 128, 128), radius=(7, 10), seed=5, noise=30)
    aniso = iso[2::4]
    iso_path = write_ome_zarr(tmp_path / "iso.zarr", iso, "zyx", (48, 32, 32), levels=2, unit="micrometer")
    aniso_path = write_ome_zarr(tmp_path / "aniso.zarr", aniso, "zyx", (8, 32, 32), levels=2,
                                scale={"z": 4.0, "y": 1.0, "x": 1.0}, unit="micrometer")
    kw = dict(client=client, diameter="16um", sigma="1um")
    a = bigseg.segment(aniso_path, "watershed", "n", block=(16, 64, 64), **kw)
    i = bigseg.segment(iso_path, "watershed", "n", block=(48, 64, 64), **kw)
    assert a.halo == (1 + 8, 4 + 32, 4 + 32) and i.halo == (4 + 32,) * 3
    labels_a = zarr.open_array(a.labels + "/0")[:]
    labels_i = zarr.open_array(i.labels + "/0")[:][2::4]
    m = match(labels_i, labels_a)
    assert m.n_ref > 60 and m.f1 >= 0.97 and m.merges == 0, m
