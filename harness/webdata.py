"""The live view's data: the ledger's runs, one run's story and the runs in flight, as plain JSON-ready values.

    uv run --extra web prepare.py --serve        # harness/web.py serves these to the browser

Read-only. Everything here comes from the configured ledger (results.tsv + index.jsonl, or the shared database:
every host's runs), the held-out scores and, for runs of this host, their logs. Values only: the browser renders
every text with textContent (never as HTML), and nothing here names the database URL or any secret.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
from pathlib import Path

from harness.checked import RUN_ID
from harness.decide import ACCEPTED, is_scored, run_fingerprint, standing
from harness.lineage import parent_run

STEP_LINE = re.compile(r"step (\d+) \(([\d.]+)%\) \| loss: ([-\d.naif]+)")      # harness/clock.py's progress line
LOG_TAIL_BYTES = 16384          # of a run's log, shown on its page
LIVE_LOG_BYTES = 4 << 20        # read of a running run's log for its curve: more than a 5-minute run writes
HOVER_CHARS = 120               # of a description in the night's table and hover


def runs_table(rows: list[dict], index: dict, heldout: dict) -> dict:
    """Every run as columns (the night's chart and the runs table read the same arrays): compact for 10,000 runs."""
    cols = {k: [] for k in ("run_id", "time", "status", "val_bpb", "host", "branch", "key", "seed", "desc",
                            "config", "heldout", "steps")}
    for r in rows:
        e = index.get(r["run_id"], {})
        h = heldout.get(r["run_id"], {})
        for k, v in (("run_id", r["run_id"]), ("time", r.get("timestamp") or ""), ("status", r["status"]),
                     ("val_bpb", r.get("val_bpb")), ("host", e.get("host") or "?"), ("branch", e.get("branch") or "?"),
                     ("key", r.get("comparability_key") or ""), ("seed", e.get("seed")),
                     ("desc", (r.get("description") or "")[:HOVER_CHARS]), ("config", run_fingerprint(r, index)[:12]),
                     ("heldout", h.get("heldout_bpb")), ("steps", r.get("num_steps"))):
            cols[k].append(v)
    return cols


def key_summary(rows: list[dict], index: dict, key: str) -> dict:
    """The running best of one key as the keep rule sees it (after each run of an accepted configuration, the
    lowest mean over the seeds of the accepted configurations), at the runs' times; the best configuration's mean
    and the noise floor sigma (the band drawn around it)."""
    sums: dict = {}                          # configuration -> [sum, n] of its scored runs
    accepted, best_line, best = set(), [], None
    for r in rows:
        if r["comparability_key"] != key or not is_scored(r):
            continue
        fp = run_fingerprint(r, index)
        acc = sums.setdefault(fp, [0.0, 0])
        acc[0], acc[1] = acc[0] + r["val_bpb"], acc[1] + 1
        if r["status"] in ACCEPTED:
            accepted.add(fp)
        if fp in accepted:
            now = min(sums[f][0] / sums[f][1] for f in accepted)
            if now != best:
                best = now
                best_line.append([r.get("timestamp") or "", now])
    st = standing(rows, index, key)
    return {"key": key, "best_line": sorted(best_line), "best_mean": st.best.mean if st.best else None,
            "best_runs": len(st.best.values) if st.best else 0, "sigma": st.sigma, "dof": st.dof}


def night(rows: list[dict], index: dict, heldout: dict) -> dict:
    keys = list(dict.fromkeys(r["comparability_key"] for r in reversed(rows)))     # the newest key first
    return {"runs": runs_table(rows, index, heldout), "keys": [key_summary(rows, index, k) for k in keys[:8]]}


def best_curves(rows: list[dict], index: dict, key: str) -> tuple[str | None, list]:
    """(the best configuration's first accepted run, the loss curves of its scored runs) in `key`."""
    st = standing(rows, index, key)
    if st.best is None:
        return None, []
    mine = [r for r in rows if r["comparability_key"] == key and is_scored(r)
            and run_fingerprint(r, index) == st.best.fingerprint]
    first = next((r["run_id"] for r in mine if r["status"] in ACCEPTED), None)
    return first, [{"run_id": r["run_id"], "seed": index.get(r["run_id"], {}).get("seed"),
                    "curve": _points(index[r["run_id"]]["curve"])} for r in mine
                   if isinstance(index.get(r["run_id"], {}).get("curve"), list)]


def diff(old: str | None, new: str | None, name: str) -> list[str]:
    if old is None or new is None:
        return []
    return list(difflib.unified_diff(old.splitlines(), new.splitlines(), f"{name} (parent)", name, lineterm="", n=2))


def tail(path: Path | None, limit: int = LOG_TAIL_BYTES) -> str:
    """The end of a log as text (its \\r-joined step lines on lines of their own)."""
    if path is None or not path.is_file():
        return ""
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - limit))
        return f.read().decode("utf-8", errors="replace").replace("\r", "\n")


def log_curve(path: Path | None) -> list[list[float]]:
    """(progress, train loss) of each step line of a log, for a run still in flight."""
    text = tail(path, LIVE_LOG_BYTES)
    out = []
    for m in STEP_LINE.finditer(text):
        try:
            point = [float(m.group(2)) / 100, float(m.group(3))]
        except ValueError:
            continue
        if math.isfinite(point[1]):
            out.append(point)
    return out


def _text(files: dict | None, name: str) -> str | None:
    v = (files or {}).get(name)
    return json.dumps(v, indent=2) if isinstance(v, dict) else v if isinstance(v, str) else None


def one_run(store, rows: list[dict], index: dict, heldout: dict, run_id: str) -> dict | None:
    """One run: its row and record, what it changed against the run it built on, its curve beside the best's,
    its log's tail (this host's runs) and the decision with its numbers."""
    row = next((r for r in rows if r["run_id"] == run_id), None)
    if row is None:
        return None
    e = index.get(run_id, {})
    parent = parent_run(rows, index, row)
    mine, theirs = store.files(run_id), store.files(parent["run_id"]) if parent else None
    best_run, curves = best_curves(rows, index, row["comparability_key"])
    sessions = getattr(store, "local", store).sessions
    return {"row": {k: v for k, v in row.items()}, "host": e.get("host"), "branch": e.get("branch"),
            "seed": e.get("seed"), "config": run_fingerprint(row, index), "error": e.get("error"),
            "decision": e.get("decision") if isinstance(e.get("decision"), dict) else None,
            "heldout": heldout.get(run_id, {}).get("heldout_bpb"), "parent": parent["run_id"] if parent else None,
            "model_diff": diff(_text(theirs, "model.json"), _text(mine, "model.json"), "model.json"),
            "train_diff": diff(_text(theirs, "train.py"), _text(mine, "train.py"), "train.py"),
            "files": mine is not None, "parent_files": theirs is not None,
            "curve": _points(e.get("curve")),
            "best_run": best_run, "best_curves": [c for c in curves if c["run_id"] != run_id],
            "log": tail(sessions / f"{run_id}.log") if RUN_ID.fullmatch(run_id) else ""}   # no path from a hand-made row


def _points(curve) -> list:
    """A stored curve (an index entry's, a claim's: harness/liveclaim.py), finite pairs of numbers only: it may come
    from another host, or a hand-edited file."""
    if not isinstance(curve, list):
        return []
    return [[float(p[0]), float(p[1])] for p in curve if isinstance(p, list) and len(p) == 2
            and all(isinstance(x, (int, float)) and not isinstance(x, bool) and _finite(x) for x in p)]


def _finite(x) -> bool:
    try:
        return math.isfinite(x)
    except OverflowError:                   # an integer too large for a float (JSON allows it)
        return False


def local_log(store, claim: dict) -> Path | None:
    """The log of a run in flight on this host: sessions/<run_id>.log, never another path a claim names."""
    sessions = getattr(store, "local", store).sessions
    log = sessions / f"{claim.get('run_id')}.log"
    if not RUN_ID.fullmatch(str(claim.get("run_id"))) or not isinstance(claim.get("log"), str):
        return None
    return log if os.path.abspath(claim["log"]) == os.path.abspath(log) else None


def live(store, rows: list[dict], index: dict, claims: list[dict], best=None) -> list[dict]:
    """The runs in flight (claims: every host's), each with its live loss curve (from its log where it is on this
    host, else the curve its claim carries), beside the curves of the best configuration of its key. `best(key)`:
    best_curves of the key, kept by the caller while the ledger is unchanged (the curves in flight change at
    every step, the best's do not)."""
    best = best or (lambda key: best_curves(rows, index, key))
    out = []
    for c in claims:
        log = local_log(store, c)
        here = log is not None and log.is_file()
        key = c.get("comparability_key") or ""
        best_run, curves = best(key)
        out.append({"run_id": c["run_id"], "host": c.get("host"), "branch": c.get("branch"),
                    "description": c.get("description"), "seed": c.get("seed"), "key": key,
                    "config": (c.get("fingerprint") or "")[:12], "started": c.get("started"),
                    "curve": log_curve(log) if here else _points(c.get("curve")), "log_here": here,
                    "best_run": best_run, "best_curves": curves})
    return out
