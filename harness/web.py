"""The live view: the configured ledger in a browser, read-only, updated within a second of each step or record.

    uv run --extra web prepare.py --serve                       # http://127.0.0.1:8765/ (this machine only)
    ssh -N -L 8765:127.0.0.1:8765 you@gpu-box                   # from another machine: a tunnel, nothing exposed

Pages: the night (val_bpb over time per host and branch, the running best, the noise band, held-out scores),
the runs (a filterable table), one run (its diffs against the run it built on, its curve beside the best's, its
log, its decision) and the runs in flight (live loss curves). One page shell and one script (harness/webui/)
render JSON from /api/...; /events tells the page when the ledger or a running log changed (server-sent events).
plotly.js comes from plotly's PyPI package: nothing is fetched from elsewhere, offline included.

Safety: it binds 127.0.0.1 unless --bind names another interface, which needs a token
($AUTORESEARCH_WEB_TOKEN or --token; the browser keeps it in a cookie after the first ?token=). Every ledger text
is rendered as text; the database URL never leaves this process; the Content-Security-Policy allows this
server's own scripts only.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import os
import threading
import time
from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from harness import heldout, webdata
from harness.config import ConfigError

UI_DIR = Path(__file__).with_name("webui")
POLL_S = 0.5                    # how often /events looks for a change: a new record shows within ~1 s
LOCAL = ("127.0.0.1", "localhost", "::1")
TOKEN_ENV = "AUTORESEARCH_WEB_TOKEN"
COOKIE = "autoresearch_token"
HEADERS = {"Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
                                      "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'",
           "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "Cache-Control": "no-store"}


def plotly_js() -> Path:
    """plotly.min.js as its PyPI package ships it."""
    import plotly
    path = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    if not path.is_file():
        raise ConfigError(f"the live view: plotly's package has no {path.name} (reinstall: uv sync --extra web)")
    return path


class Snapshot:
    """The ledger, read again only when it changed: file sizes and times (results.tsv, index.jsonl, claims,
    held-out scores, the logs of runs in flight), or on PostgreSQL the newest row, claim and score."""

    def __init__(self, store):
        self.store, self.lock = store, threading.Lock()
        self.local = getattr(store, "local", store)
        self.local.memo = {}                # index.jsonl's lines parsed once: a new record costs its own line
        self.version, self.data, self.cache, self.looked = None, None, {}, 0.0

    def _stat(self, path) -> tuple:
        try:
            st = os.stat(path)
            return st.st_size, st.st_mtime_ns
        except OSError:
            return ()

    def current_version(self) -> tuple:
        now = time.time()
        claims = self.store.claims(now)
        logs = tuple(self._stat(c["log"]) for c in claims if isinstance(c.get("log"), str))
        if hasattr(self.store, "db"):
            from harness.pgconn import CLAIMS, HELDOUT, RUNS, Unreachable
            try:
                db = self.store.db.retry(lambda conn: conn.execute(
                    f"SELECT (SELECT coalesce(max(seq), 0) FROM {RUNS}), (SELECT count(*) FROM {HELDOUT}), "
                    f"(SELECT count(*) FROM {CLAIMS})").fetchone())
            except (Unreachable, ConfigError):      # read() says so (store.note) and shows this host's runs
                db = ("unreachable", int(now) // 10)
        else:
            db = ()
        files = (self.local.results, self.local.sessions / "index.jsonl", self.local.claims_path,
                 self.local.sessions / heldout.HELDOUT_FILE)
        return (tuple(self._stat(p) for p in files), db, tuple((c["run_id"], c.get("steps")) for c in claims), logs)

    def get(self) -> tuple:
        """(version, rows, index, held-out scores), read again if anything changed since the last call; the
        change is looked for at most every POLL_S / 2, however many pages are open."""
        if time.monotonic() - self.looked < POLL_S / 2 and self.data is not None:
            with self.lock:
                return (str(hash(self.version)), *self.data)
        v = self.current_version()
        self.looked = time.monotonic()
        with self.lock:
            if v != self.version:
                rows, index = self.store.read()
                self.data, self.version, self.cache = (rows, index, heldout.read(self.store)), v, {}
            return (str(hash(self.version)), *self.data)

    def cached(self, name: str, make) -> bytes:
        """A response body computed once per version (the night's 10,000 runs are serialized once)."""
        version, *data = self.get()
        with self.lock:
            if (name, version) not in self.cache:
                self.cache[(name, version)] = json.dumps(make(*data), separators=(",", ":"), default=str).encode()
            return self.cache[(name, version)]


def ledger_name(store) -> str:
    """What the page says it reads: a file path, or the shared database by its variable's name (never its URL)."""
    if hasattr(store, "db"):
        return f"the shared PostgreSQL ledger (${store.env})"
    return str(store.results)


class TokenGate(BaseHTTPMiddleware):
    """With a token: every request carries it (?token=, the cookie this sets, or Authorization: Bearer)."""

    def __init__(self, app, token: str):
        super().__init__(app)
        self.token = token

    async def dispatch(self, request, call_next):
        given = (request.query_params.get("token") or request.cookies.get(COOKIE)
                 or request.headers.get("authorization", "").removeprefix("Bearer ").strip())
        if not given or not hmac.compare_digest(given.encode(), self.token.encode()):
            return Response("a token is needed: open the URL the server printed (…/?token=…)", 403,
                            media_type="text/plain", headers=HEADERS)
        response = await call_next(request)
        if request.query_params.get("token"):
            response.set_cookie(COOKIE, self.token, httponly=True, samesite="strict")
        return response


def make_app(store, token: str | None = None, poll_s: float = POLL_S,
             stopping: threading.Event | None = None) -> Starlette:
    """The view's routes; `stopping`, once set, ends the open /events streams (the server can then stop at once)."""
    snap, stopping = Snapshot(store), stopping or threading.Event()

    def page(request):
        return FileResponse(UI_DIR / "index.html", headers=HEADERS)

    def asset(request):
        name = request.path_params["name"]
        path = plotly_js() if name == "plotly.min.js" else UI_DIR / name
        if name not in ("plotly.min.js", "app.js", "app.css") or not path.is_file():
            return Response("not found", 404, headers=HEADERS)
        return FileResponse(path, headers={**HEADERS, "Cache-Control": "max-age=3600"})

    def body(data: bytes, status: int = 200) -> Response:
        return Response(data, status, media_type="application/json", headers=HEADERS)

    def api_night(request):
        return body(snap.cached("night", lambda rows, index, held: dict(
            webdata.night(rows, index, held), ledger=ledger_name(store), note=getattr(store, "note", None))))

    def api_run(request):
        run_id = request.path_params["run_id"]
        found = snap.cached(f"run:{run_id}", lambda rows, index, held: webdata.one_run(store, rows, index, held,
                                                                                        run_id))
        return body(found) if found != b"null" else JSONResponse({"error": "no such run"}, 404, headers=HEADERS)

    def api_live(request):
        return body(snap.cached("live", lambda rows, index, held: webdata.live(store, rows, index, time.time())))

    async def events(request):
        async def stream():
            last = None
            while not stopping.is_set() and not await request.is_disconnected():
                version = (await run_in_threadpool(snap.get))[0]
                if version != last:
                    last = version
                    yield f"data: {json.dumps({'version': version})}\n\n"
                await asyncio.sleep(poll_s)
        return StreamingResponse(stream(), media_type="text/event-stream", headers=HEADERS)

    routes = [Route(p, page) for p in ("/", "/runs", "/live", "/run/{run_id}")] + [
        Route("/static/{name}", asset), Route("/api/night", api_night), Route("/api/live", api_live),
        Route("/api/run/{run_id}", api_run), Route("/events", events),
        Route("/favicon.ico", lambda request: Response(status_code=204, headers=HEADERS))]
    return Starlette(routes=routes, middleware=[Middleware(TokenGate, token=token)] if token else [])


def check_bind(bind: str, token: str | None) -> None:
    if bind not in LOCAL and not token:
        raise ConfigError(f"--bind {bind}: another interface than 127.0.0.1 needs a token (${TOKEN_ENV} or --token): "
                          f"anyone who reaches the port would read the ledger; or keep 127.0.0.1 and use an SSH "
                          f"tunnel")


def serve(s, bind: str, port: int, token: str | None) -> int:
    import uvicorn

    from harness.database import open_ledger
    token = token or os.environ.get(TOKEN_ENV) or None
    check_bind(bind, token)
    store = open_ledger(s)
    plotly_js()
    host = f"[{bind}]" if ":" in bind else bind
    print(f"live view of {ledger_name(store)}: http://{host}:{port}/" + (f"?token={token}" if token else "")
          + ("" if bind in LOCAL else " (token needed: keep this URL private)"), flush=True)
    stopping = threading.Event()

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):          # Ctrl-C: the open /events streams end first
            stopping.set()
            super().handle_exit(sig, frame)
    with contextlib.suppress(KeyboardInterrupt):    # uvicorn raises the Ctrl-C again once it has stopped
        Server(uvicorn.Config(make_app(store, token, stopping=stopping), host=bind, port=port, log_level="warning",
                              ws="none", timeout_graceful_shutdown=2)).run()
    print("live view: stopped")
    return 0
