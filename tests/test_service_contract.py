"""The HTTP API against its own OpenAPI schema: schemathesis (bounded, derandomised) on a live ``bigseg serve``.

The server runs on SQLite with one empty root, so every job body schemathesis makes up is refused (a path outside
the root: 403; inside it, no image there: 422) and nothing is ever queued. Its database holds one finished job
beforehand: a real ``bigseg.segment`` run (its result, table, QC picture and engine events, written to the store
as a runner writes them), so that the job-reading operations (``GET /jobs/{job_id}...``) are fuzzed on a real job
(queries, sort columns, offsets) while the others get made-up ids. Every operation is called with the admin's
token (sent as the bearer token of the schema's security scheme), generated positive and negative data,
in the examples, coverage and fuzzing phases.

Proven: no answer is a 5xx, and what the schema forbids is refused with a 4xx (``negative_data_rejection``).
The answers conform to the schema (bodies, status codes, content types, the documented error body included):
``test_responses_conform_to_the_schema`` lists any that do not.
"""
from __future__ import annotations

import os
import time

import pytest
import schemathesis
from schemathesis import checks
from schemathesis.errors import FailureGroup
from services.bigseg_server import start_server  # noqa: F401 - the fixture

from bigseg.engine import events as ev

pytestmark = pytest.mark.service
#: Generated cases per operation in the fuzzing phase (the examples and coverage phases add their own).
MAX_EXAMPLES = 20
SEED = 8642
#: Checks that must pass for every answer.
REQUIRED = (checks.not_a_server_error, checks.negative_data_rejection)
#: Checks of the answers against the documented responses (see test_responses_conform_to_the_schema).
CONFORMANCE = (checks.response_schema_conformance, checks.status_code_conformance, checks.content_type_conformance,
               checks.response_headers_conformance)
#: (operation, check, status) -> (count, first message) of conformance failures, filled by test_no_server_errors.
DEVIATIONS: dict[tuple[str, str, int], list] = {}
CALLS: dict[str, list[int]] = {}


class Recorder(ev.Observer):
    def __init__(self):
        self.events: list[ev.Event] = []

    def on_event(self, event: ev.Event) -> None:
        self.events.append(event)


@pytest.fixture(scope="module")
def segmented(tmp_path_factory):
    """A real ``bigseg.segment`` run (threshold on a small synthetic image), outside any server's roots: its
    image URL, result and engine events."""
    import bigseg
    from bigseg.synthetic import nuclei, write_ome_zarr
    image, _ = nuclei((16, 64, 64), seed=1)
    url = write_ome_zarr(str(tmp_path_factory.mktemp("segmented") / "img.zarr"), image, "zyx", (16, 64, 64))
    recorder = Recorder()
    result = bigseg.segment(url, "threshold", name="nuclei", workers=1, observer=recorder)
    return url, result, recorder.events


def finished_job(database: str, data_dir: str, segmented) -> str:
    """A succeeded job in a new ``database``, from the ``segmented`` run: the rows its runner would have written
    (states, events, progress, result) and its log file. Returns its id."""
    import bigseg
    from bigseg.service import states
    from bigseg.service.db import Store
    from bigseg.service.progress import Progress

    url, result, events = segmented
    progress = Progress()
    for event in events:
        progress.on_event(event)
    store = Store(database).create()
    try:
        spec = bigseg.api.as_spec(url, "threshold", name="nuclei").to_dict()
        job_id = store.insert_job("admin", spec, result.labels, "local", title="fuzzed", tags=["contract"])
        assert store.transition(job_id, states.STARTING, "dispatched", heartbeat=time.time()).ok
        assert store.transition(job_id, states.RUNNING, "runner started", started=time.time()).ok
        store.add_events(job_id, [(data.pop("type"), data) for data in (e.to_dict() for e in events)])
        assert store.transition(job_id, states.SUCCEEDED, "finished", result=result.summary(),
                                progress=progress.to_dict()).ok
    finally:
        store.dispose()
    os.makedirs(os.path.join(data_dir, "jobs", job_id))
    with open(os.path.join(data_dir, "jobs", job_id, "job.log"), "w", encoding="utf-8") as f:
        f.write("--- attempt 1\nstage segment: 1 tasks (0 resumed) — µm ✓\n" * 50)
    return job_id


@pytest.fixture
def contract_server(start_server, segmented, tmp_path):  # noqa: F811 - the fixture
    """A server whose one root is empty, and whose database holds one finished job; checked at teardown."""
    empty = tmp_path / "empty-root"
    empty.mkdir()
    database, data_dir = f"sqlite:///{tmp_path / 'service.db'}", str(tmp_path / "service")
    job_id = finished_job(database, data_dir, segmented)
    server = start_server(database, roots=[f"{empty}:rw"], data_dir=data_dir)
    server.finished_job = job_id
    yield server
    # what the requests left: no job but the finished one, nothing in the root, the server up, no traceback
    with server.http() as c:
        jobs = c.get("/jobs", params={"limit": 500}).json()
        assert [(j["id"], j["status"]) for j in jobs["jobs"]] == [(job_id, "succeeded")]
        assert c.get("/health").json()["ok"] is True
    assert os.listdir(empty) == []
    with open(server.log) as f:
        log = f.read()
    assert "Traceback" not in log, log[-4000:]


@pytest.fixture
def api_schema(contract_server):
    config = schemathesis.Config.from_dict({
        "seed": SEED,
        "base-url": contract_server.url,
        "request-timeout": 30,
        "generation": {"max-examples": MAX_EXAMPLES, "deterministic": True, "no-shrink": True, "database": "none"},
        "headers": {"Authorization": f"Bearer {contract_server.token}"},
        "operations": [{"include-method": "GET", "include-path-regex": r"^/api/v1/jobs/\{job_id\}",
                        "parameters": {"path.job_id": contract_server.finished_job}}],
    })
    return schemathesis.openapi.from_url(f"{contract_server.api}/openapi.json", config=config)


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
def test_no_server_errors(case):
    response = case.call()
    CALLS.setdefault(case.operation.label, []).append(response.status_code)
    case.validate_response(response, checks=list(REQUIRED))
    for check in CONFORMANCE:
        try:
            case.validate_response(response, checks=[check])
        except (AssertionError, FailureGroup) as err:
            found = DEVIATIONS.setdefault((case.operation.label, check.__name__, response.status_code),
                                          [0, _first_lines(err)])
            found[0] += 1


def test_the_fuzzing_reached_every_operation():
    """The fuzz test above ran with the token (authenticated answers everywhere) and on the finished job."""
    if not CALLS:
        pytest.skip("test_no_server_errors did not run in this session")
    assert len(CALLS) >= 18, sorted(CALLS)
    for label, statuses in CALLS.items():
        assert 401 not in statuses or label.endswith("/login"), (label, statuses)
        assert len(statuses) >= 5, (label, statuses)
    for label in ("GET /api/v1/jobs/{job_id}", "GET /api/v1/jobs/{job_id}/qc.png",
                  "GET /api/v1/jobs/{job_id}/table.parquet", "GET /api/v1/jobs/{job_id}/events"):
        assert 200 in CALLS[label], (label, CALLS[label])
    assert {403, 422} <= set(CALLS["POST /api/v1/jobs"])  # refused: outside the root, or no image inside it


def test_responses_conform_to_the_schema():
    if not CALLS:
        pytest.skip("test_no_server_errors did not run in this session")
    lines = [f"{label} [{status}] {check} x{n}: {message}" for (label, check, status), (n, message)
             in sorted(DEVIATIONS.items())]
    assert not lines, "answers that differ from the schema:\n" + "\n".join(lines)


def _first_lines(err: BaseException) -> str:
    text = [line.strip() for line in str(err).splitlines() if line.strip()]
    return " | ".join(line for line in text if not line.startswith("Schemathesis found"))[:200]


def test_the_event_stream_survives_any_last_event_id(contract_server):
    """``Last-Event-ID`` (a header the schema cannot describe) is not a way to a 5xx or a broken stream: each
    answer is a one-line 4xx, or the finished job's events after that seq, ended by ``event: end``."""
    url = f"/jobs/{contract_server.finished_job}/events"
    with contract_server.http() as c:
        history = [e["seq"] for e in c.get(url).json()["events"]]
        for last_event_id in ("", "3", "-5", "abc", str(2**40), str(2**70)):
            r = c.get(url, headers={"Accept": "text/event-stream", "Last-Event-ID": last_event_id})
            assert r.status_code < 500, (last_event_id, r.text)
            if r.status_code >= 400:
                assert "\n" not in r.json()["detail"], (last_event_id, r.text)
                continue
            frames = [f for f in r.text.split("\n\n") if f.strip()]
            assert frames and frames[-1].startswith("event: end"), (last_event_id, r.text[-500:])
            seqs = [int(f.split("\n")[0].removeprefix("id: ")) for f in frames[:-1]]
            after = int(last_event_id) if last_event_id.lstrip("-").isdigit() else 0
            assert seqs == [seq for seq in history if seq > after], last_event_id
