"""program.md played step by step by a scripted agent (no LLM), in a temporary git clone:
baseline -> model.json experiment kept or discarded -> train.py edit that raises -> a run
killed with SIGKILL and recorded with --record-crash. Asserts ledger, logs, JSON records,
memory.md after each step, and the final git state.

    uv run pytest tests/test_agent_protocol.py
"""

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time

import pytest

from harness import ledger
from conftest import REPO, sync_working_tree, write_json


def git(clone, *args):
    return subprocess.run(["git", *args], cwd=clone, capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def clone(tmp_path, workspace):
    c = tmp_path / "project"
    subprocess.run(["git", "clone", "-q", str(REPO), str(c)], check=True)
    git(c, "config", "user.email", "agent@example.com")
    git(c, "config", "user.name", "agent")
    git(c, "checkout", "-q", "-b", "autoresearch/test")
    sync_working_tree(c)                      # the working tree's versions (the clone has HEAD's)
    if git(c, "status", "--porcelain"):
        git(c, "add", "-A")
        git(c, "commit", "-qm", "sync working tree")
    g = json.loads((workspace / "ground.json").read_text())
    g["ledger"] = {"results": str(c / "results.tsv"), "sessions_dir": str(c / "sessions")}
    write_json(tmp_path / "ground.json", g)       # user-owned and outside the agent's tree
    return c


def agent_env(tmp_path):
    """The agent's environment: the test's ground.json; the clone's model.json, this host, no thread setting."""
    env = dict(os.environ, AUTORESEARCH_GROUND=str(tmp_path / "ground.json"), PYTHONUNBUFFERED="1")
    for var in ("AUTORESEARCH_MODEL", "AUTORESEARCH_HOST", "OMP_NUM_THREADS"):
        env.pop(var, None)
    return env


def train(clone, tmp_path, *args, budget=None):
    return subprocess.run([sys.executable, "train.py", *args], cwd=clone, capture_output=True, text=True,
                          env=agent_env(tmp_path), timeout=300)


def ledger_rows(clone):
    return ledger.read_ledger(clone / "results.tsv")


def memory(clone):
    return (clone / "sessions" / "memory.md").read_text()


def next_line(r):
    return r.stdout.split("\nnext:", 1)[1].splitlines()[0].strip()


def printed_command(nxt):
    """The variables and train.py's arguments of the `[env V=x ...] uv run train.py ...` that ends a next: line,
    split as a shell splits them."""
    words = shlex.split(re.search(r"((?:env )?[^:]*uv run train\.py.*)$", nxt).group(1))
    env = dict(w.split("=", 1) for w in words[1:words.index("uv")]) if words[0] == "env" else {}
    return env, words[words.index("train.py") + 1:]


def run_and_follow(clone, tmp_path, *args):
    """One experiment as program.md says: run, then do what `next:` says until the outcome is decided:
    confirm -> the printed re-run; discard or crash -> the printed `git reset --hard`. Returns the statuses."""
    statuses = []
    r = train(clone, tmp_path, *args)
    while True:
        assert "\nnext:" in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]
        status, nxt = ledger_rows(clone)[-1]["status"], next_line(r)
        statuses.append(status)
        if status != "confirm":
            break
        env, cmd = printed_command(nxt)                                # e.g. --seed 43
        assert cmd[0] == "--seed" and int(cmd[1]) >= 43
        assert env == {"AUTORESEARCH_GROUND": str(tmp_path / "ground.json")}    # the ground this run read
        assert git(clone, "status", "--porcelain") == ""              # a confirmation re-runs the same commit
        r = train(clone, tmp_path, *cmd)
    if statuses[-1] in ("discard", "crash"):
        commit = nxt.split("git reset --hard ", 1)[1].split()[0]
        git(clone, "reset", "-q", "--hard", commit)
    return statuses, r


@pytest.mark.slow
def test_scripted_agent_follows_program_md(clone, tmp_path):
    # 1. the baseline under two seeds: the second is `repeat` (never keep) and gives the noise floor
    base_commit = git(clone, "rev-parse", "--short=7", "HEAD")
    r = train(clone, tmp_path, "--description", "baseline")
    assert r.returncode == 0, r.stderr[-2000:]
    assert next_line(r) == ("keep this commit; first measure the noise floor: re-run it unchanged under another "
                            f"seed: env AUTORESEARCH_GROUND={tmp_path / 'ground.json'} uv run train.py --seed 43")
    # program.md's first hour, said by the run, with the ground.json this run was started with
    rows = ledger_rows(clone)
    assert [(x["status"], x["commit"], x["description"]) for x in rows] == [("baseline", base_commit, "baseline")]
    base = rows[0]
    assert (clone / "sessions" / f"{base['run_id']}.log").exists()
    rec = json.loads((clone / "sessions" / f"{base['run_id']}.json").read_text())
    assert rec["status"] == "baseline" and rec["git"]["commit"] == base_commit and rec["git"]["dirty"] is False
    assert rec["seed"] == 42 and "GPT.forward" in rec["train_py"]
    assert f"best: val_bpb {base['val_bpb']:.6f} (1 seed) — {base['run_id']}" in memory(clone)
    assert "- noise floor: not measured yet" in memory(clone)
    r = train(clone, tmp_path, "--seed", "43", "--description", "baseline, second seed")
    second = ledger_rows(clone)[-1]
    assert second["status"] == "repeat" and "seed:             43" in r.stdout
    assert "- noise floor: sigma " in memory(clone) and "from 2 runs of 1 configuration(s)" in memory(clone)
    assert f"`git reset --hard {base_commit}`" in memory(clone)

    # 2. an experiment on model.json: decided by the rule, followed to the end; HEAD never stays on a discard
    m = json.loads((clone / "model.json").read_text())
    m["matrix_lr"] = 0.08
    write_json(clone / "model.json", m)
    git(clone, "commit", "-qam", "raise matrix_lr to 0.08")
    statuses, _ = run_and_follow(clone, tmp_path)
    assert statuses[-1] in ("keep", "discard") and set(statuses[:-1]) <= {"confirm"}
    exp = ledger_rows(clone)[-len(statuses)]
    assert exp["description"] == "raise matrix_lr to 0.08"
    mem = memory(clone)
    assert "| matrix_lr | " in mem and "0.08 -> " in mem and "0.04 -> " in mem         # the values-tried table
    kept = statuses[-1] == "keep"
    if not kept:
        assert git(clone, "rev-parse", "--short=7", "HEAD") == base_commit
        assert json.loads((clone / "model.json").read_text())["matrix_lr"] == 0.04
    home = git(clone, "rev-parse", "--short=7", "HEAD")

    # 3. an edit the test profile's cap cancels (depth 8 -> 4, capped at 2): the configuration as trained is its
    # parent's, so under the same seed it is a `rerun`, not judged; said at start and again just before `next:`
    m = json.loads((clone / "model.json").read_text())
    m["depth"] = 4
    write_json(clone / "model.json", m)
    git(clone, "commit", "-qam", "halve the depth")
    statuses, r = run_and_follow(clone, tmp_path)
    assert statuses == ["rerun"]
    cap_line = "!! model.json depth 8 -> 4 trains as 2 either way (capped): this run trains its parent's model"
    tail = r.stdout.split("\nrecorded: ", 1)[1]
    assert cap_line in r.stdout.split("\nrecorded: ", 1)[0] and tail.splitlines()[1].startswith(cap_line)
    assert next_line(r) == (f"this edit trains its parent's model (a cap of this mode cancels it): nothing was "
                            f"judged; go back and try an edit the caps allow: git reset --hard {home}")
    assert ledger_rows(clone)[-1]["val_bpb"] is not None
    named = r.stdout.split("!! this configuration already ran under seed 42 (", 1)[1].split(",", 1)[0]
    assert json.loads((clone / "sessions" / f"{named}.json").read_text())["seed"] == 42    # the seed-42 run
    git(clone, "reset", "-q", "--hard", home)

    # 4. a train.py edit that raises: the crash is charged to train.py's main only; fixed with --amend
    src = (clone / "train.py").read_text()
    (clone / "train.py").write_text(src.replace("    model = build_model(config, run.device)\n",
                                                "    model = build_model(config, run.device)\n"
                                                "    raise RuntimeError('shape mismatch in my new block')\n", 1))
    git(clone, "commit", "-qam", "try a new block")
    r = train(clone, tmp_path)
    assert r.returncode == 1 and "RuntimeError: shape mismatch in my new block" in r.stderr
    crash = ledger_rows(clone)[-1]
    assert (crash["status"], crash["val_bpb"], crash["description"]) == ("crash", None, "try a new block")
    mem = memory(clone)
    assert "try a new block — RuntimeError: shape mismatch in my new block" in mem
    assert "): train.py: main changed" in mem                        # vs its parent run: only main() changed
    assert " crash)" not in mem.split("## Hyperparameters tried", 1)[-1]    # no model.json value blamed
    (clone / "train.py").write_text(src.replace("    model = build_model(config, run.device)\n",
                                                "    model = build_model(config, run.device)\n"
                                                "    model.train()\n", 1))
    git(clone, "commit", "-q", "-a", "--amend", "-m", "try a new block (fixed)")
    statuses, r = run_and_follow(clone, tmp_path)
    fixed = ledger_rows(clone)[-len(statuses)]
    assert fixed["description"] == "try a new block (fixed)" and statuses[-1] in ("keep", "discard")
    assert git(clone, "status", "--porcelain") == ""
    if statuses[-1] == "discard":
        assert git(clone, "rev-parse", "--short=7", "HEAD") == home
    n = len(ledger_rows(clone))

    # 5. a run killed outright (SIGKILL): nothing recorded until --record-crash reads its log
    env = agent_env(tmp_path)
    p = subprocess.Popen([sys.executable, "train.py", "--description", "killed run"], cwd=clone, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen, deadline = "", time.time() + 120
    while "parameters:" not in seen and time.time() < deadline:
        seen += p.stdout.read(1)
    run_id = seen.split('"run_id": "', 1)[1].split('"', 1)[0]
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=30)
    assert len(ledger_rows(clone)) == n
    r = subprocess.run([sys.executable, "prepare.py", "--record-crash", f"sessions/{run_id}.log"], cwd=clone, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    killed = ledger_rows(clone)[-1]
    assert (killed["run_id"], killed["status"], killed["description"]) == (run_id, "crash", "killed run")
    assert "killed run — killed: no error message; last output: " in memory(clone)
    # HEAD's configuration already has a result under seed 42 (the baseline's, or the kept edit's first run): the
    # kill cost nothing to re-run
    index = ledger.read_index(clone / "sessions")
    done = [x for x in ledger_rows(clone)[:-1] if x["status"] in ("baseline", "keep", "confirm", "discard", "repeat")
            and (index[x["run_id"]]["fingerprint"], index[x["run_id"]]["seed"]) == (index[run_id]["fingerprint"], 42)]
    assert done and next_line(r) == (f"killed outright; this configuration has a result under seed 42 already "
                                     f"({done[-1]['run_id']}, {done[-1]['status']}): nothing to re-run")
    assert "(1 killed)" in memory(clone).split("## Summary", 1)[1].split("\n", 2)[1]

    # final state: no keep from an unchanged re-run, tree clean, HEAD on an accepted commit
    rows = ledger_rows(clone)
    assert rows[1]["status"] == "repeat" and len(rows) == n + 1
    accepted = {x["commit"] for x in rows if x["status"] in ("baseline", "keep")}
    assert git(clone, "rev-parse", "--short=7", "HEAD") in accepted
    assert git(clone, "status", "--porcelain") == ""
