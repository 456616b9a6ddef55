"""A private Docker engine for the image test: Debian's dockerd on a unix socket (no network of its own),
and a Debian base image made with debootstrap when no Python base image can be pulled.

Started and stopped by pid from tests/test_docker_image.py; also runnable by hand:
``python tests/services/docker_engine.py ROOT`` starts an engine under ROOT and prints its DOCKER_HOST.
"""
from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

log = logging.getLogger(__name__)
#: The base image built here: Debian 12's own Python 3.11 with venv, like python:3.11-slim.
LOCAL_BASE = "bigseg-test-base:bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"


class EngineUnavailable(RuntimeError):
    """No Docker engine can run here; the message says why."""


def docker(host: str, *args: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "DOCKER_HOST": host, "DOCKER_BUILDKIT": "0"}
    return subprocess.run(["docker", *args], env=env, check=check, capture_output=True, text=True, **kw)


def engine_answers(host: str) -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return docker(host, "info", "--format", "{{.ServerVersion}}", check=False, timeout=20).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def install_packages() -> None:
    """Debian's docker.io (dockerd) and debootstrap, when missing and we are root on Debian (CI is)."""
    if shutil.which("dockerd") and shutil.which("debootstrap"):
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise EngineUnavailable("dockerd/debootstrap are missing and cannot be installed (needs root and apt-get)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-q"],
                ["apt-get", "install", "-y", "-q", "--no-install-recommends", "docker.io", "debootstrap"]):
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if r.returncode:
            raise EngineUnavailable(f"{' '.join(cmd[:3])} failed: {r.stderr.strip().splitlines()[-1:]}")


def start_dockerd(root: Path, timeout: float = 60) -> tuple[subprocess.Popen, str]:
    """Start dockerd with its state under ``root`` and its API on ``root/docker.sock`` only; return (proc, host).

    No bridge and no iptables (they need privileges a container usually lacks): builds use ``--network host``.
    """
    if os.geteuid() != 0:
        raise EngineUnavailable("dockerd needs root")
    root.mkdir(parents=True, exist_ok=True)
    sock = root / "docker.sock"
    host = f"unix://{sock}"
    logf = open(root / "dockerd.log", "ab")
    proc = subprocess.Popen(
        ["dockerd", "--bridge=none", "--iptables=false", "--ip6tables=false", "--host", host,
         "--data-root", str(root / "data"), "--exec-root", str(root / "exec"), "--pidfile", str(root / "docker.pid")],
        stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = (root / "dockerd.log").read_text(errors="replace").strip().splitlines()[-3:]
            raise EngineUnavailable(f"dockerd exited with {proc.returncode}: {' | '.join(tail)}")
        if sock.exists() and engine_answers(host):
            log.info("dockerd pid %d up on %s", proc.pid, host)
            return proc, host
        time.sleep(0.5)
    stop_dockerd(proc)
    raise EngineUnavailable(f"dockerd did not answer within {timeout:.0f} s (see {root / 'dockerd.log'})")


def stop_dockerd(proc: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM the dockerd we started (by pid), SIGKILL its process group if it lingers."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def remove_state(root: Path) -> None:
    """Delete an engine's state folder after its dockerd stopped; dockerd leaves its network namespace
    (exec-root/netns/default) mounted, so unmount what is mounted under ``root`` first."""
    prefix = str(root.resolve()) + "/"
    with open("/proc/mounts") as f:
        mounts = [line.split()[1] for line in f if line.split()[1].startswith(prefix)]
    for mountpoint in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", mountpoint], capture_output=True)
    shutil.rmtree(root, ignore_errors=True)


def base_image(host: str, root: Path, wanted: str = "python:3.11-slim") -> str:
    """``wanted`` if the engine has it or can pull it, else a Debian 12 image with python3 + venv made here."""
    if docker(host, "image", "inspect", wanted, check=False).returncode == 0:
        return wanted
    if docker(host, "pull", wanted, check=False, timeout=120).returncode == 0:
        return wanted
    if docker(host, "image", "inspect", LOCAL_BASE, check=False).returncode == 0:
        return LOCAL_BASE
    if shutil.which("debootstrap") is None:
        raise EngineUnavailable(f"cannot pull {wanted} and debootstrap is missing to make a base image")
    rootfs = root / "rootfs"
    shutil.rmtree(rootfs, ignore_errors=True)
    r = subprocess.run(["debootstrap", "--variant=minbase", "--include=python3,python3-venv,ca-certificates,passwd",
                        "bookworm", str(rootfs), DEBIAN_MIRROR], capture_output=True, text=True)
    if r.returncode:
        raise EngineUnavailable(f"debootstrap failed: {r.stdout.strip().splitlines()[-1:]}")
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    env = {**os.environ, "DOCKER_HOST": host}
    subprocess.run(["docker", "import", "-", LOCAL_BASE], stdin=tar.stdout, env=env, check=True,
                   capture_output=True)
    tar.wait()
    shutil.rmtree(rootfs, ignore_errors=True)
    return LOCAL_BASE


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    proc, host = start_dockerd(Path(sys.argv[1]))
    print(f"DOCKER_HOST={host} (dockerd pid {proc.pid}; stop with: kill {proc.pid})")
