"""One job's runner process: ``python -m bigseg.service.runner JOB_ID`` (started by the dispatcher).

It takes the job (starting -> running), runs :func:`bigseg.segment` on the job's profile with an observer that
writes progress and events to the database (at most twice a second), beats a heartbeat, watches for a cancel
(the job turning ``canceling``, or SIGTERM) and writes the outcome. It runs in its own session, so a server
restart does not stop it; the next server adopts it.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time

from bigseg.engine import events as ev
from bigseg.engine.cancel import Cancellation
from bigseg.errors import (
    BigsegError,
    BlockError,
    InputError,
    JobCancelled,
    OutputError,
    ParameterError,
)
from bigseg.service import states
from bigseg.service.config import ServiceConfig
from bigseg.service.db import Store
from bigseg.service.paths import PathForbidden
from bigseg.service.progress import Progress

log = logging.getLogger("bigseg.service.runner")
#: Seconds between two writes of progress and events.
FLUSH_S = 0.5


class Reporter(ev.Observer):
    """Writes the job's events, progress and heartbeat to the store from a thread every :data:`FLUSH_S`
    (StageAdvanced coalesced per stage), and cancels ``cancellation`` when the job turns ``canceling``;
    complains in the log when the store has been unreachable for 10 ``heartbeat`` periods."""

    def __init__(self, store: Store, job_id: str, cancellation: Cancellation, heartbeat: float):
        self.store, self.job_id, self.cancellation, self.heartbeat = store, job_id, cancellation, heartbeat
        self.progress = Progress()
        self._lock = threading.Lock()
        self._pending: list[tuple[str, dict]] = []
        self._advanced: dict[str, dict] = {}
        self._dashboard: str | None = None
        self._started = False  # the job has started (cluster up, plan done): the job becomes running
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bigseg-reporter", daemon=True)

    def start(self) -> Reporter:
        self._thread.start()
        return self

    def on_event(self, event: ev.Event) -> None:
        data = event.to_dict()
        kind = data.pop("type")
        _log_event(event)
        with self._lock:
            self.progress.on_event(event)
            if isinstance(event, ev.StageAdvanced):
                self._advanced[event.stage] = data
                return
            if isinstance(event, ev.JobStarted):
                self._dashboard, self._started = event.dashboard, True
            self._pending.extend(("StageAdvanced", d) for d in self._advanced.values())
            self._advanced.clear()
            self._pending.append((kind, data))

    def flush(self) -> None:
        with self._lock:
            items = self._pending + [("StageAdvanced", d) for d in self._advanced.values()]
            self._pending, self._advanced = [], {}
            values = {"progress": self.progress.to_dict(), "heartbeat": time.time()}
            if self._dashboard:
                values["dashboard"] = self._dashboard
            started, self._started = self._started, False
        if started:
            self.store.transition(self.job_id, states.RUNNING, f"runner pid {os.getpid()}: cluster up, job started",
                                  started=time.time())
        self.store.add_events(self.job_id, items, **values)

    def _loop(self) -> None:
        last_beat = 0.0
        while not self._stop.wait(FLUSH_S):
            try:
                self.flush()
                job = self.store.job(self.job_id)
                if job is None or job["status"] == states.CANCELING:
                    self.cancellation.cancel()
                last_beat = time.monotonic()
            except Exception:
                if time.monotonic() - last_beat > 10 * self.heartbeat:
                    log.exception("cannot reach the service database")

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.flush()


def run(store: Store, config: ServiceConfig, job_id: str) -> str:
    """Run the job; returns the state it ended in (what the database says). The job stays ``starting`` while
    its cluster starts (a batch queue may hold it for long) and turns ``running`` when the job has started."""
    job = store.job(job_id)
    if job is not None and job["status"] == states.CANCELING:  # cancelled while the runner started
        store.transition(job_id, states.CANCELED, "cancelled before it started")
        return states.CANCELED
    if job is None or job["status"] != states.STARTING:
        log.warning("job %s is %s, not starting: nothing to run", job_id, job and job["status"])
        return job["status"] if job else "missing"
    log.info("job %s attempt %d (runner pid %d): %s", job_id, job["attempt"], os.getpid(), job["spec"])
    cancellation = Cancellation()
    # a signal handler must not block: the cancel (which releases the cluster's tasks) runs in a thread
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=cancellation.cancel, daemon=True).start())
    config.apply_profiles()
    reporter = Reporter(store, job_id, cancellation, config.heartbeat).start()
    outcome, values = _run_job(job, config, reporter, cancellation)
    reporter.close()
    if outcome == states.CANCELED and store.job(job_id)["status"] != states.CANCELING:
        outcome, values["reason"] = states.INTERRUPTED, "the runner was stopped (SIGTERM)"
    reason = values.pop("reason", "")
    if outcome == states.SUCCEEDED:
        values["progress"] = reporter.progress.to_dict()
    ended = store.transition(job_id, outcome, reason, dashboard=None, **values)
    if not ended.ok:
        log.warning("job %s could not become %s: it is %s", job_id, outcome, ended.found)
    log.info("job %s: %s", job_id, outcome if ended.ok else ended.found)
    return outcome if ended.ok else ended.found


def _run_job(job: dict, config: ServiceConfig, reporter: Reporter, cancellation: Cancellation) -> tuple[str, dict]:
    """Run the job's spec; the state it should end in and the job values to write."""
    from bigseg import api
    from bigseg.spec import from_dict
    try:
        spec = from_dict(job["spec"])
        owner = reporter.store.user(job["owner"])
        if owner is None or owner["disabled"]:
            raise BigsegError(f"the job's owner {job['owner']} was revoked; an admin may add the user again")
        config.access_for(owner).check_spec(spec)  # again: a folder may have changed since the job was queued
        result = api.segment(spec, profile=job["profile"], observer=reporter, cancellation=cancellation)
    except JobCancelled as err:
        return states.CANCELED, {"reason": "cancelled", "error": {"message": str(err), "kind": "canceled"}}
    except BigsegError as err:
        log.error("%s", err)
        return states.FAILED, {"reason": "the job failed", "error": {"message": str(err), "kind": error_kind(err)}}
    except BaseException as err:
        log.exception("job failed")
        return states.FAILED, {"reason": "the job failed",
                               "error": {"message": f"{type(err).__name__}: {err}", "kind": "system"}}
    return states.SUCCEEDED, {"reason": "finished", "result": result.summary()}


def error_kind(err: BigsegError) -> str:
    """``input``, ``output``, ``parameter``, ``block`` or ``job`` for a bigseg error."""
    for cls, kind in ((InputError, "input"), (OutputError, "output"), (ParameterError, "parameter"),
                      (BlockError, "block"), (PathForbidden, "forbidden")):
        if isinstance(err, cls):
            return kind
    return "job"


def _log_event(event: ev.Event) -> None:
    if isinstance(event, ev.StageAdvanced):
        log.debug("%s %d/%d", event.stage, event.done, event.total)
    elif isinstance(event, ev.StageStarted):
        log.info("stage %s: %d tasks (%d resumed)", event.stage, event.total, event.resumed)
    elif isinstance(event, ev.StageEnded):
        log.info("stage %s done in %.2f s", event.stage, event.seconds)
    elif isinstance(event, (ev.Message, ev.Warning)):
        log.log(logging.WARNING if isinstance(event, ev.Warning) else logging.INFO, "%s", event.text)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m bigseg.service.runner JOB_ID (started by bigseg serve)", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("distributed").setLevel(logging.WARNING)
    config = ServiceConfig.from_env()
    store = Store(config.database_url)
    try:
        outcome = run(store, config, args[0])
    finally:
        store.dispose()
    return 0 if outcome == states.SUCCEEDED else 1


if __name__ == "__main__":
    sys.exit(main())
