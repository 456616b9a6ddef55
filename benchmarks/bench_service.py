"""Benchmark of the job service (issue 8): server start, submit -> running, and events per second sustained.

    python benchmarks/bench_service.py [--repeat 3] [--shape 32,128,128] [--workers 2] [--seconds 10]
                                       [--writers 1,4] [--batches 1,10] [--sse-rates 100,0] [--sse-backlog 20000]
                                       [--postgres | --database postgresql://...] [--json out.json]

Every measurement runs on a real ``bigseg serve`` subprocess (127.0.0.1, a free port, a temporary data dir; SQLite
WAL by default), then again on PostgreSQL with ``--postgres`` (a private server started as the tests start theirs,
tests/services/postgres.py) or ``--database URL`` (an existing one: every start uses that database).

server start  Popen of ``bigseg serve`` to the first 200 of ``GET /api/v1/health`` (polled every 20 ms): on a new
              data dir and database (first start: tables, admin token), and again on the same ones (restart).
job           ``POST /jobs`` of a watershed job on a synthetic image (bigseg.synthetic.nuclei, --shape) to its
              status ``starting``, ``running`` and ``succeeded`` (``GET /jobs/{id}`` polled every 20 ms), and to
              the JobStarted event (its ``ts``: when the runner wrote it to the store, i.e. when a client can see
              it); against ``bigseg.segment`` of the same job in this process (same local cluster size). The two
              take turns; one untimed direct run first warms caches.
store         K processes (what K runners are) each calling ``Store.add_events`` on its own job in a loop for
              --seconds, as a runner's reporter does (a batch of StageAdvanced events plus the job's progress and
              heartbeat, one transaction per call): events and transactions per second absorbed, call latency.
SSE           one process writes events for a job with ``Store.add_events`` (paced at R events/s, or 0: as fast as
              it can) while a client reads ``GET /jobs/{id}/events`` with ``Accept: text/event-stream`` (httpx,
              streaming): events/s written and delivered, and the lag from each event's ``ts`` (its write) to its
              arrival at the client; then (backlog) --sse-backlog events written first and streamed from the start:
              how fast the server delivers when it never waits for the writer. The jobs of the store and SSE
              runs belong to a user whose ``max_running`` is 0, so the dispatcher never starts them; each ends
              canceled (the stream then ends).

Prints tables of medians (--repeat runs for server and job; one run each for store and SSE); --json writes all
numbers. The machine is shared: run it when nothing else is, and compare numbers of one run only.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor

import httpx
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "tests"))
from services._process import free_ports, read_text, stop  # noqa: E402 - after the sys.path lines

POLL_S = 0.02
START_TIMEOUT_S = 60.0
BLOCKED_USER = "bench-blocked"  # its jobs never start: max_running 0


# --- the server -------------------------------------------------------------------------------------------
class Serve:
    """A ``bigseg serve`` subprocess on a free loopback port."""

    def __init__(self, data_dir: str, database: str, root: str, workers: int):
        self.data_dir, self.database = data_dir, database
        os.makedirs(data_dir, exist_ok=True)
        self.config = os.path.join(data_dir, "bench-service.yaml")
        with open(self.config, "w") as f:
            yaml.safe_dump({"roots": [f"{root}:rw"], "runners": 2,
                            "profiles": {"local": {"kind": "local", "workers": workers}}}, f)
        self.log = os.path.join(data_dir, "serve.log")
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def start(self) -> float:
        """Start it; seconds from Popen to the first 200 of /health."""
        (port,) = free_ports(1)
        self.url = f"http://127.0.0.1:{port}/api/v1"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))}
        with open(self.log, "ab") as out:
            t0 = time.perf_counter()
            self.proc = subprocess.Popen([sys.executable, "-m", "bigseg", "serve", "--port", str(port), "--data-dir",
                                          self.data_dir, "--database", self.database, "--config", self.config],
                                         stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                         start_new_session=True)
        with httpx.Client(timeout=2) as c:
            while True:
                try:
                    if c.get(self.url + "/health").status_code == 200:
                        return time.perf_counter() - t0
                except httpx.HTTPError:
                    pass
                if self.proc.poll() is not None:
                    raise RuntimeError(f"bigseg serve exited with {self.proc.returncode}:\n"
                                       f"{read_text(self.log)[-3000:]}")
                if time.perf_counter() - t0 > START_TIMEOUT_S:
                    raise RuntimeError(f"bigseg serve not healthy after {START_TIMEOUT_S:.0f} s")
                time.sleep(POLL_S)

    def stop(self) -> None:
        stop(self.proc, timeout=15)

    def http(self) -> httpx.Client:
        token = read_text(os.path.join(self.data_dir, "token")).strip()
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=60)


def sqlite_url(folder: str) -> str:
    return f"sqlite:///{os.path.join(folder, 'service.db')}"


def measure_starts(make_database, root: str, folder: str, repeat: int, workers: int) -> tuple[dict, Serve]:
    """Server start times (first start, restart); returns them and a started server for the next steps."""
    first, again = [], []
    server = None
    for r in range(repeat):
        data_dir = os.path.join(folder, f"data-{r}")
        server = Serve(data_dir, make_database(data_dir), root, workers)
        try:
            first.append(server.start())
            server.stop()
            again.append(server.start())
        except BaseException:
            server.stop()
            raise
        if r < repeat - 1:
            server.stop()
        print(f"# start {r}: first {first[-1]:.2f}s, restart {again[-1]:.2f}s", flush=True)
    return {"first": first, "restart": again}, server


# --- jobs: service vs bigseg.segment ----------------------------------------------------------------------
def service_job(server: Serve, image: str, name: str) -> dict:
    """Submit a job and poll it; seconds from the submit to each state, and to its JobStarted event."""
    body = {"input": {"url": image}, "method": {"name": "watershed", "diameter": 8}, "output": {"name": name}}
    seen: dict[str, float] = {}
    with server.http() as c:
        t_submit = time.time()
        r = c.post("/jobs", json=body)
        if r.status_code != 201:
            raise RuntimeError(f"POST /jobs: {r.status_code} {r.text}")
        job_id = r.json()["id"]
        while True:
            job = c.get(f"/jobs/{job_id}").json()
            now = time.time()
            seen.setdefault(job["status"], now)
            if job["status"] in ("succeeded", "failed", "canceled"):
                break
            if now - t_submit > 600:
                raise RuntimeError(f"job {job_id} is still {job['status']} after 600 s")
            time.sleep(POLL_S)
        if job["status"] != "succeeded":
            raise RuntimeError(f"job {job_id} {job['status']}: {job['error']}")
        events = c.get(f"/jobs/{job_id}/events").json()["events"]
    started = next(e["ts"] for e in events if e["kind"] == "JobStarted")
    state_ts = {e["data"]["to"]: e["ts"] for e in events if e["kind"] == "state"}
    # a state that came and went between two polls is taken from its event
    at = {s: seen.get(s, state_ts.get(s, float("nan"))) - t_submit for s in ("starting", "running", "succeeded")}
    return {"starting": at["starting"], "running": at["running"], "job_started": started - t_submit,
            "succeeded": at["succeeded"], "job_seconds": job["result"]["seconds"]["total"],
            "objects": job["result"]["objects"], "queued_to_running_db": state_ts["running"] - state_ts["queued"]}


def direct_job(image: str, name: str, workers: int) -> dict:
    import bigseg
    t0 = time.perf_counter()
    res = bigseg.segment(image, "watershed", name=name, diameter=8, workers=workers)
    return {"wall": time.perf_counter() - t0, "job_seconds": res.seconds["total"], "objects": res.objects}


def measure_jobs(server: Serve, image: str, repeat: int, workers: int, tag: str) -> dict:
    service, direct = [], []
    for r in range(repeat):
        for kind in (("service", "direct") if r % 2 == 0 else ("direct", "service")):
            if kind == "service":
                service.append(service_job(server, image, f"{tag}-service-{r}"))
            else:
                direct.append(direct_job(image, f"{tag}-direct-{r}", workers))
        s, d = service[-1], direct[-1]
        print(f"# job {r}: service running at {s['running']:.2f}s, JobStarted {s['job_started']:.2f}s, succeeded "
              f"{s['succeeded']:.2f}s ({s['objects']} objects); bigseg.segment {d['wall']:.2f}s "
              f"({d['objects']} objects)", flush=True)
        if s["objects"] != d["objects"]:
            print(f"# WARNING: the service found {s['objects']} objects, bigseg.segment {d['objects']}", flush=True)
    return {"service": service, "direct": direct}


# --- the store: events absorbed per second ----------------------------------------------------------------
def blocked_jobs(database: str, n: int, image: str) -> list[str]:
    """``n`` queued jobs of a user whose ``max_running`` is 0 (the dispatcher never starts them)."""
    from bigseg.service.db import Store
    store = Store(database)
    try:
        if not any(u["name"] == BLOCKED_USER for u in store.users()):
            store.add_user(BLOCKED_USER, os.urandom(16).hex(), limits={"max_running": 0})
        spec = {"input": {"url": image}, "method": {"name": "watershed"}}
        return [store.insert_job(BLOCKED_USER, spec, f"{image}/labels/bench-{os.urandom(4).hex()}", "local",
                                 title="bench") for _ in range(n)]
    finally:
        store.dispose()


def cancel_jobs(database: str, job_ids: list[str]) -> None:
    from bigseg.service.db import Store
    store = Store(database)
    try:
        for job_id in job_ids:
            store.transition(job_id, "canceled", "benchmark done")
    finally:
        store.dispose()


def _writer(database: str, job_id: str, start_at: float, seconds: float, batch: int, rate: float) -> dict:
    """One runner-like writer: ``add_events`` of ``batch`` events with progress and heartbeat, in a loop from
    ``start_at`` for ``seconds`` (paced to ``rate`` events/s when > 0)."""
    from bigseg.service.db import Store
    from bigseg.service.progress import Progress
    store = Store(database)
    progress = Progress().to_dict()
    latencies, n = [], 0
    while time.time() < start_at:
        time.sleep(0.001)
    first = time.time()
    end = start_at + seconds
    while True:
        now = time.time()
        if now >= end:
            break
        if rate > 0 and n >= (now - first) * rate:
            time.sleep(min(1.0 / rate, end - now))
            continue
        items = [("StageAdvanced", {"stage": "segment", "done": n + i, "total": 1 << 20, "writer": job_id})
                 for i in range(batch)]
        t0 = time.perf_counter()
        store.add_events(job_id, items, progress=progress, heartbeat=time.time())
        latencies.append(time.perf_counter() - t0)
        n += batch
    store.dispose()
    return {"events": n, "calls": len(latencies), "first": first, "last": time.time(), "latencies": latencies}


def _pool(n: int) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn"))


def measure_store(database: str, image: str, writers: list[int], batches: list[int], seconds: float) -> list[dict]:
    rows = []
    for k, batch in [(k, b) for b in batches for k in writers]:
        jobs = blocked_jobs(database, k, image)
        with _pool(k) as pool:
            start_at = time.time() + 5.0  # the processes start and import meanwhile
            futures = [pool.submit(_writer, database, job, start_at, seconds, batch, 0.0) for job in jobs]
            results = [f.result() for f in futures]
        cancel_jobs(database, jobs)
        late = max(r["first"] - start_at for r in results)
        window = max(r["last"] for r in results) - min(r["first"] for r in results)
        events = sum(r["events"] for r in results)
        calls = sum(r["calls"] for r in results)
        lat = sorted(x for r in results for x in r["latencies"])
        row = {"writers": k, "batch": batch, "seconds": window, "events": events, "events_per_s": events / window,
               "calls_per_s": calls / window, "p50_ms": 1e3 * _quantile(lat, 0.5),
               "p99_ms": 1e3 * _quantile(lat, 0.99), "max_ms": 1e3 * lat[-1], "over_1s": sum(x > 1 for x in lat),
               "late_start_s": late}
        rows.append(row)
        print(f"# store, {k} writer(s), {batch} event(s) a call: {row['events_per_s']:.0f} events/s, add_events "
              f"p50 {row['p50_ms']:.1f} ms, "
              f"p99 {row['p99_ms']:.1f} ms", flush=True)
    return rows


# --- server-sent events: delivered per second, lag ----------------------------------------------------------
def _read_stream(server: Serve, job_id: str, out: list, ready: threading.Event) -> None:
    """Read the job's SSE stream until its end; append (arrival time, event) for each event."""
    headers = {"Accept": "text/event-stream"}
    with server.http() as c, c.stream("GET", f"/jobs/{job_id}/events", headers=headers, timeout=None) as r:
        if r.status_code != 200:
            raise RuntimeError(f"SSE: {r.status_code}")
        ready.set()
        kind = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: ") and kind != "end":
                out.append((time.time(), json.loads(line[6:])))
            elif line.startswith("data: ") and kind == "end":
                return


def measure_sse(server: Serve, image: str, rates: list[float], batch: int, seconds: float,
                backlog: int) -> list[dict]:
    """Live runs (one per rate: a writer process while the client streams), then a backlog run (``backlog``
    events written first, then streamed from the start: how fast the server can deliver)."""
    rows = []
    for rate in [*rates, None] if backlog else rates:
        (job_id,) = blocked_jobs(server.database, 1, image)
        if rate is None:
            written = _write_backlog(server.database, job_id, backlog)
        received: list = []
        ready = threading.Event()
        reader = threading.Thread(target=_read_stream, args=(server, job_id, received, ready), daemon=True)
        reader.start()
        if not ready.wait(30):
            raise RuntimeError("the SSE stream did not open")
        if rate is not None:
            with _pool(1) as pool:
                start_at = time.time() + 5.0
                written = pool.submit(_writer, server.database, job_id, start_at, seconds, batch, rate).result()
        deadline = time.time() + 120
        while _count(received) < written["events"] and time.time() < deadline:
            time.sleep(0.05)
        cancel_jobs(server.database, [job_id])  # a terminal state ends the stream
        reader.join(30)
        ours = [(t, e) for t, e in received if e["kind"] == "StageAdvanced"]
        seqs = [e["seq"] for _, e in ours]
        lags = sorted(t - e["ts"] for t, e in ours) if rate is not None else []  # a backlog has no lag to speak of
        window = ours[-1][0] - ours[0][0] if len(ours) > 1 else float("nan")
        row = {"mode": "backlog" if rate is None else _rate(rate), "rate": rate, "batch": batch,
               "written": written["events"], "written_per_s": written["events"] / (written["last"] - written["first"]),
               "delivered": len(ours), "delivered_per_s": len(ours) / window,
               "lag_p50_ms": 1e3 * _quantile(lags, 0.5), "lag_p99_ms": 1e3 * _quantile(lags, 0.99),
               "lag_max_ms": 1e3 * lags[-1] if lags else float("nan"),
               "in_order": seqs == sorted(seqs) and len(set(seqs)) == len(seqs),
               "complete": len(ours) == written["events"], "ended": not reader.is_alive()}
        rows.append(row)
        print(f"# SSE {row['mode']}: written {row['written_per_s']:.0f}/s, delivered {row['delivered_per_s']:.0f}/s, "
              f"lag p50 {_ms(row['lag_p50_ms'])} ms, p99 {_ms(row['lag_p99_ms'])} ms, "
              f"{row['delivered']}/{row['written']} events{'' if row['ended'] else ', STREAM DID NOT END'}",
              flush=True)
    return rows


def _write_backlog(database: str, job_id: str, n: int) -> dict:
    from bigseg.service.db import Store
    store = Store(database)
    first = time.time()
    try:
        for start in range(0, n, 500):
            store.add_events(job_id, [("StageAdvanced", {"stage": "segment", "done": i, "total": n})
                                      for i in range(start, min(n, start + 500))])
    finally:
        store.dispose()
    return {"events": n, "first": first, "last": time.time()}


def _rate(rate: float) -> str:
    return "max" if rate <= 0 else f"{rate:.0f}/s"


def _count(received: list) -> int:
    return sum(1 for _, e in received if e["kind"] == "StageAdvanced")


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(q * len(values)))]


# --- one database -------------------------------------------------------------------------------------------
def run_backend(name: str, make_database, args, image: str, root: str, folder: str) -> dict:
    print(f"# --- {name}", flush=True)
    starts, server = measure_starts(make_database, root, folder, args.repeat, args.workers)
    try:
        jobs = measure_jobs(server, image, args.repeat, args.workers, name)
        store = measure_store(server.database, image, args.writers, args.batches, args.seconds)
        sse = measure_sse(server, image, args.sse_rates, 1, args.seconds, args.sse_backlog)
    finally:
        server.stop()
    with open(server.log) as f:
        if "Traceback" in f.read():
            print(f"# WARNING: the {name} server logged a traceback: {server.log}", flush=True)
    return {"start": starts, "jobs": jobs, "store": store, "sse": sse}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3, help="server starts and jobs of each kind (medians)")
    ap.add_argument("--shape", default="32,128,128", help="synthetic image of the jobs")
    ap.add_argument("--workers", type=int, default=2, help="local cluster of each job (service and direct)")
    ap.add_argument("--seconds", type=float, default=10.0, help="length of each store and SSE run")
    ap.add_argument("--writers", default="1,4", help="writer processes of the store runs, comma-separated")
    ap.add_argument("--batches", default="1,10", help="events per add_events call in the store runs, "
                                                     "comma-separated")
    ap.add_argument("--sse-rates", default="100,0", help="events/s written during the SSE runs (0: as fast as "
                                                        "possible), comma-separated; one event a call")
    ap.add_argument("--sse-backlog", type=int, default=20000, help="events written before a last SSE run reads "
                                                                   "them all (0: no such run)")
    ap.add_argument("--postgres", action="store_true", help="also on a private PostgreSQL (tests/services/postgres)")
    ap.add_argument("--database", help="also on this postgresql:// database (instead of --postgres)")
    ap.add_argument("--dir", help="work folder (default: a temporary one, removed at the end)")
    ap.add_argument("--json", help="write the numbers to this file")
    args = ap.parse_args()
    args.writers = [int(v) for v in args.writers.split(",")]
    args.sse_rates = [float(v) for v in args.sse_rates.split(",")]
    args.batches = [int(v) for v in args.batches.split(",")]
    shape = tuple(int(v) for v in args.shape.split(","))
    folder = args.dir or tempfile.mkdtemp(prefix="bigseg-bench-service-")
    os.makedirs(folder, exist_ok=True)
    root = os.path.join(folder, "root")
    os.makedirs(root, exist_ok=True)

    from bigseg.synthetic import nuclei, write_ome_zarr
    data, _ = nuclei(shape, seed=5)
    image = write_ome_zarr(os.path.join(root, "img.zarr"), data, "zyx", (16, 64, 64)[-len(shape):])
    t0 = time.perf_counter()
    direct_job(image, "warmup", args.workers)  # imports, compiled code and page cache, untimed
    print(f"# data: {shape} uint16 in {image}; warm-up bigseg.segment {time.perf_counter() - t0:.1f}s", flush=True)

    results = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                           "platform": platform.platform()},
               "args": {k: v for k, v in vars(args).items() if k != "database"}, "backends": {}}
    postgres = None
    try:
        results["backends"]["sqlite"] = run_backend("sqlite", sqlite_url, args, image, root,
                                                    os.path.join(folder, "sqlite"))
        if args.postgres or args.database:
            if args.database:
                make = _always(args.database)
            else:
                from services import postgres as postgres_service
                postgres = postgres_service.start()
                make = _fresh(postgres)
            results["backends"]["postgresql"] = run_backend("postgresql", make, args, image, root,
                                                            os.path.join(folder, "postgresql"))
    finally:
        if postgres is not None:
            from services import postgres as postgres_service
            postgres_service.shutdown(postgres)
        if not args.dir:
            shutil.rmtree(folder, ignore_errors=True)
    report(results, shape, args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


def _ms(value: float) -> str:
    return "-" if value != value else f"{value:.0f}"


def _always(url: str):
    """Every server start uses ``url`` (an existing database)."""
    return lambda _data_dir: url


def _fresh(postgres):
    """Every first start gets a new, empty database of the private PostgreSQL."""
    return lambda _data_dir: postgres.fresh_database()


def report(results: dict, shape, args) -> None:
    med = statistics.median
    print(f"\nbigseg serve on {results['machine']['cpus']} CPUs, Python {results['machine']['python']}; medians of "
          f"{args.repeat} runs; jobs: watershed on {shape} uint16, local cluster of {args.workers} workers\n")
    print("| database | server start s (new data) | restart s | submit -> starting s | submit -> running s | "
          "submit -> JobStarted s | submit -> succeeded s | bigseg.segment s | service / direct |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, b in results["backends"].items():
        s, d = b["jobs"]["service"], b["jobs"]["direct"]
        svc, direct = med(x["succeeded"] for x in s), med(x["wall"] for x in d)
        print(f"| {name} | {med(b['start']['first']):.2f} | {med(b['start']['restart']):.2f} | "
              f"{med(x['starting'] for x in s):.2f} | {med(x['running'] for x in s):.2f} | "
              f"{med(x['job_started'] for x in s):.2f} | {svc:.2f} | {direct:.2f} | {svc / direct:.2f} |")
    print("\n| database | writer processes | events per call | events/s absorbed | transactions/s | "
          "add_events p50 ms | p99 ms | max ms | calls > 1 s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, b in results["backends"].items():
        for r in b["store"]:
            print(f"| {name} | {r['writers']} | {r['batch']} | {r['events_per_s']:.0f} | {r['calls_per_s']:.0f} | "
                  f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['max_ms']:.1f} | {r['over_1s']} |")
    print("\n| database | written at | events/s written | events/s delivered (SSE) | lag p50 ms | p99 ms | max ms | "
          "all delivered, in order |")
    print("|---|---|---|---|---|---|---|---|")
    for name, b in results["backends"].items():
        for r in b["sse"]:
            lag = " | ".join(_ms(r[k]) for k in ("lag_p50_ms", "lag_p99_ms", "lag_max_ms"))
            print(f"| {name} | {r['mode']} | {r['written_per_s']:.0f} | {r['delivered_per_s']:.0f} | {lag} | "
                  f"{'yes' if r['complete'] and r['in_order'] else 'NO'} "
                  f"({r['delivered']}/{r['written']}) |")
    print("\nserver start: Popen to the first 200 of /health. submit -> X: POST /jobs to the job's status X (polled "
          "every 20 ms) or to its JobStarted event's write. service / direct: submit -> succeeded over "
          "bigseg.segment's wall time (the JSON has each job's result.seconds too). Store: K processes calling "
          "Store.add_events (one transaction each, with the job's progress "
          "and heartbeat). SSE: one writer process (one event a transaction) while one client streams, or (backlog) "
          "all events written before the client connects; lag: arrival at the client minus the event's ts (taken "
          "when its transaction began).")


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    main()
