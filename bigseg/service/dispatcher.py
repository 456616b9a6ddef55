"""The dispatcher: a thread of the server that starts queued jobs' runners, finds dead ones, and enforces cancels.

Every :data:`TICK_S` (or at once when woken): runners whose process is gone (or whose heartbeat stopped) make
their job ``interrupted``, which is requeued while attempts remain; a cancel that a runner has not honoured
within the grace period is enforced with SIGKILL; queued jobs start, by priority then age, within the
server's and each user's limits. Live runners of an earlier server are simply left alone (adopted).
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time

import psutil

from bigseg.service import states
from bigseg.service.config import ENV, ServiceConfig
from bigseg.service.db import Store

log = logging.getLogger(__name__)
TICK_S = 0.5


class Dispatcher:
    def __init__(self, store: Store, config: ServiceConfig):
        self.store, self.config = store, config
        self.children: dict[int, subprocess.Popen] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bigseg-dispatcher", daemon=True)

    def start(self) -> Dispatcher:
        self._thread.start()
        return self

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        """Stop dispatching; runners keep running (the next server adopts them)."""
        self._stop.set()
        self._wake.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:
                log.exception("dispatcher tick failed")
            self._wake.wait(TICK_S)
            self._wake.clear()

    def tick(self) -> None:
        self.reap()
        self.dispatch()

    # --- runners that ended or died ---------------------------------------------------------------------
    def reap(self) -> None:
        for pid, child in list(self.children.items()):  # collect our ended children (no zombies)
            if child.poll() is not None:
                del self.children[pid]
        now = time.time()
        stale = max(5 * self.config.heartbeat, 15.0)
        for job in self.store.jobs_in(states.RUNNING_STATES):
            alive = runner_alive(job)
            beat_age = now - (job["heartbeat"] or job["created"])
            if alive and beat_age > stale:
                log.warning("job %s: runner pid %s has not reported for %.0f s; killing it", job["id"],
                            job["runner_pid"], beat_age)
                alive = False
            if alive and job["status"] == states.CANCELING and now - (job["cancel_requested"] or now) > \
                    self.config.cancel_grace:
                log.warning("job %s: runner pid %s ignored the cancel for %.0f s; killing it", job["id"],
                            job["runner_pid"], self.config.cancel_grace)
                alive = False
            if alive or (job["runner_pid"] is None and beat_age <= stale):  # a runner being spawned
                continue
            kill_runner(job)  # a hung runner, or what a dead one left (its cluster's workers share its group)
            if job["status"] == states.CANCELING:
                self.store.transition(job["id"], states.CANCELED, "cancelled (runner stopped)",
                                      error={"message": "cancelled", "kind": "canceled"})
            else:
                self.store.transition(job["id"], states.INTERRUPTED, f"runner pid {job['runner_pid']} died")
        for job in self.store.jobs_in([states.INTERRUPTED]):
            if job["attempt"] < job["max_attempts"]:
                self.store.transition(job["id"], states.QUEUED, f"requeued: attempt {job['attempt'] + 1} resumes",
                                      attempt=job["attempt"] + 1, queued=time.time(), runner_pid=None,
                                      heartbeat=None)
            else:
                self.store.transition(job["id"], states.FAILED, "out of attempts", error={
                    "message": f"the job's runner died {job['attempt']} time(s) (out of memory?); retry it with "
                               "smaller blocks or on workers with more memory", "kind": "system"})

    # --- queued jobs --------------------------------------------------------------------------------
    def dispatch(self) -> None:
        running = self.store.jobs_in(states.RUNNING_STATES)
        if len(running) >= self.config.runners:
            return
        by_owner: dict[str, int] = {}
        for job in running:
            by_owner[job["owner"]] = by_owner.get(job["owner"], 0) + 1
        free = self.config.runners - len(running)
        queued = self.store.jobs_in([states.QUEUED])
        own_limits = {u["name"]: u["limits"] or {} for u in self.store.users()} if queued else {}
        for job in queued:
            if free <= 0:
                break
            max_running = own_limits.get(job["owner"], {}).get("max_running", self.config.limits.max_running)
            if by_owner.get(job["owner"], 0) >= max_running:
                continue
            if self.start_runner(job):
                free -= 1
                by_owner[job["owner"]] = by_owner.get(job["owner"], 0) + 1

    def start_runner(self, job: dict) -> bool:
        now = time.time()
        if not self.store.transition(job["id"], states.STARTING, "dispatched", heartbeat=now, runner_pid=None,
                                     error=None, result=None, progress=None, cancel_requested=None).ok:
            return False
        folder = self.config.job_dir(job["id"])
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "job.log"), "ab") as logfile:
            logfile.write(f"--- attempt {job['attempt']} at {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
            logfile.flush()
            child = subprocess.Popen([sys.executable, "-m", "bigseg.service.runner", job["id"]], cwd=folder,
                                     stdin=subprocess.DEVNULL, stdout=logfile, stderr=subprocess.STDOUT,
                                     start_new_session=True, env={**os.environ, ENV: self.config.to_env()})
        self.children[child.pid] = child
        self.store.update(job["id"], runner_pid=child.pid, runner_started=_create_time(child.pid))
        log.info("job %s: runner pid %d started (attempt %d)", job["id"], child.pid, job["attempt"])
        return True


def runner_alive(job: dict) -> bool:
    """Whether the job's runner process still runs (the same process: its start time is checked)."""
    pid = job["runner_pid"]
    if not pid:
        return False
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return job["runner_started"] is None or abs(proc.create_time() - job["runner_started"]) < 1.0
    except psutil.Error:
        return False


def kill_runner(job: dict, wait: float = 10.0) -> None:
    """SIGKILL the runner's process group: the runner (it leads its own session) and what it started (a local
    cluster's workers), which outlive a runner killed alone; waits up to ``wait`` s for the runner to be gone (a
    large process takes a moment to exit), so that a job marked ended has no runner left."""
    pid = job["runner_pid"]
    if not pid:
        return
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return
    deadline = time.monotonic() + wait
    while runner_alive(job) and time.monotonic() < deadline:
        time.sleep(0.05)


def _create_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None
