"""A real Dask Gateway for the tests: ``dask-gateway-server[local]`` on loopback ports.

Clusters are local processes (``UnsafeLocalBackend``, every scheduler and worker bound to 127.0.0.1), users log
in with HTTP basic auth and one password (``SimpleAuthenticator``). Scheduler and workers are started as
``python -m distributed.cli.dask_scheduler`` / ``...dask_worker`` (distributed 2026.8 has no ``dask-scheduler``
script, which the server's default commands call) and inherit PYTHONPATH, so they import the checkout under test.
The cluster options are ``worker_cores``, ``worker_memory`` (GiB) and ``environment`` (of the workers).

Tests use the session-scoped fixture ``gateway``: ``from services.gateway import gateway  # noqa: F401``.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass

import pytest

from services._process import free_ports, read_text, stop, wait_until

START_TIMEOUT_S = 60.0

CONFIG = """\
import sys
from dask_gateway_server.backends.local import UnsafeLocalBackend
from dask_gateway_server.options import Float, Integer, Mapping, Options


class LoopbackBackend(UnsafeLocalBackend):
    default_host = "127.0.0.1"  # schedulers and dashboards on loopback (the default is 0.0.0.0)


def options_handler(options):
    return {{"worker_cores": options.worker_cores, "worker_memory": int(options.worker_memory * 2**30),
             "environment": dict(options.environment)}}


c.DaskGateway.address = "127.0.0.1:{api_port}"
c.Proxy.address = "127.0.0.1:{http_port}"
c.Proxy.tcp_address = "127.0.0.1:{tcp_port}"
c.DaskGateway.backend_class = LoopbackBackend
c.DaskGateway.authenticator_class = "dask_gateway_server.auth.SimpleAuthenticator"
c.SimpleAuthenticator.password = {password!r}
c.LocalBackend.clusters_directory = {clusters!r}
c.ClusterConfig.scheduler_cmd = [sys.executable, "-m", "distributed.cli.dask_scheduler"]
c.ClusterConfig.worker_cmd = [sys.executable, "-m", "distributed.cli.dask_worker", "--host", "127.0.0.1"]
c.ClusterConfig.idle_timeout = 600
c.Backend.cluster_options = Options(
    Integer("worker_cores", 1, min=1, max=2),
    Float("worker_memory", 1, min=0.5, max=4),
    Mapping("environment", {{}}),
    handler=options_handler,
)
"""


@dataclass
class Gateway:
    """A running gateway: its addresses and the one user's credentials."""

    address: str
    proxy_address: str
    username: str
    password: str
    folder: str
    process: subprocess.Popen
    log_path: str

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.address}/api/health", timeout=2) as resp:
                return json.load(resp).get("status") == "pass"
        except (OSError, ValueError):
            return False


def start() -> Gateway:
    """Write the server's configuration into a temporary folder and start it; return once healthy."""
    pytest.importorskip("dask_gateway_server", reason="dask-gateway-server[local] is not installed")
    folder = tempfile.mkdtemp(prefix="bigseg-gateway-")
    api_port, http_port, tcp_port = free_ports(3)
    password = secrets.token_urlsafe(12)
    config = os.path.join(folder, "gateway_config.py")
    with open(config, "w") as f:
        f.write(CONFIG.format(api_port=api_port, http_port=http_port, tcp_port=tcp_port, password=password,
                              clusters=os.path.join(folder, "clusters")))
    log_path = os.path.join(folder, "gateway.log")
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "dask_gateway_server", "-f", config], cwd=folder,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    gw = Gateway(address=f"http://127.0.0.1:{http_port}", proxy_address=f"gateway://127.0.0.1:{tcp_port}",
                 username="alice", password=password, folder=folder, process=proc, log_path=log_path)
    try:
        wait_until(lambda: proc.poll() is not None or gw.healthy(), START_TIMEOUT_S, "dask-gateway-server",
                   log_path)
        if proc.poll() is not None:
            raise RuntimeError("dask-gateway-server exited:\n" + read_text(log_path)[-3000:])
        return gw
    except BaseException:
        shutdown(gw)
        raise


def shutdown(gw: Gateway) -> None:
    """Stop the server by pid (SIGTERM: it stops its clusters first) and remove its folder."""
    stop(gw.process, timeout=30)
    shutil.rmtree(gw.folder, ignore_errors=True)


@pytest.fixture(scope="session")
def gateway():
    """A running Dask Gateway on loopback: ``.address``, ``.proxy_address``, ``.username``, ``.password``."""
    gw = start()
    try:
        yield gw
    finally:
        shutdown(gw)
