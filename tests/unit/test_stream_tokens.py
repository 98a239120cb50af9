"""Signed stream tokens: bound to a user, a scope and an expiry; anything else is refused."""

from __future__ import annotations

import logging
import uuid

import pytest

from bgjobs.server import stream_tokens
from bgjobs.server.errors import ApiError

SECRET = "stream-secret"
JOB = uuid.uuid4()
NOW = 1_800_000_000.0


def refused(excinfo: pytest.ExceptionInfo[ApiError]) -> tuple[int, str]:
    answer = excinfo.value.answer
    return answer.status, answer.message


def test_a_token_grants_its_user_its_job_until_it_expires() -> None:
    token, expires = stream_tokens.issue(SECRET, 7, JOB, 60, now=NOW)
    assert expires == NOW + 60
    grant = stream_tokens.verify(SECRET, token, now=NOW + 59)
    assert grant == stream_tokens.Grant(7, JOB, int(NOW) + 60)
    assert grant.allows(str(JOB)) and grant.allows(str(JOB).upper())
    assert not grant.allows(str(uuid.uuid4())) and not grant.allows(None)
    assert not grant.allows("not-a-uuid")
    with pytest.raises(ApiError) as excinfo:
        stream_tokens.verify(SECRET, token, now=NOW + 60)
    assert refused(excinfo) == (401, "the stream token has expired; ask the app for a new "
                                     "stream URL")


def test_a_user_wide_token_covers_the_users_stream_and_each_of_their_jobs() -> None:
    token, _ = stream_tokens.issue(SECRET, 7, None, 60)
    grant = stream_tokens.verify(SECRET, token)
    assert grant.job_id is None and grant.allows(None) and grant.allows(str(JOB))
    assert stream_tokens.user_for(SECRET, token, None) == 7


@pytest.mark.parametrize("tamper", [
    lambda t: t[:-2] + ("AA" if not t.endswith("AA") else "BB"),  # the signature
    lambda t: t.replace(t.split(".")[0], t.split(".")[0][:-3] + "abc"),  # the payload
    lambda t: "",
    lambda t: "garbage",
    lambda t: t + ".extra",
])
def test_a_tampered_token_is_a_401(tamper) -> None:
    token, _ = stream_tokens.issue(SECRET, 7, JOB, 60)
    with pytest.raises(ApiError) as excinfo:
        stream_tokens.user_for(SECRET, tamper(token), str(JOB))
    assert refused(excinfo)[0] == 401


def test_a_token_signed_with_another_key_is_a_401() -> None:
    token, _ = stream_tokens.issue("another key", 7, JOB, 60)
    with pytest.raises(ApiError) as excinfo:
        stream_tokens.user_for(SECRET, token, str(JOB))
    assert refused(excinfo) == (401, "invalid stream token; ask the app for a new stream URL")


def test_a_session_cookie_is_no_stream_token() -> None:
    from bgjobs.core.jobs import User
    from bgjobs.server.auth import make_session

    cookie = make_session(SECRET, User(7, "x", None, 1))  # type: ignore[arg-type]
    with pytest.raises(ApiError) as excinfo:
        stream_tokens.user_for(SECRET, cookie, None)
    assert refused(excinfo)[0] == 401


@pytest.mark.parametrize("asked", [None, str(uuid.uuid4()), "nope"])
def test_a_job_token_opens_no_other_stream(asked) -> None:
    token, _ = stream_tokens.issue(SECRET, 7, JOB, 60)
    with pytest.raises(ApiError) as excinfo:
        stream_tokens.user_for(SECRET, token, asked)
    assert refused(excinfo) == (403, f"this stream token is for job {JOB} only")


@pytest.mark.parametrize("user_id", [True, "7", None, 7.0])
def test_only_an_int_user_id_gets_a_token(user_id) -> None:
    with pytest.raises(TypeError, match="user id is an int"):
        stream_tokens.issue(SECRET, user_id, None, 60)


KEY_MISMATCH = ("its signature does not match this service's BGJOBS_SECRET_KEY (signed with "
                "another key, or altered): the app and the events service must share it")


@pytest.mark.parametrize(("make", "why"), [
    (lambda: stream_tokens.issue("another key", 7, JOB, 60)[0], KEY_MISMATCH),
    (lambda: stream_tokens.issue(SECRET, 7, JOB, 60, now=NOW - 120)[0],
     "stream token of user 7 refused: it expired 60 s ago"),
    (lambda: "garbage", "malformed (not a stream URL's token)"),
    (lambda: "", "malformed (not a stream URL's token)"),
    (lambda: stream_tokens._serializer(SECRET).dumps({"u": "7", "j": None, "e": 1}),
     "malformed (signed with this service's key, but not a stream token)"),
])
def test_a_refused_token_is_logged_with_why_and_without_the_token(caplog, make, why) -> None:
    token = make()
    with caplog.at_level(logging.WARNING, logger="bgjobs.server.stream_tokens"), \
            pytest.raises(ApiError) as excinfo:
        stream_tokens.verify(SECRET, token, now=NOW)
    assert refused(excinfo)[0] == 401
    [record] = caplog.records
    assert record.levelno == logging.WARNING and why in record.getMessage()
    assert not token or token not in record.getMessage()


def test_a_good_token_logs_nothing(caplog) -> None:
    token, _ = stream_tokens.issue(SECRET, 7, JOB, 60)
    with caplog.at_level(logging.DEBUG, logger="bgjobs.server.stream_tokens"):
        stream_tokens.verify(SECRET, token)
    assert caplog.records == []
