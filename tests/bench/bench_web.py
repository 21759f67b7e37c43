"""The live view with a 10,000-run ledger: each page's load time in a real Chromium, and the delay before a new
record shows (not a test; prints the figures).

    uv run --all-extras python tests/bench/bench_web.py [--runs 10000] [--repeats 5]

The ledger: --runs rows of two hosts and four statuses (results.tsv + index.jsonl with 32-point curves, as the
harness writes them), a run in flight. The server runs in this process (harness.web.make_app on uvicorn), the
browser is the distribution's Chromium through Playwright. A page's load: from navigation to the script's first
render done (data fetched, table or chart drawn), with plotly.js in the browser's cache (warm: the second and
later loads) and in a fresh browser context (cold). The update delay: from a row appended through the ledger's
append (once it returned) until its row is in the runs table, without a reload.
"""

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from harness.ledger import LEDGER_COLUMNS, FileLedger, ledger_line  # noqa: E402
from web_fixture import add_run, build_ledger, curve, run_id, start_server  # noqa: E402


def big_ledger(root: Path, n: int) -> FileLedger:
    """The fixture's runs, then n - 8 more written straight into results.tsv and index.jsonl (append()'s lock and
    decision per row would take minutes; the files are the same)."""
    store, _ = build_ledger(root)
    rnd = random.Random(0)
    rows, entries = [], []
    for i in range(100, 100 + n - 8):
        st = rnd.choices(("discard", "confirm", "crash", "pruned", "keep", "repeat"), (60, 15, 8, 10, 3, 4))[0]
        val = None if st in ("crash", "pruned") else round(1.0 - i * 1e-6 + rnd.gauss(0, 0.01), 6)
        rid = run_id(i, "b" + f"{i:06x}")
        rows.append({c: None for c in LEDGER_COLUMNS} | {
            "run_id": rid, "commit": "b" + f"{i:06x}", "val_bpb": val, "status": st, "mode": "train",
            "description": f"edit {i}: matrix_lr x {rnd.choice((0.5, 2, 4))}", "comparability_key": "k1",
            "num_steps": 1000, "timestamp": f"2026-12-07T{(i // 3600) % 24:02d}:{(i // 60) % 60:02d}:{i % 60:02d}+00:00"})
        entries.append({"run_id": rid, "fingerprint": f"cfg{i:013d}", "seed": 42 + i % 3,
                        "host": ("gpu-a", "gpu-b")[i % 2], "branch": f"night/{'ab'[i % 2]}",
                        "curve": curve(val or 3.5), "model": {"matrix_lr": 0.04}})
    with open(store.results, "a") as f:
        f.writelines(ledger_line(r) for r in rows)
    with open(store.sessions / "index.jsonl", "a") as f:
        f.writelines(json.dumps(e, sort_keys=True) + "\n" for e in entries)
    return store


def load(page, url: str) -> float:
    t0 = time.perf_counter()
    page.goto(url)
    while not page.evaluate("Number(document.body.dataset.renders) >= 1"):
        time.sleep(0.01)
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default="/tmp/bench_web")
    args = ap.parse_args()
    import shutil
    shutil.rmtree(args.out, ignore_errors=True)
    t0 = time.perf_counter()
    store = big_ledger(Path(args.out), args.runs)
    rows, _ = store.read()
    print(f"ledger: {len(rows)} runs written and read back in {time.perf_counter() - t0:.1f}s ({store.results})")
    base, stop = start_server(store, poll_s=0.5)
    import requests
    for what in ("first", "again"):
        t0 = time.perf_counter()
        r = requests.get(base + "/api/night", timeout=60)
        print(f"/api/night ({what}: {'ledger read + serialized' if what == 'first' else 'cached'}): "
              f"{time.perf_counter() - t0:.3f}s, {len(r.content) / 1e6:.2f} MB")
    from playwright.sync_api import sync_playwright
    keep = next(r["run_id"] for r in rows if r["status"] == "keep")
    pages = {"night": "/", "runs": "/runs", "run": f"/run/{keep}", "live": "/live"}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium") or "chromium", args=["--no-sandbox"])
        for name, path in pages.items():
            cold = []
            for _ in range(args.repeats):
                ctx = browser.new_context(viewport={"width": 1280, "height": 900})
                cold.append(load(ctx.new_page(), base + path))
                ctx.close()
            ctx = browser.new_context(viewport={"width": 1280, "height": 900})
            page = ctx.new_page()
            load(page, base + path)
            warm = [load(page, base + path) for _ in range(args.repeats)]
            ctx.close()
            print(f"page {name:5s}: warm median {statistics.median(warm):.3f}s max {max(warm):.3f}s; cold (a new "
                  f"browser context: plotly.js fetched) median {statistics.median(cold):.3f}s max {max(cold):.3f}s")
        ctx = browser.new_context()
        page = ctx.new_page()
        load(page, base + "/runs")
        delays, appends = [], []
        for k in range(args.repeats):
            t0 = time.perf_counter()
            new = add_run(store, 50000 + k, "discard", 1.05, "gpu-b", "night/b", 42, f"cfgnew{k}", f"new run {k}")
            appends.append(time.perf_counter() - t0)
            t0 = time.perf_counter()           # the record is in the files from here
            while not page.evaluate(f"!!document.querySelector('tr[data-run=\"{new}\"]')"):
                time.sleep(0.01)
            delays.append(time.perf_counter() - t0)
        print(f"update delay (the record written -> its row in the runs table, no reload), {len(rows)}+ runs: "
              f"median {statistics.median(delays):.3f}s max {max(delays):.3f}s over {len(delays)} (the ledger's "
              f"append itself, before: median {statistics.median(appends):.3f}s)")
        browser.close()
    stop()


if __name__ == "__main__":
    main()
