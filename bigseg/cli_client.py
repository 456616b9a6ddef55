"""The service's command-line verbs: ``bigseg submit`` (the ``segment`` flags, sent to ``bigseg serve``),
``jobs``, ``job``, ``cancel``, ``retry`` and ``logs``.

Errors from the service are :class:`~bigseg.client.ServiceError` (a :class:`~bigseg.errors.BigsegError`): the
CLI prints them as one line and exits 2. ``submit --wait`` exits 1 when the job fails or is canceled.
"""
from __future__ import annotations

import argparse
import json
import sys

from bigseg.cli_flags import add_job_arguments, job_spec
from bigseg.cli_render import ConsoleObserver, summary_lines
from bigseg.client import Client, JobError, segment_result
from bigseg.engine import events as ev
from bigseg.errors import JobCancelled

#: The verbs this module adds to ``bigseg``.
CLIENT_COMMANDS = ("submit", "jobs", "job", "cancel", "retry", "logs")


def add_client_commands(sub) -> None:
    """Add the service verbs to ``bigseg``'s subparsers (``argparse``'s ``add_subparsers()`` object)."""
    submit = sub.add_parser("submit", help="send a job to a bigseg service (the same flags as segment)")
    add_job_arguments(submit)
    job = submit.add_argument_group("service job")
    job.add_argument("--profile", default=None, help="cluster profile of the service (default: the service's)")
    job.add_argument("--title", default=None, help="a title shown in the jobs list")
    job.add_argument("--tag", dest="tags", action="append", default=[], help="a tag to filter jobs by (repeatable)")
    job.add_argument("--priority", type=int, default=0, help="higher runs first (default 0)")
    job.add_argument("--wait", action="store_true", help="wait for the job, showing its progress on stderr; "
                     "exit 1 if it fails or is canceled")
    submit.add_argument("--json", action="store_true", help="print the job (with --wait: the result summary) as "
                        "one JSON line")
    _connection(submit)

    jobs = sub.add_parser("jobs", help="the jobs on a bigseg service, newest first")
    jobs.add_argument("--status", default=None, help="only jobs in these states, e.g. running or queued,running")
    jobs.add_argument("--tag", default=None, help="only jobs with this tag")
    jobs.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    jobs.add_argument("--json", action="store_true", help="print the jobs as one JSON line")
    _connection(jobs)

    for verb, text in (("job", "one job: status, progress per stage, error or result"),
                       ("cancel", "cancel a job (what it finished is kept: a retry resumes it)"),
                       ("retry", "run a failed, canceled or interrupted job again, resuming its finished blocks")):
        p = sub.add_parser(verb, help=text)
        p.add_argument("id", help="job id (bigseg jobs lists them)")
        p.add_argument("--json", action="store_true", help="print the job as one JSON line")
        _connection(p)

    logs = sub.add_parser("logs", help="a job's log")
    logs.add_argument("id", help="job id (bigseg jobs lists them)")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing until the job has ended")
    _connection(logs)


def _connection(p: argparse.ArgumentParser) -> None:
    group = p.add_argument_group("service")
    group.add_argument("--server", default=None, metavar="URL",
                       help="the bigseg service (default: $BIGSEG_URL, else http://127.0.0.1:8642)")
    group.add_argument("--token", default=None, help="your token (default: $BIGSEG_TOKEN, else the token file in "
                       "$BIGSEG_DATA_DIR or ~/.local/share/bigseg)")


def run_client_command(args) -> int:
    """Run the verb ``args.command``; returns the exit status (user errors are raised as BigsegError)."""
    return {"submit": _submit, "jobs": _jobs, "job": _job, "cancel": _cancel, "retry": _retry,
            "logs": _logs}[args.command](args)


def _client(args) -> Client:
    return Client(args.server, args.token)


def _submit(args) -> int:
    spec = job_spec(args)  # checked here first: a mistake is one line before any request
    job = _client(args).submit(spec, profile=args.profile, title=args.title, tags=args.tags, priority=args.priority)
    if not args.wait:
        print(json.dumps(job.data) if args.json else job.id)
        print(f"bigseg: job {job.id} {job.status}; follow it with: bigseg job {job.id} or bigseg logs {job.id} -f",
              file=sys.stderr)
        return 0
    print(f"bigseg: job {job.id} submitted to {job.client.url}", file=sys.stderr)
    try:
        result = job.wait(progress=_Progress(ConsoleObserver(out=sys.stderr)))
    except KeyboardInterrupt:
        print(f"bigseg: stopped waiting; job {job.id} goes on running on the service (bigseg job {job.id}, "
              f"bigseg cancel {job.id})", file=sys.stderr)
        return 130
    except (JobError, JobCancelled) as err:
        print(f"bigseg: job {job.id} {job.status}: {err}", file=sys.stderr)
        if args.json:
            print(json.dumps(job.data))
        return 1
    for line in summary_lines(result.summary()):
        print(line)
    if args.json:
        print(json.dumps({**job.data["result"], "job": job.id}))
    return 0


class _Progress(ev.Observer):
    """The console observer without the summary (the command prints it from the job's result)."""

    def __init__(self, console: ConsoleObserver):
        self.console = console

    def on_event(self, event: ev.Event) -> None:
        if not isinstance(event, ev.JobFinished):
            self.console.on_event(event)


def _jobs(args) -> int:
    jobs = _client(args).jobs(status=args.status, tag=args.tag, limit=args.limit)
    if args.json:
        print(json.dumps([j.data for j in jobs]))
        return 0
    if not jobs:
        print("bigseg: no jobs" + (" with these filters" if args.status or args.tag else ""), file=sys.stderr)
        return 0
    rows = [("ID", "STATUS", "STAGE", "%", "TITLE", "CREATED (UTC)")]
    for j in jobs:
        progress = j.data.get("progress") or {}
        rows.append((j.id, j.status, progress.get("stage") or "-", f"{100 * (progress.get('fraction') or 0):.0f}",
                     j.data.get("title") or "", _time(j.data.get("created"))))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.rjust(w) if i == 3 else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip())
    return 0


def _job(args) -> int:
    job = _client(args).job(args.id)
    if args.json:
        print(json.dumps(job.data))
        return 0
    for line in job_lines(job.data):
        print(line)
    return 0


def job_lines(d: dict) -> list[str]:
    """A job's JSON as lines for people."""
    title = f"  {d['title']}" if d.get("title") else ""
    tags = f"  [{', '.join(d['tags'])}]" if d.get("tags") else ""
    lines = [f"job      {d['id']}{title}{tags}",
             (f"status   {d['status']} (attempt {d.get('attempt', 1)}/{d.get('max_attempts', 1)}), profile "
              f"{d.get('profile')}, owner {d.get('owner')}, priority {d.get('priority', 0)}"),
             "times    " + ", ".join(f"{k} {_time(d.get(k))}" for k in ("created", "started", "finished") if d.get(k))]
    spec = d.get("spec") or {}
    method = dict(spec.get("method") or {})
    lines.append(f"input    {(spec.get('input') or {}).get('url')}  method {method.pop('name', '?')} "
                 + " ".join(f"{k}={v}" for k, v in method.items()))
    for stage in (d.get("progress") or {}).get("stages") or []:
        resumed = f", {stage['resumed']} resumed" if stage.get("resumed") else ""
        seconds = f", {stage['seconds']:.1f}s" if stage.get("seconds") is not None else ""
        lines.append(f"stage    {stage['name']:<9} {stage['state']:<8} {stage.get('done', 0)}/{stage.get('total', 0)}"
                     f"{resumed}{seconds}")
    if d.get("dashboard"):
        lines.append(f"dask     {d['dashboard']}")
    if d.get("error"):
        lines.append(f"error    {d['error'].get('message')} ({d['error'].get('kind')})")
    if d.get("result"):
        lines += summary_lines(segment_result(d["result"]).summary())
    return lines


def _cancel(args) -> int:
    return _show_state(_client(args).cancel(args.id), args.json)


def _retry(args) -> int:
    return _show_state(_client(args).retry(args.id), args.json)


def _show_state(job, as_json: bool) -> int:
    if as_json:
        print(json.dumps(job.data))
    else:
        print(f"job {job.id} {job.status} (attempt {job.data.get('attempt', 1)})")
    return 0


def _logs(args) -> int:
    try:
        for chunk in _client(args).logs(args.id, follow=args.follow):
            sys.stdout.write(chunk)
            sys.stdout.flush()
    except KeyboardInterrupt:
        return 130
    return 0


def _time(iso: str | None) -> str:
    """``2024-05-01T12:03:04.123+00:00`` as ``2024-05-01 12:03:04``."""
    return iso[:19].replace("T", " ") if iso else "-"
