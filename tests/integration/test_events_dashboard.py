"""The dashboard page as the API serves it: where it points the browser's EventSource."""

from __future__ import annotations

import re

import pytest

from bgjobs.core.store import Store
from bgjobs.server.api import create_app


def _events_meta(html: str) -> str:
    match = re.search(r'<meta name="bgjobs-events" content="([^"]*)">', html)
    assert match, html[:500]
    return match.group(1)


def test_the_page_streams_from_the_host_it_was_loaded_from_on_the_events_port(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BGJOBS_EVENTS_URL", raising=False)
    monkeypatch.setenv("BGJOBS_EVENTS_BIND", "0.0.0.0:8101")
    client = create_app(store=store).test_client()
    for host, expected in [("localhost:8000", "http://localhost:8101"),
                           ("127.0.0.1:8000", "http://127.0.0.1:8101"),
                           ("[::1]:8000", "http://[::1]:8101")]:
        response = client.get("/", headers={"Host": host})
        assert response.status_code == 200
        assert response.content_type == "text/html; charset=utf-8"
        assert _events_meta(response.get_data(as_text=True)) == expected

    html = client.get("/").get_data(as_text=True)
    assets = re.findall(r'(?:href|src)="(/dashboard/static/[^"]+)"', html)
    assert len(assets) == 2
    for asset in assets:
        with client.get(asset) as response:  # a file response: close it
            assert response.status_code == 200, asset


@pytest.mark.parametrize(("configured", "expected"), [
    ("/", ""),  # same origin, behind a proxy
    ("https://events.example.com/", "https://events.example.com"),
    ('"><script>alert(1)</script>', "&#34;&gt;&lt;script&gt;alert(1)&lt;/script&gt;"),
])
def test_bgjobs_events_url_overrides_it(store: Store, monkeypatch: pytest.MonkeyPatch,
                                        configured: str, expected: str) -> None:
    monkeypatch.setenv("BGJOBS_EVENTS_URL", configured)
    html = create_app(store=store).test_client().get("/").get_data(as_text=True)
    assert _events_meta(html) == expected
