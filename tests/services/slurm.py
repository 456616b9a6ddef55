"""A real single-node SLURM for the tests: Debian ``slurm-wlm`` 22.05 + ``munge``.

Installed with apt-get when missing; configured in a private folder with its own munge key and socket, its own
ports, state and logs (so it cannot meet another SLURM on the same machine); daemons started in the foreground
(``munged -F``, ``slurmctld -D -c``, ``slurmd -D -c``), stopped by pid at the end, their state removed.
Client commands and the jobs they submit find it through ``SLURM_CONF``, which the fixture sets for the session.

Tests use the session-scoped fixture ``slurm``: ``from services.slurm import slurm  # noqa: F401``.
"""
from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field

import pytest

from services._process import apt_install, free_ports, read_text, stop, wait_until

log = logging.getLogger(__name__)
NODE = "bigseg-node"
PARTITION = "debug"
#: Declared CPUs (more than the machine's 2 cores: config_overrides accepts it) and memory (MB, bookkeeping only).
CPUS, MEMORY_MB = 4, 8000
START_TIMEOUT_S = 60.0
DAEMONS = ("/usr/sbin/munged", "/usr/sbin/slurmctld", "/usr/sbin/slurmd", "/usr/bin/sbatch", "/usr/bin/squeue")


def ensure_installed() -> None:
    """Install slurm-wlm and munge with apt-get (as root) unless they are there already."""
    if all(os.access(p, os.X_OK) for p in DAEMONS):
        return
    apt_install("slurm-wlm", "munge", what="SLURM (slurm-wlm, munge)")


@dataclass
class Slurm:
    """A running single-node SLURM: where its configuration is and how to ask it things."""

    root: str
    conf: str
    node: str = NODE
    partition: str = PARTITION
    cpus: int = CPUS
    memory_mb: int = MEMORY_MB
    processes: dict = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        """Environment of a client command (sbatch, squeue, ...) that talks to this SLURM."""
        return {"SLURM_CONF": self.conf}

    def cmd(self, *args: str, check: bool = True) -> str:
        """Output of a SLURM client command (``squeue``, ``sinfo``, ...) run against this SLURM."""
        proc = subprocess.run(list(args), env={**os.environ, **self.env}, capture_output=True, text=True,
                              timeout=30, check=False)
        if check and proc.returncode:
            raise RuntimeError(f"{' '.join(args)} failed: {proc.stderr.strip()}")
        return proc.stdout

    def jobs(self) -> dict[str, str]:
        """Job id -> state of every job SLURM knows about (pending, running, completing)."""
        out = self.cmd("squeue", "-h", "-o", "%i %T")
        return dict(line.split() for line in out.splitlines() if line.strip())

    def log_tail(self, n: int = 40) -> str:
        lines = []
        for name in ("slurmctld.log", "slurmd.log"):
            path = os.path.join(self.root, name)
            if os.path.exists(path):
                lines += [f"--- {name}"] + read_text(path).splitlines(keepends=True)[-n:]
        return "".join(lines)


def _write_conf(root: str, munge_socket: str) -> str:
    ctld_port, d_port = free_ports(2)
    host = socket.gethostname()
    conf = os.path.join(root, "slurm.conf")
    lines = [
        "ClusterName=bigsegtest",
        f"SlurmctldHost={host}(127.0.0.1)",
        f"SlurmctldPort={ctld_port}",
        f"SlurmdPort={d_port}",
        "SlurmUser=root",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        f"AuthInfo=socket={munge_socket}",
        f"StateSaveLocation={root}/state",
        f"SlurmdSpoolDir={root}/spool",
        f"SlurmctldPidFile={root}/slurmctld.pid",
        f"SlurmdPidFile={root}/slurmd.pid",
        f"SlurmctldLogFile={root}/slurmctld.log",
        f"SlurmdLogFile={root}/slurmd.log",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core_Memory",
        f"DefMemPerCPU={MEMORY_MB // CPUS}",
        "SlurmdParameters=config_overrides",  # more CPUs declared than the machine has is fine
        "ReturnToService=2",
        "MpiDefault=none",
        "SchedulerType=sched/backfill",
        "KillWait=5",
        f"NodeName={NODE} NodeHostname={host} NodeAddr=127.0.0.1 CPUs={CPUS} RealMemory={MEMORY_MB} State=UNKNOWN",
        f"PartitionName={PARTITION} Nodes={NODE} Default=YES MaxTime=INFINITE State=UP",
    ]
    with open(conf, "w") as f:
        f.write("\n".join(lines) + "\n")
    return conf


def _start_munge(root: str) -> tuple[subprocess.Popen, str]:
    """munged as the munge user with a fresh key and its own socket under ``root/munge``."""
    folder = os.path.join(root, "munge")
    os.makedirs(folder)
    shutil.chown(folder, "munge", "munge")
    os.chmod(folder, 0o755)  # munged requires its socket folder to be searchable by all
    key, sock = os.path.join(folder, "munge.key"), os.path.join(folder, "munge.socket")
    subprocess.run(["mungekey", "--create", f"--keyfile={key}"], check=True, capture_output=True)
    shutil.chown(key, "munge", "munge")
    os.chmod(key, 0o400)
    logfile = os.path.join(folder, "munged.log")
    proc = subprocess.Popen(["/usr/sbin/munged", "--foreground", f"--key-file={key}",
                             f"--socket={sock}", f"--pid-file={folder}/munged.pid", f"--log-file={logfile}",
                             f"--seed-file={folder}/munged.seed"],
                            user="munge", group="munge", stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                            start_new_session=True)
    wait_until(lambda: os.path.exists(sock) or proc.poll() is not None, START_TIMEOUT_S, "munged", logfile)
    if proc.poll() is not None:
        raise RuntimeError("munged exited:\n" + read_text(logfile)[-2000:])
    return proc, sock


def start() -> Slurm:
    """Install if needed, configure and start munged, slurmctld and slurmd; return once the node is idle."""
    ensure_installed()
    root = tempfile.mkdtemp(prefix="bigseg-slurm-")
    os.chmod(root, 0o755)  # munged (user munge) must reach its folder inside
    for sub in ("state", "spool"):
        os.makedirs(os.path.join(root, sub))
    slurm = Slurm(root=root, conf="")
    try:
        slurm.processes["munged"], sock = _start_munge(root)
        slurm.conf = _write_conf(root, sock)
        env = {**os.environ, "SLURM_CONF": slurm.conf, "BIGSEG_SLURM_ROOT": root}
        for name, args in (("slurmctld", ["/usr/sbin/slurmctld", "-D", "-c", "-f", slurm.conf]),
                           ("slurmd", ["/usr/sbin/slurmd", "-D", "-c", "-N", NODE, "-f", slurm.conf])):
            slurm.processes[name] = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL,
                                                     stderr=subprocess.STDOUT, start_new_session=True)

        def idle():
            for name, proc in slurm.processes.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}:\n{slurm.log_tail()}")
            out = slurm.cmd("sinfo", "-h", "-N", "-o", "%N %t", check=False)
            return f"{NODE} idle" in out
        wait_until(idle, START_TIMEOUT_S, "SLURM node", os.path.join(root, "slurmd.log"), interval=0.5)
        return slurm
    except BaseException:
        shutdown(slurm)
        raise


def shutdown(slurm: Slurm) -> None:
    """Cancel every job, stop the daemons by pid, end job steps left behind by this slurmd, remove the state."""
    if "slurmctld" in slurm.processes and slurm.processes["slurmctld"].poll() is None:
        try:
            ids = list(slurm.jobs())
            if ids:
                slurm.cmd("scancel", *ids, check=False)
                wait_until(lambda: not slurm.jobs(), 20, "job cancellation")
        except (RuntimeError, subprocess.TimeoutExpired) as err:
            log.warning("cancelling SLURM jobs at shutdown: %s", err)
    for name in ("slurmd", "slurmctld", "munged"):
        stop(slurm.processes.get(name))
    _kill_orphan_steps(slurm.root)
    shutil.rmtree(slurm.root, ignore_errors=True)


def _kill_orphan_steps(root: str) -> None:
    """slurmstepd daemonizes: find the ones our slurmd started (they inherit BIGSEG_SLURM_ROOT) and end them."""
    import psutil
    marker = f"BIGSEG_SLURM_ROOT={root}"
    for p in psutil.process_iter(["name"]):
        if p.info["name"] != "slurmstepd":
            continue
        try:
            if marker in read_text(f"/proc/{p.pid}/environ").split("\0"):
                p.kill()
        except (OSError, psutil.Error):
            pass


@pytest.fixture(scope="session")
def slurm():
    """A running single-node SLURM; ``SLURM_CONF`` points at it for the session (sbatch, squeue, scancel)."""
    service = start()
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = service.conf
    try:
        yield service
    finally:
        if old is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old
        shutdown(service)
