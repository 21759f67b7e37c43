"""Memory: sessions/memory.md, a bounded digest regenerated from the whole ledger after every run.

    uv run prepare.py --memory        # regenerate it on demand

Deterministic (the same ledger gives the same bytes), written atomically, under 8 KB whatever the
number of runs; the agent's `## Notes` section is kept verbatim below the generated part.
"""

from __future__ import annotations

import json
from pathlib import Path

from harness.ledger import STATUSES, append_record, clean_text, ledger_lock, ledger_paths, read_ledger
from harness.settings import Settings
from harness.util import atomic_write_text

MEMORY_MAX_BYTES = 8192        # generated part; the agent's ## Notes are kept verbatim on top
MEMORY_TOP = 5
MEMORY_RECENT = 8
MEMORY_VALUES_PER_KEY = 6
NOTES_HEADER = "## Notes"


def read_index(sessions: Path) -> dict:
    out = {}
    p = sessions / "index.jsonl"
    if p.exists():
        for line in p.read_text(encoding="utf-8").splitlines():
            try:
                e = json.loads(line)
                out[e["run_id"]] = e
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
    return out


def _flat(model: dict) -> dict:
    flat = {}
    for k, v in (model or {}).items():
        if isinstance(v, dict):
            flat.update({f"{k}.{kk}": vv for kk, vv in v.items()})
        else:
            flat[k] = v
    return flat


def _v(v) -> str:
    return json.dumps(v) if not isinstance(v, str) else v


def _bpb(v) -> str:
    return "—" if v is None else f"{v:.6f}"


def render_memory(rows: list[dict], index: dict, notes: str) -> str:
    """Deterministic digest of the ledger (same inputs -> same bytes)."""
    out = ["# memory.md — generated from results.tsv after every run; edit only the Notes section at the end", ""]
    if not rows:
        out += ["No runs recorded yet. Start with a baseline run: `uv run train.py`.", ""]
        return "\n".join(out) + "\n" + (notes or f"{NOTES_HEADER}\n\n")
    key = rows[-1]["comparability_key"]
    cur = [r for r in rows if r["comparability_key"] == key]
    others = {}
    for r in rows:
        if r["comparability_key"] != key:
            others[r["comparability_key"]] = others.get(r["comparability_key"], 0) + 1
    counts = {st: sum(r["status"] == st for r in cur) for st in STATUSES}
    scored = [r for r in cur if r["val_bpb"] is not None and r["status"] in ("baseline", "keep", "discard")]
    kept = [r for r in cur if r["status"] in ("baseline", "keep") and r["val_bpb"] is not None]
    best = min(kept, key=lambda r: (r["val_bpb"], r["line"])) if kept else None
    since = 0
    for r in reversed(cur):
        if r["status"] in ("baseline", "keep"):
            break
        since += 1
    out += ["## Summary",
            f"- comparability key: `{key}` — {len(cur)} runs: " + ", ".join(f"{counts[s]} {s}" for s in STATUSES)]
    if others:
        out.append("- other keys (not compared): " + ", ".join(f"`{k}` ({n})" for k, n in sorted(others.items())[:6]))
    if best:
        out.append(f"- best: val_bpb {best['val_bpb']:.6f} — {best['run_id']} ({best['commit']}) — "
                   f"{clean_text(best['description'], 80)}")
    out.append(f"- runs since last improvement: {since}")
    places = {}
    for r in cur:
        e = index.get(r["run_id"], {})
        if e.get("branch") or e.get("worktree"):
            where = f"{e.get('branch') or '?'} @ {e.get('worktree') or '?'}"
            places[where] = places.get(where, 0) + 1
    several = len(places) > 1
    if several:                                            # several agents share this ledger
        out.append("- runs by branch @ worktree: " + ", ".join(f"{w} ({n})" for w, n in sorted(places.items())[:6]))
    out.append("")

    best_model = _flat(index.get(best["run_id"], {}).get("model")) if best else {}
    if best_model:
        out += ["## Best configuration", "`" + ", ".join(f"{k}={_v(best_model[k])}"
                                                         for k in sorted(best_model)) + "`", ""]

    last = cur[-1]
    last_entry = index.get(last["run_id"], {})
    out += ["## Last run vs best",
            f"- last: {last['run_id']} — {last['status']} — val_bpb {_bpb(last['val_bpb'])} — "
            f"{clean_text(last['description'], 80)}"]
    if last["status"] in ("crash", "interrupted") and last_entry.get("error"):
        out.append(f"- reason: {clean_text(last_entry['error'], 160)}")
    if best and best_model and last is not best:
        lm = _flat(last_entry.get("model"))
        diff = [f"{k}: {_v(best_model.get(k))} -> {_v(lm.get(k))}" for k in sorted(set(lm) | set(best_model))
                if lm.get(k) != best_model.get(k)]
        same = "identical (the change was in train.py)" if lm else "unknown"
        out.append("- model.json vs best: " + ("; ".join(diff) if diff else same))
    fp = last_entry.get("fingerprint")
    if fp:
        same = [r for r in cur[:-1] if index.get(r["run_id"], {}).get("fingerprint") == fp]
        if same:
            out.append(f"- WARNING: this exact config (model.json + train.py fingerprint {fp}) was already run "
                       f"{len(same)} time(s): " + ", ".join(f"{r['run_id']} ({_bpb(r['val_bpb'])})" for r in same[-3:]))
    out.append("")

    if scored:
        out += ["## Top runs", "| # | val_bpb | status | run_id | description |", "|---|---|---|---|---|"]
        for i, r in enumerate(sorted(scored, key=lambda r: (r["val_bpb"], r["line"]))[:MEMORY_TOP], 1):
            out.append(f"| {i} | {r['val_bpb']:.6f} | {r['status']} | {r['run_id']} | "
                       f"{clean_text(r['description'], 60)} |")
        out.append("")

    out += ["## Recent runs", "| run_id | status | val_bpb | vs best | description / reason |", "|---|---|---|---|---|"]
    for r in cur[-MEMORY_RECENT:]:
        delta = f"{r['val_bpb'] - best['val_bpb']:+.4f}" if best and r["val_bpb"] is not None else ""
        text = clean_text(r["description"], 50)
        if several:
            text = f"[{index.get(r['run_id'], {}).get('branch') or '?'}] " + text
        err = index.get(r["run_id"], {}).get("error")
        if r["status"] in ("crash", "interrupted") and err:
            text += " — " + clean_text(err, 70)
        out.append(f"| {r['run_id']} | {r['status']} | {_bpb(r['val_bpb'])} | {delta} | {text} |")
    out.append("")

    groups = {}
    for r in scored:
        f = index.get(r["run_id"], {}).get("fingerprint")
        if f:
            groups.setdefault(f, []).append(r["val_bpb"])
    repeats = {f: v for f, v in groups.items() if len(v) > 1}
    if repeats:
        out += ["## Noise (same config run more than once)"]
        for f, v in sorted(repeats.items(), key=lambda kv: -len(kv[1]))[:4]:
            out.append(f"- {f}: {len(v)} runs, val_bpb {min(v):.6f}..{max(v):.6f} (spread {max(v) - min(v):.6f})")
        out.append("")

    tried = {}
    for r in cur:
        m = _flat(index.get(r["run_id"], {}).get("model"))
        for k, val in m.items():
            slot = tried.setdefault(k, {}).setdefault(_v(val), [None, 0, 0])
            slot[1] += 1
            if r["val_bpb"] is not None and r["status"] != "interrupted":
                slot[0] = r["val_bpb"] if slot[0] is None else min(slot[0], r["val_bpb"])
            if r["status"] == "crash":
                slot[2] += 1
    varied = {k: v for k, v in tried.items() if len(v) > 1}
    if varied:
        out += ["## Hyperparameters tried (value -> best val_bpb, runs; dead ends are values never best)",
                "| key | values |", "|---|---|"]
        for k in sorted(varied):
            items = sorted(varied[k].items(), key=lambda kv: (kv[1][0] is None, kv[1][0] or 0.0, kv[0]))
            cells = [f"{val} -> {_bpb(b)} ({n}{', ' + str(c) + ' crash' if c else ''})"
                     for val, (b, n, c) in items[:MEMORY_VALUES_PER_KEY]]
            if len(items) > MEMORY_VALUES_PER_KEY:
                cells.append(f"+{len(items) - MEMORY_VALUES_PER_KEY} more")
            out.append(f"| {k} | {'; '.join(cells)} |")
        out.append("")

    text = "\n".join(out)
    while len(text.encode()) > MEMORY_MAX_BYTES:        # bounded whatever the ledger holds
        out = out[:-2] + [out[-1]] if len(out) > 3 else out[:1]
        text = "\n".join(out + ["(truncated to stay under 8 KB)", ""])
    return text + "\n" + (notes or f"{NOTES_HEADER}\n\n(Agent: keep your hypotheses, lessons and plans here; this "
                                   f"section is preserved.)\n")


def read_notes(memory: Path) -> str:
    if not memory.exists():
        return ""
    text = memory.read_text(encoding="utf-8")
    i = text.find("\n" + NOTES_HEADER)
    if text.startswith(NOTES_HEADER):
        return text
    return text[i + 1:] if i >= 0 else ""


def write_memory(results: Path, sessions: Path) -> Path:
    """Regenerate sessions/memory.md atomically (call under the ledger lock)."""
    memory = sessions / "memory.md"
    text = render_memory(read_ledger(results), read_index(sessions), read_notes(memory))
    atomic_write_text(memory, text)
    return memory


def regenerate_memory(s: Settings | None = None) -> Path:
    results, sessions = ledger_paths(s)
    with ledger_lock(results):
        return write_memory(results, sessions)


def record(results: Path, sessions: Path, row: dict, index_entry: dict, status: str | None = None) -> dict:
    """Append one run to the ledger and regenerate memory.md, both under the ledger lock."""
    return append_record(results, sessions, row, index_entry, status, after=write_memory)
