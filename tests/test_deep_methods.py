"""Deep methods for real: small models trained on synthetic data, saved to disk and loaded back by path through
bigseg. Block-wise results are compared with the same model run on the whole image as one block."""
from __future__ import annotations

import json
import os

import pytest
import zarr

import bigseg
from bigseg.synthetic import nuclei
from conftest import add_corner_objects, write_image
from matching import match

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def stardist2d(tmp_path_factory):
    pytest.importorskip("stardist", reason="pip install 'bigseg[stardist]'")
    from deep_models import train_stardist
    return train_stardist(str(tmp_path_factory.mktemp("stardist")), 2)


@pytest.fixture(scope="session")
def stardist3d(tmp_path_factory):
    pytest.importorskip("stardist", reason="pip install 'bigseg[stardist]'")
    from deep_models import train_stardist
    return train_stardist(str(tmp_path_factory.mktemp("stardist3d")), 3)


@pytest.fixture(scope="session")
def cellpose_model(tmp_path_factory):
    pytest.importorskip("cellpose", reason="pip install 'bigseg[cellpose]'")
    from deep_models import train_cellpose
    return train_cellpose(str(tmp_path_factory.mktemp("cellpose")))


@pytest.fixture(scope="session")
def pixel_classifier(tmp_path_factory):
    from deep_models import train_pixel_classifier
    return train_pixel_classifier(str(tmp_path_factory.mktemp("pc") / "classifier.joblib"))


@pytest.fixture(scope="session")
def pixel_classifier3d(tmp_path_factory):
    from deep_models import train_pixel_classifier
    return train_pixel_classifier(str(tmp_path_factory.mktemp("pc3") / "classifier3d.joblib"), ndim=3)


def _image(tmp_path, shape, chunks, corner_block, seed, radius=(4, 7)):
    image, truth = nuclei(shape, seed=seed, radius=radius)
    image = add_corner_objects(image, corner_block, radius=radius[1])
    return write_image(tmp_path / f"img{len(shape)}.zarr", image, "zyx"[-len(shape):], chunks, levels=2), truth


def _labels(result):
    return zarr.open_array(result.labels + "/0", mode="r")[:]


def _blockwise_vs_monolithic(client, path, method, block, min_f1=0.99, **params):
    shape = zarr.open_array(path + "/s0", mode="r").shape
    mono = bigseg.segment(path, method, name="mono", client=client, block=shape, **params)
    res = bigseg.segment(path, method, name="blocks", client=client, block=block, **params)
    assert mono.blocks == 1 and res.blocks >= 4
    m = match(_labels(mono), _labels(res))
    assert m.f1 >= min_f1, m
    return mono, res


def test_stardist_2d_blockwise_matches_monolithic(client, tmp_path, stardist2d):
    path, truth = _image(tmp_path, (256, 256), (64, 64), (64, 64), seed=41)
    mono, res = _blockwise_vs_monolithic(client, path, "stardist", (64, 64), model=stardist2d)
    assert match(truth, _labels(res)).f1 > 0.7  # the tiny model really segments nuclei


def test_stardist_3d_blockwise_matches_monolithic(client, tmp_path, stardist3d):
    path, truth = _image(tmp_path, (64, 128, 128), (32, 64, 64), (32, 64, 64), seed=42)
    mono, res = _blockwise_vs_monolithic(client, path, "stardist", (32, 64, 64), model=stardist3d,
                                         object_size=16)
    assert match(truth, _labels(res)).f1 > 0.5


def test_cellpose_2d_blockwise_matches_monolithic(client, tmp_path, cellpose_model):
    path, truth = _image(tmp_path, (256, 256), (64, 64), (64, 64), seed=43, radius=(5, 8))
    mono, res = _blockwise_vs_monolithic(client, path, "cellpose", (64, 64), model=cellpose_model, diameter=13)
    assert match(truth, _labels(res)).f1 > 0.7


def test_cellpose_3d_blockwise_matches_monolithic(client, tmp_path, cellpose_model):
    path, truth = _image(tmp_path, (32, 96, 96), (32, 48, 48), (32, 48, 48), seed=49, radius=(5, 8))
    mono, res = _blockwise_vs_monolithic(client, path, "cellpose", (32, 48, 48), model=cellpose_model, diameter=13,
                                         halo=(0, 32, 32))
    assert match(truth, _labels(res)).f1 > 0.5


def test_pixel_classifier_3d_blockwise_equals_monolithic(client, tmp_path, pixel_classifier, pixel_classifier3d):
    from matching import same_partition
    path, truth = _image(tmp_path, (24, 96, 96), (24, 32, 32), (24, 48, 48), seed=50, radius=(5, 8))
    with pytest.raises(bigseg.BigsegError, match="trained on 2D images but the image is 3D"):
        bigseg.segment(path, "pixel-classifier", name="wrong", client=client, model=pixel_classifier)
    mono, res = _blockwise_vs_monolithic(client, path, "pixel-classifier", (24, 32, 32), min_f1=1.0,
                                         model=pixel_classifier3d)
    assert same_partition(_labels(mono), _labels(res))
    assert match(truth, _labels(res)).f1 > 0.5


def test_pixel_classifier_components_are_exact_across_blocks(client, tmp_path, pixel_classifier):
    from matching import same_partition
    path, truth = _image(tmp_path, (256, 256), (64, 64), (64, 64), seed=44, radius=(5, 8))
    mono, res = _blockwise_vs_monolithic(client, path, "pixel-classifier", (64, 64), min_f1=1.0,
                                         model=pixel_classifier)
    assert same_partition(_labels(mono), _labels(res))
    assert match(truth, _labels(res)).f1 > 0.6
    ws = bigseg.segment(path, "pixel-classifier", name="ws", client=client, block=(128, 128),
                        model=pixel_classifier, instances="watershed", diameter=13)
    import numpy as np
    comp, inst = _labels(res), _labels(ws)
    assert np.array_equal(comp > 0, inst > 0)  # the same foreground, cut into instances
    pairs = np.unique(np.stack([inst[inst > 0], comp[inst > 0]]), axis=1)
    assert len(np.unique(pairs[0])) == pairs.shape[1]  # every instance lies in one component: never merged
    assert ws.objects > res.objects  # some components are split
    assert match(truth, inst).merges < match(truth, comp).merges  # into the touching nuclei of the truth


def test_pixel_classifier_class_map_is_exact_across_blocks_and_measured_per_class(client, tmp_path,
                                                                                   pixel_classifier):
    import numpy as np
    import pandas as pd
    path, truth = _image(tmp_path, (256, 256), (64, 64), (64, 64), seed=45, radius=(5, 8))
    mono = bigseg.segment(path, "pixel-classifier", name="mono", client=client, block=(256, 256),
                          model=pixel_classifier, instances="classes")
    res = bigseg.segment(path, "pixel-classifier", name="classes", client=client, block=(64, 64),
                         model=pixel_classifier, instances="classes")
    classes = _labels(res)
    assert res.blocks == 16 and np.array_equal(classes, _labels(mono))  # voxel for voxel
    assert set(np.unique(classes)) == {1, 2}  # the scribble classes: 1 background, 2 nuclei
    dice = 2 * np.sum((classes == 2) & (truth > 0)) / (np.sum(classes == 2) + np.sum(truth > 0))
    assert dice > 0.8
    image = zarr.open_array(path + "/s0", mode="r")[:].astype(np.float64)
    table = pd.read_parquet(res.table).set_index("label")
    assert res.objects == 2 and list(table.index) == [1, 2]
    for c in (1, 2):
        assert table.loc[c, "voxel_count"] == np.sum(classes == c)
        assert table.loc[c, "mean_intensity_c0"] == pytest.approx(image[classes == c].mean(), rel=1e-9)
        assert table.loc[c, "std_intensity_c0"] == pytest.approx(image[classes == c].std(), rel=1e-9)
        assert table.loc[c, "blocks_spanned"] >= 2


def test_models_are_loaded_once_per_worker_process(client, tmp_path, stardist2d):
    from bigseg.methods import _models
    path, _ = _image(tmp_path, (256, 256), (64, 64), (64, 64), seed=45)
    res = bigseg.segment(path, "stardist", name="count", client=client, block=(64, 64), model=stardist2d)
    assert res.blocks == 16
    counts = client.run(_models.load_counts)
    spec = [k for k in next(iter(counts.values())) if "tiny2d" in k]
    assert spec, counts
    per_worker = [c.get(spec[0], 0) for c in counts.values()]
    assert max(per_worker) == 1 and sum(per_worker) <= len(counts)  # 16 blocks, at most one load per process
    # TensorFlow computes on the worker's one thread, and keeps 2 inter-op threads (1 can hang predict)
    threads = client.run(_tensorflow_threads)
    assert {threads[w] for w, c in counts.items() if c.get(spec[0])} == {(1, 2)}


def _tensorflow_threads() -> tuple[int, int]:
    import tensorflow as tf
    return (tf.config.threading.get_intra_op_parallelism_threads(),
            tf.config.threading.get_inter_op_parallelism_threads())


def test_gpu_blocks_run_only_on_the_gpu_worker(tmp_path, pixel_classifier, stardist2d):
    """One worker advertises GPU=1 (CUDA_VISIBLE_DEVICES pins a device; on this CPU machine the model runs on
    the CPU), one does not: every block of a gpu=True method must run on the GPU worker."""
    from distributed import Client, get_task_stream
    from bigseg.cluster import gpu_cluster
    path, _ = _image(tmp_path, (256, 256), (64, 64), (64, 64), seed=46)
    with gpu_cluster(cpu_workers=1, gpus=1, gpu_ids=["0"]) as cluster, Client(cluster) as c:
        c.wait_for_workers(2)
        gpu_worker = [a for a, w in c.scheduler_info()["workers"].items() if w["resources"].get("GPU")]
        assert len(gpu_worker) == 1
        with get_task_stream(c) as ts:
            res = bigseg.segment(path, "stardist", name="gpu", client=c, block=(64, 64), model=stardist2d, gpu=True)
        segment = [t for t in ts.data if "bigseg-segment" in str(t["key"])]
        assert len(segment) == res.blocks == 16
        assert {t["worker"] for t in segment} == set(gpu_worker)
        env = c.run(lambda: os.environ.get("CUDA_VISIBLE_DEVICES"))
        assert env[gpu_worker[0]] == "0"


def test_planning_a_stardist_job_keeps_tensorflow_out_of_the_client_and_caches_the_geometry(stardist2d,
                                                                                            bigseg_cache):
    """The receptive field is measured in a child process once per model, then read from the cache; a changed
    model folder (new weights) is measured again."""
    import subprocess
    import sys
    code = ("import json, sys; from bigseg.methods.stardist import network_geometry; "
            f"g = network_geometry({stardist2d!r}, 2); print(json.dumps([g, 'tensorflow' in sys.modules]))")

    def plan():
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        return json.loads(proc.stdout.strip().splitlines()[-1])
    os.makedirs(bigseg_cache, exist_ok=True)
    cache = os.path.join(bigseg_cache, "stardist-geometry.json")
    if os.path.exists(cache):
        os.remove(cache)
    (field, divisor), imported = plan()
    assert not imported and len(field) == 2 and min(field) > 0
    from stardist.models import StarDist2D  # the same network in this process
    net = StarDist2D(None, name=os.path.basename(stardist2d), basedir=os.path.dirname(stardist2d))
    assert field == [int(o) for o in net._axes_tile_overlap("YX")]
    assert divisor == [int(d) for d in net._axes_div_by("YX")] == [8, 8]  # grid 2 x 2 poolings of 2
    assert os.path.exists(cache)
    with open(cache) as f:
        entries = json.load(f)
    assert len(entries) == 1
    key = next(iter(entries))
    entries[key]["field"] = [1, 1]  # a cached value is used as it is (no child process)
    with open(cache, "w") as f:
        json.dump(entries, f)
    assert plan()[0][0] == [1, 1]
    config = os.path.join(stardist2d, "config.json")
    os.utime(config, ns=(os.stat(config).st_atime_ns, os.stat(config).st_mtime_ns + 10**9))  # the model changed
    assert plan()[0][0] == field
    with open(cache) as f:
        assert len(json.load(f)) == 2


def test_offline_pretrained_name_says_how_to_use_a_local_copy(tmp_path, client):
    pytest.importorskip("stardist")
    path, _ = _image(tmp_path, (64, 64), (32, 32), (32, 32), seed=47)
    with pytest.raises(bigseg.BigsegError, match="--model /path/to/model_folder"):
        bigseg.segment(path, "stardist", name="pre", client=client, model="2D_versatile_fluo")


def test_a_model_of_the_wrong_dimension_is_refused(tmp_path, client, stardist2d):
    path, _ = _image(tmp_path, (16, 64, 64), (16, 32, 32), (16, 32, 32), seed=48)
    with pytest.raises(bigseg.BigsegError, match="is 2D but the image is 3D"):
        bigseg.segment(path, "stardist", name="wrong", client=client, model=stardist2d)


@pytest.mark.parametrize("method, module, extra", [("stardist", "stardist", "stardist"),
                                                   ("cellpose", "cellpose", "cellpose"),
                                                   ("pixel-classifier", "sklearn", "pixel-classifier")])
def test_a_missing_package_names_the_extra_to_install(nuclei3d, method, module, extra):
    import subprocess
    import sys
    code = (f"import sys; sys.modules[{module!r}] = None; from bigseg.cli import main; "
            f"sys.exit(main(['segment', {nuclei3d[0]!r}, '--method', {method!r}, '--model', 'm.joblib']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 2
    assert f"pip install 'bigseg[{extra}]'" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_offline_cellpose_name_says_how_to_use_a_local_copy(tmp_path):
    """Weights are looked up in an empty CELLPOSE_LOCAL_MODELS_PATH, so cellpose must try (and fail) to download."""
    pytest.importorskip("cellpose")
    from distributed import Client, LocalCluster
    path, _ = _image(tmp_path, (64, 64), (32, 32), (32, 32), seed=51)
    empty = tmp_path / "no-weights"
    empty.mkdir()
    with LocalCluster(n_workers=1, threads_per_worker=1, env={"CELLPOSE_LOCAL_MODELS_PATH": str(empty)},
                      dashboard_address=":0") as cluster, Client(cluster) as c:
        with pytest.raises(bigseg.BigsegError, match="CELLPOSE_LOCAL_MODELS_PATH"):
            bigseg.segment(path, "cellpose", name="pre", client=c, model="cyto3", diameter=13)
    assert bigseg.open_image(path).labels == ()  # the failed job left no visible label image
