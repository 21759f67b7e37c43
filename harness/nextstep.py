"""The `next:` line a run prints: the protocol's next command, from the run's status and the ledger.

    uv run pytest tests/test_agent_protocol.py      # a scripted agent follows these lines

Bookkeeping only: the status is decided (harness/decide.py) before this is read.
"""

from __future__ import annotations

from harness.decide import ACCEPTED, is_scored, next_seed, run_fingerprint, standing
from harness.digest import _killed, cancelled_by_caps, floor_step_spread
from harness.identity import host_name
from harness.lineage import not_judged, parent_run, return_commit, train_command, unjudged_baseline, way_back


def _best_run(rows: list[dict], index: dict, key: str, best) -> str:
    """The first accepted run of the best configuration `best` (a decide.Config)."""
    return next(r["run_id"] for r in rows if r["comparability_key"] == key and r["status"] in ACCEPTED
                and run_fingerprint(r, index) == best.fingerprint)


def next_step(row: dict, rows: list[dict], index: dict, branch: str | None, env: dict | None = None) -> str:
    """The protocol's next command for this run (the ledger's row); env: the printing process's harness variables."""
    status, key, fp = row["status"], row["comparability_key"], run_fingerprint(row, index)
    again = lambda seed: train_command(index.get(row["run_id"], {}), seed, env)     # noqa: E731 - as this run started
    home = return_commit(rows, index, key, branch, host_name())
    st = standing(rows, index, key, candidate=fp if status == "confirm" else None)
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
    decision = index.get(row["run_id"], {}).get("decision") or {}
    if status == "confirm" and decision.get("control") and st.best is not None:
        best_seed = next_seed(rows, index, key, st.best.fingerprint)
        return (f"better than the best by the margin, but the host ran faster during this configuration's runs "
                f"than during any run of the best (harness/speed.py): not a keep until the best runs at this speed. "
                f"Run the best once now (a control), then this commit again: git checkout {home or 'BEST_COMMIT'} -- "
                f"model.json train.py && {again(best_seed)} --description 'control: the best at this speed'; "
                f"git checkout HEAD -- model.json train.py && {again(next_seed(rows, index, key, fp))}")
    if status == "confirm":
        return (f"better than the best, not yet by the noise margin over enough seeds: re-run this commit unchanged: "
                f"{again(next_seed(rows, index, key, fp))}")
    if status == "pruned":
        return (f"stopped early: its loss curve was clearly worse than the best configuration's at the same point "
                f"(not judged, not evidence for anything); go back: {back}; if the edit starts slow by design (a "
                f"longer warm-up, a schedule that pays off late), set \"prune\": false in model.json, `git commit -a "
                f"--amend`, and run again")
    if status == "rerun":          # e.g. a comment-only edit: the same configuration (train.py's code is hashed
        return (f"this configuration already ran with this seed: nothing was judged (a comment-only edit trains the "
                f"same configuration); change something, and go back first if you like: {back}; or measure it under "
                f"another seed: {again(next_seed(rows, index, key, fp))}")
    if status == "interrupted":
        seed = index.get(row["run_id"], {}).get("seed")
        return f"interrupted (a signal, not the edit): run this commit again unchanged: {again(seed)}; or {back}"
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
    if said := not_judged(index.get(row["run_id"], {}), back):          # measured something else
        return said
    return f"fix a trivial bug, `git commit -a --amend`, and run again; or give up on it: {back}"
