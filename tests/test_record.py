"""A run's record (harness/record.py, harness/recover.py): a run killed outright recorded from its log, another
agent's ended run, runs that measured something else than their configuration (recompiled, stopped short).

    uv run pytest tests/test_record.py
"""

import json


from harness import config, ledger, session
from harness.hardware import get_platform as hardware_platform
from conftest import run_script


def test_record_crash_from_a_killed_runs_log(run_dir):
    ses = run_dir / "sessions"
    ses.mkdir()
    rid = "20261126T000000Z-abcdef0-1234"
    (ses / f"{rid}.json").write_text(json.dumps({
        "run_id": rid, "status": "running", "description": "wider model", "mode": "test",
        "comparability_key": "local-test-abc", "timestamp": "2026-11-26T00:00:00+00:00", "fingerprint": "F1",
        "model": {"depth": 12}, "git": {"commit": "abcdef0", "branch": "main", "worktree": "/w", "dirty": False}}))
    (ses / f"{rid}.log").write_text("run_start: {}\nstep 00001 | loss 3.2\rstep 00002 | loss 3.1\n"
                                    "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB\n")
    elsewhere = run_script("prepare.py", run_dir, "--record-crash", str(ses / f"{rid}.log"))    # another checkout's run
    assert (elsewhere.returncode, elsewhere.stderr.strip()) == (2, (
        f"error: {rid}.json: run {rid} ran in /w; record it there: cd /w && env AUTORESEARCH_GROUND="
        f"{run_dir / 'ground.json'} AUTORESEARCH_MODEL={run_dir / 'model.json'} uv run prepare.py --record-crash "
        f"{ses / f'{rid}.log'}"))
    rec = json.loads((ses / f"{rid}.json").read_text())
    (ses / f"{rid}.json").write_text(json.dumps(dict(rec, git=dict(rec["git"], worktree=str(config.REPO_DIR)))))
    bad = run_script("prepare.py", run_dir, "--record-crash", str(ses / f"{rid}.log"),
                     env_extra={"AUTORESEARCH_HOST": "gpu-1\n## Notes"})          # no command line can carry it
    assert (bad.returncode, bad.stderr.strip()) == (2, "error: AUTORESEARCH_HOST: a control character in "
                                                       "'gpu-1\\n## Notes'")
    import time
    from harness import database            # a run still running on this machine records itself: refused
    store, now = ledger.FileLedger(run_dir / "results.tsv", ses), time.time()
    store.claim({"run_id": rid, "started": now, "expires": now + 600, **ledger.process_claim(database.host_name())})
    alive = run_script("prepare.py", run_dir, "--record-crash", str(ses / f"{rid}.log"))
    assert (alive.returncode, alive.stderr.strip()) == (2, f"error: run {rid} is still running on this machine: it "
                                                           "records itself")
    assert not (run_dir / "results.tsv").exists()
    store.claims_path.unlink()
    r = run_script("prepare.py", run_dir, "--record-crash", str(ses / f"{rid}.log"))
    assert r.returncode == 0, r.stderr
    rows = ledger.read_ledger(run_dir / "results.tsv")
    assert [(x["run_id"], x["status"], x["val_bpb"], x["commit"], x["comparability_key"]) for x in rows] == \
        [(rid, "crash", None, "abcdef0", "local-test-abc")]
    # the log ends on an exception the run raised (it died before recording it): the edit's crash, not a kill
    assert (ledger.read_index(ses)[rid]["error"]
            == "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB")
    assert json.loads((ses / f"{rid}.json").read_text())["status"] == "crash"
    assert "CUDA out of memory" in (ses / "memory.md").read_text()
    again = run_script("prepare.py", run_dir, "--record-crash", str(ses / f"{rid}.log"))
    assert again.returncode == 2
    assert again.stderr.strip() == f"error: results.tsv: run {rid} is already recorded (crash in {rid}.json)"
    missing = run_script("prepare.py", run_dir, "--record-crash", str(ses / "nope.log"))
    assert missing.returncode == 2 and missing.stderr.strip() == f"error: {ses / 'nope.log'}: no such log file"


def test_another_agents_ended_run_is_neither_running_nor_this_agents_to_record(capsys, monkeypatch, run_dir):
    """Two agents on one machine (AUTORESEARCH_HOST apart): agent b's run of this configuration was killed outright.
    Agent a's run does not call it "already running under the same seed" (it is not running) and does not tell a to
    record it (memory.md says whose it is); agent b is told."""
    import subprocess
    import sys
    import time
    from harness import ledger as ldg, record, settings, tokenizer
    monkeypatch.setenv("AUTORESEARCH_GROUND", str(run_dir / "ground.json"))      # a ledger of its own
    settings.reset()
    s, tok = settings.current(), tokenizer.Tokenizer.from_directory()
    m, changes = settings.effective_model(config.load_model(), s)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    monkeypatch.setenv("AUTORESEARCH_HOST", "agent-a")
    run = record.Run(s, tok, m, changes, "a's run", hardware_platform(), None, 42)
    run.sessions.mkdir(parents=True)
    (run.sessions / "b.json").write_text('{"status": "running"}')
    claim = dict(ldg.process_claim("agent-a"), pid=dead.pid, pid_start=None, run_id="b", host="agent-b",
                 comparability_key=run.key, fingerprint=run.record["fingerprint"], seed=42, started=time.time(),
                 expires=time.time() + 600, log=str(run.sessions / "b.log"), record=str(run.sessions / "b.json"))
    run.store.claim(claim)
    capsys.readouterr()
    rows, index = run.store.read()
    assert run.announce(rows, index) == []
    assert "b.log" not in capsys.readouterr().out
    monkeypatch.setenv("AUTORESEARCH_HOST", "agent-b")
    rows, index = run.store.read()
    run.announce(rows, index)
    assert "!! a run started on this machine ended without a record: b; record it: " in capsys.readouterr().out


def test_a_run_that_compiled_in_its_budget_is_not_judged(capsys):
    """A recompile after the warm-up spends budget seconds on compiling, more on an empty cache (the GPU check: 7
    steps against 43): the run is recorded as a crash with its reason, its val_bpb kept in its record only, and
    `next:` asks for the cause; a run without one is judged as usual, and a crash that never reached the end has
    no count at all (not measured, not zero)."""
    from harness import record, settings, tokenizer
    s, tok = settings.current(), tokenizer.Tokenizer.from_directory()
    m, changes = settings.effective_model(config.load_model(), s)
    run = record.Run(s, tok, m, changes, "recompiles", hardware_platform(), None, 9001)    # no other test's seed
    row = run.finish({"val_bpb": 1.25, "num_steps": 10, "compiled_in_budget": 3})
    out = capsys.readouterr().out
    reason = ("recompiled after the warm-up: 3 graph(s) compiled in counted steps (val_bpb 1.250000, not judged: "
              "the compile took budget seconds)")
    assert f"!! {reason}\n" in out and row["status"] == "crash" and row["val_bpb"] is None
    assert "\nnext: recompiled after the warm-up: not judged; find the cause (`TORCH_LOGS=recompiles` in front" in out
    give_up = out.split("`git commit -a --amend`, and run again; or give up on it: ", 1)[1]
    assert "git reset --hard" in give_up.splitlines()[0]     # to the kept commit, or (none yet) where it started
    rows, index = run.store.read()
    assert (rows[-1]["status"], rows[-1]["val_bpb"]) == ("crash", None)
    assert (index[run.run_id]["compiled_in_budget"], index[run.run_id]["error"]) == (3, reason)
    assert run.record["metrics"]["val_bpb"] == 1.25                     # measured, kept in sessions/<run_id>.json
    recent = [x for x in (run.sessions / "memory.md").read_text().splitlines() if x.startswith(f"| {run.run_id} |")]
    assert recent and "| crash |" in recent[0] and "— recompiled after the warm-up: 3 graph(s) compiled" in recent[0]
    clean = record.Run(s, tok, m, changes, "no recompiles", hardware_platform(), None, 9002)
    assert clean.finish({"val_bpb": 1.0, "num_steps": 10, "compiled_in_budget": 0})["status"] != "crash"
    assert "recompiled" not in capsys.readouterr().out
    broke = record.Run(s, tok, m, changes, "diverged", hardware_platform(), None, 9003)
    broke.crash("val_bpb is nan", {"num_steps": 4})
    assert broke.store.read()[1][broke.run_id]["compiled_in_budget"] is None


def test_a_compiled_run_without_warm_up_steps_says_its_compile_is_counted():
    import dataclasses
    from harness import settings
    s, m = settings.current(), config.load_model()
    compiled = dict(hardware_platform(), compile=True)
    said = "!! excluded_steps 0: step 0's compile counts in the budget, as many seconds as the compile cache makes it"
    assert any(x.startswith(said) for x in session.setup_lines(dataclasses.replace(s, excluded_steps=0), m, {},
                                                              compiled, 1))
    for quiet in (dataclasses.replace(s, excluded_steps=1), dataclasses.replace(s, excluded_steps=0, max_steps=9)):
        assert not any(x.startswith("!! excluded_steps") for x in session.setup_lines(quiet, m, {}, compiled, 1))


def test_under_max_steps_the_steps_decide_what_is_comparable(capsys):
    """With max_steps the steps end the run: a run stopped short of them (the hard limit on a loaded host) trained
    another model and is not judged; a recompile costs it wall time, not steps, and is judged as usual."""
    import dataclasses
    from harness import record, settings, tokenizer
    s = dataclasses.replace(settings.current(), max_steps=22)
    tok = tokenizer.Tokenizer.from_directory()
    m, changes = settings.effective_model(config.load_model(), s)
    short = record.Run(s, tok, m, changes, "cut short", hardware_platform(), None, 9101)
    row = short.finish({"val_bpb": 2.5, "num_steps": 8, "compiled_in_budget": 0,
                        "training_seconds": 4 * s.time_budget_s})             # 8 steps in 4 budgets: 2 fit one
    assert (row["status"], row["val_bpb"]) == ("crash", None)
    out = capsys.readouterr().out
    assert "!! stopped at step 8 of max_steps 22 (about 2 steps fit the budget; val_bpb 2.500000, not judged)\n" in out
    assert "\nnext: stopped at step 8 of max_steps 22, by the hard limit: not judged; if your edit slowed the step, " \
           "make it faster, `git commit -a --amend` and run again, or give up on it: " in out
    assert ("lower max_steps in ground.json's profile (e.g. 2, the steps that fit the budget at this run's pace), in "
            "a commit of its own (a new key), and run that commit\n") in out
    # a pace inflated by compiles, or time spent before the counted steps, gives no number to lower max_steps to
    for seed, extra, why in ((9103, {"compiled_in_budget": 2}, "2 graph(s) compiled in counted steps; "),
                             (9104, {"training_seconds": 0.001}, "")):
        run = record.Run(s, tok, m, changes, "short", hardware_platform(), None, seed)
        metrics = {"val_bpb": 2.5, "num_steps": 8, "compiled_in_budget": 0, "training_seconds": 4 * s.time_budget_s}
        run.finish({**metrics, **extra})
        out = capsys.readouterr().out
        assert f"!! stopped at step 8 of max_steps 22 ({why}val_bpb 2.500000, not judged)\n" in out
        assert "lower max_steps in ground.json's profile, in a commit of its own" in out and "(e.g." not in out
    full = record.Run(s, tok, m, changes, "recompiled, all steps", hardware_platform(), None, 9102)
    assert full.finish({"val_bpb": 2.25, "num_steps": 22, "compiled_in_budget": 1})["status"] != "crash"
    assert "not judged" not in capsys.readouterr().out
