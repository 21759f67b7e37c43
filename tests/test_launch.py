"""launch/agents.sky.yaml against SkyPilot's own parser (no cloud needed), and its run script executed here as one
node with two GPUs would run it: one worktree, branch, GPU and shared-ledger ground.json per agent worker.

    uv run --all-extras pytest tests/test_launch.py
"""

import json
import os
import subprocess

import pytest

from conftest import REPO

TASK = REPO / "launch" / "agents.sky.yaml"


def test_skypilot_parses_the_task_file(tmp_path):
    sky = pytest.importorskip("sky")
    task = sky.Task.from_yaml(str(TASK))
    assert task.name == "autoresearch-agents" and task.num_nodes == 2
    (res,) = task.resources
    assert res.accelerators == {"H100": 8}
    assert set(task.envs) == {"AGENT_CMD", "AGENT_PROMPT", "AGENT_HOURS"}
    assert "uv sync --extra shared" in task.setup and "uv run prepare.py" in task.setup
    assert "AUTORESEARCH_DATABASE_URL" not in task.envs                  # a secret, never a tracked value
    assert "AUTORESEARCH_DATABASE_URL: null" in TASK.read_text()
    bad = tmp_path / "bad.sky.yaml"                                   # SkyPilot's schema, not ours, says no
    bad.write_text(TASK.read_text().replace("num_nodes: 2", "num_node: 2"))
    with pytest.raises(Exception, match="num_node"):
        sky.Task.from_yaml(str(bad))


def test_the_run_script_starts_one_worker_per_gpu(tmp_path):
    yaml = pytest.importorskip("yaml")
    spec = yaml.safe_load(TASK.read_text())
    work = tmp_path / "sky_workdir"
    subprocess.run(["git", "clone", "-q", str(REPO), str(work)], check=True)
    subprocess.run(["rm", "-rf", str(work / ".git")], check=True)       # SkyPilot syncs files, maybe not .git
    agent = tmp_path / "fake_agent.sh"
    agent.write_text('#!/bin/sh\nprintf "%s\\n" "$CUDA_VISIBLE_DEVICES" "$AUTORESEARCH_GROUND" "$AUTORESEARCH_HOST" '
                     '"$(git rev-parse --abbrev-ref HEAD)" "$1" > "$PWD/agent.txt"\n')
    agent.chmod(0o755)
    env = dict(os.environ, HOME=str(tmp_path / "home"), SKYPILOT_NODE_RANK="1", SKYPILOT_NUM_GPUS_PER_NODE="2",
               AGENT_CMD=str(agent), AGENT_PROMPT=spec["envs"]["AGENT_PROMPT"], AGENT_HOURS="1",
               AUTORESEARCH_DATABASE_URL="postgresql://agent:pw@127.0.0.1:1/x")
    r = subprocess.run(["bash", "-c", spec["run"]], cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    agents = tmp_path / "home" / "autoresearch-agents"
    for gpu in (0, 1):
        lines = (agents / f"node1-gpu{gpu}" / "agent.txt").read_text().splitlines()
        assert lines[0] == str(gpu) and lines[3] == f"autoresearch/node1-gpu{gpu}"
        assert lines[1] == str(agents / f"node1-gpu{gpu}.ground.json") and lines[2].endswith(f"-gpu{gpu}")
        assert lines[4].startswith("Read program.md")
        ground = json.loads(open(lines[1]).read())
        assert ground["ledger"] == {"results": str(agents / f"node1-gpu{gpu}" / "results.tsv"),
                                    "sessions_dir": str(agents / f"node1-gpu{gpu}" / "sessions"),
                                    "backend": "postgres"}
    env.pop("AGENT_CMD")
    r = subprocess.run(["bash", "-c", spec["run"]], cwd=work, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.strip() == "error: set AGENT_CMD (--env AGENT_CMD=...)"
