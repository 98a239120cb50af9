"""Workflows through the API: after= on POST /api/jobs, GET /api/jobs/workflows/<id>."""

from __future__ import annotations

import uuid

from tests.api_task_fixtures import Api, api_fixture, snapshot  # noqa: F401


def _post(api: Api, body: dict, user=None):
    user = user or api.alice
    return api.client.post("/api/jobs", json=body, headers=user.headers)


def test_a_chain_through_the_api_and_its_workflow(api: Api, conn) -> None:
    a = _post(api, {"type": "noop"}).json
    b = _post(api, {"type": "noop", "after": [a["id"]]})
    assert b.status_code == 202, b.json
    assert b.json["depends_on"] == [a["id"]] and b.json["waiting_for"] == 1
    assert b.json["workflow_id"] is None  # a root without one: nothing to inherit
    wf = str(uuid.uuid4())
    conn.execute("UPDATE background_jobs SET workflow_id = %s", [wf])
    given = _post(api, {"type": "noop", "workflow_id": wf}).json
    assert given["workflow_id"] == wf
    api.client.post(f"/api/jobs/{given['id']}/cancel", headers=api.alice.headers)
    conn.execute("DELETE FROM background_jobs WHERE id = %s", [given["id"]])
    c = _post(api, {"type": "noop", "after": [b.json["id"]], "run_if_dependency_fails": True})
    assert c.json["workflow_id"] == wf
    got = api.client.get(f"/api/jobs/workflows/{wf}", headers=api.alice.headers)
    assert got.status_code == 200, got.json
    assert {j["id"] for j in got.json["jobs"]} == {a["id"], b.json["id"], c.json["id"]}
    summary = got.json["summary"]
    assert summary["total"] == 3 and summary["done"] == 0 and not summary["finished"]
    assert summary["by_status"] == {"waiting": 2, "pending": 1, "running": 0, "complete": 0,
                                    "error": 0, "cancelled": 0}
    api.client.post(f"/api/jobs/{a['id']}/cancel", headers=api.alice.headers)
    after = api.client.get(f"/api/jobs/workflows/{wf}", headers=api.alice.headers).json
    assert after["summary"]["failed"] == a["id"]  # b was cancelled because of a
    assert after["summary"]["by_status"]["cancelled"] == 2
    assert after["summary"]["by_status"]["pending"] == 1  # c runs anyway
    # Another user's workflow, or no workflow: 404.
    assert api.client.get(f"/api/jobs/workflows/{wf}", headers=api.bob.headers
                          ).status_code == 404
    assert api.client.get(f"/api/jobs/workflows/{uuid.uuid4()}", headers=api.alice.headers
                          ).status_code == 404
    assert api.client.get("/api/jobs/workflows/nope", headers=api.alice.headers
                          ).status_code == 404


def test_bad_dependencies_are_a_422_and_store_nothing(api: Api, db_url) -> None:
    mine = _post(api, {"type": "noop"}).json
    bobs = _post(api, {"type": "noop"}, user=api.bob).json
    before = snapshot(db_url)
    for body, message in (
            ({"after": [bobs["id"]]}, "another user"),
            ({"after": [str(uuid.uuid4())]}, "do not exist"),
            ({"after": "x"}, "after must be a list"),
            ({"after": ["x"]}, "is not a job id"),
            ({"after": [mine["id"]] * 1001}, "at most 1000"),
            ({"after": [mine["id"]], "run_if_dependency_fails": "yes"}, "true or false"),
            ({"workflow_id": "x"}, "workflow_id must be a UUID"),
            ({"workflow_id": 7}, "workflow_id must be a UUID")):
        r = _post(api, {"type": "noop", **body})
        assert r.status_code == 422, (body, r.json)
        assert message in r.json["error"]["message"], r.json
    assert snapshot(db_url) == before
