"""The Python client of ``bigseg serve`` (standard-library HTTP, no other dependency).

``Client(url, token).submit(image, "watershed", name="nuclei", diameter="8um").wait()`` returns the same
:class:`~bigseg.pipeline.SegmentResult` as ``bigseg.segment(...)``, computed by the service instead of this
process. The job argument is built as ``bigseg.segment`` builds it: a :class:`~bigseg.spec.JobSpec`, a job file,
or an image with the method and its parameters.

>>> from bigseg.client import Client
>>> job = Client().submit("nuclei.zarr", "watershed", name="nuclei", diameter="8um")  # doctest: +SKIP
>>> result = job.wait(progress=print); result.objects  # doctest: +SKIP
"""
from __future__ import annotations

import dataclasses
import http.client
import ipaddress
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator

from bigseg.engine import events as ev
from bigseg.errors import (
    BigsegError,
    InputError,
    JobCancelled,
    ParameterError,
    first_line,
)
from bigseg.io import store
from bigseg.pipeline import SegmentResult
from bigseg.service.config import default_data_dir
from bigseg.service.states import TERMINAL
from bigseg.spec import JobSpec

DEFAULT_URL = "http://127.0.0.1:8642"
#: Polling interval of ``wait`` and ``logs(follow=True)``: from the first value, times the factor, up to the last.
POLL_FIRST, POLL_FACTOR, POLL_MAX = 0.2, 1.5, 2.0


class ServiceError(BigsegError):
    """The service refused a request (``status`` is the HTTP status, ``field`` the job field it names) or
    cannot be reached (``status`` None)."""

    def __init__(self, message: str, status: int | None = None, field: str | None = None):
        super().__init__(message)
        self.status, self.field = status, field


class JobError(BigsegError):
    """A job failed on the service; the message is the job's one-line error, ``kind`` its kind
    (``input``, ``parameter`` or ``system``)."""

    def __init__(self, message: str, job_id: str = "", kind: str | None = None):
        super().__init__(message)
        self.job_id, self.kind = job_id, kind


class JobInputError(JobError, InputError):
    """The job failed because of its input image."""


class JobParameterError(JobError, ParameterError):
    """The job failed because of a parameter that does not fit the image."""


class WaitTimeout(BigsegError, TimeoutError):
    """``Job.wait(timeout=...)`` ran out of time; the job goes on running on the service."""


def find_token(token: str | None = None) -> str:
    """The token given, else ``$BIGSEG_TOKEN``, else the data directory's token file."""
    token = token or os.environ.get("BIGSEG_TOKEN")
    if token:
        return token.strip()
    path = os.path.join(default_data_dir(), "token")
    try:
        with open(path) as f:
            token = f.read().strip()
    except FileNotFoundError:
        token = ""
    except OSError as err:
        raise ServiceError(f"cannot read the token file {path} ({err.strerror}); pass the token with --token or "
                           "BIGSEG_TOKEN") from None
    if not token:
        raise ServiceError(f"no service token: pass it with --token TOKEN (Client(token=...)) or BIGSEG_TOKEN, or "
                           f"put it in {path} (bigseg serve writes it there)")
    return token


class Client:
    """A connection to ``bigseg serve``.

    Parameters
    ----------
    url : str
        The service, e.g. ``http://127.0.0.1:8642``; default ``$BIGSEG_URL``, else ``http://127.0.0.1:8642``.
    token : str
        The user's token; default ``$BIGSEG_TOKEN``, else the file ``token`` in the service's data directory
        (``$BIGSEG_DATA_DIR`` or ``~/.local/share/bigseg``).
    timeout : float
        Seconds one HTTP request may take.
    """

    def __init__(self, url: str | None = None, token: str | None = None, timeout: float = 30):
        self.url = (url or os.environ.get("BIGSEG_URL") or DEFAULT_URL).rstrip("/")
        if "://" not in self.url:
            self.url = "http://" + self.url
        self._token = find_token(token)
        self.timeout = timeout
        self._opener = _opener(self.url)

    def __repr__(self) -> str:
        return f"Client({self.url!r})"  # never the token

    # --- the API ---------------------------------------------------------------------------------------------

    def info(self) -> dict:
        """Version, the signed-in user, the methods and the cluster profiles of the service."""
        return self._request("GET", "/info")

    def validate(self, job=None, method=None, name: str | None = None, *, profile: str | None = None,
                 title: str | None = None, tags=(), priority: int = 0, **kwargs) -> dict:
        """The plan of a job without running it: blocks, block shape, halo, voxels, output URL, whether it
        resumes, estimated memory and time, warnings. A bad job raises :class:`ServiceError` naming the field."""
        return self._request("POST", "/jobs/validate",
                             job_body(job, method, name, profile=profile, title=title, tags=tags, priority=priority,
                                      **kwargs))

    def submit(self, job=None, method=None, name: str | None = None, *, profile: str | None = None,
               title: str | None = None, tags=(), priority: int = 0, **kwargs) -> Job:
        """Queue a job on the service; arguments as ``bigseg.segment`` (a spec, a job file, or an image with
        ``method``, ``name`` and job keywords) plus the service's ``profile``, ``title``, ``tags``, ``priority``."""
        return Job(self, self._request("POST", "/jobs", job_body(job, method, name, profile=profile, title=title,
                                                                  tags=tags, priority=priority, **kwargs)))

    def jobs(self, status: str | list[str] | None = None, tag: str | None = None, limit: int = 50,
             offset: int = 0) -> list[Job]:
        """The jobs this user sees (admins: all), newest first; ``status`` one state or several."""
        if status is not None and not isinstance(status, str):
            status = ",".join(status)
        query = {"status": status, "tag": tag, "limit": limit, "offset": offset}
        return [Job(self, d) for d in self._request("GET", "/jobs", query=query)["jobs"]]

    def job(self, job_id: str) -> Job:
        return Job(self, self._request("GET", _job_path(job_id)))

    def cancel(self, job_id: str) -> Job:
        """Cancel a job (queued: at once; running: within about one block's time)."""
        return Job(self, self._request("POST", _job_path(job_id, "cancel")))

    def retry(self, job_id: str) -> Job:
        """Queue a failed, canceled or interrupted job again; it resumes from its finished blocks."""
        return Job(self, self._request("POST", _job_path(job_id, "retry")))

    def wait(self, job_id: str, timeout: float | None = None, progress=None) -> SegmentResult:
        """:meth:`Job.wait` of job ``job_id``."""
        return self.job(job_id).wait(timeout, progress)

    def events(self, job_id: str, after: int = 0) -> list[dict]:
        """The job's events after sequence number ``after``: ``{"seq", "ts", "kind", "data"}`` each."""
        return self._request("GET", _job_path(job_id, "events"), query={"after": after})["events"]

    def logs(self, job_id: str, follow: bool = False) -> Iterator[str]:
        """The job's log as text chunks; ``follow``: keep reading until the job has ended."""
        offset, delay = 0, POLL_FIRST
        while True:
            status = self._request("GET", _job_path(job_id))["status"] if follow else None
            page = self._request("GET", _job_path(job_id, "log"), query={"offset": offset})
            if page["text"]:
                yield page["text"]
            advanced = page["next_offset"] != offset
            offset = page["next_offset"]
            if advanced:
                delay = POLL_FIRST
                continue  # read on until the log has nothing more
            if not follow or status in TERMINAL:
                return
            time.sleep(delay)
            delay = min(delay * POLL_FACTOR, POLL_MAX)

    # --- HTTP ------------------------------------------------------------------------------------------------

    def _request(self, method: str, path: str, body: dict | None = None, query: dict | None = None):
        url = f"{self.url}/api/v1{path}"
        query = {k: v for k, v in (query or {}).items() if v is not None}
        if query:
            url += "?" + urllib.parse.urlencode(query)
        headers = {"Authorization": f"Bearer {self._token}", "Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as err:
            raise http_error(err.code, err.read(), err.reason) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
            reason = getattr(err, "reason", None) or err
            raise ServiceError(f"cannot reach the bigseg service at {self.url}: is `bigseg serve` running? "
                               f"({first_line(reason)})") from None
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            raise ServiceError(f"{self.url} answered {method} {path} with something that is not JSON: is it the "
                               "bigseg service?") from None


class Job:
    """A job on the service. ``data`` is its JSON (``GET /jobs/{id}``) as last read; :meth:`refresh` reads it
    again."""

    def __init__(self, client: Client, data: dict):
        self.client, self.data = client, data

    @property
    def id(self) -> str:
        return self.data["id"]

    @property
    def status(self) -> str:
        return self.data["status"]

    def __repr__(self) -> str:
        return f"<Job {self.id} {self.status}>"

    def refresh(self) -> Job:
        self.data = self.client.job(self.id).data
        return self

    def cancel(self) -> Job:
        self.data = self.client.cancel(self.id).data
        return self

    def retry(self) -> Job:
        self.data = self.client.retry(self.id).data
        return self

    def events(self, after: int = 0) -> list[dict]:
        return self.client.events(self.id, after)

    def logs(self, follow: bool = False) -> Iterator[str]:
        return self.client.logs(self.id, follow)

    def wait(self, timeout: float | None = None, progress=None) -> SegmentResult:
        """Poll until the job has ended (every 0.2 s, slowing down to every 2 s) and return its result.

        ``progress`` (an :class:`~bigseg.engine.events.Observer` or a function of one event, as
        ``bigseg.segment``'s ``observer``) receives the job's events as they are recorded, and its state
        changes as :class:`~bigseg.engine.events.Message` events. A failed job raises its error (a
        :class:`JobError`), a canceled one :class:`~bigseg.errors.JobCancelled`; :class:`WaitTimeout` after
        ``timeout`` seconds (the job goes on)."""
        observer = ev.as_observer(progress) if progress is not None else None
        deadline = None if timeout is None else time.monotonic() + timeout
        seq, delay = 0, POLL_FIRST
        while True:
            previous = (self.status, self.data.get("progress"))
            self.refresh()
            news = False
            if observer is not None:  # read after the status: a terminal status comes with all its events
                for record in self.events(seq):
                    seq = max(seq, record["seq"])
                    event = event_from_record(self.id, record)
                    if event is not None:
                        observer.on_event(event)
                        news = True
            if self.status in TERMINAL:
                return self.result()
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(f"job {self.id} is still {self.status} after {timeout:g} s; it goes on running "
                                  f"(bigseg job {self.id})")
            changed = news or previous != (self.status, self.data.get("progress"))
            delay = POLL_FIRST if changed else min(delay * POLL_FACTOR, POLL_MAX)
            time.sleep(delay if deadline is None else max(0.0, min(delay, deadline - time.monotonic())))

    def result(self) -> SegmentResult:
        """The result of a job that has ended (as last read): its :class:`SegmentResult`, or its error raised."""
        if self.status == "succeeded":
            return segment_result(self.data["result"])
        error = self.data.get("error") or {}
        if self.status == "canceled":
            raise JobCancelled(error.get("message") or JobCancelled().args[0])
        if self.status == "failed":
            kind = error.get("kind")
            cls = {"input": JobInputError, "parameter": JobParameterError}.get(kind, JobError)
            raise cls(error.get("message") or f"job {self.id} failed", self.id, kind)
        raise BigsegError(f"job {self.id} is {self.status}, it has no result yet: wait for it (job.wait())")


# --- helpers ---------------------------------------------------------------------------------------------------


def job_body(job=None, method=None, name: str | None = None, *, profile: str | None = None,
             title: str | None = None, tags=(), priority: int = 0, **kwargs) -> dict:
    """The body of ``POST /jobs``: the job spec (checked here, with local paths made absolute) plus the
    service's fields."""
    from bigseg.api import as_spec
    if job is None:
        raise ParameterError("give a job: an image path or URL, a job file, or a JobSpec")
    if isinstance(tags, str):
        tags = [tags]
    body = absolute_paths(as_spec(job, method, name, **kwargs)).to_dict()
    extra = {"profile": profile, "title": title, "tags": list(tags), "priority": priority}
    return {**body, **{k: v for k, v in extra.items() if v is not None}}


def absolute_paths(spec: JobSpec) -> JobSpec:
    """The spec with local relative paths (input, output, a method's model file) made absolute: the service
    runs elsewhere and refuses relative paths."""
    update: dict = {"input": spec.input.model_copy(update={"url": _absolute(spec.input.url)})}
    if spec.output.url is not None:
        update["output"] = spec.output.model_copy(update={"url": _absolute(spec.output.url)})
    if _model_file(spec.method):
        update["method"] = spec.method.model_copy(update={"model": os.path.abspath(spec.method.model)})
    return spec.model_copy(update=update)


def _model_file(method) -> bool:
    """Whether the method's ``model`` is a local file (deep methods say; a pixel classifier's always is)."""
    model = getattr(method, "model", None)
    if not isinstance(model, str) or not model or store.is_url(model) or os.path.isabs(model):
        return False
    is_path = getattr(method, "is_path", None)
    return is_path() if callable(is_path) else True


def _absolute(url: str) -> str:
    return url if store.is_url(url) else os.path.abspath(url)


def segment_result(summary: dict) -> SegmentResult:
    """The :class:`SegmentResult` that ``summary`` (``SegmentResult.summary()``, a job's ``result``) describes."""
    return SegmentResult(labels=summary["labels"], table=summary["table"], qc=summary["qc"],
                         objects=summary["objects"], blocks=summary["blocks"], blocks_empty=summary["blocks_empty"],
                         dtype=summary["dtype"], threshold=summary.get("threshold"),
                         block_shape=tuple(summary.get("block") or ()), halo=tuple(summary.get("halo") or ()),
                         seconds=dict(summary.get("seconds") or {}), voxels=summary.get("voxels", 0),
                         resumed=dict(summary.get("resumed") or {}),
                         blocks_skipped=list(summary.get("blocks_skipped") or []),
                         blocks_background=summary.get("blocks_background", 0))


def event_from_record(job_id: str, record: dict) -> ev.Event | None:
    """An engine event from a job's event record (``{"seq", "kind", "data"}``); a state change becomes a
    :class:`~bigseg.engine.events.Message`; an unknown kind None."""
    kind, data = record.get("kind"), record.get("data") or {}
    if kind == "state":
        reason = f" ({data['reason']})" if data.get("reason") else ""
        return ev.Message(f"job {job_id} {data.get('to')}{reason}")
    cls = getattr(ev, str(kind), None)
    if not (isinstance(cls, type) and issubclass(cls, ev.Event)) or cls is ev.Event:
        return None
    values = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            value = data[f.name]
            values[f.name] = tuple(value) if isinstance(value, list) and str(f.type).startswith("tuple") else value
    try:
        return cls(**values)
    except TypeError:  # a record from another bigseg version
        return None


def http_error(status: int, raw: bytes, reason: str = "") -> ServiceError:
    """A :class:`ServiceError` from the service's error answer ``{"detail": "...", "field": ...}``."""
    detail, field = None, None
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if isinstance(body, dict):
        detail, field = body.get("detail"), body.get("field")
        if isinstance(detail, list):  # a framework-level validation error: [{"loc": [...], "msg": "..."}]
            detail = "; ".join(f"{'.'.join(str(p) for p in d.get('loc', [])[1:])}: {d.get('msg')}"
                               if isinstance(d, dict) else str(d) for d in detail)
    if not detail:
        text = raw.decode(errors="replace").strip() if raw else ""
        detail = first_line(text) if text else f"HTTP {status} {reason}".strip()
    message = first_line(str(detail))
    if field and field not in message:
        message = f"{field}: {message}"
    if status == 401:
        message += ("; pass a valid token with --token TOKEN (Client(token=...)) or BIGSEG_TOKEN, or put it in "
                    f"{os.path.join(default_data_dir(), 'token')}")
    return ServiceError(message, status, field)


def _job_path(job_id: str, action: str | None = None) -> str:
    if not job_id or not isinstance(job_id, str):
        raise ParameterError(f"{job_id!r} is not a job id; list them with: bigseg jobs")
    return f"/jobs/{urllib.parse.quote(job_id, safe='')}" + (f"/{action}" if action else "")


def _opener(url: str) -> urllib.request.OpenerDirector:
    """An opener that follows the environment's proxies, except for a service on this machine."""
    host = urllib.parse.urlsplit(url).hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    return urllib.request.build_opener(urllib.request.ProxyHandler({} if loopback else None))


__all__ = ["Client", "Job", "JobError", "ServiceError", "WaitTimeout", "event_from_record", "segment_result"]
