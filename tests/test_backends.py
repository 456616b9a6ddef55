"""Cluster backends chosen by profile, each on the real thing started by the project's own fixtures: a
hand-started ``dask scheduler`` / ``dask worker``, a single-node SLURM (dask-jobqueue), a Dask Gateway. Each
backend gives labels and a table identical to the local cluster's; each user mistake is one line."""
from __future__ import annotations

import contextlib
import glob
import json
import os
import time
import signal
import subprocess
import sys
import textwrap

import dask.config
import numpy as np
import pandas as pd
import pytest
import yaml
import zarr
from conftest import write_image
from services._process import free_ports
from services.dask_cli import dask_cli  # noqa: F401
from services.gateway import gateway  # noqa: F401
from services.slurm import slurm  # noqa: F401

import bigseg
from bigseg.cluster import describe_profiles, load_profile, n_workers, open_cluster
from bigseg.errors import ParameterError
from bigseg.engine import events
from bigseg.synthetic import nuclei

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BLOCK = (32, 32, 32)
N_BLOCKS = 16


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    data, _ = nuclei((32, 128, 128), seed=21)
    return write_image(tmp_path_factory.mktemp("backends") / "image.zarr", data, "zyx", (16, 32, 32), levels=2)


@pytest.fixture(scope="module")
def reference(image, tmp_path_factory):
    """The job's labels and table on the default profile (a local cluster), and its dashboard address."""
    out = str(tmp_path_factory.mktemp("reference") / "labels.zarr")
    with open_cluster(workers=2) as client:
        dashboard = client.dashboard_link
        res = bigseg.segment(image, "watershed", client=client, block=BLOCK, output=out)
    assert res.blocks == N_BLOCKS and res.objects > 50
    return _read(res.labels), dashboard


def _read(label_url: str) -> tuple[np.ndarray, pd.DataFrame]:
    labels = zarr.open_array(os.path.join(label_url, "0"), mode="r")[:]
    table = pd.read_parquet(os.path.join(label_url, "measurements.parquet")).sort_values("label")
    return labels, table.reset_index(drop=True)


def _assert_identical(label_url: str, reference) -> None:
    (labels, table), (ref_labels, ref_table) = _read(label_url), reference[0]
    assert labels.max() > 0 and np.array_equal(labels, ref_labels)
    pd.testing.assert_frame_equal(table, ref_table)


@pytest.fixture
def profiles(tmp_path):
    """Write ``{name: profile}`` as a Dask config file in a folder of its own and make Dask read it (the folder
    is what DASK_CONFIG would name); returns the file's path. Undone after the test."""
    folders = []

    def use(data: dict, filename: str = "bigseg.yaml") -> str:
        folder = tmp_path / f"dask-config-{len(folders)}"
        folder.mkdir()
        path = folder / filename
        path.write_text(yaml.safe_dump({"bigseg": {"profiles": data}}))
        dask.config.paths.append(str(folder))  # dask reads DASK_CONFIG into this list at import
        folders.append(str(folder))
        dask.config.refresh()
        return str(path)

    yield use
    for folder in folders:
        dask.config.paths.remove(folder)
    dask.config.refresh()


def _one_line(err: BaseException) -> str:
    text = str(err)
    assert "\n" not in text and text
    return text


# ----------------------------------------------------------------------------------------------------- local


def test_the_default_profile_is_a_local_cluster_with_a_loopback_dashboard(reference):
    assert load_profile().kind == "local"
    assert reference[1].startswith("http://127.0.0.1:")


# ------------------------------------------------------------------------------------------ hand deployment


def test_a_hand_started_scheduler_gives_the_local_result(dask_cli, image, reference, profiles, tmp_path):
    profiles({"shared": {"kind": "address", "address": dask_cli.address}})
    with open_cluster("shared") as client:
        assert client.scheduler.address == dask_cli.address
        workers = set(client.scheduler_info()["workers"])
        res = bigseg.segment(image, "watershed", client=client, block=BLOCK, output=str(tmp_path / "out.zarr"))
        ran_on = set(client.run_on_scheduler(
            lambda dask_scheduler: [ts.processing_on.address if ts.processing_on else None
                                    for ts in dask_scheduler.tasks.values()]))
        imported = set(client.run(lambda: __import__("bigseg").__file__).values())
    assert len(workers) == 2 and imported == {os.path.join(REPO, "bigseg", "__init__.py")}
    assert ran_on <= workers | {None}
    _assert_identical(res.labels, reference)


def test_the_address_can_come_from_dask_scheduler_address(dask_cli, profiles, monkeypatch):
    profiles({"shared": {"kind": "address"}})
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", dask_cli.address)
    dask.config.refresh()
    with open_cluster("shared") as client:
        assert client.scheduler.address == dask_cli.address and n_workers(client) == 2


def test_a_worker_killed_mid_job_on_the_hand_started_cluster_changes_nothing(dask_cli, image, reference, profiles,
                                                                          tmp_path):
    out = tmp_path / "out.zarr"

    class KillOneWorker(events.Observer):
        """SIGKILLs a busy worker process once 3 segment records exist (its nanny starts a new one)."""

        def __init__(self, client):
            self.client, self.stage_name, self.killed, self.records_at_kill = client, None, None, None

        def on_event(self, event):
            records = glob.glob(str(out / ".bigseg-work" / "done" / "segment" / "[0-9]*"))
            if isinstance(event, events.StageAdvanced) and event.stage == "segment" and len(records) >= 3 \
                    and self.killed is None:
                busy = [w for w, keys in self.client.processing().items() if keys]
                pid = next(iter(self.client.run(os.getpid, workers=busy[:1]).values()))
                os.kill(pid, signal.SIGKILL)
                self.killed, self.records_at_kill = pid, len(records)

    profiles({"shared": {"kind": "address", "address": dask_cli.address}})
    with open_cluster("shared") as client:
        spy = KillOneWorker(client)
        res = bigseg.segment(image, "watershed", client=client, block=BLOCK, output=str(out), observer=spy)
        client.wait_for_workers(2, timeout=60)  # the nanny's replacement
        alive = set(client.run(os.getpid).values())
    assert spy.killed is not None and spy.killed not in alive and spy.records_at_kill < N_BLOCKS
    _assert_identical(res.labels, reference)


def test_an_unreachable_scheduler_is_one_line(profiles):
    port = free_ports(1)[0]
    profiles({"gone": {"kind": "address", "address": f"tcp://127.0.0.1:{port}", "timeout": "2s"}})
    with pytest.raises(ParameterError) as err, open_cluster("gone"):
        pass
    assert f"cannot reach the Dask scheduler at tcp://127.0.0.1:{port}" in _one_line(err.value)


# ------------------------------------------------------------------------------------------------------ SLURM


def _hpc(tmp_path, **cluster) -> dict:
    return {"kind": "jobqueue", "system": "slurm", "scale": {"jobs": 2},
            "cluster": {"cores": 1, "processes": 1, "memory": "1GB", "walltime": "00:10:00", "interface": "lo",
                        "log_directory": str(tmp_path / "slurm-logs"), **cluster}}


def test_slurm_workers_run_in_their_jobs_and_give_the_local_result(slurm, image, reference, profiles, tmp_path):
    profiles({"hpc": _hpc(tmp_path)})
    with open_cluster("hpc") as client:
        client.wait_for_workers(2, timeout=60)
        job_ids = client.run(lambda: os.environ.get("SLURM_JOB_ID"))
        queued = slurm.jobs()
        imported = set(client.run(lambda: __import__("bigseg").__file__).values())
        res = bigseg.segment(image, "watershed", client=client, block=BLOCK, output=str(tmp_path / "out.zarr"))
    ids = set(job_ids.values())
    assert len(ids) == 2 and None not in ids and all(queued.get(i) == "RUNNING" for i in ids)
    assert imported == {os.path.join(REPO, "bigseg", "__init__.py")}
    assert not ids & set(slurm.jobs())  # cancelled when the context ended
    _assert_identical(res.labels, reference)


def test_the_cli_runs_a_job_file_on_the_slurm_profile(slurm, image, reference, profiles, tmp_path):
    """`bigseg segment --spec job.yaml --profile hpc`: the blocks run in SLURM jobs (seen RUNNING in squeue
    while the job runs), the output is the local one, and no job is left afterwards."""
    import subprocess
    import sys
    import threading
    config = profiles({"hpc": _hpc(tmp_path)})
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({"version": 1, "input": {"url": image}, "method": {"name": "watershed"},
                                   "blocks": {"shape": list(BLOCK)}, "output": {"url": str(tmp_path / "out.zarr")}}))
    before, seen, done = set(slurm.jobs()), set(), threading.Event()

    def watch():
        while not done.is_set():
            seen.update(i for i, state in slurm.jobs().items() if state == "RUNNING")
            time.sleep(0.2)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        proc = subprocess.run([sys.executable, "-m", "bigseg.cli", "segment", "--spec", str(job), "--profile", "hpc",
                               "--json"], capture_output=True, text=True, timeout=300,
                              env={**os.environ, **slurm.env, "DASK_CONFIG": os.path.dirname(config)})
    finally:
        done.set()
        watcher.join()
    assert proc.returncode == 0, proc.stderr
    assert len(seen - before) == 2  # the profile's two worker jobs ran
    assert not set(slurm.jobs()) - before
    _assert_identical(json.loads(proc.stdout.strip().splitlines()[-1])["labels"], reference)


def test_an_adaptive_slurm_profile_submits_jobs_only_for_the_work(slurm, image, reference, profiles, tmp_path):
    class SeeJobs(events.Observer):
        """Records the SLURM jobs running while blocks finish."""

        def __init__(self):
            self.running = set()

        def on_event(self, event):
            if isinstance(event, events.StageAdvanced):
                self.running |= {i for i, state in slurm.jobs().items() if state == "RUNNING"}

    before = set(slurm.jobs())
    profiles({"elastic": {**_hpc(tmp_path), "scale": None, "adapt": {"minimum_jobs": 0, "maximum_jobs": 2}}})
    spy = SeeJobs()
    with open_cluster("elastic") as client:
        idle = len(client.scheduler_info()["workers"]), set(slurm.jobs()) - before
        assert n_workers(client) == 2  # the adaptive maximum, without waiting for a worker
        res = bigseg.segment(image, "watershed", client=client, block=BLOCK, output=str(tmp_path / "out.zarr"),
                             observer=spy)
    assert idle == (0, set()) and spy.running - before
    assert not set(slurm.jobs()) - before
    _assert_identical(res.labels, reference)


def test_slurm_refusing_the_job_is_one_line_with_its_reason_and_nothing_is_written(slurm, image, profiles,
                                                                                 tmp_path):
    before = set(slurm.jobs())
    profiles({"big": _hpc(tmp_path, memory=f"{slurm.memory_mb * 10}MB")})
    out = tmp_path / "out.zarr"
    with pytest.raises(ParameterError) as err, open_cluster("big") as client:
        bigseg.segment(image, "watershed", client=client, block=BLOCK, output=str(out))
    text = _one_line(err.value)
    assert text.startswith("SLURM refused the worker job: sbatch: error:") and "bigseg.profiles.big.cluster" in text
    assert "Requested node configuration is not available" in text or "Memory specification" in text
    assert not out.exists() and set(slurm.jobs()) == before


def test_slurm_jobs_that_stay_pending_fail_with_squeue_reason(slurm, profiles, tmp_path):
    profiles({"later": _hpc(tmp_path, job_extra_directives=["--begin=now+3600"])})
    with pytest.raises(ParameterError) as err, open_cluster("later") as client:
        n_workers(client, timeout=3)
    text = _one_line(err.value)
    assert text.startswith("no Dask worker joined within 3 s: SLURM worker jobs did not start:")
    assert text.count("PENDING (BeginTime)") == 2
    assert not slurm.jobs()


# ---------------------------------------------------------------------------------------------------- Gateway


def _cloud(gateway, **extra) -> dict:
    return {"kind": "gateway", "address": gateway.address, "proxy_address": gateway.proxy_address,
            "auth": {"kind": "basic", "username": gateway.username, "password_env": "BIGSEG_TEST_GATEWAY_PW"},
            "options": {"worker_cores": 1, "worker_memory": 1}, "scale": 2, **extra}


def _gateway_clusters(gateway) -> list:
    from dask_gateway import BasicAuth, Gateway

    from bigseg.cluster.gateway import close_gateway
    gw = Gateway(gateway.address, proxy_address=gateway.proxy_address,
                 auth=BasicAuth(gateway.username, gateway.password))
    try:
        return gw.list_clusters()
    finally:
        close_gateway(gw)


def test_a_gateway_cluster_gives_the_local_result(gateway, image, reference, profiles, tmp_path, monkeypatch):
    monkeypatch.setenv("BIGSEG_TEST_GATEWAY_PW", gateway.password)
    profiles({"cloud": _cloud(gateway)})
    with open_cluster("cloud") as client:
        client.wait_for_workers(2, timeout=60)
        assert client.scheduler.address.startswith(gateway.proxy_address.split(":")[0] + "://")
        assert len(_gateway_clusters(gateway)) == 1
        imported = set(client.run(lambda: __import__("bigseg").__file__).values())
        res = bigseg.segment(image, "watershed", client=client, block=BLOCK, output=str(tmp_path / "out.zarr"))
    assert imported == {os.path.join(REPO, "bigseg", "__init__.py")}
    assert _gateway_clusters(gateway) == []  # shut down when the context ended
    _assert_identical(res.labels, reference)


def test_a_gpu_gateway_profile_gives_workers_that_advertise_a_gpu(gateway, profiles, monkeypatch):
    monkeypatch.setenv("BIGSEG_TEST_GATEWAY_PW", gateway.password)
    profiles({"cloud": _cloud(gateway, scale=1), "gpucloud": _cloud(gateway, scale=1, gpu=True)})
    with pytest.raises(ParameterError) as err, open_cluster("cloud", gpu=True):
        pass
    assert "bigseg.profiles.cloud.gpu: true" in _one_line(err.value)
    with open_cluster("gpucloud", gpu=True) as client:
        client.wait_for_workers(1, timeout=60)
        resources = [w["resources"] for w in client.scheduler_info()["workers"].values()]
    assert resources == [{"GPU": 1}]


def test_a_wrong_gateway_password_is_one_line(gateway, profiles, monkeypatch):
    monkeypatch.setenv("BIGSEG_TEST_GATEWAY_PW", gateway.password + "x")
    profiles({"cloud": _cloud(gateway)})
    with pytest.raises(ParameterError) as err, open_cluster("cloud"):
        pass
    text = _one_line(err.value)
    assert f"the Dask Gateway at {gateway.address} refused the login user 'alice' (401" in text
    assert "$BIGSEG_TEST_GATEWAY_PW" in text and gateway.password not in text


def test_an_unreachable_gateway_is_one_line(profiles, monkeypatch):
    monkeypatch.setenv("BIGSEG_TEST_GATEWAY_PW", "secret")
    port = free_ports(1)[0]
    profiles({"cloud": {"kind": "gateway", "address": f"http://127.0.0.1:{port}",
                        "auth": {"kind": "basic", "password_env": "BIGSEG_TEST_GATEWAY_PW"}}})
    with pytest.raises(ParameterError) as err, open_cluster("cloud"):
        pass
    assert _one_line(err.value).startswith(f"cannot reach the Dask Gateway at http://127.0.0.1:{port} (")


# ------------------------------------------------------------------------------------------- Kubernetes


def test_kubernetes_without_a_reachable_api_is_one_line(profiles, monkeypatch, tmp_path):
    port = free_ports(1)[0]
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "x",
        "clusters": [{"name": "c", "cluster": {"server": f"https://127.0.0.1:{port}"}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "users": [{"name": "u", "user": {"token": "t"}}]}))
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    profiles({"k8s": {"kind": "kubernetes", "image": "ghcr.io/bigseg/bigseg:0.2.0"}})
    with pytest.raises(ParameterError) as err, open_cluster("k8s"):
        pass
    assert _one_line(err.value).startswith("cannot reach Kubernetes for bigseg.profiles.k8s (")


def test_the_kubernetes_spec_runs_dask_commands_and_adds_a_gpu_worker_group():
    from bigseg.cluster import kubernetes
    from bigseg.cluster._backend import Request
    from bigseg.cluster.profiles import parse
    profile = parse({"kind": "kubernetes", "image": "img:1", "n_workers": 3, "gpu": True, "gpu_workers": 2,
                     "resources": {"limits": {"memory": "4Gi"}}, "env": {"A": "1"}})
    spec = kubernetes.cluster_spec(profile, Request(), "bigseg-abc")
    scheduler = spec["spec"]["scheduler"]["spec"]["containers"][0]
    worker = spec["spec"]["worker"]["spec"]["containers"][0]
    assert spec["metadata"]["name"] == "bigseg-abc" and spec["spec"]["worker"]["replicas"] == 3
    # `dask` as the command: the bigseg image's entrypoint is `bigseg`
    assert scheduler["command"] == worker["command"] == ["dask"]
    assert scheduler["args"][:2] == ["scheduler", "--host"]
    assert worker["args"][:5] == ["worker", "--nthreads", "1", "--memory-limit", "1"]
    assert worker["env"] == [{"name": "A", "value": "1"}] and worker["resources"] == {"limits": {"memory": "4Gi"}}
    gpu = kubernetes.gpu_worker_spec(profile)
    gpu_container = gpu["spec"]["containers"][0]
    assert gpu["replicas"] == 2 and gpu_container["command"] == ["dask"]
    assert gpu_container["args"][:7] == ["worker", "--nthreads", "1", "--memory-limit", "1", "--resources", "GPU=1"]
    assert gpu_container["resources"] == {"limits": {"memory": "4Gi", "nvidia.com/gpu": "1"}}


# -------------------------------------------------------------------------------------------- profiles


def test_an_unknown_profile_names_the_configured_ones_and_their_files(profiles, monkeypatch):
    first = profiles({"hpc": {"kind": "jobqueue"}})
    second = profiles({"cloud": {"kind": "gateway"}}, filename="more.yml")
    monkeypatch.setenv("DASK_BIGSEG__PROFILES__SHARED__KIND", "address")
    dask.config.refresh()
    with pytest.raises(ParameterError) as err:
        load_profile("hcp")
    text = _one_line(err.value)
    assert text.startswith("unknown cluster profile 'hcp'; configured profiles: cloud (")
    assert f"hpc ({first})" in text and f"cloud ({second})" in text
    assert "shared ($DASK_BIGSEG__PROFILES__SHARED__KIND)" in text and "local (bigseg defaults " in text


def test_describe_profiles_shows_names_kinds_and_where_each_was_set(profiles, monkeypatch, capsys):
    path = profiles({"hpc": {"kind": "jobqueue", "cluster": {"cores": 1}}, "local": {"kind": "local",
                                                                                   "workers": 3}})
    monkeypatch.setenv("DASK_BIGSEG__PROFILES__SHARED__KIND", "address")
    monkeypatch.setenv("DASK_BIGSEG__PROFILES__SHARED__ADDRESS", "tcp://127.0.0.1:8786")
    monkeypatch.setenv("DASK_BIGSEG__PROFILE", "shared")
    dask.config.refresh()
    rows = {r["name"]: r for r in describe_profiles()}
    assert {n: (r["kind"], r["default"]) for n, r in rows.items()} == {
        "hpc": ("jobqueue", False), "local": ("local", False), "shared": ("address", True)}
    assert rows["hpc"]["source"] == path
    assert rows["local"]["source"] == path and rows["local"]["sources"][0].startswith("bigseg defaults ")
    assert rows["shared"]["sources"] == ["$DASK_BIGSEG__PROFILES__SHARED__ADDRESS",
                                         "$DASK_BIGSEG__PROFILES__SHARED__KIND"]
    assert load_profile().address == "tcp://127.0.0.1:8786" and load_profile("local").workers == 3
    from bigseg.cli import main
    assert main(["profiles"]) == 0
    printed = {line.split()[0]: line for line in capsys.readouterr().out.strip().splitlines()}
    assert set(printed) == {"hpc", "local", "shared"}
    assert printed["hpc"].split()[1:3] == ["jobqueue", path] and printed["shared"].endswith("(default)")


@pytest.mark.parametrize("profile, message", [
    ({"kind": "jobqueue", "scale": {"jobs": 0}}, "bigseg.profiles.bad.scale.jobs: Input should be greater than 0"),
    ({"kind": "jobqueue", "scale": {"jobs": 2}, "adapt": {"maximum_jobs": 4}},
     "bigseg.profiles.bad: give scale or adapt, not both"),
    ({"kind": "gateway", "scale": 2, "optoins": {}}, "bigseg.profiles.bad.optoins: unknown setting"),
    ({"kind": "kubernetes"}, "bigseg.profiles.bad.image: required, missing"),
    ({"kind": "yarn"}, "bigseg.profiles.bad.kind: unknown kind 'yarn'; use one of local, address, jobqueue"),
    ({"kind": "local", "gpus": "many"}, "bigseg.profiles.bad.gpus: "),
])
def test_an_invalid_profile_field_is_named(profiles, profile, message):
    path = profiles({"bad": profile})
    with pytest.raises(ParameterError) as err:
        load_profile("bad")
    text = _one_line(err.value)
    assert text.startswith(message) and text.endswith(f"(from {path})")


def test_a_jobqueue_cluster_argument_it_does_not_know_is_one_line(slurm, profiles, tmp_path):
    profiles({"hpc": _hpc(tmp_path, coers=1)})
    with pytest.raises(ParameterError) as err, open_cluster("hpc"):
        pass
    assert _one_line(err.value).startswith("bigseg.profiles.hpc.cluster: ") and "coers" in str(err.value)


def test_a_missing_extra_is_one_line_naming_it(tmp_path):
    """In a fresh interpreter where dask-jobqueue, dask-gateway and dask-kubernetes cannot be imported."""
    (tmp_path / "bigseg.yaml").write_text(yaml.safe_dump({"bigseg": {"profiles": {
        "hpc": {"kind": "jobqueue"}, "cloud": {"kind": "gateway", "address": "http://127.0.0.1:1"},
        "k8s": {"kind": "kubernetes", "image": "img"}}}}))
    script = textwrap.dedent("""
        import json, sys
        for module in ("dask_jobqueue", "dask_gateway", "dask_kubernetes"):
            sys.modules[module] = None  # import fails as if not installed
        from bigseg.cluster import open_cluster
        from bigseg.errors import ParameterError
        out = {}
        for name in ("hpc", "cloud", "k8s"):
            try:
                with open_cluster(name):
                    pass
            except ParameterError as err:
                out[name] = str(err)
        print(json.dumps(out))
    """)
    env = {**os.environ, "DASK_CONFIG": str(tmp_path), "PYTHONPATH": os.pathsep.join(
        [REPO, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out == {
        "hpc": "bigseg.profiles.hpc needs dask-jobqueue, which is not installed: pip install 'bigseg[slurm]'",
        "cloud": "bigseg.profiles.cloud needs dask-gateway, which is not installed: pip install 'bigseg[gateway]'",
        "k8s": "bigseg.profiles.k8s needs dask-kubernetes, which is not installed: pip install 'bigseg[kubernetes]'"}


def test_workers_and_an_existing_scheduler_exclude_each_other(dask_cli):
    with pytest.raises(ParameterError) as err, contextlib.ExitStack() as stack:
        stack.enter_context(open_cluster({"kind": "address", "address": dask_cli.address}, workers=2))
    assert "exclude each other" in _one_line(err.value)


def test_dask_style_hyphenated_keys_are_accepted(profiles):
    profiles({"cloud": {"kind": "gateway", "proxy-address": "gateway://h:8001", "auth": {"password-env": "PW"},
                        "gpu-options": {"worker_gpus": 1}},
              "hpc": {"kind": "jobqueue", "cluster": {"job-extra-directives": ["--gres=gpu:1"]},
                      "adapt": {"maximum-jobs": 4}}})
    cloud, hpc = load_profile("cloud"), load_profile("hpc")
    assert (cloud.proxy_address, cloud.auth.password_env, cloud.gpu_options) == ("gateway://h:8001", "PW",
                                                                                 {"worker_gpus": 1})
    assert hpc.cluster == {"job_extra_directives": ["--gres=gpu:1"]} and hpc.adapt.maximum_jobs == 4
