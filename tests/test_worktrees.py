"""Many agents, one ledger: two git worktrees (one per GPU in real use) record into one shared results.tsv and
sessions/ at the same time; both rows present and memory.md names each run's branch.

    uv run pytest tests/test_worktrees.py
"""

import json
import os
import subprocess
import sys

import pytest

from harness import database, ledger
from conftest import REPO, sync_working_tree, write_json


def git(cwd, *args):
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


@pytest.mark.slow
def test_two_worktrees_share_one_ledger(tmp_path, workspace):
    main = tmp_path / "project"
    subprocess.run(["git", "clone", "-q", str(REPO), str(main)], check=True)
    sync_working_tree(main)                      # the working tree's versions (the clone has HEAD's)
    git(main, "add", "-A")
    git(main, "-c", "user.email=a@b", "-c", "user.name=a", "commit", "-qm", "sync", "--allow-empty")
    trees = []
    for gpu in (0, 1):
        wt = tmp_path / f"agent-gpu{gpu}"
        git(main, "worktree", "add", "-q", str(wt), "-b", f"autoresearch/gpu{gpu}")
        trees.append(wt)
    shared = tmp_path / "shared"
    g = json.loads((workspace / "ground.json").read_text())
    g["ledger"] = {"results": str(shared / "results.tsv"), "sessions_dir": str(shared / "sessions")}
    write_json(tmp_path / "ground_shared.json", g)
    procs = []
    for gpu, wt in enumerate(trees):
        env = dict(os.environ, AUTORESEARCH_GROUND=str(tmp_path / "ground_shared.json"), CUDA_VISIBLE_DEVICES=str(gpu),
                   OMP_NUM_THREADS="1")
        env.pop("AUTORESEARCH_MODEL", None)
        procs.append(subprocess.Popen([sys.executable, "train.py", "--description", f"agent {gpu}"], cwd=wt, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[-2000:] for o in outs]
    rows = ledger.read_ledger(shared / "results.tsv")
    assert sorted(r["description"] for r in rows) == ["agent 0", "agent 1"]
    assert sorted(r["status"] for r in rows) == ["baseline", "rerun"]      # same files, same seed: flagged
    index = ledger.read_index(shared / "sessions")
    assert sorted(index[r["run_id"]]["branch"] for r in rows) == ["autoresearch/gpu0", "autoresearch/gpu1"]
    assert sorted(index[r["run_id"]]["worktree"] for r in rows) == sorted(str(t) for t in trees)
    digest = (shared / "sessions" / "memory.md").read_text()
    host = database.host_name()
    assert f"autoresearch/gpu0 @ {host}:{trees[0]} (1), autoresearch/gpu1 @ {host}:{trees[1]} (1)" in digest
    for wt in trees:                                         # nothing written inside the worktrees
        assert git(wt, "status", "--porcelain") == ""
