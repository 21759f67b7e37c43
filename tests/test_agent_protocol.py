"""program.md played step by step by a scripted agent (no LLM), in a temporary git clone:
baseline -> model.json experiment kept or discarded -> train.py edit that raises -> a run
killed with SIGKILL and recorded with --record-crash. Asserts ledger, logs, JSON records,
memory.md after each step, and the final git state.

    uv run pytest tests/test_agent_protocol.py
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from harness import ledger
from conftest import REPO, write_json


def git(clone, *args):
    return subprocess.run(["git", *args], cwd=clone, capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def clone(tmp_path, workspace):
    c = tmp_path / "project"
    subprocess.run(["git", "clone", "-q", str(REPO), str(c)], check=True)
    git(c, "config", "user.email", "agent@example.com")
    git(c, "config", "user.name", "agent")
    git(c, "checkout", "-q", "-b", "autoresearch/test")
    for f in ("prepare.py", "train.py"):        # the working tree's versions (the clone has HEAD's)
        (c / f).write_text((REPO / f).read_text())
    if git(c, "status", "--porcelain"):
        git(c, "commit", "-qam", "sync working tree")
    g = json.loads((workspace / "ground.json").read_text())
    g["ledger"] = {"results": str(c / "results.tsv"), "sessions_dir": str(c / "sessions")}
    write_json(tmp_path / "ground.json", g)       # user-owned and outside the agent's tree
    return c


def train(clone, tmp_path, *args, budget=None):
    env = dict(os.environ, AUTORESEARCH_GROUND=str(tmp_path / "ground.json"), PYTHONUNBUFFERED="1")
    env.pop("AUTORESEARCH_MODEL", None)          # the clone's own model.json
    return subprocess.run([sys.executable, "train.py", *args], cwd=clone, capture_output=True, text=True,
                          env=env, timeout=300)


def ledger_rows(clone):
    return ledger.read_ledger(clone / "results.tsv")


def memory(clone):
    return (clone / "sessions" / "memory.md").read_text()


@pytest.mark.slow
def test_scripted_agent_follows_program_md(clone, tmp_path):
    # 1. baseline
    base_commit = git(clone, "rev-parse", "--short=7", "HEAD")
    r = train(clone, tmp_path, "--description", "baseline")
    assert r.returncode == 0, r.stderr[-2000:]
    rows = ledger_rows(clone)
    assert [(x["status"], x["commit"], x["description"]) for x in rows] == [("baseline", base_commit, "baseline")]
    base = rows[0]
    assert (clone / "sessions" / f"{base['run_id']}.log").exists()
    rec = json.loads((clone / "sessions" / f"{base['run_id']}.json").read_text())
    assert rec["status"] == "baseline" and rec["git"]["commit"] == base_commit and rec["git"]["dirty"] is False
    assert f"best: val_bpb {base['val_bpb']:.6f} — {base['run_id']}" in memory(clone)

    # 2. an experiment on model.json, committed, run, kept or discarded by the recorded status
    m = json.loads((clone / "model.json").read_text())
    m["matrix_lr"] = 0.08
    write_json(clone / "model.json", m)
    git(clone, "commit", "-qam", "raise matrix_lr to 0.08")
    exp_commit = git(clone, "rev-parse", "--short=7", "HEAD")
    r = train(clone, tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    exp = ledger_rows(clone)[-1]
    assert exp["description"] == "raise matrix_lr to 0.08" and exp["commit"] == exp_commit
    assert exp["status"] in ("keep", "discard")
    assert exp["status"] == ("keep" if exp["val_bpb"] < base["val_bpb"] else "discard")
    mem = memory(clone)
    assert "| matrix_lr | " in mem and "0.08 -> " in mem and "0.04 -> " in mem         # the values-tried table
    if exp["status"] == "discard":
        assert "- model.json vs best: matrix_lr: 0.04 -> 0.08" in mem
        git(clone, "reset", "-q", "--hard", "HEAD~1")
        assert json.loads((clone / "model.json").read_text())["matrix_lr"] == 0.04
    kept_commit = git(clone, "rev-parse", "--short=7", "HEAD")

    # 3. a train.py edit that raises: crash recorded, then reset
    src = (clone / "train.py").read_text()
    (clone / "train.py").write_text(src.replace("    model.init_weights()\n",
                                                "    model.init_weights()\n    raise RuntimeError('shape mismatch in "
                                                "my new block')\n", 1))
    git(clone, "commit", "-qam", "try a new block")
    r = train(clone, tmp_path)
    assert r.returncode == 1 and "RuntimeError: shape mismatch in my new block" in r.stderr
    crash = ledger_rows(clone)[-1]
    assert (crash["status"], crash["val_bpb"], crash["description"]) == ("crash", None, "try a new block")
    assert "try a new block — RuntimeError: shape mismatch in my new block" in memory(clone)
    git(clone, "reset", "-q", "--hard", "HEAD~1")
    assert (clone / "train.py").read_text() == src

    # 4. a run killed outright (SIGKILL): nothing recorded until --record-crash reads its log
    # (same ground.json: a longer budget would be another comparability key; kill it while it builds the model)
    env = dict(os.environ, AUTORESEARCH_GROUND=str(tmp_path / "ground.json"), PYTHONUNBUFFERED="1")
    env.pop("AUTORESEARCH_MODEL", None)
    p = subprocess.Popen([sys.executable, "train.py", "--description", "killed run"], cwd=clone, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen, deadline = "", time.time() + 120
    while "parameters:" not in seen and time.time() < deadline:
        seen += p.stdout.read(1)
    run_id = seen.split('"run_id": "', 1)[1].split('"', 1)[0]
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=30)
    assert len(ledger_rows(clone)) == 3
    r = subprocess.run([sys.executable, "prepare.py", "--record-crash", f"sessions/{run_id}.log"], cwd=clone, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    killed = ledger_rows(clone)[-1]
    assert (killed["run_id"], killed["status"], killed["description"]) == (run_id, "crash", "killed run")
    mem = memory(clone)
    assert "killed run — killed: killed without an error message; last output: " in mem
    assert "4 runs: 1 baseline" in mem and "2 crash" in mem

    # final state: history is baseline (+ kept experiment), tree clean, ledger intact (4 rows)
    assert git(clone, "rev-parse", "--short=7", "HEAD") == kept_commit
    assert git(clone, "status", "--porcelain") == ""
    assert [x["status"] for x in ledger_rows(clone)][:1] == ["baseline"] and len(ledger_rows(clone)) == 4
