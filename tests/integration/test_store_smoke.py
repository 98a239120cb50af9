from server.store import Attempt


def test_create_claim_complete(store):
    user, token = store.create_user("alice")
    job, created = store.create_job("noop", {"x": 1}, user_id=user.id)
    assert created and job.status == "pending" and job.version == 1
    [claimed] = store.claim("w1", ["noop"], limit=5)
    assert claimed.id == job.id and claimed.attempts == 1 and claimed.status == "running"
    a = Attempt(job.id, "w1", 1)
    assert store.report_progress([(a, {"current": 1, "total": 2})]) == {job.id}
    assert store.complete([(a, {"ok": True}, None)]) == {job.id}
    done = store.get_job(job.id, user.id)
    assert done.status == "complete" and done.result == {"ok": True}
    assert done.finished_at is not None and done.version == 4
    assert store.user_for_token(token).id == user.id
