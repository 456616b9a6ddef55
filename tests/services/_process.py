"""Small helpers the service fixtures share: free loopback ports, waiting, stopping processes by pid."""
from __future__ import annotations

import os
import pathlib
import signal
import socket
import subprocess
import time


def apt_install(*packages: str, what: str) -> None:
    """``apt-get update`` and ``apt-get install`` ``packages`` (as root; the test is skipped naming ``what``
    otherwise), waiting for another apt-get that holds the lists lock."""
    import pytest
    if os.geteuid() != 0:
        pytest.skip(f"{what} is not installed and installing it needs root: apt-get install {' '.join(packages)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    lock = ["-o", "DPkg::Lock::Timeout=600"]
    for args in (["update"], ["install", "-y", "--no-install-recommends", *packages]):
        for attempt in range(10):  # another apt-get may hold the lists lock for a while
            proc = subprocess.run(["apt-get", *lock, *args], env=env, capture_output=True, text=True, check=False)
            if proc.returncode == 0:
                break
            if "lock" not in proc.stderr.lower() or attempt == 9:
                raise RuntimeError(f"apt-get {' '.join(args)} failed:\n{proc.stderr[-2000:]}")
            time.sleep(10)


def free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports on 127.0.0.1 (bound together, then released)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def read_text(path) -> str:
    return pathlib.Path(path).read_text(errors="replace")


def wait_until(check, timeout: float, what: str, log: str | None = None, interval: float = 0.2):
    """Call ``check()`` until it returns something truthy; fail after ``timeout`` s naming ``what`` and
    showing the end of ``log``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            tail = ""
            if log and os.path.exists(log):
                tail = "\n" + "".join(read_text(log).splitlines(keepends=True)[-30:])
            raise RuntimeError(f"{what} not ready after {timeout:.0f} s{tail}")
        time.sleep(interval)


def stop(proc: subprocess.Popen | None, timeout: float = 10.0) -> None:
    """SIGTERM the process started as ``proc`` (its own process group when it leads one), SIGKILL if it
    does not end in ``timeout`` s."""
    if proc is None or proc.poll() is not None:
        return
    _signal(proc, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        _signal(proc, signal.SIGKILL)
        proc.wait(timeout)


def _signal(proc: subprocess.Popen, sig: int) -> None:
    try:
        if os.getpgid(proc.pid) == proc.pid:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
    except ProcessLookupError:
        pass
