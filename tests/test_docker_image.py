"""The bigseg image (deploy/docker/Dockerfile) builds from the repository and segments the demo image inside a
container, as the unprivileged user, with the CPU build of torch.

Slow, so it runs only when asked (measured on the 2-core machine kind, shared: base image by debootstrap 1.5-2.5
min, image build 2.5-4.5 min, the two tests 20 s; 4.5-8 min in all, 16 s with a warm engine and cached layers):
``BIGSEG_DOCKER_TESTS=1 python -m pytest -q -p no:cacheprovider tests/test_docker_image.py``.
It uses the engine at DOCKER_HOST (or the default socket) when one answers, else starts Debian's dockerd itself
(installing docker.io and debootstrap with apt-get when missing; needs root) and stops it afterwards.
Images cannot be pulled here, so the base is python:3.11-slim when the engine has it, else Debian 12 made with
debootstrap (Python 3.11 too). A local torch wheel (pip's find-links) and the host CA bundle travel into the
build through deploy/docker/local/, so the build works behind a TLS-re-signing proxy and without
download.pytorch.org.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent / "services"))
import docker_engine  # noqa: E402

# The module's fixtures (engine, base image, build) count towards its first test's timeout.
pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(3600)]
log = logging.getLogger(__name__)
SHAPE = (32, 128, 128)
TAG = "bigseg:docker-test"


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    """(DOCKER_HOST, base image): an engine that answers, started here if need be and stopped by pid after."""
    if os.environ.get("BIGSEG_DOCKER_TESTS") != "1":
        pytest.skip("builds the Docker image (minutes): run with BIGSEG_DOCKER_TESTS=1")
    root = tmp_path_factory.mktemp("docker")
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    proc = None
    try:
        if not docker_engine.engine_answers(host):
            t = time.monotonic()
            docker_engine.install_packages()
            proc, host = docker_engine.start_dockerd(root / "engine")
            log.info("dockerd started in %.0f s", time.monotonic() - t)
        t = time.monotonic()
        base = docker_engine.base_image(host, root)
        log.info("base image %s ready in %.0f s", base, time.monotonic() - t)
        yield host, base
    except docker_engine.EngineUnavailable as err:
        pytest.skip(f"no Docker engine: {err}")
    finally:
        if proc is not None:
            docker_engine.stop_dockerd(proc)
            docker_engine.remove_state(root / "engine")


def local_torch_wheel() -> Path | None:
    """The installed torch's own wheel in pip's find-links folders, e.g. torch-2.13.0+cpu-...whl."""
    import torch
    out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
    folders = re.findall(r"find-links='([^']*)'", out) + [os.environ.get("PIP_FIND_LINKS", "")]
    for folder in (f for fs in folders for f in fs.split()):
        for wheel in Path(folder.removeprefix("file://")).glob(f"torch-{torch.__version__}-*.whl"):
            return wheel
    return None


def build_context(dest: Path) -> tuple[Path, list[str]]:
    """A copy of the working tree (the repository's .dockerignore decides what the build sees) plus the build-time
    extras of deploy/docker/local/; returns it and the build arguments that go with it."""
    shutil.copytree(ROOT, dest, ignore=shutil.ignore_patterns(".git", "__pycache__", "*.zarr", "*.egg-info"))
    local = dest / "deploy" / "docker" / "local"
    args = []
    cert = os.environ.get("PIP_CERT") or os.environ.get("SSL_CERT_FILE")
    if cert and Path(cert).is_file():
        shutil.copy(cert, local / "ca-bundle.crt")
    wheel = local_torch_wheel()
    if wheel is not None:      # torch from the wheel, its dependencies from PyPI
        shutil.copy(wheel, local / wheel.name)
        args += ["--build-arg", "TORCH_INDEX=https://pypi.org/simple"]
    return dest, args


@pytest.fixture(scope="module")
def image(engine, tmp_path_factory) -> str:
    """DOCKER_HOST of the engine that holds the freshly built image TAG."""
    host, base = engine
    ctx, args = build_context(tmp_path_factory.mktemp("build") / "context")
    t = time.monotonic()
    r = docker_engine.docker(host, "build", "--network", "host", "-f", "deploy/docker/Dockerfile",
                             "--build-arg", f"BASE={base}", *args, "-t", TAG, str(ctx), check=False, timeout=1800)
    shutil.rmtree(ctx)      # holds a copy of the torch wheel
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    log.info("image %s built in %.0f s", TAG, time.monotonic() - t)
    return host


def test_image_builds_and_segments_the_demo_as_a_non_root_user(image, tmp_path):
    from bigseg.synthetic import nuclei
    import zarr
    host = image
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o777)            # the container runs as uid 1000
    r = docker_engine.docker(host, "run", "--rm", "--network", "none", "-v", f"{out}:/out", TAG,
                             "demo", "/out/demo.zarr", "--shape", ",".join(map(str, SHAPE)), check=False,
                             timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    m = re.search(r"^demo: (\d+) nuclei drawn, (\d+) found$", r.stdout, re.M)
    assert m, r.stdout
    drawn, found = map(int, m.groups())
    assert drawn == nuclei(SHAPE, seed=0)[1].max()           # the same synthetic image as on the host
    labels = zarr.open_group(str(out / "demo.zarr" / "labels" / "nuclei"), mode="r")["0"][...]
    assert found == len(np.unique(labels[labels > 0]))      # the count printed is the count written
    assert 0.9 * drawn <= found <= drawn
    r = docker_engine.docker(host, "run", "--rm", "--network", "none", "--entrypoint", "python", TAG, "-c",
                             "import os, torch; print(os.getuid(), torch.__version__)")
    uid, torch_version = r.stdout.split()
    assert uid != "0" and torch_version.endswith("+cpu")


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def manifest_command(doc: dict, part: str) -> list[str]:
    (container,) = doc["spec"][part]["spec"]["containers"]
    return [*container["command"], *container["args"]]


def test_manifest_scheduler_and_worker_commands_run_a_job_equal_to_a_local_run(image, tmp_path):
    """The DaskCluster's own scheduler and worker commands (deploy/kubernetes/daskcluster.yaml), in containers of
    the image with the worker's memory limit, form the cluster a `bigseg segment` client container runs on (the
    host's loopback stands in for the pod network); its labels equal a local run's."""
    import yaml
    import zarr
    import bigseg
    from bigseg.synthetic import nuclei, write_ome_zarr
    host = image
    cluster = yaml.safe_load((ROOT / "deploy" / "kubernetes" / "daskcluster.yaml").read_text())
    memory = cluster["spec"]["worker"]["spec"]["containers"][0]["resources"]["limits"]["memory"]
    data = tmp_path / "data"
    data.mkdir()
    data.chmod(0o777)
    img, _ = nuclei(SHAPE, seed=1)
    for name in ("container.zarr", "local.zarr"):
        write_ome_zarr(str(data / name), img, "zyx", (32, 64, 64), version="0.5")
    subprocess.run(["chmod", "-R", "a+rwX", str(data)], check=True)
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    scheduler = manifest_command(cluster, "scheduler") + ["--host", "127.0.0.1", "--port", str(port),
                                                          "--dashboard-address", "127.0.0.1:0"]
    worker = [a.replace("$(DASK_WORKER_NAME)", "worker-0") for a in manifest_command(cluster, "worker")]
    worker[worker.index("--dashboard-address") + 1] = "127.0.0.1:0"   # pod-local in Kubernetes, loopback here
    worker += ["--host", "127.0.0.1"]
    names = [f"bigseg-test-{kind}-{port}" for kind in ("scheduler", "worker")]
    run = ["run", "-d", "--network", "host", "-v", f"{data}:/data"]
    try:
        docker_engine.docker(host, *run, "--name", names[0], "--entrypoint", scheduler[0], TAG, *scheduler[1:])
        # The operator hands the worker its scheduler as DASK_SCHEDULER_ADDRESS; the limit caps its memory.
        docker_engine.docker(host, *run, "--name", names[1], "--memory", memory.replace("Gi", "g"),
                             "-e", f"DASK_SCHEDULER_ADDRESS={address}", "--entrypoint", worker[0], TAG, *worker[1:])
        r = docker_engine.docker(host, "run", "--rm", "--network", "host", "-v", f"{data}:/data", TAG, "segment",
                                 "/data/container.zarr", "--scheduler", address, "--name", "nuclei",
                                 "--block", "32,64,64", "--json", check=False, timeout=600)
        logs = docker_engine.docker(host, "logs", names[1], check=False).stderr
        assert r.returncode == 0, r.stderr[-2000:] + logs[-2000:]
        assert "Starting established connection" in logs or "Registered to" in logs, logs[-2000:]
        worker_info = docker_engine.docker(host, "exec", names[1], "python", "-c",
                                           "import distributed, os; c = distributed.Client(os.environ["
                                           "'DASK_SCHEDULER_ADDRESS']); w = c.scheduler_info()['workers'];"
                                           "print(*[(v['nthreads'], v['memory_limit']) for v in w.values()])")
    finally:
        docker_engine.docker(host, "rm", "-f", *names, check=False)
    # one thread, and all of the container's memory limit (4Gi), whatever the host's cores
    assert worker_info.stdout.split() == ["(1,", f"{int(memory.removesuffix('Gi')) * 2**30})"], worker_info.stdout
    local = bigseg.segment(str(data / "local.zarr"), "watershed", "nuclei", workers=1, block=(32, 64, 64))
    got = zarr.open_group(str(data / "container.zarr" / "labels" / "nuclei"), mode="r")["0"][...]
    want = zarr.open_group(str(data / "local.zarr" / "labels" / "nuclei"), mode="r")["0"][...]
    assert local.objects > 0 and got.max() == local.objects
    np.testing.assert_array_equal(got, want)
