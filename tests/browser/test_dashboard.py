"""The dashboard in a real browser (Debian's chromium, headless, driven by
Playwright) against real node processes: log in with the token, see the
three nodes alive, kill one and watch it turn dead and its death appear on
the timeline, then kill the node that served the page and watch the page
carry on from another node."""

from __future__ import annotations

import hmac
import os
import socket
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from moot.client.local import LocalFederation

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
DETECTION_BOUND_MS = 15_000  # the local profile declares a killed node dead within a few seconds
UI_MS = 20_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert os.path.exists(CHROMIUM), f"{CHROMIUM} is missing: `make test` installs it (apt-get install chromium)"
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--headless"])
        yield launched
        launched.close()


def log_in(page: Page, base: str, token: str) -> None:
    page.goto(base + "/")
    expect(page).to_have_url(base + "/login")
    page.fill("#token", "not-the-token")
    page.click("#submit")
    expect(page.locator(".error")).to_contain_text("not this cluster's token")
    page.fill("#token", token)
    page.click("#submit")
    expect(page).to_have_url(base + "/")


def test_the_dashboard_follows_a_kill_and_outlives_its_node(browser: Browser, tmp_path: Path) -> None:
    labels = [{"region": region} for region in ("lahore", "karachi", "singapore")]
    with LocalFederation(3, directory=tmp_path / "fed", labels=labels) as federation:
        ids = {index: status.node_id for index, status in federation.statuses().items()}
        base = federation.nodes[0].http_url
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        log_in(page, base, federation.token)

        cookies = {cookie["name"]: cookie["value"] for cookie in page.context.cookies()}
        assert "moot_session" in cookies and federation.token not in cookies.values()
        alive = page.locator("#members tbody tr[data-state='alive']")
        expect(alive).to_have_count(3, timeout=UI_MS)
        expect(page.locator("#connection")).to_contain_text("live from", timeout=UI_MS)
        expect(page.locator("#map circle")).to_have_count(3, timeout=UI_MS)
        expect(page.locator("#raft-leader")).not_to_have_text("none", timeout=UI_MS)

        # A node dies: the page shows it dead within the detection bound,
        # and its death on the timeline.
        federation.kill(2)
        expect(page.locator(f"#members tr[data-node='{ids[2]}']")).to_have_attribute(
            "data-state", "dead", timeout=DETECTION_BOUND_MS
        )
        expect(page.locator("#timeline li.member_dead").filter(has_text=ids[2]).first).to_be_visible(timeout=UI_MS)
        page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)

        # The node that served the page dies: the page reads another's stream.
        federation.kill(0)
        expect(page.locator("#connection")).to_contain_text(federation.nodes[1].http_address, timeout=UI_MS)
        expect(page.locator(f"#members tr[data-node='{ids[0]}']")).to_have_attribute(
            "data-state", "dead", timeout=DETECTION_BOUND_MS
        )
        page.screenshot(path=str(tmp_path / "dashboard-after-failover.png"), full_page=True)
        assert (tmp_path / "dashboard.png").stat().st_size > 10_000
        page.close()


def test_the_api_refuses_without_the_token_and_answers_bad_routes_in_json(tmp_path: Path, http: Callable[..., Any]) -> None:
    with LocalFederation(1, directory=tmp_path / "fed") as federation:
        base = federation.nodes[0].http_url
        token = federation.token
        status, body = http(base + "/api/overview")
        assert status == 401 and body["error"] == "unauthorized" and "members" not in body
        status, body = http(base + "/api/overview", token="wrong")
        assert status == 401
        status, body = http(base + "/api/overview", token=token)
        assert status == 200 and body["members"][0]["node_id"] == body["node_id"]
        for part in ("raft", "jobs", "objects"):
            status, body = http(base + f"/api/{part}", token=token)
            assert status == 200 and part in body, body
        status, body = http(base + "/api/raft", token=token)
        assert body["raft"]["leader"] == body["node_id"] and body["raft"]["voters"] == [body["node_id"]]
        status, body = http(base + "/api/nothing-here", token=token)
        assert status == 404 and body["error"] == "not_found"
        status, body = http(base + "/healthz")
        assert status == 200 and body["ok"] is True
        # A change with the login cookie from another site is refused; with
        # the token in a header (curl, scripts) it is the caller's own.
        # The login cookie is derived from the token, never the token itself.
        session = hmac.new(token.encode(), b"moot dashboard session v1", "sha256").hexdigest()
        status, body = http(base + "/api/overview", headers={"Cookie": f"moot_session={token}"})
        assert status == 401, "the raw token is not a session"
        status, body = http(base + "/api/overview", headers={"Cookie": f"moot_session={session}"})
        assert status == 200
        cookie = {"Cookie": f"moot_session={session}", "Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"}
        status, body = http(base + "/api/jobs/" + "0" * 32 + "/cancel", method="POST", headers=cookie)
        assert status == 403 and body["error"] == "forbidden"
        status, body = http(base + "/api/jobs/" + "0" * 32 + "/cancel", method="POST", token=token)
        assert status == 404 and "no job" in body["message"]
        status, body = http(base + "/api/jobs/bogus/cancel", method="POST", token=token)
        assert status == 400 and "job id" in body["message"]


def test_a_stream_reader_that_stops_reading_blocks_nothing_and_is_dropped(
    tmp_path: Path, http: Callable[..., Any]
) -> None:
    with LocalFederation(1, directory=tmp_path / "fed") as federation:
        client = federation.client()
        for value in range(50):  # jobs make each overview a few KiB: the buffers fill sooner
            assert client.submit(abs, -value).result() == value
        node = federation.nodes[0]
        host, port = node.http_address.rsplit(":", 1)
        stalled = socket.socket()
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.connect((host, int(port)))
        request = f"GET /api/stream HTTP/1.1\r\nHost: {node.http_address}\r\nAuthorization: Bearer {federation.token}\r\n\r\n"
        stalled.sendall(request.encode())
        try:
            deadline = time.monotonic() + 90
            dropped = 0.0
            while time.monotonic() < deadline:
                started = time.monotonic()
                status, _ = http(node.http_url + "/healthz")
                assert status == 200 and time.monotonic() - started < 1.0, "the node answers while a reader stalls"
                with urllib.request.urlopen(
                    urllib.request.Request(node.http_url + "/metrics", headers={"Authorization": f"Bearer {federation.token}"}),
                    timeout=10,
                ) as response:
                    text = response.read().decode()
                dropped = next(
                    float(line.split()[1]) for line in text.splitlines() if line.startswith("moot_dashboard_streams_dropped_total")
                )
                if dropped:
                    break
                time.sleep(1)  # polling a condition with a deadline
            assert dropped == 1, "the stalled reader was dropped"
        finally:
            stalled.close()
