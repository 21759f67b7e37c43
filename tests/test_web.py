"""The live view (harness/web.py) in a real headless browser: the distribution's Chromium driven by Playwright,
against a server on 127.0.0.1 over a fixture ledger (tests/web_fixture.py) written through the ledger's own append.

    uv run --all-extras pytest tests/test_web.py
    AUTORESEARCH_SCREENSHOTS=docs/web uv run --all-extras pytest tests/test_web.py   # refresh docs/web/*.png

Pages render the ledger's runs; a new record and a new step appear without a reload; hostile descriptions stay
text; a PostgreSQL ledger of two hosts shows both; the page works with every other host blocked; a token guards
any other interface, and no secret reaches the browser.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from web_fixture import HOSTILE, add_run, build_ledger, run_id, start_server  # noqa: E402

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
playwright = pytest.importorskip("playwright.sync_api")
REPO = Path(__file__).resolve().parents[1]
UPDATE_S = 2.0                  # the bound on a new record's or step's delay


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("Chromium not found: .ci/run installs the distribution's chromium package")
        pytest.skip("Chromium not found (apt-get install chromium)")
    return found


@pytest.fixture(scope="module")
def browser():
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def served(tmp_path):
    store, ids = build_ledger(tmp_path / "ledger")
    base, stop = start_server(store)
    yield store, ids, base
    stop()


def wait_js(page, expression: str, timeout_s: float) -> float:
    """Seconds until `expression` is true in the page (polled from here: the page's CSP forbids eval, which
    Playwright's wait_for_function would need)."""
    t0 = time.monotonic()
    while not page.evaluate(expression):
        assert time.monotonic() - t0 < timeout_s, f"not true within {timeout_s}s: {expression}"
        time.sleep(0.05)
    return time.monotonic() - t0


def open_page(browser, url: str):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.dialogs, page.errors = [], []
    page.on("dialog", lambda d: (page.dialogs.append(d.message), d.dismiss()))
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    page.goto(url)
    wait_js(page, "Number(document.body.dataset.renders) >= 1", 20)
    return page


def shot(page, name: str, tmp_path: Path) -> Path:
    folder = Path(os.environ.get("AUTORESEARCH_SCREENSHOTS") or tmp_path)
    folder = folder if folder.is_absolute() else REPO / folder
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10000           # a page, not a blank
    return path


def test_the_pages_render_the_ledgers_runs(browser, served, tmp_path):
    store, ids, base = served
    page = open_page(browser, base + "/")
    kpis = page.inner_text("#kpis")
    assert "8\nruns" in kpis and "1\nkeeps" in kpis and "1\ncrashes" in kpis and "1\npruned" in kpis
    assert "0.987500 (2 runs)\nbest mean" in kpis            # the keep's configuration: 0.99 and 0.985
    data = page.evaluate("document.getElementById('night-chart').data.map(t => [t.name, t.y.length])")
    points = {name: n for name, n in data}
    assert points["gpu-a / night/a"] == 4 and points["gpu-b / night/b"] == 2      # crash and pruned: no val_bpb
    assert points["held-out score (never shown to the agent)"] == 2 and "running best" in points
    assert "noise band (best mean ± sigma)" in points
    shot(page, "night", tmp_path)

    page.goto(base + "/runs")
    page.wait_for_selector("#runs-body tr")
    assert page.locator("#runs-body tr").count() == 8
    page.select_option("#f-host", "gpu-b")
    assert page.locator("#runs-body tr").count() == 4
    page.select_option("#f-host", "")
    page.fill("#f-seed", "42")
    assert page.locator("#runs-body tr").count() == 5
    page.fill("#f-seed", "")
    page.select_option("#f-status", "keep")
    assert page.eval_on_selector_all("#runs-body tr", "rows => rows.map(r => r.dataset.run)") == [ids["keep"]]
    assert page.inner_text("#shown") == "1 of 8 runs match"
    page.select_option("#f-status", "")
    shot(page, "runs", tmp_path)

    page.click(f'a[href="/run/{ids["keep"]}"]')
    page.wait_for_selector("#run-id")
    assert page.inner_text("#run-id") == ids["keep"]
    text = page.inner_text("main")
    model_diff, train_diff = page.eval_on_selector_all("pre.diff", "blocks => blocks.map(b => b.textContent)")
    assert '-  "matrix_lr": 0.04,\n+  "matrix_lr": 0.08,' in model_diff and "-    lr = 0.04\n+    lr = 0.08" in train_diff
    assert page.eval_on_selector_all("pre.diff .add", "s => s.map(x => x.textContent)") == [
        '+  "matrix_lr": 0.08,\n', "+    lr = 0.08\n"]
    assert "gain 0.0145 beyond the margin 0.0100 over 2 seeds" in text and f"built on: {ids['baseline']}" in text
    assert "step 00950 (95.0%) | loss: 2.100000" in page.inner_text("#log")
    traces = page.evaluate("document.getElementById('run-chart').data.map(t => t.name)")
    assert traces == [f"best: {ids['confirm']} (seed 42)", ids["keep"]]
    shot(page, "run", tmp_path)

    page.goto(base + "/live")
    page.wait_for_selector("[data-live]")
    assert page.get_attribute("[data-live]", "data-live") == ids["inflight"]
    assert "30 steps so far" in page.inner_text("[data-live] .meta")
    assert page.inner_text("[data-live] h3") == "gpu-a / night/a: <b>in flight</b> window 512"
    shot(page, "live", tmp_path)
    assert page.errors == []


def test_a_new_record_and_a_new_step_appear_without_a_reload(browser, served):
    store, ids, base = served
    page = open_page(browser, base + "/runs")
    page.evaluate("window.__same_page = 1")
    t0 = time.monotonic()
    new = add_run(store, 9, "discard", 1.03, "gpu-b", "night/b", 45, "cfgH" * 4, "a record written now")
    page.wait_for_selector(f'tr[data-run="{new}"]', timeout=int(UPDATE_S * 1000))
    delay = time.monotonic() - t0
    assert delay < UPDATE_S and page.evaluate("window.__same_page") == 1
    assert page.inner_text("#shown") == "9 of 9 runs match"

    page.goto(base + "/live")
    page.wait_for_selector("[data-live]")
    page.evaluate("window.__same_page = 2")
    log = Path(store.sessions) / f"{ids['inflight']}.log"
    with open(log, "a") as f:
        f.write("".join(f"step {s:05d} ({s:.1f}%) | loss: {5 - s / 40:.6f} | dt: 280ms\r" for s in range(30, 35)))
    wait_js(page, "document.querySelector('[data-live] .meta').textContent.includes('35 steps so far')", UPDATE_S)
    assert page.evaluate("window.__same_page") == 2


def test_hostile_descriptions_render_as_text(browser, served):
    store, ids, base = served
    page = open_page(browser, base + "/runs")
    page.wait_for_selector("#runs-body tr")
    descs = page.eval_on_selector_all("#runs-body td.desc", "cells => cells.map(c => c.textContent)")
    assert HOSTILE[0] in descs and HOSTILE[1] in descs
    assert page.evaluate("document.querySelectorAll('main img, main script').length") == 0
    page.goto(base + "/")
    page.wait_for_selector("#night-chart .main-svg")
    hover = page.evaluate("document.getElementById('night-chart').data.flatMap(t => t.text || [])")
    assert any("&lt;script&gt;window.__xss = 1; alert(1)&lt;/script&gt;" in h for h in hover)
    page.goto(base + f"/run/{ids['discard']}")
    page.wait_for_selector("#run-desc")
    assert page.inner_text("#run-desc") == HOSTILE[1]
    time.sleep(0.3)                                     # an onerror would have fired by now
    assert page.dialogs == [] and page.evaluate("window.__xss") is None and page.errors == []


def test_a_postgres_ledger_of_two_hosts_shows_both(browser, postgres, tmp_path):
    from harness import database, ledger
    url = postgres.new_database("web_two_hosts")
    stores = [database.PostgresLedger(url, ledger.FileLedger(tmp_path / h / "results.tsv", tmp_path / h / "sessions"))
              for h in ("a", "b")]
    add_run(stores[0], 1, "baseline", 1.0, "host-a", "night/a", 42, "cfgA" * 4, "baseline on a")
    add_run(stores[1], 2, "discard", 1.01, "host-b", "night/b", 42, "cfgB" * 4, "an edit on b")
    add_run(stores[0], 3, "repeat", 1.002, "host-a", "night/a", 43, "cfgA" * 4, "seed 43 on a")
    base, stop = start_server(stores[0])
    try:
        page = open_page(browser, base + "/runs")
        page.wait_for_selector("#runs-body tr")
        hosts = page.eval_on_selector_all("#runs-body tr td:nth-child(6)", "cells => cells.map(c => c.textContent)")
        assert hosts == ["host-a", "host-b", "host-a"]
        assert "the shared PostgreSQL ledger ($AUTORESEARCH_DATABASE_URL)" in page.inner_text("#ledger")
        bodies = [page.evaluate(f"fetch('{p}').then(r => r.text())") for p in ("/api/night", "/api/live",
                                                                              f"/api/run/{run_id(2)}")]
        assert all(postgres.PASSWORD not in b and "postgresql://" not in b for b in bodies)
        assert json.loads(bodies[2])["host"] == "host-b"
        add_run(stores[1], 4, "discard", 1.02, "host-b", "night/b", 43, "cfgC" * 4, "another edit on b")
        page.wait_for_selector(f'tr[data-run="{run_id(4)}"]', timeout=int(UPDATE_S * 1000) + 1000)
    finally:
        stop()
        for s in stores:
            s.close()


def test_the_page_works_with_the_network_blocked(browser, tmp_path):
    store, ids = build_ledger(tmp_path / "ledger")
    base, stop = start_server(store)
    try:                                   # no host name resolves, and any request elsewhere is aborted
        b = browser.browser_type.launch(executable_path=chromium(), args=[
            "--no-sandbox", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"])
        context = b.new_context()
        elsewhere = []
        context.route("**/*", lambda route: route.continue_() if route.request.url.startswith(base)
                      else (elsewhere.append(route.request.url), route.abort()))
        page = context.new_page()
        page.goto(base + "/")
        page.wait_for_selector("#night-chart .main-svg", timeout=20000)
        assert page.evaluate("typeof Plotly.react") == "function"
        assert page.evaluate("document.querySelectorAll('#night-chart .point').length") == 6 + 2    # + held-out
        b.close()
        assert elsewhere == []
    finally:
        stop()


def test_a_token_guards_any_other_interface(tmp_path, run_dir):
    import requests
    from harness.config import ConfigError
    from harness.web import check_bind
    with pytest.raises(ConfigError, match=r"^--bind 0.0.0.0: another interface than 127.0.0.1 needs a token"):
        check_bind("0.0.0.0", None)
    check_bind("0.0.0.0", "t0k3n")
    check_bind("127.0.0.1", None)
    r = subprocess.run([sys.executable, str(REPO / "prepare.py"), "--serve", "--bind", "0.0.0.0"], capture_output=True,
                       text=True, timeout=60, env=dict(os.environ, AUTORESEARCH_GROUND=str(run_dir / "ground.json"),
                                                       AUTORESEARCH_WEB_TOKEN=""), cwd=run_dir)
    assert r.returncode == 2 and r.stderr.startswith("error: --bind 0.0.0.0: another interface") and r.stdout == ""
    r = subprocess.run([sys.executable, str(REPO / "prepare.py"), "--serve", "--port", "70000"], capture_output=True,
                       text=True, timeout=60, env=dict(os.environ, AUTORESEARCH_GROUND=str(run_dir / "ground.json")),
                       cwd=run_dir)
    assert (r.returncode, r.stderr, r.stdout) == (2, "error: --port: expected a port number between 1 and 65535, got "
                                                     "70000\n", "")
    store, ids = build_ledger(tmp_path / "ledger")
    base, stop = start_server(store, token="t0k3n")
    try:
        assert requests.get(base + "/api/night", timeout=10).status_code == 403
        assert requests.get(base + "/api/night", headers={"Authorization": "Bearer wrong"}, timeout=10).status_code == 403
        with requests.Session() as s:
            first = s.get(base + "/?token=t0k3n", timeout=10)
            assert first.status_code == 200 and "autoresearch_token" in s.cookies
            night = s.get(base + "/api/night", timeout=10)      # the cookie alone
            assert night.status_code == 200 and len(night.json()["runs"]["run_id"]) == 8
            assert "Content-Security-Policy" in night.headers
    finally:
        stop()


def test_the_views_values_without_a_browser(tmp_path):
    """webdata: a running log's curve, a crash's page without a decision, and a hand-made row's id never naming a
    file outside sessions/."""
    from harness import heldout, webdata
    from harness.ledger import LEDGER_COLUMNS, ledger_line
    store, ids = build_ledger(tmp_path / "ledger")
    curve = webdata.log_curve(Path(store.sessions) / f"{ids['inflight']}.log")
    assert len(curve) == 30 and curve[0] == [0.0, 5.0] and curve[-1] == [0.29, pytest.approx(5 - 29 / 40)]
    (tmp_path / "secret.log").write_text("not for the browser")
    with open(store.results, "a") as f:          # a row added by hand, its id a path
        f.write(ledger_line({c: None for c in LEDGER_COLUMNS} | {"run_id": "../secret", "commit": "x", "val_bpb": 0.5,
                                                                 "status": "keep", "description": "forged",
                                                                 "comparability_key": "k1"}))
    rows, index = store.read()
    page = webdata.one_run(store, rows, index, heldout.read(store), "../secret")
    assert page["log"] == "" and page["row"]["status"] == "unverified" and page["files"] is False
    (tmp_path / "secret.json").write_text(json.dumps({"run_id": "x", "files": {"model.json": "SECRET", "train.py": ""}}))
    assert store.files("../secret") is None
    crash = webdata.one_run(store, rows, index, {}, ids["crash"])
    assert crash["decision"] is None and crash["error"] == "CUDA out of memory" and crash["row"]["val_bpb"] is None
    night = webdata.night(rows, index, heldout.read(store))
    assert night["runs"]["status"][-1] == "unverified" and night["keys"][0]["best_mean"] == pytest.approx(0.9875)
    assert [v for _, v in night["keys"][0]["best_line"]] == pytest.approx([1.0, 1.002, 0.9875])   # the rule's means
    assert webdata.one_run(store, rows, index, {}, "no-such-run") is None
    (tmp_path / "other.log").write_text("step 00001 (50.0%) | loss: 1.000000 |\r")      # a file the claim names
    now = time.time()
    store.claim({"run_id": run_id(98), "started": now, "expires": now + 60, "log": str(tmp_path / "other.log")})
    forged = next(c for c in webdata.live(store, rows, index, store.claims(now)) if c["run_id"] == run_id(98))
    assert (forged["curve"], forged["log_here"]) == ([], False)      # only sessions/<run_id>.log of this host


def test_another_hosts_run_in_flight_shows_the_curve_its_claim_carries(browser, postgres, tmp_path, monkeypatch):
    """harness/liveclaim.py on a real server: host b's run in flight sends its claim again with its curve; host a's
    view draws it (b's log is not on a) and follows it; after stop() nothing is written, and the record's deletion
    of the claim empties "Running now"."""
    from harness import database, ledger, liveclaim
    url = postgres.new_database("web_live_claim")
    a, b = (database.PostgresLedger(url, ledger.FileLedger(tmp_path / h / "results.tsv", tmp_path / h / "sessions"))
            for h in ("a", "b"))
    add_run(a, 1, "baseline", 1.0, "host-a", "night/a", 42, "cfgA" * 4, "baseline on a")
    add_run(a, 2, "repeat", 1.002, "host-a", "night/a", 43, "cfgA" * 4, "seed 43 on a")
    now = time.time()
    claim = {"run_id": run_id(7), "started": now - 30, "expires": now + 3600, "host": "host-b", "branch": "night/b",
             "description": "lr x2 on b", "seed": 42, "fingerprint": "cfgB" * 4, "comparability_key": "k1",
             "log": "/on/host-b/only.log"}
    b.claim(claim)
    monkeypatch.setattr(liveclaim, "LIVE_CLAIM_S", 0.0)
    live = liveclaim.LiveClaim(b, claim)
    live.update([(0.1, 6.0), (0.2, 5.5)])
    live.thread.join()
    base, stop = start_server(a)
    try:
        page = open_page(browser, base + "/live")
        page.wait_for_selector("[data-live]")
        assert "2 points so far (its log is on another host" in page.inner_text("[data-live] .meta")
        trace = page.evaluate("document.querySelector('[data-live] .chart').data.at(-1)")
        assert trace["name"] == "this run (live)" and trace["y"] == [6.0, 5.5]
        live.update([(0.1, 6.0), (0.2, 5.5), (0.3, 5.1)])
        live.thread.join()
        wait_js(page, "document.querySelector('[data-live] .meta').textContent.includes('3 points so far')", UPDATE_S)
        live.stop()
        live.update([(0.1, 6.0)] * 5)                   # stopped: nothing more is sent
        assert live.thread.is_alive() is False and a.claims(time.time())[0]["steps"] == 3
        add_run(b, 7, "discard", 1.03, "host-b", "night/b", 42, "cfgB" * 4, "lr x2 on b")   # recorded: unclaimed
        page.wait_for_selector("#none", timeout=int(UPDATE_S * 1000) + 1000)
        assert page.inner_text("#none") == "Nothing is running now."
    finally:
        stop()
        a.close()
        b.close()


def test_prepare_serve_starts_answers_and_stops_on_ctrl_c(run_dir):
    """The command README gives: it prints its URL (127.0.0.1, no token), serves the page and the API of the
    configured ledger, and a Ctrl-C ends it at once with an open /events stream."""
    import requests
    from web_fixture import free_port
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(REPO / "prepare.py"), "--serve", "--port", str(port)], cwd=run_dir,
                            env=dict(os.environ, AUTORESEARCH_GROUND=str(run_dir / "ground.json"), PYTHONUNBUFFERED="1",
                                     AUTORESEARCH_MODEL=str(run_dir / "model.json")),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line == f"live view of {run_dir / 'results.tsv'}: http://127.0.0.1:{port}/\n", line
        for _ in range(100):                           # the server listens a moment after the line
            try:
                page = requests.get(f"http://127.0.0.1:{port}/runs", timeout=5)
                break
            except requests.ConnectionError:
                time.sleep(0.1)
        assert page.status_code == 200 and '<script src="/static/app.js"' in page.text
        night = requests.get(f"http://127.0.0.1:{port}/api/night", timeout=5).json()
        assert night["runs"]["run_id"] == [] and night["ledger"] == str(run_dir / "results.tsv")
        events = requests.get(f"http://127.0.0.1:{port}/events", stream=True, timeout=5)
        first = json.loads(next(events.iter_lines()).removeprefix(b"data: "))
        assert set(first) == {"ledger", "live"}
        rebound = requests.get(f"http://127.0.0.1:{port}/api/night", headers={"Host": "rebound.example:80"}, timeout=5)
        assert rebound.status_code == 400          # a page elsewhere whose name now points here: refused by its Host
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 0 and time.monotonic() - t0 < 10
        events.close()
    finally:
        proc.kill()
