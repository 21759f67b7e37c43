"""Lineage and commands: which run each run was built on, the commit to return to, what separates two keys, and
the shell commands a run prints for its agent (`next:`, the way back, a re-run under another seed).

    uv run pytest tests/test_ledger.py -k "parent or return_commit or train_command"

Bookkeeping only: nothing here decides a status (harness/decide.py does).
"""

from __future__ import annotations

import re
import shlex

from harness.decide import ACCEPTED, is_scored, run_fingerprint, standing
from harness.errors import LEGACY_PREFIXES, ErrorKind, error_kind

KEY_HASHES = ("val", "tok", "corpus")     # key parts that are hashes: shown by their first 12 characters
KEY_LABELS = {"val": "val file", "tok": "tokenizer", "T": "max_seq_len", "eval": "eval tokens",
              "budget": "time_budget_s", "world": "processes", "corpus": "builtin corpus",
              "threads": "CPU threads (OMP_NUM_THREADS)"}                    # as memory.md names them


def requested_model(entry: dict) -> dict:
    """model.json as written for a run: what it trained, with the values a mode's cap replaced put back."""
    return {**(entry.get("model") or {}), **{k: v[0] for k, v in (entry.get("model_changes_by_mode") or {}).items()}}


def flatten(d: dict | None) -> dict:
    """One level of nesting as dotted keys: {"a": {"b": 1}, "c": 2} -> {"a.b": 1, "c": 2}."""
    flat = {}
    for k, v in (d or {}).items():
        flat.update({f"{k}.{kk}": vv for kk, vv in v.items()} if isinstance(v, dict) else {k: v})
    return flat


RECOMPILED, STOPPED_SHORT = LEGACY_PREFIXES[ErrorKind.RECOMPILED], LEGACY_PREFIXES[ErrorKind.STOPPED_SHORT]


def not_judged(entry: dict, back: str) -> str | None:
    """`next:` for a finished run recorded as a crash because it measured something else than its configuration
    (harness/record.py `_not_comparable`: its index entry's error_kind), with `back` the way back; None for any
    other crash."""
    kind, error = error_kind(entry), str(entry.get("error") or "")
    if kind is ErrorKind.RECOMPILED:     # a value that changes between steps, read by the compiled model
        return ("recompiled after the warm-up: not judged; find the cause (`TORCH_LOGS=recompiles` in front of the "
                "run command prints it, beside the eval's expected one, grad_mode; that run is recorded too), make "
                "the value that changes between steps a tensor or a constant (a shape meant to change: "
                "torch._dynamo.mark_dynamic, or run every shape within the warm-up steps), `git commit -a --amend`, "
                f"and run again; or give up on it: {back}")
    if kind is ErrorKind.STOPPED_SHORT:  # the hard limit, under max_steps: a slower step or a loaded host
        legacy = re.search(r"about (\d+) steps fit", error)           # entries written before fit_steps
        fit = entry.get("fit_steps") or (int(legacy.group(1)) if legacy else None)
        example = f" (e.g. {fit}, the steps that fit the budget at this run's pace)" if fit else ""
        return (f"{error.split(' (')[0]}, by the hard limit: not judged; if your edit slowed the step, make it faster, "
                f"`git commit -a --amend` and run again, or give up on it: {back}; if the commit you return to stops "
                f"short too, lower max_steps in ground.json's profile{example}, in a commit of its own (a new key), "
                f"and run that commit")
    return None


def way_back(home: str | None, best_run: str | None, env: dict | None = None) -> str:
    """The `git reset` after a discard or a crash: to `home` (return_commit); with nothing kept in this key on this
    host, no commit the ledger knows is the right one (a first run's commit is the harness's; a key can change
    with ground.json or the machine), so the agent is told what to return to, not a guessed commit."""
    if home:
        return f"git reset --hard {home}"
    return ("return to the commit you started from with `git reset --hard` (nothing kept in this key on this host yet"
            + (f"; to build on the best: {env_prefix(env or {})}uv run prepare.py --restore {best_run})"
               if best_run else ")"))


def key_differences(a: dict, b: dict) -> list[str]:
    """Why runs a and b (their index entries) have different comparability keys: the parts of the key that differ
    ("name: a -> b"; harness.identity.key_parts: data, tokenizer, profile, processes, PLATFORM's GPU and kernel
    choices). Empty where either run predates the parts' being recorded."""
    def flat(entry):
        parts = entry["key_parts"]
        shown = {KEY_LABELS.get(k, k): str(v)[:12] if k in KEY_HASHES else v for k, v in parts.items()
                 if k != "platform"}
        return {"schedule": "seconds", **flatten(shown), **(parts.get("platform") or {})}   # no max_steps: seconds
    if not (a.get("key_parts") and b.get("key_parts")):
        return []
    fa, fb = flat(a), flat(b)
    show = lambda v: "(unset)" if v is None else v                                   # noqa: E731
    return [f"{k}: {show(fa.get(k))} -> {show(fb.get(k))}" for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)]


def capped_apart(a: dict, b: dict) -> bool:
    """Two runs of one configuration as trained whose model.json differ in a value a cap replaced (an edit the
    cap cancelled): the same model, not the same files."""
    keys = set(a.get("model_changes_by_mode") or {}) | set(b.get("model_changes_by_mode") or {})
    ra, rb = requested_model(a), requested_model(b)
    return any(ra.get(k) != rb.get(k) for k in keys)


def _before_on_host(rows: list[dict], index: dict, first: int) -> list[dict]:
    """The runs before rows[first] that its host made (on a shared ledger other hosts' keys are theirs; runs
    recorded without a host count as this host's)."""
    host = lambda r: index.get(r["run_id"], {}).get("host")                                # noqa: E731
    return [r for r in rows[:first] if None in (host(r), host(rows[first])) or host(r) == host(rows[first])]


def key_before(rows: list[dict], index: dict, key: str) -> tuple[dict, str]:
    """The run memory.md compares this key with, and how it was chosen: the last run of another key that this key's
    first run's host made before it (the key this agent came from), else the ledger's latest run of another key."""
    mine = _before_on_host(rows, index, next(i for i, r in enumerate(rows) if r["comparability_key"] == key))
    if mine:
        return mine[-1], "the key its first run's host ran before it"
    return next(r for r in reversed(rows) if r["comparability_key"] != key), "its latest run"


def unjudged_baseline(rows: list[dict], index: dict, key: str) -> tuple[dict, dict] | None:
    """(the key before's best run, this key's baseline) where no scored run of this key has the former's files: a
    key's first scored run is its baseline, judged against nothing, so an edit made together with a key change
    (another GPU or kernel, a ground.json edit) was never compared; running that best under this key compares
    them. The key before: the last key with a best that this host ran before this key's first run
    (_before_on_host)."""
    first = next((i for i, r in enumerate(rows) if r["comparability_key"] == key), None)
    base = next((r for r in rows if r["comparability_key"] == key and r["status"] == "baseline"), None)
    if not first or base is None:
        return None
    earlier = rows[:first]
    keys = [r["comparability_key"] for r in reversed(_before_on_host(rows, index, first))]   # none has this key
    prev, best = next(((k, b) for k in dict.fromkeys(keys) if (b := standing(earlier, index, k).best)), (None, None))
    if best is None:
        return None
    run = next(r for r in earlier if r["comparability_key"] == prev and r["status"] in ACCEPTED
               and run_fingerprint(r, index) == best.fingerprint)
    def files(r):
        return requested_model(index.get(r["run_id"], {})), index.get(r["run_id"], {}).get("train_py")
    ran = any(files(r) == files(run) for r in rows[first:] if r["comparability_key"] == key and is_scored(r))
    return None if ran else (run, base)


def env_assignments(env: dict) -> str:
    """`A=x B=y`, shell-quoted."""
    return " ".join(f"{k}={shlex.quote(str(v))}" for k, v in env.items())


def env_prefix(env: dict) -> str:
    """`env A=x B=y ` before a command (`env` also works after `timeout`), or nothing."""
    return f"env {env_assignments(env)} " if env else ""


def train_command(entry: dict, seed: int | None = None, env: dict | None = None) -> str:
    """The command that starts train.py as the run `entry` (its index entry) was started, with --seed: one process
    (on a CPU with the OMP_NUM_THREADS it was given: its key holds the thread count), torchrun on one node, or
    torchrun on each of several (README's form). `env`: variables to set first, on one node (the printing
    process's harness variables, identity.harness_env: its agent typed them; memory.md, which every agent of a
    ledger reads, gives none). A run recorded before launches were kept: its key's process count, on one node."""
    parts, launch = entry.get("key_parts") or {}, entry.get("launch") or {}
    world, omp = parts.get("world") or 1, launch.get("omp_num_threads")
    local = launch.get("per_node", world)
    arg = "" if seed is None else f" --seed {seed}"
    threads = {"OMP_NUM_THREADS": omp} if omp is not None and "threads" in parts and world <= 1 else {}
    if world <= 1:
        return f"{env_prefix({**threads, **(env or {})})}uv run train.py{arg}"
    if local >= world:
        return f"{env_prefix(env or {})}uv run torchrun --standalone --nproc_per_node={world} train.py{arg}"
    return (f"uv run torchrun --nnodes={world // local} --nproc_per_node={local} --node_rank=<this node's rank> "
            f"--master_addr=<node 0> --master_port=29500 train.py{arg}")      # on each node, with its own variables


def return_commit(rows: list[dict], index: dict, key: str, branch: str | None, host: str | None = None) -> str | None:
    """The commit to return to after a discard or a crash: the last clean commit on this branch of this host that
    holds an accepted configuration (a run's, when it is a baseline or keep, or a re-run of a configuration kept
    elsewhere; a run's parent, when the parent holds an accepted run's files byte for byte: the commit
    `prepare.py --restore` wrote another host's kept run into), else the last accepted run's commit on this host.
    None when this host has none (commits of other hosts are not in this checkout). Runs recorded without a host
    count as this host's."""
    entry = lambda r: index.get(r["run_id"], {})                                     # noqa: E731
    here = [r for r in rows if r["comparability_key"] == key and entry(r).get("host") in (None, host)]
    accepted = [r for r in rows if r["comparability_key"] == key and r["status"] in ACCEPTED]
    good = {run_fingerprint(r, index): entry(r) for r in accepted}
    kept_files = {entry(r).get("files_sha") for r in accepted} - {None}
    points, run_commits = [], {r["commit"] for r in here}
    mine = [r for r in here if entry(r).get("branch") == branch and not entry(r).get("dirty")]
    own = {run_fingerprint(r, index) for r in mine if r["status"] in ACCEPTED}     # kept here: its own commit
    for r in mine:
        parent = entry(r).get("parent")          # a commit never run here (--restore's): a run there speaks for it
        if parent and parent not in run_commits and entry(r).get("parent_files_sha") in kept_files:
            points.append(parent)                # before the run's own commit: a keep there is later
        fp = run_fingerprint(r, index)          # a re-run (a comment-only commit) speaks only for a kept elsewhere
        if r["status"] in ACCEPTED or (r["status"] in ("repeat", "rerun") and fp in good and fp not in own
                                       and not capped_apart(good[fp], entry(r))):
            points.append(r["commit"])
    pick = points or [r["commit"] for r in here if r["status"] in ACCEPTED]
    return pick[-1] if pick else None


def parent_runs(rows: list[dict], index: dict) -> dict:
    """run_id -> the run it was built on, for every row, in one pass: for a run of uncommitted edits, the last clean
    run of the same commit; else the last clean run of its parent commit (the same after `git commit --amend`; a
    scored one before a crash: `--record-crash` often records a killed run after later runs of its commit);
    else the last accepted run of its key before it; None for a first run. Only runs of the same comparability key
    count: a run under other settings (another budget, max_steps) measured something else."""
    clean_by_commit, accepted_by_key, out = {}, {}, {}
    for r in rows:
        entry, key = index.get(r["run_id"], {}), r["comparability_key"]
        wanted = r["commit"] if entry.get("dirty") else entry.get("parent")
        out[r["run_id"]] = clean_by_commit.get((key, wanted)) or accepted_by_key.get(key)
        prev = clean_by_commit.get((key, r["commit"]))      # a crash recorded late does not hide a scored run
        if not entry.get("dirty") and (prev is None or is_scored(r) or not is_scored(prev)):
            clean_by_commit[(key, r["commit"])] = r
        if r.get("status") in ACCEPTED:
            accepted_by_key[key] = r
    return out


def parent_run(rows: list[dict], index: dict, run: dict) -> dict | None:
    """The run `run` was built on (see parent_runs); `run` may be one not yet in rows."""
    before = [r for r in rows if r.get("line", 0) < run.get("line", 0) and r["run_id"] != run["run_id"]]
    return parent_runs(before + [run], index)[run["run_id"]]
