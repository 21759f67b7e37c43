"""Memory: sessions/memory.md, a bounded digest regenerated from the whole ledger after every run (what the agent
reads before its next step): one renderer per section over harness/digest.py's values.

    uv run prepare.py --memory        # regenerate it on demand

Deterministic (the same ledger gives the same bytes), written atomically, under 8 KB whatever the
number of runs; the agent's `## Notes` section is kept verbatim below the generated part."""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from pathlib import Path

from harness.decide import (KEEP_Z, MIN_RUNS_TO_KEEP, SCORED, UNSCORED, next_seed, paired_floor,
                            paired_is_tighter, run_fingerprint, t_quantile)
from harness.database import open_ledger
from harness.digest import (Digest, _as_trained, _bpb, _epochs, _killed, _requested, _v, _value, cancelled_by_caps,
                            changes, digest, floor_step_spread, running_now, since_last_improvement)
from harness.identity import host_name
from harness.ledger import STATUSES, claim_state, clean_text
from harness.lineage import (flatten, key_before, key_differences, parent_run, parent_runs, return_commit,
                             train_command, unjudged_baseline)
from harness.heldout import read as heldout_scores
from harness.plot import write_progress_png
from harness.settings import Settings
from harness.util import atomic_write_bytes

MEMORY_MAX_BYTES = 8192        # generated part; the agent's ## Notes are kept verbatim on top
MEMORY_TOP, MEMORY_RECENT, MEMORY_VALUES_PER_KEY = 5, 8, 6     # top runs, recent runs, values per hyperparameter
MEMORY_DAMAGE_LINES = 3       # `!!` lines for entries of harness-written files set aside (harness/checked.py)
MEMORY_AGENTS = 16             # agents (host/branch) given their own commit to return to
NOTES_HEADER = "## Notes"


def paired_note(st) -> str:
    """Where the ledger shows seed effects shared (harness/decide.py pairs then): the paired margin, for 3 seeds."""
    var_d, dof_d = paired_floor(st)
    if st.sigma is None or not paired_is_tighter(var_d, dof_d, st.sigma):
        return ""
    margin = KEEP_Z / 1.96 * t_quantile(dof_d) * (var_d / MIN_RUNS_TO_KEEP) ** 0.5
    return (f"; seeds move configurations together here (paired spread {var_d ** 0.5:.6f} on dof {dof_d}): on the "
            f"best's {MIN_RUNS_TO_KEEP} seeds the gain needed is {margin:.6f}")


def summary_section(d: "Digest") -> list[str]:
    """## Summary: the key's runs, other keys, the best, the noise floor, where to return."""
    rows, index, key, cur, entry, st = d.rows, d.index, d.key, d.cur, d.entry, d.st
    last, best_cfg, best, scored, branch, several = d.last, d.best_cfg, d.best, d.scored, d.branch, d.several
    out = []
    others, counts, killed, since = d.others, d.counts, d.killed, d.since
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
        pooled = [st.configs[fp] for fp in st.pooled]
        out.append(f"- noise floor: sigma {st.sigma:.6f} from {sum(len(c.values) for c in pooled)} runs of "
                   f"{len(pooled)} configuration(s) under several seeds (dof {st.dof}); a new configuration is kept "
                   f"when the mean of its {MIN_RUNS_TO_KEEP} seeds beats the best by more than "
                   f"{st.margin(MIN_RUNS_TO_KEEP):.6f}" + paired_note(st) + (f"; {len(st.unstable)} configuration(s) "
                   "left out as unstable (seeds spread beyond all others' at 99.5%)" if st.unstable else ""))
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
    if several:                                            # several agents share this ledger
        out.append("- runs by branch @ worktree: " + ", ".join(f"{w} ({n})" for w, n in sorted(places.items())[:6]))
        out.append("- to build on another agent's kept run: `uv run prepare.py --restore <run_id>` writes its "
                   "model.json and train.py here (then commit)")
    return out


def best_section(d: "Digest") -> list[str]:
    """## Best configuration: its model.json values."""
    entry, best = d.entry, d.best
    out = []
    if best:
        bm = _requested(entry(best))
        out += ["## Best configuration", "`" + ", ".join(f"{k}={_value(entry(best), k)}" for k in sorted(bm)) + "`", ""]
    return out


def last_run_section(d: "Digest") -> list[str]:
    """## Last run: what it changed, against its parent run and against the best."""
    rows, index, key, entry, st, last, best = d.rows, d.index, d.key, d.entry, d.st, d.last, d.best
    out = []
    le = entry(last)
    where = " (uncommitted edits)" if le.get("dirty") else ""
    out += ["## Last run",
            f"- {last['run_id']}{where} — {last['status']} — val_bpb {_bpb(last['val_bpb'])} — seed "
            f"{_v(le.get('seed'))} — {last['num_steps'] if last['num_steps'] is not None else '?'} steps — "
            f"{_epochs(le) or '?'} epochs — "
            f"{clean_text(last['description'], 80)}"]
    if last["status"] in UNSCORED and le.get("error"):
        out.append(f"- reason: {clean_text(le['error'], 160)}")
    if (decision := le.get("decision") or {}).get("reason"):
        out.append(f"- decision: {clean_text(decision['reason'], 160)}" + (
            " (paired on the seeds both ran)" if decision.get("paired") else ""))
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
    return out


def top_section(d: "Digest") -> list[str]:
    """## Top runs: the best single runs, reverted lineages marked."""
    index, entry, st, pending, scored = d.index, d.entry, d.st, d.pending, d.scored
    out = []
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
    return out


def recent_section(d: "Digest") -> list[str]:
    """## Recent runs: the key's last runs with steps, seeds and outcomes."""
    cur, entry, best_cfg = d.cur, d.entry, d.best_cfg
    several, hosts = d.several, d.hosts
    out = []
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
    return out


def noise_section(d: "Digest") -> list[str]:
    """## Noise: configurations run under several seeds."""
    st = d.st
    out = []
    repeats = sorted((c for c in st.configs.values() if len(c.values) > 1),
                     key=lambda c: (c is not st.best, -len(c.values), c.first_line))     # the best first, always
    if repeats:
        out += ["## Noise (configurations run under several seeds)"]
        for c in repeats[:4]:
            out.append(f"- {c.fingerprint}{' (the best)' if c is st.best else ''}: {len(c.values)} runs, mean "
                       f"{c.mean:.6f}, val_bpb {min(c.values):.6f}..{max(c.values):.6f} (spread "
                       f"{max(c.values) - min(c.values):.6f})")
        out.append("")
    return out


def tried_section(d: "Digest") -> list[str]:
    """## Hyperparameters tried: values -> the best mean of a configuration with them."""
    rows, index, cur, entry, st, pending = d.rows, d.index, d.cur, d.entry, d.st, d.pending
    out = []
    # a crash counts against a key only where the key changed from the parent
    tried, labels = {}, {}
    parents = parent_runs(rows, index)

    def shown(val) -> str:                      # _v once per distinct value: 10,000 runs x their keys otherwise
        key = (type(val), json.dumps(val, sort_keys=True) if isinstance(val, (dict, list)) else val)
        if key not in labels:
            labels[key] = _v(val)
        return labels[key]
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
            label = shown(val) if trained.get(k, val) == val else f"{_v(val)} ({_as_trained(e, k, val, trained[k])})"
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
    return out


def render_memory(rows: list[dict], index: dict, notes: str, claims: list[dict] = (), now: float = 0.0,
                  note: str | None = None, damage: list[str] = ()) -> str:
    """Deterministic digest of the ledger and the runs in flight (same inputs -> same bytes). `damage`: entries
    of harness-written files set aside (harness/checked.py), a `!!` line each (the first few)."""
    out = ["# memory.md — generated from the ledger after every run; edit only the Notes section at the end", ""]
    out += [f"!! {note}", ""] if note else []
    unique = list(dict.fromkeys(damage))
    shown = [clean_text(line, 240) for line in unique[:MEMORY_DAMAGE_LINES]]
    out += [f"!! damaged entry: {line}" for line in shown] + [""] * bool(shown)
    if len(unique) > len(shown):
        out += [f"!! ... and {len(unique) - len(shown)} more damaged entries: `uv run prepare.py --memory` "
                f"prints them all", ""]
    if not rows:
        out += ["No runs recorded yet. Start with a baseline run: `uv run train.py`, then the same code under a",
                "second seed, `uv run train.py --seed 43`, so that the noise floor exists before the first decision.",
                ""] + running_now(rows, index, list(claims), now, None, None)
        return "\n".join(out) + "\n" + (notes or f"{NOTES_HEADER}\n\n")
    d = digest(rows, index)
    out += summary_section(d) + [""]
    out += running_now(rows, index, list(claims), now, d.entry(d.best) if d.best else None, d.key)
    for section in (best_section, last_run_section, top_section, recent_section, noise_section, tried_section):
        out += section(d)
    text = "\n".join(out)
    while len(text.encode()) > MEMORY_MAX_BYTES:        # bounded whatever the ledger holds
        out = out[:-2] + [out[-1]] if len(out) > 3 else out[:1]
        text = "\n".join(out + ["(truncated to stay under 8 KB)", ""])
    return text + "\n" + (notes or f"{NOTES_HEADER}\n\n(Agent: keep your hypotheses, lessons and plans here; this "
                                   f"section is preserved.)\n")




_NOTES = re.compile(r"^\ufeff?#{1,6}[ \t]*notes\b[^\n]*$", re.I | re.M)     # any level, case, tail; after a BOM


def read_notes(memory: Path) -> str:
    """The agent's Notes section of memory.md, byte for byte: its header at any level or case (after a BOM too),
    bytes that are not UTF-8 kept as they are (surrogate escapes, written back as the same bytes). A memory.md that
    lost its header is copied whole to memory.notes-lost.md with a `!!` line, never dropped in silence."""
    try:
        raw = memory.read_bytes()
    except FileNotFoundError:
        return ""
    text = raw.decode("utf-8", "surrogateescape")
    found = _NOTES.search(text)
    if found:
        return text[found.start():]
    if text.strip() and not text.lstrip("\ufeff").startswith("# memory.md"):    # the agent's own file: all notes
        return f"{NOTES_HEADER}\n\n{text}"
    if text.strip():
        lost = memory.with_name("memory.notes-lost.md")
        atomic_write_bytes(lost, raw)
        print(f"!! {memory.name} had no Notes header: it was regenerated, and the old file is kept whole in {lost}")
    return ""


def write_memory(store, plot: bool = False, now: float | None = None) -> Path:
    """Regenerate sessions/memory.md (and, with plot, progress.png) atomically from the store's ledger and the runs
    in flight; call under the store's lock."""
    memory = store.sessions / "memory.md"
    rows, index = store.read()
    now = time.time() if now is None else now
    recorded = {r["run_id"] for r in rows}      # a run killed after its row is recorded: its claim says nothing
    claims = [dict(c, gone=claim_state(c, host_name()) == "gone") for c in store.claims(now)
              if c["run_id"] not in recorded]
    damage = list(getattr(store, "damage", []))
    text = render_memory(rows, index, read_notes(memory), claims, now, store.note, damage)
    atomic_write_bytes(memory, text.encode("utf-8", "surrogateescape"))       # the Notes' own bytes, as read
    if plot:
        write_progress_png(rows, index, store.sessions, heldout_scores(store))     # the human's view only
    return memory


def regenerate_memory(s: Settings | None = None) -> Path:
    store = open_ledger(s)
    getattr(store, "local", store).check()        # a folder where memory.md or the lock goes: one line, exit 2
    with store.lock():
        path = write_memory(store, plot=True)
    for line in dict.fromkeys(store.damage):      # memory.md shows the first few; the command prints them all
        print(f"!! damaged entry: {line}")
    return path
