"""The job service over real HTTP: a ``bigseg serve`` process, its runner processes and real jobs, on SQLite and on
PostgreSQL (the ``database`` fixture runs each test on both)."""
from __future__ import annotations

import json
import os
import shutil
import sqlite3

import numpy as np
import pandas as pd
import pytest
import zarr

import bigseg
from bigseg.synthetic import nuclei, write_ome_zarr
from services.bigseg_server import database, events_of, job_body, server, start_server  # noqa: F401
from services.postgres import postgres  # noqa: F401

pytestmark = pytest.mark.service
SNAPSHOT = os.path.join(os.path.dirname(__file__), "data", "openapi.json")


def small_image(folder, name="img.zarr", shape=(32, 128, 128), seed=5) -> str:
    image, _ = nuclei(shape, seed=seed)
    return write_ome_zarr(os.path.join(folder, name), image, "zyx", (16, 64, 64))


def labels(url: str) -> np.ndarray:
    return zarr.open_group(url, mode="r")["0"][...]


@pytest.fixture
def data(server):
    return server.roots[0].rsplit(":", 1)[0]


def test_a_job_over_http_equals_bigseg_segment(server, data, tmp_path):
    image = small_image(data)
    reference = shutil.copytree(image, tmp_path / "reference.zarr")
    expected = bigseg.segment(str(reference), "watershed", name="nuclei", diameter=8, workers=2)

    job = server.submit({**job_body(image, diameter=8), "title": "first", "tags": ["demo", "a"]})
    assert job["status"] == "queued" and job["owner"] == "admin" and job["tags"] == ["demo", "a"]
    done = server.wait(job["id"], {"succeeded", "failed"})
    assert done["status"] == "succeeded", done["error"]
    result = done["result"]
    assert result["objects"] == expected.objects and result["blocks"] == expected.blocks
    np.testing.assert_array_equal(labels(result["labels"]), labels(expected.labels))
    served = pd.read_parquet(result["table"])
    pd.testing.assert_frame_equal(served, pd.read_parquet(expected.table))

    # progress: every stage done, fraction 1; events: ordered, states in the lifecycle's order
    assert done["progress"]["fraction"] == 1.0
    assert {s["name"]: s["state"] for s in done["progress"]["stages"]}["segment"] == "done"
    segment = next(s for s in done["progress"]["stages"] if s["name"] == "segment")
    assert segment["done"] == segment["total"] == expected.blocks
    events = events_of(server, job["id"])
    assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)
    assert [e["data"]["to"] for e in events if e["kind"] == "state"] == ["queued", "starting", "running", "succeeded"]
    advanced = [e["data"]["done"] for e in events if e["kind"] == "StageAdvanced" and e["data"]["stage"] == "segment"]
    assert advanced == sorted(advanced) and advanced[-1] == expected.blocks
    assert any(e["kind"] == "JobFinished" and e["data"]["summary"]["objects"] == expected.objects for e in events)

    with server.http() as c:
        page = c.get(f"/jobs/{job['id']}/table", params={"limit": 5, "sort": "voxel_count", "desc": "true"}).json()
        assert page["total"] == len(served) == expected.objects
        top = served.sort_values("voxel_count", ascending=False, kind="stable").head(5)
        assert [r[page["columns"].index("label")] for r in page["rows"]] == top["label"].tolist()
        png = c.get(f"/jobs/{job['id']}/qc.png")
        assert png.headers["content-type"] == "image/png" and png.content[:8] == b"\x89PNG\r\n\x1a\n"
        parquet = c.get(f"/jobs/{job['id']}/table.parquet")
        assert parquet.status_code == 200
        download = tmp_path / "download.parquet"
        download.write_bytes(parquet.content)
        pd.testing.assert_frame_equal(pd.read_parquet(download), served)
        log = c.get(f"/jobs/{job['id']}/log").json()
        assert "stage segment" in log["text"] and log["next_offset"] == len(log["text"].encode())
        listed = c.get("/jobs", params={"tag": "demo"}).json()
        assert [j["id"] for j in listed["jobs"]] == [job["id"]] and listed["total"] == 1
        assert c.get("/jobs", params={"tag": "other"}).json()["total"] == 0
        assert c.get("/jobs", params={"status": "running"}).json()["total"] == 0
        metrics = c.get("/metrics").text
        assert 'bigseg_jobs{status="succeeded",profile="local"} 1' in metrics
        assert f"bigseg_voxels_total {32 * 128 * 128}" in metrics
        assert f"bigseg_blocks_total {expected.blocks}" in metrics


def test_validate_plans_without_side_effects(server, data):
    image = small_image(data)
    before = sorted(os.listdir(image))
    with server.http() as c:
        plan = c.post("/jobs/validate", json={**job_body(image, diameter=8), "blocks": {"shape": [32, 64, 64]},
                                              "profile": "local"})
        assert plan.status_code == 200, plan.text
        plan = plan.json()
    assert plan["blocks"] == 1 * 2 * 2 and plan["block_shape"] == [32, 64, 64] and plan["shape"] == [32, 128, 128]
    assert plan["voxels"] == 32 * 128 * 128 and plan["resume"] is False and plan["profile"] == "local"
    assert plan["output_url"] == os.path.join(image, "labels", "nuclei") and plan["workers"] == 2
    assert plan["est_worker_bytes"] > 32 * 64 * 64 and plan["est_seconds"] > 0
    assert any("inside the image" in w for w in plan["warnings"])
    assert sorted(os.listdir(image)) == before  # nothing written: no labels folder


def test_bad_requests_get_one_line_and_a_field(server, data):
    image = small_image(data)
    with server.http() as c:
        cases = [
            ({**job_body(image), "method": {"name": "watershed", "diametr": 8}}, 422, "method.diametr",
             "did you mean 'diameter'"),
            ({**job_body(image), "method": {"name": "watershed", "diameter": -3}}, 422, "method.diameter", ""),
            ({**job_body(image), "method": {"name": "wathershed"}}, 422, "method", "watershed"),
            ({**job_body(image), "profile": "nonesuch"}, 422, "profile", "nonesuch"),
            ({**job_body(image), "blocks": {"shape": [7, 64, 64]}}, 422, None, "block"),
            ({"input": {"url": os.path.join(data, "missing.zarr")}}, 422, "input.url", "missing.zarr"),
        ]
        for body, status, field, words in cases:
            for path in ("/jobs/validate", "/jobs"):
                r = c.post(path, json=body)
                assert r.status_code == status, (body, r.text)
                detail = r.json()
                assert "\n" not in detail["detail"] and words in detail["detail"], detail
                if field:
                    assert detail["field"] == field, detail
        r = c.post("/jobs", content=b'{"input": {"url": ', headers={"content-type": "application/json"})
        assert r.status_code == 400 and "not valid JSON" in r.json()["detail"]
        r = c.post("/jobs", content=b"x" * (2 << 20), headers={"content-type": "application/json"})
        assert r.status_code == 413 and "bytes" in r.json()["detail"]
        r = c.get("/jobs", params={"status": "done"})
        assert r.status_code == 422 and r.json()["field"] == "status"
        assert c.get("/jobs/j-nonesuch").status_code == 404
        assert c.get("/methods/nonesuch").status_code == 404
        assert c.get("/jobs").json()["total"] == 0  # nothing was queued by the refused requests


def test_tokens_roots_and_owners(server, data, tmp_path):
    image = small_image(data)
    with server.http(None) as anonymous:
        assert anonymous.get("/health").json()["ok"] is True
        r = anonymous.get("/jobs")
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    with server.http("wrong-token") as wrong:
        assert wrong.get("/info").status_code == 401
        assert wrong.post("/jobs", json=job_body(image)).status_code == 401

    outside = tmp_path / "outside"
    outside.mkdir()
    escape = os.path.join(data, "escape")
    os.symlink(outside, escape)
    other = small_image(str(outside), "other.zarr")
    models = tmp_path / "models"
    models.mkdir()
    (outside / "model.joblib").write_bytes(b"not a model")
    with server.http() as c:
        for url, field in [(other, "input.url"), (os.path.join(data, "..", "outside", "other.zarr"), "input.url"),
                           (os.path.join(escape, "other.zarr"), "input.url"), (f"file://{image}", "input.url")]:
            r = c.post("/jobs/validate", json=job_body(url))
            assert r.status_code == 403 and r.json()["field"] == field, r.text
        r = c.post("/jobs", json={**job_body(image), "output": {"url": os.path.join(str(outside), "out.zarr")}})
        assert r.status_code == 403 and r.json()["field"] == "output.url"
        r = c.post("/jobs/validate", json={"input": {"url": image}, "method": {
            "name": "pixel-classifier", "model": str(outside / "model.joblib")}})
        assert r.status_code == 403 and r.json()["field"] == "method.model" and "model" in r.json()["detail"]

    # a second user with their own token and folder: sees only their jobs, and another's job is 404
    bob_data = tmp_path / "bob"
    bob_data.mkdir()
    bob_image = small_image(str(bob_data), "bob.zarr")
    token = _add_user(server, "bob", f"{bob_data}:rw")
    admin_job = server.submit(job_body(image, diameter=8))
    with server.http(token) as bob:
        assert bob.get("/info").json()["user"] == {"name": "bob", "admin": False, "roots": [f"{bob_data}:rw"]}
        assert bob.post("/jobs/validate", json=job_body(image)).status_code == 403  # the admin's folder
        assert bob.get(f"/jobs/{admin_job['id']}").status_code == 404
        assert bob.post(f"/jobs/{admin_job['id']}/cancel").status_code == 404
        bob_job = bob.post("/jobs", json=job_body(bob_image, diameter=8)).json()
        assert [j["id"] for j in bob.get("/jobs").json()["jobs"]] == [bob_job["id"]]
    with server.http() as admin:  # admins see everyone's jobs
        assert {j["id"] for j in admin.get("/jobs").json()["jobs"]} == {admin_job["id"], bob_job["id"]}
    for job_id in (admin_job["id"], bob_job["id"]):
        assert server.wait(job_id, {"succeeded", "failed"})["status"] == "succeeded"


def test_one_active_job_per_output(server, data):
    image = small_image(data)
    first = server.submit(job_body(image, diameter=8))
    with server.http() as c:
        r = c.post("/jobs", json=job_body(image, diameter=8))
        assert r.status_code == 409 and "another active job" in r.json()["detail"]
        assert c.post("/jobs", json=job_body(image, diameter=8, label="other")).status_code == 201
        assert server.wait(first["id"], {"succeeded", "failed"})["status"] == "succeeded"
        r = c.post(f"/jobs/{first['id']}/retry")
        assert r.status_code == 409 and "succeeded" in r.json()["detail"]


def test_the_web_page_and_login_cookie(server):
    import httpx
    with httpx.Client(base_url=server.url) as browser:
        page = browser.get("/")
        assert page.status_code == 200 and "<html" in page.text.lower()
        assert "default-src 'self'" in page.headers["content-security-policy"]
        assert browser.post("/api/v1/login", json={"token": "nope"}).status_code == 401
        login = browser.post("/api/v1/login", json={"token": server.token})
        assert login.json() == {"user": "admin", "admin": True}
        cookie = login.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie
        assert browser.get("/api/v1/info").json()["user"]["name"] == "admin"  # the cookie signs in
        browser.post("/api/v1/logout")
        assert browser.get("/api/v1/info").status_code == 401


def test_openapi_snapshot(server):
    """The API's schema is the one in tests/data/openapi.json; a change must be deliberate (regenerate with
    BIGSEG_UPDATE_OPENAPI=1)."""
    with server.http(None) as c:
        schema = c.get("/openapi.json").json()
    schema["info"]["version"] = "SNAPSHOT"
    if os.environ.get("BIGSEG_UPDATE_OPENAPI"):
        os.makedirs(os.path.dirname(SNAPSHOT), exist_ok=True)
        with open(SNAPSHOT, "w") as f:
            json.dump(schema, f, indent=1, sort_keys=True)
    with open(SNAPSHOT) as f:
        assert schema == json.load(f), "the HTTP API changed: if on purpose, run with BIGSEG_UPDATE_OPENAPI=1"
    for path in ("/api/v1/jobs", "/api/v1/jobs/validate", "/api/v1/jobs/{job_id}/cancel", "/api/v1/files",
                 "/api/v1/metrics", "/api/v1/jobs/{job_id}/table.parquet"):
        assert path in schema["paths"]


def test_database_schema_is_versioned(server, database):
    if not database.startswith("sqlite"):
        pytest.skip("the schema-version check is the same SQL on both; SQLite is enough to edit by hand")
    server.stop()
    path = database.removeprefix("sqlite:///")
    with sqlite3.connect(path) as con:
        assert con.execute("select value from meta where key='schema_version'").fetchone() == ("1",)
        con.execute("update meta set value='99' where key='schema_version'")
    import subprocess
    import sys
    proc = subprocess.run([sys.executable, "-m", "bigseg", "serve", *server.args], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "schema version 99" in proc.stderr and "upgrade" in proc.stderr


def _add_user(server, name: str, root: str) -> str:
    import subprocess
    import sys
    proc = subprocess.run([sys.executable, "-m", "bigseg", "serve", "user", "add", name, "--root", root,
                           "--data-dir", server.data_dir, "--database", server.database],
                          capture_output=True, text=True, timeout=60, check=True)
    return proc.stdout.strip().rsplit(" ", 1)[-1]
