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
import math
import os
import threading
import time
from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
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
    """The ledger as the pages read it, kept up to date by one thread of its own (run(), every poll): a request never
    waits on the files or the database. Two parts, each with its version: the ledger (results.tsv, index.jsonl,
    the held-out scores; on PostgreSQL the newest row and score), read again only when it changed, and the runs in
    flight (the claims, the logs of this host's runs), which change at every step and are cheap to read."""

    def __init__(self, store, poll_s: float = POLL_S):
        self.store, self.poll_s, self.lock = store, poll_s, threading.RLock()
        self.local = getattr(store, "local", store)
        self.ledger_version = self.live_version = None
        self.data, self.claims, self.cache, self.error = None, [], {}, None
        self.ready = threading.Event()

    @staticmethod
    def _stat(path) -> tuple:
        try:
            st = os.stat(path)
            return st.st_size, st.st_mtime_ns
        except OSError:
            return ()

    def _ledger_part(self) -> tuple:
        files = (self.local.results, self.local.sessions / "index.jsonl", self.local.sessions / heldout.HELDOUT_FILE)
        db = ()
        if hasattr(self.store, "db"):
            from harness.pgconn import HELDOUT, RUNS, Unreachable
            try:                                # the held-out table may be missing on an older database
                db = self.store.db.retry(lambda conn: conn.execute(
                    f"SELECT (SELECT coalesce(max(seq), 0) FROM {RUNS}), to_regclass(%s) IS NOT NULL",
                    (HELDOUT,)).fetchone())
                if db[1]:
                    db = (db[0], self.store.db.retry(lambda conn: conn.execute(
                        f"SELECT count(*) FROM {HELDOUT}").fetchone())[0])
            except (Unreachable, ConfigError):      # read() says so (store.note) and shows this host's runs
                db = ("unreachable", int(time.time()) // 60)
        return tuple(self._stat(p) for p in files), db

    def refresh(self) -> None:
        """Look once: the claims and logs always, the ledger when its part changed."""
        claims = self.store.claims(time.time())
        part = self._ledger_part()
        if part != self.ledger_version:
            rows, index = self.store.read()
            data = (rows, index, heldout.read(self.store))
            with self.lock:
                self.data, self.ledger_version, self.cache = data, part, {}
        live = (self._stat(self.local.claims_path),
                tuple((c["run_id"], c.get("steps"), self._stat(webdata.local_log(self.store, c) or "")) for c in claims))
        with self.lock:
            self.claims, self.live_version, self.error = claims, live, None
        self.ready.set()

    def run(self, stopping: threading.Event) -> None:
        while not stopping.is_set():
            try:
                self.refresh()
            except ConfigError as e:            # a ledger damaged by hand: the page says so, and it looks again
                with self.lock:
                    self.error = str(e)
                self.ready.set()
            stopping.wait(self.poll_s)

    def versions(self) -> dict:
        with self.lock:
            return {"ledger": str(hash(self.ledger_version)), "live": str(hash(self.live_version))}

    def per_ledger(self, name, make):
        """A value computed once per version of the ledger (its cache is emptied when the ledger changes)."""
        with self.lock:
            if ("value", name, self.ledger_version) not in self.cache:
                self.cache[("value", name, self.ledger_version)] = make()
            return self.cache[("value", name, self.ledger_version)]

    def cached(self, name: str, make, live: bool = False) -> bytes:
        """A response body computed once per version of what it reads (10,000 runs are serialized once)."""
        self.ready.wait(60)
        with self.lock:
            if self.error or self.data is None:
                raise ConfigError(self.error or "the ledger has not been read yet")
            key = (name, self.ledger_version, self.live_version if live else None)
            if key not in self.cache:
                value = make(*self.data, self.claims)
                try:
                    body = json.dumps(value, separators=(",", ":"), default=str, allow_nan=False)
                except ValueError:             # a NaN or infinity from a hand-edited file: shown as missing
                    body = json.dumps(_nulled(value), separators=(",", ":"), default=str)
                if live:                        # the runs in flight change at every step: keep only the newest
                    for old in [k for k in self.cache if k[0] == name]:
                        del self.cache[old]
                self.cache[key] = body.encode()
            return self.cache[key]


def _nulled(v):
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: _nulled(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_nulled(x) for x in v]
    return v


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
    """The view's routes and the thread that keeps its Snapshot; `stopping`, once set, ends that thread and the open
    /events streams (the server can then stop at once)."""
    snap, stopping = Snapshot(store, poll_s), stopping or threading.Event()
    threading.Thread(target=snap.run, args=(stopping,), name="live-view-snapshot", daemon=True).start()

    def page(request):
        return FileResponse(UI_DIR / "index.html", headers=HEADERS)

    def asset(request):
        name = request.path_params["name"]
        path = plotly_js() if name == "plotly.min.js" else UI_DIR / name
        if name not in ("plotly.min.js", "app.js", "app.css") or not path.is_file():
            return Response("not found", 404, headers=HEADERS)
        return FileResponse(path, headers={**HEADERS, "Cache-Control": "max-age=3600"})

    def answer(name: str, make, live: bool = False) -> Response:
        try:
            return Response(snap.cached(name, make, live), media_type="application/json", headers=HEADERS)
        except ConfigError as e:
            return JSONResponse({"error": str(e)}, 503, headers=HEADERS)

    def api_night(request):
        return answer("night", lambda rows, index, held, claims: dict(
            webdata.night(rows, index, held), ledger=ledger_name(store), note=getattr(store, "note", None)))

    def api_run(request):
        run_id = request.path_params["run_id"]
        rows = snap.data[0] if snap.data else []
        if not any(r["run_id"] == run_id for r in rows):        # a miss is not cached (any id would grow it)
            return JSONResponse({"error": "no such run"}, 404, headers=HEADERS)
        return answer(f"run:{run_id}", lambda rows, index, held, claims: webdata.one_run(store, rows, index, held,
                                                                                          run_id))

    def api_live(request):
        return answer("live", lambda rows, index, held, claims: webdata.live(
            store, rows, index, claims, lambda key: snap.per_ledger(("best", key), lambda: webdata.best_curves(
                rows, index, key))), live=True)

    async def events(request):
        async def stream():
            last = None
            while not stopping.is_set() and not await request.is_disconnected():
                versions = snap.versions()      # no I/O: the snapshot's thread looks
                if versions != last:
                    last = versions
                    yield f"data: {json.dumps(versions)}\n\n"
                await asyncio.sleep(poll_s / 2)
        return StreamingResponse(stream(), media_type="text/event-stream", headers=HEADERS)

    routes = [Route(p, page) for p in ("/", "/runs", "/live", "/run/{run_id:path}")] + [
        Route("/static/{name}", asset), Route("/api/night", api_night), Route("/api/live", api_live),
        Route("/api/run/{run_id:path}", api_run), Route("/events", events),
        Route("/favicon.ico", lambda request: Response(status_code=204, headers=HEADERS))]
    # no token: this machine only, and a page elsewhere that rebinds its name to 127.0.0.1 is refused by its Host
    middleware = ([Middleware(TokenGate, token=token)] if token else
                  [Middleware(TrustedHostMiddleware, allowed_hosts=list(LOCAL) + ["[::1]"])])
    return Starlette(routes=routes, middleware=middleware)


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
