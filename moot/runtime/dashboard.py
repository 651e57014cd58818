"""The dashboard every node serves (``--http``): one page, the same live
view of the whole federation from whichever node you ask — there is no
dashboard server to lose.

- ``GET /`` the page (``moot/web``: no CDN, no external fonts); ``GET
  /login`` asks for the cluster's client token and sets a cookie
  (``HttpOnly``, ``SameSite=Strict``); ``POST /logout`` clears it.
- ``GET /api/overview``: this node's view — members with labels, resources
  and Vivaldi coordinates; the Raft group; jobs with their progress; the
  object store — in one JSON object.
- ``GET /api/stream``: server-sent events, an ``overview`` every second and
  the federation's new ``events`` (hybrid-clock order) every two. A client
  that stops reading is dropped once a write has waited ``WRITE_TIMEOUT_S``
  (with a log line): it never holds the node's loop or memory.
- ``POST /api/jobs/{id}/cancel``: cancel a job; on a cookie it must come
  from the page itself (same origin), so another site cannot make a logged-in
  browser do it.

The page keeps working when the node that served it dies: it knows every
member's HTTP address (the ``http`` label each node gossips) and reads the
next one's stream instead, sending the token (kept in the tab's
``sessionStorage`` at login) as a Bearer header; nodes allow such
cross-origin reads from the other members' addresses only.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import socket
import time
from importlib import resources
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

import msgspec
from aiohttp import web

from moot.core import tasks, wire
from moot.runtime.events import resume_after
from moot.runtime.logs import log_event

if TYPE_CHECKING:
    from moot.runtime.node import Node

COOKIE: Final = "moot_session"
SESSION_CONTEXT: Final = b"moot dashboard session v1"
OVERVIEW_INTERVAL_S: Final = 1.0
EVENTS_INTERVAL_S: Final = 2.0
EVENTS_PER_POLL: Final = 2_000  # a node keeps that many: a burst between two polls is not cut
WRITE_TIMEOUT_S: Final = 5.0
STREAM_SEND_BUFFER_BYTES: Final = 64 * 1024  # the kernel's share of what a stalled reader can pile up
JOBS_SHOWN_MAX: Final = 50
ASSETS: Final = {"app.js": "text/javascript", "style.css": "text/css"}
OPEN_PATHS: Final = frozenset({"/healthz", "/login"})
JOB_ID: Final = re.compile("[0-9a-f]{32}")


def asset(name: str) -> str:
    return resources.files("moot.web").joinpath(name).read_text(encoding="utf-8")


class Dashboard:
    """The page, its API and its stream, for one node."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.streams = 0
        self.streams_dropped = 0

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/", self.page)
        app.router.add_get("/login", self.login_page)
        app.router.add_post("/login", self.login)
        app.router.add_post("/logout", self.logout)
        app.router.add_get("/static/{name}", self.static)
        app.router.add_get("/api/overview", self.api_overview)
        for part in self._parts():
            app.router.add_get(f"/api/{part}", self.api_part)
        app.router.add_get("/api/stream", self.api_stream)
        app.router.add_post("/api/jobs/{job_id}/cancel", self.api_cancel)

    # -- access ---------------------------------------------------------------------------

    def authorized(self, request: web.Request) -> str | None:
        """How the request proved it holds the token: "bearer", "cookie" or None."""
        expected = self.node.cluster.token.encode()
        header = request.headers.get("Authorization", "")
        if header.startswith("Bearer ") and hmac.compare_digest(header.removeprefix("Bearer ").strip().encode(), expected):
            return "bearer"
        cookie = request.cookies.get(COOKIE, "")
        if cookie and hmac.compare_digest(cookie.encode(), self.session().encode()):
            return "cookie"
        return None

    def session(self) -> str:
        """The login cookie's value: derived from the token, not the token
        (a cookie goes to every port of a host; this one opens the
        dashboard, never the client protocol that runs code)."""
        return hmac.new(self.node.cluster.token.encode(), SESSION_CONTEXT, "sha256").hexdigest()

    @web.middleware
    async def middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """The token on everything but ``/healthz`` and the login page;
        JSON for errors; CORS for the other members' pages."""
        if request.method == "OPTIONS" and request.path.startswith("/api/"):
            return self.preflight(request)
        if request.path not in OPEN_PATHS:
            how = self.authorized(request)
            if how is None:
                if request.method == "GET" and request.path in ("/", "/static/app.js", "/static/style.css"):
                    raise web.HTTPFound("/login")
                return self._cors(request, _unauthorized())
            if request.method == "POST" and how == "cookie" and not _same_origin(request):
                return web.json_response(
                    {"error": "forbidden", "message": "a change made with the login cookie must come from this node's own page"},
                    status=403,
                )
        try:
            response: web.StreamResponse = await handler(request)
        except web.HTTPNotFound:
            response = web.json_response(
                {"error": "not_found", "message": f"no such route: {request.method} {request.path}"}, status=404
            )
        except web.HTTPMethodNotAllowed as error:
            response = web.json_response(
                {"error": "method_not_allowed", "message": f"{request.method} {request.path}: use {', '.join(sorted(error.allowed_methods))}"},
                status=405,
            )
        return self._cors(request, response)

    def _cors(self, request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
        """Let another member's page read ``response`` (only theirs)."""
        origin = request.headers.get("Origin")
        if origin and origin in self.member_origins() and not response.prepared:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Allow-Credentials"] = "true"
            response.headers["Vary"] = "Origin"
        return response

    def preflight(self, request: web.Request) -> web.StreamResponse:
        """A CORS preflight: another member's page may read (and cancel,
        with the token in a header) here."""
        response = self._cors(request, web.Response(status=204))
        if "Access-Control-Allow-Origin" in response.headers:
            response.headers["Access-Control-Allow-Headers"] = "Authorization"
            response.headers["Access-Control-Allow-Methods"] = "GET, POST"
        return response

    def member_origins(self) -> set[str]:
        return {f"http://{member.labels['http']}" for member in self.node.member_infos() if member.labels.get("http")}

    # -- pages ----------------------------------------------------------------------------

    async def page(self, request: web.Request) -> web.Response:
        return web.Response(text=asset("index.html"), content_type="text/html", headers=_no_store())

    async def static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in ASSETS:
            raise web.HTTPNotFound()
        return web.Response(text=asset(name), content_type=ASSETS[name], headers=_no_store())

    async def login_page(self, request: web.Request) -> web.Response:
        return web.Response(text=asset("login.html"), content_type="text/html", headers=_no_store())

    async def login(self, request: web.Request) -> web.Response:
        form = await request.post()
        token = str(form.get("token", "")).strip()
        if not hmac.compare_digest(token.encode(), self.node.cluster.token.encode()):
            log_event(self.node.log, logging.WARNING, "dashboard_login_refused", remote=request.remote or "")
            page = asset("login.html").replace("<!--error-->", '<p class="error">That is not this cluster\'s token.</p>')
            return web.Response(text=page, content_type="text/html", status=401, headers=_no_store())
        response = web.HTTPFound("/")
        response.set_cookie(COOKIE, self.session(), httponly=True, samesite="Strict", path="/")
        raise response

    async def logout(self, request: web.Request) -> web.Response:
        response = web.HTTPFound("/login")
        response.del_cookie(COOKIE, path="/")
        raise response

    # -- data -------------------------------------------------------------------------------

    def overview(self) -> dict[str, Any]:
        node = self.node
        return {
            "node_id": node.node_id,
            "address": node.options.address,
            "time_ms": int(time.time() * 1000),
            "members": [msgspec.to_builtins(info) for info in node.member_infos()],
            **{part: make() for part, make in self._parts().items()},
        }

    def _parts(self) -> dict[str, Any]:
        """The overview's parts that ``/api/<part>`` also serves alone."""
        return {"raft": self._raft, "jobs": self._jobs, "objects": self._objects}

    def _raft(self) -> dict[str, Any] | None:
        node = self.node
        if node.kv is None:
            return None
        status = node.kv.status(0, node.options.address)
        return {
            "role": status.role,
            "term": status.term,
            "leader": status.leader_id,
            "voters": list(status.voters),
            "learners": list(status.learners),
            "commit_index": status.commit_index,
            "applied_index": status.applied_index,
            "revision": status.revision,
            "keys": status.keys,
        }

    def _jobs(self) -> list[dict[str, Any]]:
        """The newest ``JOBS_SHOWN_MAX`` jobs, newest first."""
        node = self.node
        if node.tasks is None or node.kv is None:
            return []
        info = node.tasks.job_info(wire.JobQuery(request_id=0), newest=JOBS_SHOWN_MAX)
        return [msgspec.structs.asdict(summary) for summary in reversed(info.jobs)]

    def _objects(self) -> dict[str, Any] | None:
        return self.node.objects.stats() if self.node.objects is not None else None

    async def api_overview(self, request: web.Request) -> web.Response:
        return web.json_response(self.overview())

    async def api_part(self, request: web.Request) -> web.Response:
        """``/api/raft``, ``/api/jobs``, ``/api/objects``: one part of the overview."""
        part = request.path.removeprefix("/api/")
        return web.json_response({"node_id": self.node.node_id, part: self._parts()[part]()})

    async def api_stream(self, request: web.Request) -> web.StreamResponse:
        """Server-sent events until the client goes (or stops reading)."""
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"})
        self._cors(request, response)
        connection = request.transport.get_extra_info("socket") if request.transport is not None else None
        if connection is not None:
            # Bounded: 64 KiB here, 64 KiB in asyncio's buffer (its high-water
            # mark), then a write waits, and after WRITE_TIMEOUT_S the reader goes.
            connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, STREAM_SEND_BUFFER_BYTES)
        await response.prepare(request)
        self.streams += 1
        after = 0
        next_events = 0.0
        try:
            while True:
                await self._send(response, "overview", self.overview())
                if time.monotonic() >= next_events and self.node.exchange is not None:
                    next_events = time.monotonic() + EVENTS_INTERVAL_S
                    records, missing = await self.node.exchange.federation(after, EVENTS_PER_POLL)
                    after = resume_after(records, after)
                    await self._send(response, "events", {"events": records, "missing": missing})
                await asyncio.sleep(OVERVIEW_INTERVAL_S)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        except TimeoutError:
            self.streams_dropped += 1
            log_event(self.node.log, logging.WARNING, "dashboard_stream_dropped", remote=request.remote or "", waited_s=WRITE_TIMEOUT_S)
            if request.transport is not None:
                request.transport.abort()  # its buffers go now, not when the reader wakes
        finally:
            self.streams -= 1
        return response

    @staticmethod
    async def _send(response: web.StreamResponse, kind: str, data: dict[str, Any]) -> None:
        payload = f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()
        async with asyncio.timeout(WRITE_TIMEOUT_S):
            await response.write(payload)

    async def api_cancel(self, request: web.Request) -> web.Response:
        job_id = request.match_info["job_id"]
        node = self.node
        if node.kv is None or node.tasks is None:
            return web.json_response({"error": "unavailable", "message": "this node runs no database"}, status=503)
        if not JOB_ID.fullmatch(job_id):
            return web.json_response(
                {"error": "bad_request", "message": f"{job_id!r:.80} is not a job id (32 hex digits: `moot job ls`)"},
                status=400,
            )
        if node.kv.server.state.tasks.job(job_id) is None:
            return web.json_response({"error": "not_found", "message": f"no job {job_id}"}, status=404)
        result = await node.kv.write_internal(tasks.CancelJob(job_id))
        if result is None:
            leader = node.kv.server.raft.leader_id
            http = next((m.labels.get("http") for m in node.member_infos() if m.node_id == leader), None)
            return web.json_response(
                {
                    "error": "not_leader",
                    "message": "only the leader can cancel; ask it" if http else "no leader now; try again",
                    "leader_http": f"http://{http}" if http else None,
                },
                status=503,
            )
        return web.json_response({"cancelled": job_id})


def _unauthorized() -> web.Response:
    return web.json_response(
        {
            "error": "unauthorized",
            "message": "send the cluster token as 'Authorization: Bearer <token>' (the file CLUSTER_DIR/token), "
            "or log in at /login",
        },
        status=401,
    )


def _same_origin(request: web.Request) -> bool:
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None:
        return site == "same-origin"
    origin = request.headers.get("Origin")
    return origin is not None and urlsplit(origin).netloc == request.host


def _no_store() -> dict[str, str]:
    return {"Cache-Control": "no-store"}
