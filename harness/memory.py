"""Memory: sessions/memory.md, a bounded digest regenerated from the whole ledger after every run, and the
`next:` command a run prints (both are what the agent reads before its next step).

    uv run prepare.py --memory        # regenerate it on demand

Deterministic (the same ledger gives the same bytes), written atomically, under 8 KB whatever the
number of runs; the agent's `## Notes` section is kept verbatim below the generated part."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

from harness.decide import (ACCEPTED, MIN_RUNS_TO_KEEP, SCORED, UNSCORED, flatten, floor_step_spread, is_scored,
                            key_before, key_differences, next_seed, not_judged, parent_run, parent_runs,
                            requested_model, return_commit, run_fingerprint, standing, train_command,
                            unjudged_baseline, way_back)
from harness.database import host_name, open_ledger
from harness.ledger import STATUSES, FileLedger, claim_state, clean_text
from harness.plot import write_progress_png
from harness.settings import Settings
from harness.util import atomic_write_text

MEMORY_MAX_BYTES = 8192        # generated part; the agent's ## Notes are kept verbatim on top
MEMORY_TOP, MEMORY_RECENT, MEMORY_VALUES_PER_KEY = 5, 8, 6     # top runs, recent runs, values per hyperparameter
MEMORY_AGENTS = 16             # agents (host/branch) given their own commit to return to
NOTES_HEADER = "## Notes"
KILLED = "killed: "            # the reason's prefix of a run killed outright (harness.record.record_crash_from_log)


def _v(v) -> str:
    """A model.json value for memory.md: one line whatever the agent put in it (no forged sections)."""
    return clean_text(json.dumps(v) if not isinstance(v, str) else v, 80)


def _bpb(v) -> str:
    return "—" if v is None else f"{v:.6f}"


def _epochs(entry: dict) -> str:
    """Passes over the train split, with a `!` past the point where val_bpb measures memorization."""
    e = entry.get("epochs")
    return "" if e is None else f"{e:.1f}" + (" !" if e > 4 else "")


def _requested(entry: dict) -> dict:
    """model.json as the agent wrote it, flat (the run records what it trained, and what each cap replaced)."""
    return flatten(requested_model(entry))


def _as_trained(entry: dict, key: str, req, trained) -> str:
    """Why a run trained another value than model.json's: the mode's cap, or torchrun's split of device_batch_size."""
    parts = entry.get("key_parts") or {}
    world, cap = parts.get("world") or 1, (parts.get("caps") or {}).get(key)
    capped = cap is not None and req is not None and req > cap
    if key != "device_batch_size" or world <= 1 or trained >= (cap if capped else req):
        return f"capped to {_v(trained)}"
    return (f"capped to {_v(cap)}, then " if capped else "") + f"{_v(trained)} per process x {world} processes"


def _value(entry: dict, key: str) -> str:
    """A model.json value as requested, with the value trained where a cap or torchrun's split changed it."""
    req, trained = _requested(entry).get(key), flatten(entry.get("model")).get(key)
    return _v(req) + (f" ({_as_trained(entry, key, req, trained)})" if trained != req else "")


def changes(a: dict, b: dict) -> list[str]:
    """What changed from run entry a to run entry b: model.json keys (requested -> requested, with the cap where
    one applies) and train.py's functions (from their hashes: changed, added, removed). Empty: same files."""
    ma, mb = _requested(a), _requested(b)
    out = [f"{k}: {_value(a, k)} -> {_value(b, k)}" for k in sorted(set(ma) | set(mb)) if ma.get(k) != mb.get(k)]
    fa, fb = a.get("train_py") or {}, b.get("train_py") or {}
    if a.get("fingerprint") and a.get("fingerprint") == b.get("fingerprint"):
        return out
    edits = [f"{n} changed" for n in sorted(set(fa) & set(fb)) if fa[n] != fb[n]]
    edits += [f"{n} added" for n in sorted(set(fb) - set(fa))] + [f"{n} removed" for n in sorted(set(fa) - set(fb))]
    if edits:
        out.append("train.py: " + ", ".join(edits[:6]) + (f" (+{len(edits) - 6} more)" if len(edits) > 6 else ""))
    elif not (fa and fb) and not out:
        out.append("train.py or model.json changed (no function hashes recorded to say where)")
    return out


def cancelled_by_caps(parent: dict, entry: dict) -> list[str]:
    """model.json edits from the parent run that the mode's caps cancelled: requested values differ, trained do not."""
    ma, mb = _requested(parent), _requested(entry)
    ea, eb = flatten(parent.get("model")), flatten(entry.get("model"))
    return [f"{k} {_v(ma.get(k))} -> {_v(mb.get(k))} trains as {_v(eb.get(k))} either way (capped)"
            for k in sorted(set(ma) | set(mb)) if ma.get(k) != mb.get(k) and ea.get(k) == eb.get(k)]


def since_last_improvement(since: list[dict], index: dict) -> str:
    """What was tried after the last improvement: configurations, not runs (another seed of one edit is not another
    try; `repeat`s are left out), with the runs by status; a run killed outright (by the host?) apart from a crash."""
    tried = {run_fingerprint(r, index) for r in since if r["status"] != "rerun"}
    counts = Counter("killed" if r["status"] == "crash" and _killed(index.get(r["run_id"], {})) else r["status"]
                     for r in since)
    order = [st for s in STATUSES for st in ((s, "killed") if s == "crash" else (s,))]
    runs = ", ".join(f"{counts[st]} {st}" for st in order if st in counts)
    return (f"- since the last improvement: {len(tried)} configuration{'s' * (len(tried) != 1)} tried in "
            f"{len(since)} run{'s' * (len(since) != 1)}" + (f" ({runs})" if runs else ""))


def _killed(entry: dict) -> bool:
    """A run killed outright (OOM killer, a timeout's SIGKILL, a machine reset), recorded from its log."""
    return str(entry.get("error") or "").startswith(KILLED)


def running_now(rows: list[dict], index: dict, claims: list[dict], now: float, best: dict | None,
                key: str | None) -> list[str]:
    """The runs other agents (and this one) have started and not recorded yet, with what each trains; `!!` where
    one trains a configuration that is running twice or was recorded already."""
    if not claims:
        return []
    out, recorded = ["## Running now (started, not recorded yet; plan something else than these)"], {}
    for r in rows:
        if is_scored(r):                                            # a crash does not make a rerun
            recorded.setdefault((r["comparability_key"], run_fingerprint(r, index)), []).append(r)
    seen = set()
    for c in claims:
        where = f"{clean_text(c.get('host') or '?', 40)}/{clean_text(c.get('branch') or '?', 40)}"
        line = (f"- {where} — {max(0.0, now - c['started']) / 60:.0f} min — {clean_text(c.get('description'), 60)} — "
                f"configuration {clean_text(c.get('fingerprint'), 20)}, seed {_v(c.get('seed'))}")
        if best is not None and c.get("comparability_key") == key:
            diff = changes(best, c)
            line += " — vs the best: " + ("; ".join(diff)[:200] if diff else "no change")
        elif c.get("comparability_key") != key:
            line += " — another comparability key"
        out.append(line)
        if c.get("gone"):             # killed outright on this machine: neither in flight nor in the ledger
            out.append(f"  - its process ended without a record; its agent ({where}) records it: `uv run prepare.py "
                       f"--record-crash {c['log']}`")
            continue
        same = (c.get("comparability_key"), c.get("fingerprint"))
        mark = "!! " if (same, c.get("seed")) in seen else ""       # the same seed twice: a duplicate
        if same in {k for k, _ in seen}:
            out.append(f"  - {mark}the same configuration as another run in flight"
                       + (" under the same seed" if mark else " (another seed)"))
        seen.add((same, c.get("seed")))
        if same in recorded:
            done = recorded[same]                      # named: the run under this seed (a rerun), else the last
            run = next((r for r in reversed(done) if index.get(r["run_id"], {}).get("seed") == c.get("seed")), done[-1])
            twin = index.get(run["run_id"], {}).get("seed") == c.get("seed")
            out.append(f"  - {'!! ' * twin}already recorded: {len(done)} run(s), {'this seed' if twin else 'last'} "
                       f"{run['run_id']} ({run['status']}, {_bpb(run['val_bpb'])}); "
                       + ("it will be a `rerun`" if twin else "this is another seed"))
    return out + [""]


def render_memory(rows: list[dict], index: dict, notes: str, claims: list[dict] = (), now: float = 0.0,
                  note: str | None = None) -> str:
    """Deterministic digest of the ledger and the runs in flight (same inputs -> same bytes)."""
    out = ["# memory.md — generated from the ledger after every run; edit only the Notes section at the end", ""]
    out += [f"!! {note}", ""] if note else []
    if not rows:
        out += ["No runs recorded yet. Start with a baseline run: `uv run train.py`, then the same code under a",
                "second seed, `uv run train.py --seed 43`, so that the noise floor exists before the first decision.",
                ""] + running_now(rows, index, list(claims), now, None, None)
        return "\n".join(out) + "\n" + (notes or f"{NOTES_HEADER}\n\n")
    last, key = rows[-1], rows[-1]["comparability_key"]
    cur = [r for r in rows if r["comparability_key"] == key]
    entry = lambda r: index.get(r["run_id"], {})                              # noqa: E731
    others = Counter(r["comparability_key"] for r in rows if r["comparability_key"] != key)
    counts = {st: sum(r["status"] == st for r in cur) for st in STATUSES}
    killed = sum(r["status"] == "crash" and _killed(entry(r)) for r in cur)
    st = standing(rows, index, key)
    best_cfg, pending = st.best, run_fingerprint(last, index) if last["status"] == "confirm" else None
    best = next(r for r in cur if run_fingerprint(r, index) == best_cfg.fingerprint
                and r["status"] in ACCEPTED) if best_cfg else None
    scored = [r for r in cur if is_scored(r)]
    since = []                  # runs after the last improvement (keep or baseline), but its further seeds (killed too)
    for r in reversed(cur):
        if r["status"] in ACCEPTED:
            break
        if r["status"] != "repeat" and not getattr(st.configs.get(run_fingerprint(r, index)), "accepted", False):
            since.append(r)
    branch = entry(last).get("branch")

    # -- summary ---------------------------------------------------------------------------
    out += ["## Summary",
            f"- comparability key: `{key}` — {len(cur)} run{'s' * (len(cur) != 1)}: " + ", ".join(f"{counts[s]} {s}" + (
                f" ({killed} killed)" if s == "crash" and killed else "") for s in STATUSES if counts[s])]
    if others:
        out.append("- other keys (not compared): " + ", ".join(f"`{k}` ({n})" for k, n in sorted(others.items())[:6]))
        prev, how = key_before(rows, index, key)
        if diffs := key_differences(entry(prev), entry(cur[0])):
            out.append(f"- this key against `{prev['comparability_key']}` ({how}): " + "; ".join(diffs[:4]))
        if (pair := unjudged_baseline(rows, index, key)) is not None:      # (the key before's best, this baseline)
            out.append(f"- !! this key's baseline is not the best configuration of the key before ({pair[0]['run_id']}"
                       f": {'; '.join(changes(entry(pair[0]), entry(pair[1]))[:3])}): what it changed was never judged"
                       f"; run that one here too: `uv run prepare.py --restore {pair[0]['run_id']}`, commit, run it: "
                       f"`{train_command(entry(pair[1]))}`")
    if best:
        seeds = f"mean of {len(best_cfg.values)} seeds" if len(best_cfg.values) > 1 else "1 seed"
        out.append(f"- best: val_bpb {best_cfg.mean:.6f} ({seeds}) — {best['run_id']} ({best['commit']}) — "
                   f"{clean_text(best['description'], 80)}")
    if st.sigma is not None:
        groups = sum(len(c.values) > 1 for c in st.configs.values())
        runs = sum(len(c.values) for c in st.configs.values() if len(c.values) > 1)
        out.append(f"- noise floor: sigma {st.sigma:.6f} from {runs} runs of {groups} configuration(s) under several "
                   f"seeds (dof {st.dof}); a new configuration is kept when the mean of its {MIN_RUNS_TO_KEEP} seeds "
                   f"beats the best by more than {st.margin(MIN_RUNS_TO_KEEP):.6f}")
        if spread := floor_step_spread(rows, index, key, st):
            out.append(f"- !! the floor's runs trained {spread[0]}..{spread[1]} steps: the machine's speed varied, "
                       f"and that spread is in the floor; set `max_steps` (e.g. {spread[2]}, their lower quartile) in "
                       "ground.json's profile so that steps, not seconds, end a run and its schedule (a new key)")
    elif not scored:
        out.append("- noise floor: not measured yet: no run of this key has a val_bpb yet (the last run says why)")
    else:
        out.append("- noise floor: not measured yet: no configuration has run under two seeds; no gain can be kept "
                   f"until it is (`{train_command(entry(last), 43)}` on the baseline's commit)")
    out.append(since_last_improvement(since, index))
    agents = sorted({(entry(r).get("host"), entry(r).get("branch")) for r in cur if entry(r).get("branch")},
                    key=lambda hb: (str(hb[0]), str(hb[1])))
    if len(agents) > 1:                            # several agents: each returns to its own kept commit
        homes = []
        for host, b in agents[:MEMORY_AGENTS]:
            home = return_commit(rows, index, key, b, host)
            where = f"{host}/{b}" if host else b
            homes.append(f"{where}: `git reset --hard {home}`" if home else f"{where}: nothing kept there yet "
                         "(`uv run prepare.py --restore <run_id>` builds on a kept run)")
        out.append("- commit to return to after a discard or a crash, by agent: " + "; ".join(homes))
    elif (home := return_commit(rows, index, key, branch, entry(last).get("host"))):
        out.append(f"- commit to return to after a discard or a crash: `git reset --hard {home}` (the last kept "
                   f"commit{' of ' + '/'.join(x for x in (entry(last).get('host'), branch) if x) if branch else ''})")
    where = lambda e: (f"{e.get('branch') or '?'} @ {e['host'] + ':' if e.get('host') else ''}"     # noqa: E731
                       f"{e.get('worktree') or '?'}")
    places = Counter(where(entry(r)) for r in cur if entry(r).get("branch") or entry(r).get("worktree"))
    several = len(places) > 1
    hosts = len({entry(r).get("host") for r in cur})
    if several:                                            # several agents share this ledger
        out.append("- runs by branch @ worktree: " + ", ".join(f"{w} ({n})" for w, n in sorted(places.items())[:6]))
        out.append("- to build on another agent's kept run: `uv run prepare.py --restore <run_id>` writes its "
                   "model.json and train.py here (then commit)")
    out.append("")
    out += running_now(rows, index, list(claims), now, entry(best) if best else None, key)

    if best:
        bm = _requested(entry(best))
        out += ["## Best configuration", "`" + ", ".join(f"{k}={_value(entry(best), k)}" for k in sorted(bm)) + "`", ""]

    # -- the last run: what it changed, against its parent and against the best ------------------
    le = entry(last)
    where = " (uncommitted edits)" if le.get("dirty") else ""
    out += ["## Last run",
            f"- {last['run_id']}{where} — {last['status']} — val_bpb {_bpb(last['val_bpb'])} — seed "
            f"{_v(le.get('seed'))} — {last['num_steps'] if last['num_steps'] is not None else '?'} steps — "
            f"{_epochs(le) or '?'} epochs — "
            f"{clean_text(last['description'], 80)}"]
    if last["status"] in UNSCORED and le.get("error"):
        out.append(f"- reason: {clean_text(le['error'], 160)}")
    parent = parent_run(rows, index, last)
    if parent is not None and le:
        diff = changes(entry(parent), le)
        pc = st.configs.get(run_fingerprint(parent, index))
        pmean = f"; its configuration {pc.mean:.6f} over {len(pc.values)} seeds" if pc and len(pc.values) > 1 else ""
        out.append(f"- vs its parent run {parent['run_id']} ({parent['status']}, {_bpb(parent['val_bpb'])}{pmean}): "
                   + ("; ".join(diff) if diff else "no change to model.json or train.py"))
        for line in cancelled_by_caps(entry(parent), le):
            out.append(f"- !! {line}: this run trained its parent's model")
    if best and best is not parent and best["run_id"] != last["run_id"] and le:
        diff = changes(entry(best), le)
        out.append(f"- vs the best run {best['run_id']}: " + ("; ".join(diff) if diff else
                                                               "no change to model.json or train.py"))
    mine = st.configs.get(run_fingerprint(last, index))
    if mine is not None and len(mine.values) > 1:
        out.append(f"- this configuration: {len(mine.values)} seeds, mean val_bpb {mine.mean:.6f} "
                   f"(seeds {', '.join(_v(s) for s in mine.seeds)})")
    if last["status"] == "confirm":
        seed = next_seed(rows, index, key, run_fingerprint(last, index))
        out.append(f"- pending: better than the best, not yet by the margin with {MIN_RUNS_TO_KEEP}+ seeds; re-run "
                   f"this commit unchanged: `{train_command(le, seed)}`")
    out.append("")

    # -- top runs, recent runs -----------------------------------------------------------------
    if scored:
        out += ["## Top runs (reverted = its configuration was not kept)",
                "| # | val_bpb | status | seed | run_id | description |", "|---|---|---|---|---|---|"]
        for i, r in enumerate(sorted(scored, key=lambda r: (r["val_bpb"], r["line"]))[:MEMORY_TOP], 1):
            fp = run_fingerprint(r, index)
            reverted = not st.configs[fp].accepted and fp != pending if fp in st.configs else False
            mark = " (reverted)" if reverted else ""
            out.append(f"| {i} | {r['val_bpb']:.6f} | {r['status']}{mark} | {_v(entry(r).get('seed'))} | "
                       f"{r['run_id']} | {clean_text(r['description'], 60)} |")
        out.append("")

    out += ["## Recent runs", "| run_id | status | val_bpb | vs best | seed | steps | epochs | description / reason |",
            "|---|---|---|---|---|---|---|---|"]
    for r in cur[-MEMORY_RECENT:]:
        delta = f"{r['val_bpb'] - best_cfg.mean:+.4f}" if best_cfg and r["val_bpb"] is not None else ""
        e = entry(r)
        dirty = e.get("dirty") and "uncommitted" not in r["description"]
        text = clean_text(r["description"], 50) + (" [uncommitted]" if dirty else "")
        if several:
            host = f"{clean_text(e['host'], 30)}/" if hosts > 1 and e.get("host") else ""
            text = f"[{host}{e.get('branch') or '?'}] " + text
        if r["status"] in UNSCORED and e.get("error"):
            text += " — " + clean_text(e["error"], 70)
        steps = r["num_steps"] if r["num_steps"] is not None else ""
        out.append(f"| {r['run_id']} | {r['status']} | {_bpb(r['val_bpb'])} | {delta} | {_v(e.get('seed'))} | "
                   f"{steps} | {_epochs(e)} | {text} |")
    out.append("")

    repeats = sorted((c for c in st.configs.values() if len(c.values) > 1),
                     key=lambda c: (-len(c.values), c.first_line))
    if repeats:
        out += ["## Noise (configurations run under several seeds)"]
        for c in repeats[:4]:
            out.append(f"- {c.fingerprint}: {len(c.values)} runs, mean {c.mean:.6f}, "
                       f"val_bpb {min(c.values):.6f}..{max(c.values):.6f} (spread {max(c.values) - min(c.values):.6f})")
        out.append("")

    # -- values tried per key; a crash counts against a key only where the key changed from the parent ---
    tried = {}
    parents = parent_runs(rows, index)
    for r in cur:
        e = entry(r)
        m = _requested(e)
        if r["status"] == "crash":
            p = parents[r["run_id"]]
            pm = _requested(entry(p)) if p is not None else {}
            blamed = {k for k in m if pm.get(k) != m.get(k)} if p is not None else set()
        config = st.configs.get(run_fingerprint(r, index)) if r["status"] in SCORED else None
        trained = flatten(e.get("model"))
        for k, val in m.items():
            label = _v(val) if trained.get(k, val) == val else f"{_v(val)} ({_as_trained(e, k, val, trained[k])})"
            slot = tried.setdefault(k, {}).setdefault(label, [None, 0, 0, 0])
            slot[1] += 1
            if config is not None and (slot[0] is None or (not config.accepted, config.mean)
                                       < (not slot[0][2], slot[0][0])):   # a kept configuration's mean first
                slot[0] = (config.mean, len(config.values), config.accepted, config.fingerprint == pending)
            if r["status"] == "crash" and k in blamed:
                slot[3 if _killed(e) else 2] += 1
    varied = {k: v for k, v in tried.items() if len(v) > 1}
    if varied:
        out += ["## Hyperparameters tried (value -> the best mean val_bpb of a configuration with it, over its "
                "seeds — a kept one's if any, else `not kept` (`pending` while its confirm runs); runs; crashes, and "
                "runs killed outright, counted where the key changed; dead ends are values never best)",
                "| key | values |", "|---|---|"]
        for k in sorted(varied):
            items = sorted(varied[k].items(), key=lambda kv: (kv[1][0] is None, (kv[1][0] or (0.0,))[0], kv[0]))
            cells = [f"{val} -> " + (f"{b[0]:.6f} over {b[1]} seed{'s' * (b[1] > 1)}"
                                     f"{'' if b[2] else ' pending' if b[3] else ' not kept'}" if b else "—")
                     + f" ({n} run{'s' * (n > 1)}{', ' + str(c) + ' crash' if c else ''}"
                     + f"{', ' + str(kl) + ' killed' if kl else ''})"
                     for val, (b, n, c, kl) in items[:MEMORY_VALUES_PER_KEY]]
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


def _best_run(rows: list[dict], index: dict, key: str, best) -> str:
    """The first accepted run of the best configuration `best` (a decide.Config)."""
    return next(r["run_id"] for r in rows if r["comparability_key"] == key and r["status"] in ACCEPTED
                and run_fingerprint(r, index) == best.fingerprint)


def next_step(row: dict, rows: list[dict], index: dict, branch: str | None, env: dict | None = None) -> str:
    """The protocol's next command for this run (the ledger's row); env: the printing process's harness variables."""
    status, key, fp = row["status"], row["comparability_key"], run_fingerprint(row, index)
    again = lambda seed: train_command(index.get(row["run_id"], {}), seed, env)     # noqa: E731 - as this run started
    home = return_commit(rows, index, key, branch, host_name())
    st = standing(rows, index, key)
    back = way_back(home, _best_run(rows, index, key, st.best) if st.best else None, env)
    if status in ACCEPTED and st.sigma is None:
        return (f"keep this commit; first measure the noise floor: re-run it unchanged under another seed: "
                f"{again(next_seed(rows, index, key, fp))}" + (f"; !! a new key's baseline, not the key before's best "
                f"({old[0]['run_id']}): its edits were never judged (memory.md)" if status == "baseline" and
                (old := unjudged_baseline(rows, index, key)) else ""))
    if status in ACCEPTED:
        return "keep this commit and build on it"
    me = next((r for r in rows if r["run_id"] == row["run_id"]), row)
    parent = parent_run(rows, index, me) if status in ("repeat", "rerun") else None
    if parent is not None and cancelled_by_caps(index.get(parent["run_id"], {}), index.get(row["run_id"], {})):
        return (f"this edit trains its parent's model (a cap of this mode cancels it): nothing was judged; go back "
                f"and try an edit the caps allow: {back}")
    if status == "repeat" and (spread := floor_step_spread(rows, index, key, st)):
        return (f"nothing decided (another seed of a kept configuration); the floor's runs trained {spread[0]}.."
                f"{spread[1]} steps (the machine's speed varied): the floor mixes that spread with the seeds': set "
                f"max_steps (e.g. {spread[2]}) in ground.json's profile, in a commit of its own (a new key), and run "
                f"that commit unchanged, its baseline: {again(None)}")
    if status == "repeat" and st.dof < 2:
        return (f"nothing decided (another seed of a kept configuration: the noise floor is updated); a floor on one "
                f"degree of freedom asks for a wide margin: a third seed narrows it, usually: "
                f"{again(next_seed(rows, index, key, fp))}")
    if status == "repeat":
        return "nothing decided (another seed of a kept configuration: the noise floor is updated); go on"
    if status == "confirm":
        return (f"better than the best, not yet by the noise margin over enough seeds: re-run this commit unchanged: "
                f"{again(next_seed(rows, index, key, fp))}")
    if status == "rerun":
        return "this configuration already ran with this seed: nothing was judged; change something, or use --seed"
    if status == "discard":
        return back
    if _killed(index.get(row["run_id"], {})):           # often recorded late: it may have been run again since
        seed = index.get(row["run_id"], {}).get("seed")
        mine = [r for r in rows if r["comparability_key"] == key and run_fingerprint(r, index) == fp]
        done = [r for r in mine if is_scored(r) and index.get(r["run_id"], {}).get("seed") == seed]
        dropped = any(r["status"] == "discard" for r in mine)                 # in this key: then go back
        return (f"killed outright; this configuration has a result under seed {seed} already ({done[-1]['run_id']}, "
                f"{done[-1]['status']}): nothing to re-run{f'; it was discarded: {back}' * dropped}" if done
                else f"killed outright: if the edit made it too slow or too large, fix that, `git commit -a --amend` "
                f"and run again; if the host or you stopped it, run this commit again unchanged: {again(seed)}; or "
                f"give up: {back}")
    if said := not_judged(str(index.get(row["run_id"], {}).get("error") or ""), back):   # measured something else
        return said
    return f"fix a trivial bug, `git commit -a --amend`, and run again; or give up on it: {back}"


def read_notes(memory: Path) -> str:
    text = memory.read_text(encoding="utf-8", errors="replace") if memory.exists() else ""
    if text.startswith(NOTES_HEADER):
        return text
    i = text.find("\n" + NOTES_HEADER)
    return text[i + 1:] if i >= 0 else ""


def write_memory(store, plot: bool = False, now: float | None = None) -> Path:
    """Regenerate sessions/memory.md (and, with plot, progress.png) atomically from the store's ledger and the runs
    in flight; call under the store's lock."""
    memory = store.sessions / "memory.md"
    rows, index = store.read()
    now = time.time() if now is None else now
    claims = [dict(c, gone=claim_state(c, host_name()) == "gone") for c in store.claims(now)]
    atomic_write_text(memory, render_memory(rows, index, read_notes(memory), claims, now, store.note))
    if plot:
        write_progress_png(rows, index, store.sessions)
    return memory


def regenerate_memory(s: Settings | None = None) -> Path:
    with (store := open_ledger(s)).lock():
        return write_memory(store, plot=True)


def record(results: Path, sessions: Path, row: dict, index_entry: dict, status: str | None = None,
           plot: bool = False, store=None, files: dict | None = None) -> dict:
    """Append one run to the ledger (results.tsv, or `store`) and regenerate memory.md (and progress.png)."""
    store = store or FileLedger(results, sessions)
    return store.append(row, index_entry, status, after=lambda st: write_memory(st, plot), files=files)
