"""Lineage (harness/lineage.py): the run each run was built on, the commit to return to after a discard, the
commands a run prints (as it was started).

    uv run pytest tests/test_lineage.py
"""

import json
import shlex

import pytest

from harness import config, digest, ledger, lineage, nextstep, record
from test_ledger import _entry, _row


def test_commands_start_the_next_run_as_this_one_was_started(tmp_path):
    """A run started by torchrun gets its next commands for torchrun: a plain `uv run train.py` would be another
    key (the process count is in it), and its seed a `rerun` or a stray baseline there."""
    res, ses = tmp_path / "r.tsv", tmp_path / "s"
    four = {"key_parts": {"world": 4}, "launch": {"per_node": 4}}
    record.append_run(res, ses, _row("a", 1.0, commit="c1"), _entry(None, "A", commit="c1", parent="c0", **four))
    text = (ses / "memory.md").read_text()
    assert "(`uv run torchrun --standalone --nproc_per_node=4 train.py --seed 43` on the baseline's commit)" in text
    rows, index = ledger.read_ledger(res), ledger.read_index(ses)
    assert nextstep.next_step(rows[-1], rows, index, "main").endswith(
        "re-run it unchanged under another seed: uv run torchrun --standalone --nproc_per_node=4 train.py --seed 43")
    record.append_run(res, ses, _row("b", 1.0, commit="c1"), _entry(None, "A", seed=43, commit="c1", parent="c0"))
    rows, index = ledger.read_ledger(res), ledger.read_index(ses)     # an entry from before launches were kept
    assert nextstep.next_step(rows[-1], rows, index, "main").endswith(
        "a third seed narrows it, usually: uv run train.py --seed 44")
    record.append_run(res, ses, _row("c", 0.9, commit="c2"), _entry({"depth": 9}, "C", commit="c2", parent="c1",
                                                               key_parts={"world": 2}, launch={"per_node": 1}))
    assert [r["status"] for r in ledger.read_ledger(res)][-1] == "confirm"
    assert ("- pending: better than the best, not yet by the margin with 3+ seeds; re-run this commit unchanged: "
            "`uv run torchrun --nnodes=2 --nproc_per_node=1 --node_rank=<this node's rank> --master_addr=<node 0> "
            "--master_port=29500 train.py --seed 43`") in (ses / "memory.md").read_text()
    # its value is pending, not "not kept", while the confirm runs
    assert "| depth | 9 -> 0.900000 over 1 seed pending (1 run); 8 -> 1.000000 over 2 seeds (2 runs) |" in \
        (ses / "memory.md").read_text()
    old = {"key_parts": {"world": 2}}                    # recorded before launches were kept: its key's processes
    assert lineage.train_command(old, 44) == "uv run torchrun --standalone --nproc_per_node=2 train.py --seed 44"


def test_a_parent_run_is_of_the_same_key_and_a_killed_run_is_told_apart():
    """A run's parent is a run of the same comparability key (a changed ground.json makes another key: its first
    run has none); a run killed outright is told to re-run unchanged unless its edit made it too slow or large."""
    from harness.nextstep import next_step
    rows = [dict(_row("old", 1.0, key="k1", commit="c1"), status="baseline", line=2),
            dict(_row("new", 0.9, key="k2", commit="c2"), status="baseline", line=3),
            dict(_row("edit", 0.8, key="k2", commit="c3"), status="discard", line=4),
            dict(_row("dead", None, key="k2", commit="c4"), status="crash", line=5)]
    index = {"old": _entry(commit="c1", parent="c0"), "new": _entry(commit="c2", parent="c1"),
             "edit": _entry(commit="c3", parent="c2"),
             "dead": _entry(commit="c4", parent="c2", error="killed: Killed", fp="fp-dead")}
    parents = lineage.parent_runs(rows, index)
    assert parents["new"] is None                              # c1's run is of key k1: not this run's parent
    assert parents["edit"]["run_id"] == "new" and parents["dead"]["run_id"] == "new"
    said = next_step(rows[-1], rows, index, "main")
    assert said.startswith("killed outright: if the edit made it too slow or too large, fix that, `git commit -a "
                           "--amend` and run again; if the host or you stopped it, run this commit again unchanged: "
                           "uv run train.py --seed 42; or give up: ")
    assert said.endswith("git reset --hard c2")
    # recorded late, after the same configuration ran again under its seed: nothing left to re-run
    late = rows[:3] + [dict(_row("again", 0.85, key="k2", commit="c4"), status="discard", line=5),
                       dict(rows[3], line=6)]
    index["again"] = _entry(commit="c4", parent="c2", fp="fp-dead")
    assert next_step(late[-1], late, index, "main") == ("killed outright; this configuration has a result under seed "
                                                        "42 already (again, discard): nothing to re-run; it was "
                                                        "discarded: git reset --hard c2")      # and the way back
    # a killed run of the best commit, recorded late (after another seed of it): the next commit's parent is the
    # scored run of that commit, not the crash (its diff and val_bpb are what the agent built on)
    late = [dict(_row("base", 1.0, key="k2", commit="c2"), status="baseline", line=2),
            dict(_row("seed43", 0.99, key="k2", commit="c2"), status="repeat", line=3),
            dict(_row("killed", None, key="k2", commit="c2"), status="crash", line=4),
            dict(_row("next", 0.98, key="k2", commit="c5"), status="confirm", line=5)]
    idx = {"base": _entry(commit="c2"), "seed43": _entry(commit="c2", seed=43),
           "killed": _entry(commit="c2", seed=44, error="killed: Killed"), "next": _entry(commit="c5", parent="c2")}
    assert lineage.parent_runs(late, idx)["next"]["run_id"] == "seed43"
    index["dead"]["error"] = "RuntimeError: shapes"
    assert next_step(rows[-1], rows, index, "main").startswith("fix a trivial bug")


def test_a_capped_edit_has_its_parents_fingerprint(tmp_path, monkeypatch):
    from harness.identity import config_fingerprint
    model = json.loads(config.model_path().read_text())
    prints = []
    for depth in (8, 4):
        path = tmp_path / f"model_{depth}.json"
        path.write_text(json.dumps(dict(model, depth=depth)))
        monkeypatch.setenv("AUTORESEARCH_MODEL", str(path))
        prints.append((config_fingerprint(), config_fingerprint(capped={"depth": 2})))
    assert prints[0][0] != prints[1][0]                # as written: two configurations
    assert prints[0][1] == prints[1][1]                # as trained under a depth cap of 2: one


def test_a_cap_cancelled_edit_under_a_new_seed_is_a_repeat_that_sends_the_agent_home(tmp_path):
    from harness.nextstep import next_step
    res, ses = tmp_path / "r.tsv", tmp_path / "s"
    trained = {"depth": 2, "matrix_lr": 0.04}
    cap8, cap4 = {"depth": [8, 2]}, {"depth": [4, 2]}
    for rid, seed in (("a", 42), ("b", 43)):
        record.append_run(res, ses, _row(rid, 1.0 + seed / 1000, commit="c1"),
                      _entry(trained, "A", seed=seed, commit="c1", parent="c0", model_changes_by_mode=cap8))
    row = record.append_run(res, ses, _row("c", 0.9, commit="c2"),
                        _entry(trained, "A", seed=44, commit="c2", parent="c1", model_changes_by_mode=cap4))
    assert row["status"] == "repeat"                    # depth 4 trains as 2: the kept configuration, another seed
    store = ledger.FileLedger(res, ses)
    rows, index = store.read()
    assert lineage.return_commit(rows, index, "k1", "main") == "c1"       # c2's files differ: not a return point
    assert next_step(rows[-1], rows, index, "main") == (
        "this edit trains its parent's model (a cap of this mode cancels it): nothing was judged; go back and try an "
        "edit the caps allow: git reset --hard c1")
    record.append_run(res, ses, _row("d", 1.0, commit="c1"),
                  _entry(trained, "A", seed=45, commit="c1", parent="c0", model_changes_by_mode=cap8))
    rows, index = store.read()
    assert lineage.return_commit(rows, index, "k1", "main") == "c1"       # a clean repeat of the kept files: home


def test_a_comment_only_commit_is_not_the_commit_to_return_to():
    """The CPU trials: a comment-only edit of train.py trains the best's configuration (a `rerun`); memory.md then named
    its commit "the last kept commit" and every later discard went back there. The kept run's own commit is home."""
    rows = [_row("base", 1.00, commit="c0", status="baseline"), _row("note", 1.00, commit="c9", status="rerun"),
            _row("edit", 1.05, commit="c10", status="discard")]
    index = {"base": _entry(fp="A", commit="c0"), "note": _entry(fp="A", commit="c9", parent="c0"),
             "edit": _entry(fp="B", commit="c10", parent="c9")}
    assert lineage.return_commit(rows, index, "k1", "main") == "c0"


def test_after_a_restore_a_discard_returns_to_the_restored_commit(monkeypatch):
    """Host b restores host a's kept run (`prepare.py --restore`), commits it (r1) and runs an edit on top without
    running r1 first: the discard must send b back to r1, whose files are the kept run's byte for byte, not to b's
    own baseline (a configuration the best has left behind, against which b's next edits would be judged wrongly).
    A parent whose commit also changed other files (ground.json) is no such point: going back would undo them."""
    rows = [_row("a-base", 1.00, commit="a0", status="baseline"), _row("b-base", 1.00, commit="b0", status="baseline"),
            _row("a-keep", 0.90, commit="a1", status="keep"), _row("b-edit", 0.95, commit="e1", status="discard")]
    index = {"a-base": _entry(fp="F0", host="a", commit="a0", files_sha="S0"),
             "b-base": _entry(fp="F0", host="b", commit="b0", files_sha="S0"),
             "a-keep": _entry(fp="FK", host="a", commit="a1", files_sha="SK", parent="a0", parent_files_sha="S0"),
             "b-edit": _entry(fp="FE", host="b", commit="e1", files_sha="SE", parent="r1", parent_files_sha="SK")}
    assert lineage.return_commit(rows, index, "k1", "main", "b") == "r1"
    monkeypatch.setenv("AUTORESEARCH_HOST", "b")
    assert nextstep.next_step(rows[-1], rows, index, "main") == "git reset --hard r1"          # a discard
    # an amend of a keep: its parent holds the baseline's files, but runs there speak for it (k1 is later, kept)
    amend = [_row("base", 1.0, commit="k0", status="baseline"), _row("keep", 0.9, commit="k1", status="keep"),
             _row("amended", 0.95, commit="a1", status="discard")]
    amend_index = {"base": _entry(fp="F0", commit="k0", files_sha="S0"),
                   "keep": _entry(fp="F1", commit="k1", files_sha="S1", parent="k0", parent_files_sha="S0"),
                   "amended": _entry(fp="F2", commit="a1", files_sha="S2", parent="k0", parent_files_sha="S0")}
    assert lineage.return_commit(amend, amend_index, "k1", "main") == "k1"
    index["b-edit"]["parent_files_sha"] = None            # the edit's commit changed ground.json too (or an old run)
    assert lineage.return_commit(rows, index, "k1", "main", "b") == "b0"
    index["b-edit"]["parent_files_sha"] = "SX"            # a parent with files no accepted run has
    assert lineage.return_commit(rows, index, "k1", "main", "b") == "b0"


def test_a_killed_run_of_a_discarded_configuration_is_sent_home(monkeypatch):
    """A trial: a run killed outright and recorded later, when its configuration had been run (seed 42) and discarded
    meanwhile: nothing to re-run, and the agent, still on the discarded commit, is told the way back."""
    monkeypatch.delenv("AUTORESEARCH_HOST", raising=False)
    rows = [_row("base", 1.00, commit="c0", status="baseline"), _row("edit", 1.05, commit="c1", status="discard"),
            _row("kill", None, commit="c1", status="crash")]
    index = {"base": _entry(fp="A", commit="c0"), "edit": _entry(fp="B", commit="c1", parent="c0"),
             "kill": _entry(fp="B", commit="c1", parent="c0", error=digest.KILLED + "no error message")}
    assert nextstep.next_step(rows[-1], rows, index, "main") == (
        "killed outright; this configuration has a result under seed 42 already (edit, discard): nothing to re-run; "
        "it was discarded: git reset --hard c0")
    # discarded under another key only (another GPU, another ground.json): not this key's verdict
    elsewhere = [dict(rows[1], run_id="old", comparability_key="k0")] + [dict(r) for r in rows]
    elsewhere[2]["status"] = "confirm"
    index["old"] = dict(index["edit"])
    assert nextstep.next_step(elsewhere[-1], elsewhere, index, "main").endswith("(edit, confirm): nothing to re-run")
    rows[1]["status"] = "confirm"                          # pending: another seed, not the way back
    assert nextstep.next_step(rows[-1], rows, index, "main").endswith("(edit, confirm): nothing to re-run")


def test_next_keeps_a_ground_json_not_committed_on_its_own(monkeypatch):
    """A trial: the discard's `git reset --hard` dropped the user's uncommitted (or committed-with-the-edit) ground.json
    change and later runs used another key without a word. next: now carries ground.json over the reset and commits
    it on its own; after a keep it asks for the commit first (uncommitted), or says nothing more (committed)."""
    from harness.identity import GroundNote, keeping_ground
    monkeypatch.setenv("AUTORESEARCH_GROUND", str(config.REPO_DIR / "ground.json"))
    uncommitted = GroundNote("!! ground.json has uncommitted changes: ...", uncommitted=True)
    with_edit = GroundNote("!! this commit changes ground.json ...", uncommitted=False)
    assert keeping_ground("git reset --hard c0", uncommitted) == (
        "cp ground.json ground.json.keep && git reset --hard c0 && mv ground.json.keep ground.json && git commit "
        "ground.json -m \"ground: the user's settings\" (keeping ground.json: it is not committed on its own)")
    assert keeping_ground("crashed: fix it; or give up: git reset --hard c0", with_edit).startswith(
        "crashed: fix it; or give up: cp ground.json ground.json.keep && git reset --hard c0 && mv ")
    keep = "keep this commit and build on it"
    assert keeping_ground(keep, uncommitted) == ("first commit ground.json on its own: `git commit ground.json -m "
                                                 f"\"ground: the user's settings\"`; then: {keep}")
    assert keeping_ground(keep, with_edit) == keep and keeping_ground(keep, None) == keep


def test_the_next_command_repeats_the_variables_its_agent_typed(monkeypatch, tmp_path):
    """`AUTORESEARCH_GROUND=g.json uv run train.py` typed once: the commands that run prints for its agent must name
    g.json again, or the second seed they ask for reads the default ground.json (other data, another key) into
    another ledger; a model.json elsewhere, or a host name, likewise. memory.md, read by every agent of a ledger
    (several per host, one per GPU), repeats none: one agent's host name would make another's runs its own."""
    from harness import identity
    monkeypatch.chdir(tmp_path)
    for var in ("OMP_NUM_THREADS", *identity.HARNESS_ENV):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AUTORESEARCH_GROUND", "my ground.json")
    monkeypatch.setenv("AUTORESEARCH_HOST", "gpu-7")
    env = identity.harness_env()
    assert env == {"AUTORESEARCH_GROUND": str(tmp_path / "my ground.json"), "AUTORESEARCH_HOST": "gpu-7"}
    assert identity.launch_info()["env"] == env                      # kept in the run's record
    ground = shlex.quote(str(tmp_path / "my ground.json"))
    one = {"key_parts": {"world": 1}, "launch": {"per_node": 1}}
    assert lineage.train_command(one, 43, env) == (
        f"env AUTORESEARCH_GROUND={ground} AUTORESEARCH_HOST=gpu-7 uv run train.py --seed 43")
    assert lineage.train_command(one, 43) == "uv run train.py --seed 43"          # memory.md's form
    # a CPU key's thread count first; torchrun on one node passes them to every process; on several nodes the
    # command runs on each, from its own checkout with its own variables: none
    threads = {"key_parts": {"world": 1, "threads": 1}, "launch": {"per_node": 1, "omp_num_threads": "1"}}
    assert lineage.train_command(threads, 44, env) == (
        f"env OMP_NUM_THREADS=1 AUTORESEARCH_GROUND={ground} AUTORESEARCH_HOST=gpu-7 uv run train.py --seed 44")
    assert lineage.train_command({"key_parts": {"world": 2}, "launch": {"per_node": 2}}, 43, env) == (
        f"env AUTORESEARCH_GROUND={ground} AUTORESEARCH_HOST=gpu-7 uv run torchrun --standalone "
        "--nproc_per_node=2 train.py --seed 43")
    assert lineage.train_command({"key_parts": {"world": 2}, "launch": {"per_node": 1}}, 43, env).startswith(
        "uv run torchrun --nnodes=2 ")
    assert lineage.way_back(None, "r1", env).endswith(f"to build on the best: env AUTORESEARCH_GROUND={ground} "
                                                     "AUTORESEARCH_HOST=gpu-7 uv run prepare.py --restore r1)")
    # the command runs: a shell splits it back into the same variables and arguments
    words = shlex.split(lineage.train_command(one, 43, env))
    assert words[:3] == ["env", f"AUTORESEARCH_GROUND={tmp_path / 'my ground.json'}", "AUTORESEARCH_HOST=gpu-7"]
    # a value no command line can carry is refused where it is read, naming the variable
    monkeypatch.setenv("AUTORESEARCH_HOST", "gpu-7\n## Notes")
    with pytest.raises(config.ConfigError, match=r"^AUTORESEARCH_HOST: a control character"):
        identity.harness_env()


def test_a_new_keys_first_run_that_crashed_is_told_what_to_return_to(tmp_path):
    """A key whose first run crashed (e.g. a max_steps commit stopped short) has nothing kept: the agent is told
    what to return to, not a guessed commit (a first run's git parent is the harness's own history), in words no
    shell reads as a redirect, and memory.md does not send it to a baseline that does not exist."""
    res, ses = tmp_path / "r.tsv", tmp_path / "s"
    record.append_run(res, ses, _row("a", None, status="crash", commit="c1"),
                  _entry(fp="A", commit="c1", parent="c0", error="stopped at step 141 of max_steps 5000 (about 24 "
                         "steps fit the budget; val_bpb 2.1, not judged)"), status="crash")
    rows, index = ledger.FileLedger(res, ses).read()
    said = nextstep.next_step(rows[-1], rows, index, "main")
    assert ("give up on it: return to the commit you started from with `git reset --hard` (nothing kept in this "
            "key on this host yet);") in said                  # not its git parent: a first run's is the harness's
    assert "lower max_steps in ground.json's profile (e.g. 24, the steps that fit the budget" in said
    text = (ses / "memory.md").read_text()
    assert "- noise floor: not measured yet: no run of this key has a val_bpb yet (the last run says why)\n" in text
    assert "on the baseline's commit" not in text
    assert lineage.way_back("c9", "x") == "git reset --hard c9"
