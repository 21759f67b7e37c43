"""The digest's values: what memory.md's sections and a run's `next:` read from the ledger, computed once (the
last run's key and its runs, the standing, the best run, runs since the last improvement), and the small texts
they share (what changed between two runs, runs in flight).

    uv run pytest tests/test_ledger.py -k memory

Values first, prose after: harness/memory.py renders these; tests assert on them.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass

from harness.decide import ACCEPTED, Standing, is_scored, run_fingerprint, standing
from harness.errors import LEGACY_PREFIXES, ErrorKind, error_kind
from harness.ledger import STATUSES, clean_text
from harness.lineage import flatten, requested_model

# The floor's runs may differ in steps by this factor before memory.md asks for max_steps: on a 25-step CPU run one
# step moves val_bpb by about as much as a seed (the second trial: 24..26 steps, same seed 2.211 / 2.229)
STEPS_SPREAD = 1.03
KILLED = LEGACY_PREFIXES[ErrorKind.KILLED]    # how a killed run's reason reads (harness.recover writes the kind too)


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
    return error_kind(entry) is ErrorKind.KILLED


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


@dataclass
class Digest:
    """What every section of memory.md reads, computed once from the ledger: the last run's key and its runs, the
    standing (floor, best), the best's first accepted run, the pending confirmation, the runs since the last
    improvement, and who ran them."""
    rows: list
    index: dict
    key: str
    last: dict
    cur: list
    st: object
    best_cfg: object
    best: dict | None
    pending: str | None
    scored: list
    since: list
    branch: str | None
    others: Counter
    counts: dict
    killed: int
    several: bool = False
    hosts: int = 0

    def entry(self, r: dict) -> dict:
        return self.index.get(r["run_id"], {})


def digest(rows: list[dict], index: dict) -> Digest:
    """The values memory.md's sections render (rows not empty)."""
    last, key = rows[-1], rows[-1]["comparability_key"]
    cur = [r for r in rows if r["comparability_key"] == key]
    entry = lambda r: index.get(r["run_id"], {})                              # noqa: E731
    others = Counter(r["comparability_key"] for r in rows if r["comparability_key"] != key)
    counts = {st: sum(r["status"] == st for r in cur) for st in STATUSES}
    killed = sum(r["status"] == "crash" and _killed(entry(r)) for r in cur)
    pending = run_fingerprint(last, index) if last["status"] == "confirm" else None
    st = standing(rows, index, key, candidate=pending)     # the floor its next run is judged on
    best_cfg = st.best
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

    where = lambda e: (f"{e.get('branch') or '?'} @ {e['host'] + ':' if e.get('host') else ''}"     # noqa: E731
                       f"{e.get('worktree') or '?'}")
    places = Counter(where(entry(r)) for r in cur if entry(r).get("branch") or entry(r).get("worktree"))
    return Digest(rows, index, key, last, cur, st, best_cfg, best, pending, scored, since, branch, others, counts,
                  killed, len(places) > 1, len({entry(r).get("host") for r in cur}))


def floor_step_spread(rows: list[dict], index: dict, key: str, st: Standing) -> tuple[int, int, int] | None:
    """(fewest, most, lower quartile) of the step counts of the runs the noise floor rests on, when they differ by
    more than STEPS_SPREAD (the machine's speed varied: the floor holds that spread, not the seeds'); else None."""
    steps = sorted(r["num_steps"] for r in rows if r["comparability_key"] == key and is_scored(r)
                   and r["num_steps"] is not None and len(st.configs[run_fingerprint(r, index)].values) > 1)
    return (steps[0], steps[-1], steps[len(steps) // 4]) if steps and steps[-1] > STEPS_SPREAD * steps[0] else None
