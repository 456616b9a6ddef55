"""The HTTP API (``/api/v1``) and the web page, as a FastAPI app over the service's :class:`~bigseg.service.db.Store`.

The app validates, persists and serves; it never runs a job (the dispatcher starts a runner process per job).
Every route but ``/health`` and ``/login`` needs a token (``Authorization: Bearer``, or the page's HttpOnly
cookie); every path in a job is checked against the caller's folders; a job of another user is 404.
"""
from __future__ import annotations

import asyncio
import json
import re
import time
from importlib.resources import files
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    Response,
    StreamingResponse,
)
from fastapi.security import APIKeyCookie, HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

import bigseg
from bigseg.errors import BigsegError, InputError, OutputError, validation_message
from bigseg.service import jobs as job_views
from bigseg.service import states
from bigseg.service.auth import hash_token
from bigseg.service.browse import list_folder
from bigseg.service.config import ServiceConfig
from bigseg.service.db import OutputBusy, Store
from bigseg.service.dispatcher import Dispatcher
from bigseg.service.metrics import metrics_text
from bigseg.service.paths import Access, PathForbidden
from bigseg.spec import JobSpec

API = "/api/v1"
COOKIE = "bigseg_session"
STATIC = files("bigseg.service") / "static"
#: Largest event number, row or byte offset a query may give (a signed 64-bit integer in both databases).
MAX_INT = 2**63 - 1
_FIELD = re.compile(r"^([A-Za-z_]\w*(?:\.\w+)*): ")


class JobRequest(JobSpec):
    """A job spec (what ``bigseg spec`` prints) plus how the service should run it."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    profile: str | None = Field(None, description="cluster profile (GET /info lists them); default: the server's")
    priority: int = Field(0, ge=-100, le=100, description="higher runs first")
    title: str = Field("", max_length=200)
    tags: list[Annotated[str, Field(max_length=64)]] = Field(default_factory=list, max_length=20)


RUN_FIELDS = {"profile", "priority", "title", "tags"}


class Login(BaseModel):
    token: str = Field(max_length=200)


class User(BaseModel):
    name: str
    admin: bool
    roots: list[str]
    limits: dict

    def access(self, config: ServiceConfig) -> Access:
        return config.access_for({"admin": self.admin, "roots": self.roots})


class ErrorBody(BaseModel):
    """Every error answer: one line, and the spec field or parameter it is about."""

    detail: str
    field: str | None = None


#: The error answers, documented on every operation (FastAPI's default 422 body is replaced).
ERRORS = {status: {"model": ErrorBody, "description": text} for status, text in (
    (400, "The body is not valid JSON"), (401, "No token, or a token that is not valid"),
    (403, "A path outside the caller's folders, or a model file outside the model folders"),
    (404, "No such job (or another user's), method or result"),
    (409, "Another active job writes the same output, or the job cannot be retried"),
    (413, "The body is too large"), (422, "A bad job spec or parameter (one line, and its field path)"),
    (429, "Too many queued jobs"))}


class ApiError(HTTPException):
    """An error answered as ``{"detail": one line, "field": path or null}``."""

    def __init__(self, status: int, detail: str, field: str | None = None):
        super().__init__(status, detail)
        self.field = field


bearer = HTTPBearer(auto_error=False, description="a token from bigseg serve (admin) or bigseg serve user add")
session = APIKeyCookie(name=COOKIE, auto_error=False, description="the web page's session (POST /login)")


def current_user(request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
                 cookie: Annotated[str | None, Depends(session)]) -> User:
    """The caller, from ``Authorization: Bearer TOKEN`` or the page's session cookie; 401 otherwise."""
    store, config = request.app.state.store, request.app.state.config
    token = credentials.credentials if credentials else cookie
    if not token:
        raise ApiError(401, "a token is required: send 'Authorization: Bearer TOKEN' (bigseg serve printed where "
                            "the admin token is; bigseg serve user add gives users theirs)")
    row = store.user_by_token_hash(hash_token(token))
    if row is None:
        raise ApiError(401, "this token is not valid (revoked, or mistyped): ask an admin for a new one")
    return User(name=row["name"], admin=row["admin"], roots=config.roots_of(row), limits=row["limits"] or {})


Caller = Annotated[User, Depends(current_user)]


def create_app(config: ServiceConfig, store: Store, dispatcher: Dispatcher | None = None) -> FastAPI:
    app = FastAPI(title="bigseg", version=bigseg.__version__, openapi_url=f"{API}/openapi.json", docs_url=None,
                  redoc_url=None, description="Block-wise segmentation jobs on Dask, as a service.",
                  responses=ERRORS)
    wake = dispatcher.wake if dispatcher else (lambda: None)
    app.state.store, app.state.config = store, config
    _install_handlers(app, config)

    def answer_and_wake(job_id: str, user: User) -> dict:
        """The job as this request left it (read before the dispatcher may move it on), then wake the
        dispatcher."""
        answer = job_views.job_json(store.job(job_id), user.name)
        wake()
        return answer

    def visible_job(job_id: str, user: User) -> dict:
        job = store.job(job_id)
        if job is None or (job["owner"] != user.name and not user.admin):
            raise ApiError(404, f"no job {job_id}")
        return job

    # --- no token ---------------------------------------------------------------------------------------
    @app.get(f"{API}/health", tags=["service"])
    def health() -> dict:
        """Liveness (no token)."""
        return {"ok": True, "version": bigseg.__version__}

    @app.post(f"{API}/login", tags=["service"])
    def login(body: Login, response: Response) -> dict:
        """Exchange a token for an HttpOnly, SameSite=Strict session cookie (the web page's sign-in)."""
        row = store.user_by_token_hash(hash_token(body.token))
        if row is None:
            raise ApiError(401, "this token is not valid (revoked, or mistyped): ask an admin for a new one")
        response.set_cookie(COOKIE, body.token, httponly=True, samesite="strict", path="/")
        return {"user": row["name"], "admin": row["admin"]}

    @app.post(f"{API}/logout", tags=["service"])
    def logout(response: Response) -> dict:
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
        return {"ok": True}

    # --- service ----------------------------------------------------------------------------------------
    @app.get(f"{API}/info", tags=["service"])
    def info(user: Caller) -> dict:
        """Version, the caller, the methods and the cluster profiles."""
        from bigseg.cluster.profiles import describe_profiles
        from bigseg.methods import METHODS
        profiles = [{k: p[k] for k in ("name", "kind", "default")} for p in describe_profiles()]
        return {"version": bigseg.__version__, "user": {"name": user.name, "admin": user.admin, "roots": user.roots},
                "methods": list(METHODS), "profiles": profiles,
                "default_profile": next((p["name"] for p in profiles if p["default"]), None),
                "limits": {**config.limits.model_dump(by_alias=True), **user.limits}}

    @app.get(f"{API}/methods/{{name}}", tags=["service"])
    def method_schema(name: str, user: Caller) -> dict:
        """JSON schema of a method's parameters (the web form is generated from it)."""
        from bigseg.methods import METHODS
        if name not in METHODS:
            raise ApiError(404, f"no method '{name}'; choose one of {', '.join(METHODS)}")
        return METHODS[name].model_json_schema()

    @app.get(f"{API}/files", tags=["service"])
    def browse(user: Caller, path: str | None = None) -> dict:
        """Folders and OME-Zarr images under the caller's roots."""
        return list_folder(user.access(config), path)

    @app.get(f"{API}/metrics", tags=["service"], response_class=PlainTextResponse)
    def metrics(user: Caller) -> str:
        """Prometheus text: jobs by status and profile, queue depth, blocks, voxels, job seconds."""
        return metrics_text(store)

    # --- jobs -----------------------------------------------------------------------------------------
    def checked(body: JobRequest, user: User):
        """The job's spec and plan, with every path checked against the caller's folders."""
        from bigseg.spec import from_dict
        spec = from_dict(body.model_dump(mode="json", exclude=RUN_FIELDS, exclude_none=True))
        user.access(config).check_spec(spec)
        return spec, job_views.plan(spec, body.profile)

    @app.post(f"{API}/jobs/validate", tags=["jobs"])
    def validate(body: JobRequest, user: Caller) -> dict:
        """Plan the job without running it: blocks, halo, output, whether it resumes, estimates, warnings."""
        _, plan = checked(body, user)
        return job_views.plan_summary(plan)

    @app.post(f"{API}/jobs", tags=["jobs"], status_code=201)
    def submit(body: JobRequest, user: Caller, response: Response) -> dict:
        """Queue a job (201 and the job); 409 when another active job writes the same output."""
        spec, plan = checked(body, user)
        limits = {**config.limits.model_dump(), **user.limits}
        _, waiting = store.jobs(owner=user.name, statuses=[states.QUEUED], limit=1)
        if waiting >= limits["max_queued"]:
            raise ApiError(429, f"you have {waiting} queued jobs, the most allowed; wait for some to start")
        try:
            job_id = store.insert_job(user.name, spec.to_dict(), plan.target.url, plan.profile, title=body.title,
                                      tags=body.tags, priority=body.priority, max_attempts=config.max_attempts)
        except OutputBusy as err:
            raise ApiError(409, str(err), "output") from None
        response.headers["Location"] = f"{API}/jobs/{job_id}"
        return answer_and_wake(job_id, user)

    @app.get(f"{API}/jobs", tags=["jobs"])
    def list_jobs(user: Caller, status: str | None = None, tag: str | None = None,
                  limit: Annotated[int, Query(ge=1, le=500)] = 50,
                  offset: Annotated[int, Query(ge=0, le=MAX_INT)] = 0) -> dict:
        """The caller's jobs (an admin's: everyone's), newest first."""
        wanted = [s for s in (status or "").split(",") if s]
        unknown = sorted(set(wanted) - set(states.STATES))
        if unknown:
            raise ApiError(422, f"unknown status {', '.join(unknown)}; choose from {', '.join(states.STATES)}",
                           "status")
        rows, total = store.jobs(owner=None if user.admin else user.name, statuses=wanted, tag=tag, limit=limit,
                                 offset=offset)
        return {"jobs": [job_views.job_json(r, user.name) for r in rows], "total": total}

    @app.get(f"{API}/jobs/{{job_id}}", tags=["jobs"])
    def get_job(job_id: str, user: Caller) -> dict:
        return job_views.job_json(visible_job(job_id, user), user.name)

    @app.post(f"{API}/jobs/{{job_id}}/cancel", tags=["jobs"], status_code=202)
    def cancel(job_id: str, user: Caller) -> dict:
        """Cancel in any state: queued/interrupted -> canceled at once, starting/running -> canceling ->
        canceled (the runner stops within one block; after the grace period it is killed)."""
        job = visible_job(job_id, user)
        job_views.cancel(store, job)
        return answer_and_wake(job_id, user)

    @app.post(f"{API}/jobs/{{job_id}}/retry", tags=["jobs"], status_code=202)
    def retry(job_id: str, user: Caller) -> dict:
        """A new attempt of a failed, canceled or interrupted job; it resumes from the finished blocks."""
        job = visible_job(job_id, user)
        try:
            done = store.transition(job_id, states.QUEUED, f"retry by {user.name}", attempt=job["attempt"] + 1,
                                    queued=time.time(), finished=None, error=None, result=None,
                                    progress=None, cancel_requested=None, runner_pid=None)
        except OutputBusy as err:
            raise ApiError(409, str(err), "output") from None
        if not done.ok:
            raise ApiError(409, f"job {job_id} is {done.found}; only a failed, canceled or interrupted job can be "
                                "retried")
        return answer_and_wake(job_id, user)

    @app.get(f"{API}/jobs/{{job_id}}/events", tags=["jobs"], responses={200: {
        "description": "JSON ``{events: [...]}``, or with ``Accept: text/event-stream`` the live stream",
        "content": {"application/json": {}, "text/event-stream": {}}}})
    async def events(job_id: str, user: Caller, request: Request,
                     after: Annotated[int, Query(ge=0, le=MAX_INT)] = 0):
        """The job's events after ``after``; live (server-sent events) with ``Accept: text/event-stream``."""
        await run_in_threadpool(visible_job, job_id, user)
        if "text/event-stream" not in request.headers.get("accept", ""):
            return {"events": await run_in_threadpool(store.events, job_id, after)}
        last = request.headers.get("last-event-id")
        if last is not None and not (last.isdigit() and int(last) <= MAX_INT):
            raise ApiError(400, f"Last-Event-ID: {last[:40]!r} is not an event number (a seq the stream sent)",
                           "Last-Event-ID")
        start = int(last) if last else after
        return StreamingResponse(_event_stream(store, job_id, start, request), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.get(f"{API}/jobs/{{job_id}}/log", tags=["jobs"])
    def job_log(job_id: str, user: Caller, offset: Annotated[int, Query(ge=0, le=MAX_INT)] = 0,
                limit: Annotated[int, Query(ge=1, le=1 << 20)] = 65536) -> dict:
        """A chunk of the job's log file from ``offset``."""
        visible_job(job_id, user)
        return job_views.read_log(config.job_dir(job_id), offset, limit)

    @app.get(f"{API}/jobs/{{job_id}}/qc.png", tags=["results"], response_class=Response,
             responses={200: {"description": "the QC overlay", "content": {"image/png": {}}}})
    def qc_png(job_id: str, user: Caller):
        """The QC overlay of a finished job."""
        return Response(job_views.qc_png(visible_job(job_id, user)), media_type="image/png")

    @app.get(f"{API}/jobs/{{job_id}}/table", tags=["results"])
    def table(job_id: str, user: Caller, limit: Annotated[int, Query(ge=1, le=10000)] = 100,
              offset: Annotated[int, Query(ge=0, le=MAX_INT)] = 0, sort: str | None = None,
              desc: bool = False) -> dict:
        """Rows of the measurements table, optionally sorted by a column."""
        return job_views.table_rows(visible_job(job_id, user), limit, offset, sort, desc)

    @app.get(f"{API}/jobs/{{job_id}}/table.parquet", tags=["results"], response_class=Response,
             responses={200: {"description": "the table, one Parquet file",
                              "content": {"application/vnd.apache.parquet": {}}}})
    def table_parquet(job_id: str, user: Caller):
        """The measurements table (Parquet)."""
        job = visible_job(job_id, user)
        return Response(job_views.table_parquet(job), media_type="application/vnd.apache.parquet",
                        headers={"Content-Disposition": f'attachment; filename="{job_id}-measurements.parquet"'})

    # --- the web page ---------------------------------------------------------------------------------
    if STATIC.is_dir():
        app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")

    @app.get("/", include_in_schema=False)
    def index():
        page = STATIC / "index.html"
        if not page.is_file():
            return HTMLResponse("<p>bigseg: the web page is not installed.</p>", status_code=404)
        return FileResponse(str(page), media_type="text/html")

    return app


async def _event_stream(store: Store, job_id: str, after: int, request: Request):
    """Server-sent events: the job's events as they are written, until it ends (or the client leaves)."""
    idle = 0.0
    while not await request.is_disconnected():
        batch = await run_in_threadpool(store.events, job_id, after)
        for item in batch:
            after = item["seq"]
            yield f"id: {item['seq']}\nevent: {item['kind']}\ndata: {json.dumps(item)}\n\n"
        if batch:
            idle = 0.0
            continue
        job = await run_in_threadpool(store.job, job_id)
        if job is None or job["status"] in states.TERMINAL:
            yield "event: end\ndata: {}\n\n"
            return
        await asyncio.sleep(0.5)
        idle += 0.5
        if idle >= 15:
            yield ": keep-alive\n\n"
            idle = 0.0


def _install_handlers(app: FastAPI, config: ServiceConfig) -> None:
    @app.middleware("http")
    async def limits_and_headers(request: Request, call_next):
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > config.max_body_bytes:
            return JSONResponse({"detail": f"the request body is {int(length)} bytes, more than the "
                                           f"{config.max_body_bytes} allowed", "field": None}, status_code=413)
        response = await call_next(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; "
                                    "style-src 'self' 'unsafe-inline'; frame-ancestors 'none'")
        return response

    @app.exception_handler(ApiError)
    async def api_error(request: Request, err: ApiError):
        return JSONResponse({"detail": err.detail, "field": err.field}, status_code=err.status_code,
                            headers={"WWW-Authenticate": "Bearer"} if err.status_code == 401 else None)

    @app.exception_handler(PathForbidden)
    async def forbidden(request: Request, err: PathForbidden):
        return JSONResponse({"detail": str(err), "field": err.field}, status_code=403)

    @app.exception_handler(BigsegError)
    async def user_error(request: Request, err: BigsegError):
        message = str(err)
        match = _FIELD.match(message)
        field = match[1] if match else ("input.url" if isinstance(err, InputError) else
                                        "output" if isinstance(err, OutputError) else None)
        status = 404 if isinstance(err, job_views.NotFound) else 409 if isinstance(err, OutputBusy) else 422
        return JSONResponse({"detail": message, "field": field}, status_code=status)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, err: RequestValidationError):
        errors = err.errors()
        if any(e["type"] == "json_invalid" for e in errors):
            return JSONResponse({"detail": "the request body is not valid JSON: "
                                           f"{errors[0].get('ctx', {}).get('error', 'cannot parse it')}",
                                 "field": None}, status_code=400)
        body = [e for e in errors if e["loc"][:1] == ("body",)]
        if body:
            trimmed = [{**e, "loc": e["loc"][1:]} for e in body]
            message = validation_message(_Errors(trimmed), JobRequest)
            match = _FIELD.match(message)
            field = match[1] if match else None
        else:
            message = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:])}: {e['msg']}" for e in errors)
            field = ".".join(str(p) for p in errors[0]["loc"][1:]) or None
        return JSONResponse({"detail": message, "field": field}, status_code=422)


class _Errors:
    """Gives :func:`validation_message` a list of error dicts as a pydantic error does."""

    def __init__(self, errors: list[dict]):
        self._errors = errors

    def errors(self) -> list[dict]:
        return self._errors
