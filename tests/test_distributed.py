"""Data parallel with torchrun on the CPU (gloo): two processes against one, same rows, same val_bpb.

    uv run pytest tests/test_distributed.py
"""

import json
import os
import subprocess
import sys

import pytest
import torch

from harness import config, dataloader, ledger, settings, tokenizer
from conftest import REPO, write_json


def test_ranks_split_the_single_process_batch_exactly():
    tok = tokenizer.Tokenizer.from_directory()
    single = dataloader.make_dataloader(tok, 8, 64, "train")
    r0 = dataloader.make_dataloader(tok, 4, 64, "train", rank=0, world_size=2)
    r1 = dataloader.make_dataloader(tok, 4, 64, "train", rank=1, world_size=2)
    for _ in range(5):
        x, y, _ = next(single)
        x0, y0, _ = next(r0)
        x1, y1, _ = next(r1)
        assert torch.equal(torch.cat([x0, x1]), x) and torch.equal(torch.cat([y0, y1]), y)


def test_world_size_must_divide_the_batch():
    s = settings.current()
    m = config.load_model()
    with pytest.raises(config.ConfigError) as e:
        settings.effective_model(m, s, world_size=3)
    assert str(e.value) == ("model.json: key 'total_batch_size': expected a multiple of device_batch_size x max_seq_len"
                            " x world_size = 8 x 64 x 3 = 1536, got 1024")


def test_more_processes_take_fewer_rows_each():
    s = settings.current()
    m, changes = settings.effective_model(config.load_model(), s, world_size=4)
    assert m.device_batch_size == 4 and changes["device_batch_size"] == (128, 4)     # 128 -cap-> 8 -split-> 4
    assert m.total_batch_size == 1024
    assert settings.describe_changes(changes, s, 4) == [
        "test mode caps model.json depth: 8 -> 2", "test mode caps model.json head_dim: 128 -> 32",
        "test mode caps model.json total_batch_size: 524288 -> 1024",
        "test mode caps + 4 processes split model.json device_batch_size: 128 -> 4"]
    _, alone = settings.effective_model(config.load_model(), s, world_size=2)
    assert settings.describe_changes(alone, s, 2)[-1] == "test mode caps model.json device_batch_size: 128 -> 8"


def _env(run_dir):
    return dict(os.environ, AUTORESEARCH_GROUND=str(run_dir / "ground.json"),
                AUTORESEARCH_MODEL=str(run_dir / "model.json"), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def _summary(stdout):
    summary = dict(line.split(":", 1) for line in stdout.split("\n---\n")[-1].strip().splitlines())
    return {k.strip(): v.strip() for k, v in summary.items()}


def _run(run_dir, nproc):
    cmd = [sys.executable, str(REPO / "train.py"), "--description", f"{nproc} proc"]
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] + cmd[1:]
    r = subprocess.run(cmd, capture_output=True, text=True, env=_env(run_dir), timeout=600, cwd=run_dir)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    return _summary(r.stdout), r.stdout


@pytest.mark.slow
def test_two_gloo_processes_match_one_process(run_dir):
    g = json.loads((run_dir / "ground.json").read_text())
    g["test"].update(time_budget_s=600, max_steps=4, excluded_steps=1)
    write_json(run_dir / "ground.json", g)
    one, _ = _run(run_dir, 1)
    two, out = _run(run_dir, 2)
    assert "distributed: 2 processes (gloo), each 8 rows per micro-step" in out
    assert "batch: 1,024 tokens/step = 8 x 64 x 1 accumulation steps x 2 processes" in out
    assert (one["num_steps"], two["num_steps"]) == ("4", "4")
    assert (one["world_size"], two["world_size"]) == ("1", "2")
    assert float(two["val_bpb"]) == pytest.approx(float(one["val_bpb"]), abs=1e-5)   # same rows, same math
    rows = ledger.read_ledger(run_dir / "results.tsv")
    assert len(rows) == 2                                   # only rank 0 records
    assert rows[0]["comparability_key"] != rows[1]["comparability_key"]     # more GPUs is another key
    rec = json.loads((run_dir / "sessions" / f"{rows[1]['run_id']}.json").read_text())
    assert rec["world_size"] == 2 and rec["metrics"]["world_size"] == 2
    # the next command starts the next run as this one was started (a plain `uv run train.py` is another key), with
    # the variables the agent set (one process on a CPU: the thread count, part of its key)
    typed = f"AUTORESEARCH_GROUND={run_dir / 'ground.json'} AUTORESEARCH_MODEL={run_dir / 'model.json'}"
    assert one["next"].endswith(f"seed: env OMP_NUM_THREADS=1 {typed} uv run train.py --seed 43")
    assert two["next"].endswith(f"seed: env {typed} uv run torchrun --standalone --nproc_per_node=2 train.py --seed 43")


@pytest.mark.slow
def test_two_nodes_with_torchrun_rendezvous_match_one_process(run_dir, tmp_path_factory):
    """Two "hosts" on one machine: one torchrun per node, one process each, meeting at node 0's rendezvous
    (the command README gives for several machines). Same val_bpb as one process; only node 0 records."""
    g = json.loads((run_dir / "ground.json").read_text())
    g["test"].update(time_budget_s=600, max_steps=4, excluded_steps=1)
    write_json(run_dir / "ground.json", g)
    one, _ = _run(run_dir, 1)
    node1 = tmp_path_factory.mktemp("node1")                    # the second host: its own checkout's ledger
    g["ledger"] = {"results": str(node1 / "results.tsv"), "sessions_dir": str(node1 / "sessions")}
    write_json(node1 / "ground.json", g)
    write_json(node1 / "model.json", json.loads((run_dir / "model.json").read_text()))
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    procs = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
                               f"--node_rank={rank}", "--master_addr=127.0.0.1", f"--master_port={port}",
                               str(REPO / "train.py"), "--description", "2 nodes"],
                              cwd=d, env=_env(d), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for rank, d in enumerate((run_dir, node1))]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[-3000:] for o in outs]
    two = _summary(outs[0])
    assert "distributed: 2 processes (gloo), each 8 rows per micro-step" in outs[0]
    assert (two["num_steps"], two["world_size"]) == ("4", "2")
    assert float(two["val_bpb"]) == pytest.approx(float(one["val_bpb"]), abs=1e-5)
    assert [r["description"] for r in ledger.read_ledger(run_dir / "results.tsv")] == ["1 proc", "2 nodes"]
    assert not (node1 / "results.tsv").exists()                 # node 1's rank records nothing
    assert two["next"].endswith("seed: uv run torchrun --nnodes=2 --nproc_per_node=1 --node_rank=<this node's rank> "
                                "--master_addr=<node 0> --master_port=29500 train.py --seed 43")   # each node's own
