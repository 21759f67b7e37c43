"""train.py through its contract, as subprocesses in test mode: the summary block's keys, the ledger row and
run records it leaves; divergence, exceptions and SIGINT recorded; an upstream-style train.py importing from
prepare still runs.

    uv run pytest tests/test_train.py
"""

import json
import re
import math
import os
import signal
import subprocess
import sys
import time

import pytest

from harness import database, ledger
from conftest import REPO, write_json, run_script

SUMMARY_KEYS = ["val_bpb", "training_seconds", "total_seconds", "peak_vram_mb", "mfu_percent", "total_tokens_M",
                "num_steps", "num_params_M", "depth", "tokens_per_sec", "run_id", "status", "mode", "device", "dtype",
                "attention", "world_size", "epochs", "seed", "next"]


def parse_summary(stdout):
    block = stdout.split("\n---\n", 1)[1]
    out = {}
    for line in block.strip().splitlines():
        k, v = line.split(":", 1)
        out[k.strip()] = v.strip()
    return out


def test_smoke_run_prints_summary_and_records(run_dir):
    r = run_script("train.py", run_dir, "--description", "smoke\tdesc")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    summary = parse_summary(r.stdout)
    assert list(summary) == SUMMARY_KEYS
    for k in SUMMARY_KEYS[:10]:
        assert math.isfinite(float(summary[k])), k
    assert 0 < float(summary["val_bpb"]) < 20
    assert float(summary["training_seconds"]) >= 2.0
    assert int(summary["num_steps"]) >= 2 and summary["depth"] == "2"
    assert (summary["status"], summary["mode"], summary["device"], summary["dtype"], summary["attention"]) == \
        ("baseline", "test", "cpu", "float32", "sdpa")
    assert float(summary["peak_vram_mb"]) == 0.0 and float(summary["mfu_percent"]) == 0.0
    # records: ledger row, log, JSON, memory
    rows = ledger.read_ledger(run_dir / "results.tsv")
    assert len(rows) == 1
    row = rows[0]
    assert row["run_id"] == summary["run_id"] and row["status"] == "baseline"
    assert row["val_bpb"] == float(summary["val_bpb"]) and row["description"] == "smoke desc"
    assert row["num_steps"] == int(summary["num_steps"]) and row["mode"] == "test"
    log = (run_dir / "sessions" / f"{row['run_id']}.log").read_text()
    assert "val_bpb:" in log and "platform: " in log and "test mode caps model.json depth: 8 -> 2" in log
    rec = json.loads((run_dir / "sessions" / f"{row['run_id']}.json").read_text())
    assert rec["status"] == "baseline" and round(rec["metrics"]["val_bpb"], 6) == float(summary["val_bpb"])
    assert rec["model"]["depth"] == 2 and rec["platform"]["device"] == "cpu" and rec["versions"]["torch"]
    assert rec["model_changes_by_mode"]["depth"] == [8, 2] and len(rec["fingerprint"]) == 12
    # what another agent needs to build on this run (prepare.py --restore): the files as trained
    assert rec["files"] == {"model.json": (run_dir / "model.json").read_text(),
                            "train.py": (REPO / "train.py").read_text()}
    # host time blocked on the loader: measured over the timed steps, a part of their time
    assert 0.0 <= rec["metrics"]["loader_wait_seconds"] < rec["metrics"]["training_seconds"]
    digest = (run_dir / "sessions" / "memory.md").read_text()
    assert f"best: val_bpb {row['val_bpb']:.6f} (1 seed) — {row['run_id']}" in digest


def test_divergence_fails_fast_with_a_reason(run_dir):
    m = json.loads((run_dir / "model.json").read_text())
    m.update(matrix_lr=1e15, embedding_lr=1e15, unembedding_lr=1e15, scalar_lr=1e15)
    write_json(run_dir / "model.json", m)
    r = run_script("train.py", run_dir, "--description", "huge lr")
    assert r.returncode == 1
    assert "CRASH: diverged: train loss nan at step" in r.stdout
    rows = ledger.read_ledger(run_dir / "results.tsv")
    assert [(x["status"], x["val_bpb"]) for x in rows] == [("crash", None)]
    assert ("\tcrash\t" in (run_dir / "results.tsv").read_text() and "0.000000" not
            in (run_dir / "results.tsv").read_text())
    digest = (run_dir / "sessions" / "memory.md").read_text()
    assert "diverged: train loss nan" in digest


def test_exception_in_train_py_is_recorded_as_crash(run_dir):
    src = (REPO / "train.py").read_text().replace(
        "    model.init_weights()\n", "    model.init_weights()\n    raise ValueError('boom from an edit')\n", 1)
    (run_dir / "train_broken.py").write_text(src)
    env = dict(os.environ, AUTORESEARCH_GROUND=str(run_dir / "ground.json"),
               AUTORESEARCH_MODEL=str(run_dir / "model.json"),
               PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, str(run_dir / "train_broken.py")], capture_output=True, text=True, env=env,
                       timeout=300, cwd=run_dir)
    assert r.returncode == 1
    assert "ValueError: boom from an edit" in r.stderr
    rows = ledger.read_ledger(run_dir / "results.tsv")
    assert [x["status"] for x in rows] == ["crash"]
    idx = ledger.read_index(run_dir / "sessions")
    assert idx[rows[0]["run_id"]]["error"] == "ValueError: boom from an edit"


def test_sigint_records_interrupted(run_dir):
    g = json.loads((run_dir / "ground.json").read_text())
    g["test"]["time_budget_s"] = 120
    write_json(run_dir / "ground.json", g)
    env = dict(os.environ, AUTORESEARCH_GROUND=str(run_dir / "ground.json"),
               AUTORESEARCH_MODEL=str(run_dir / "model.json"),
               PYTHONUNBUFFERED="1")
    p = subprocess.Popen([sys.executable, str(REPO / "train.py")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, env=env, cwd=run_dir)
    seen = ""
    deadline = time.time() + 120
    while "step 0000" not in seen and time.time() < deadline:
        seen += p.stdout.read(1)
    assert "step 0000" in seen
    time.sleep(1.0)
    p.send_signal(signal.SIGINT)
    out, _ = p.communicate(timeout=60)
    assert p.returncode == 130, out[-2000:]
    assert "SIGINT received: recording the run as interrupted" in out
    rows = ledger.read_ledger(run_dir / "results.tsv")
    assert [(x["status"], x["val_bpb"]) for x in rows] == [("interrupted", None)]
    rec = json.loads((run_dir / "sessions" / f"{rows[0]['run_id']}.json").read_text())
    assert rec["status"] == "interrupted" and rec["error"] == "SIGINT received"


def test_a_run_killed_outright_is_not_left_running(run_dir):
    """SIGKILL leaves no record and a claim behind. The next run on this machine sees its process ended: it says
    how to record it (and does not warn that the configuration is still running under the same seed), memory.md
    lists it as ended, not in flight; once recorded with --record-crash it leaves "Running now", and a second
    --record-crash is refused."""
    env = dict(os.environ, AUTORESEARCH_GROUND=str(run_dir / "ground.json"),
               AUTORESEARCH_MODEL=str(run_dir / "model.json"), PYTHONUNBUFFERED="1")
    p = subprocess.Popen([sys.executable, str(REPO / "train.py")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, env=env, cwd=run_dir)
    seen, deadline = "", time.time() + 120
    while "step 0000" not in seen and time.time() < deadline:
        seen += p.stdout.read(1)
    p.kill()
    p.communicate(timeout=60)
    killed = json.loads(seen.split("run_start: ", 1)[1].splitlines()[0])["run_id"]
    r = run_script("train.py", run_dir)
    assert r.returncode == 0, r.stdout[-2000:]
    log = (run_dir / "sessions" / f"{killed}.log").resolve()
    typed = f"AUTORESEARCH_GROUND={run_dir / 'ground.json'} AUTORESEARCH_MODEL={run_dir / 'model.json'}"
    assert (f"!! a run started on this machine ended without a record: {killed}; record it: env {typed} uv run "
            f"prepare.py --record-crash {log}") in r.stdout              # the variables this run's agent typed
    assert "already running" not in r.stdout
    digest = (run_dir / "sessions" / "memory.md").read_text()        # read by every agent of the ledger: none
    assert (f"  - its process ended without a record; its agent ({database.host_name()}/") in digest
    assert f" records it: `uv run prepare.py --record-crash {log}`" in digest
    # recorded under another host name (or ledger) than the run's: refused, nothing written, the command said
    other = run_script("prepare.py", run_dir, "--record-crash", str(log), env_extra={"AUTORESEARCH_HOST": "elsewhere"})
    assert (other.returncode, other.stderr.strip()) == (2, (
        f"error: {killed}.json: run {killed} was started with {typed}, this process with {typed} "
        f"AUTORESEARCH_HOST=elsewhere; record it as it ran: env -u AUTORESEARCH_HOST {typed} uv run prepare.py "
        f"--record-crash {log}"))
    assert [x["status"] for x in ledger.read_ledger(run_dir / "results.tsv")] == ["baseline"]
    crash = run_script("prepare.py", run_dir, "--record-crash", str(log))
    assert crash.returncode == 0, crash.stdout[-1000:] + crash.stderr[-1000:]
    again = run_script("prepare.py", run_dir, "--record-crash", str(log))       # recorded: refused, nothing added
    assert again.returncode == 2 and f"run {killed} is already recorded (crash in {killed}.json)" in again.stderr
    assert "## Running now" not in (run_dir / "sessions" / "memory.md").read_text()
    assert [x["status"] for x in ledger.read_ledger(run_dir / "results.tsv")] == ["baseline", "crash"]
    index = ledger.read_index(run_dir / "sessions")              # both entries hold the parts of their one key
    parts = [index[rid]["key_parts"] for rid in (r.stdout.split("run_id:")[-1].split()[0], killed)]
    assert parts[0] == parts[1] and parts[0]["mode"] == "test" and "attention" in parts[0]["platform"]


UPSTREAM_STYLE_TRAIN = r"""
import json, math, torch
from prepare import (MAX_SEQ_LEN, TIME_BUDGET, EVAL_TOKENS, VOCAB_SIZE, PLATFORM, Tokenizer, make_dataloader,
                     evaluate_bpb)

class Bigram(torch.nn.Module):
    def __init__(self, vocab):
        super().__init__()
        self.table = torch.nn.Embedding(vocab, vocab)

    def forward(self, idx, targets, reduction="mean"):
        logits = self.table(idx)
        return torch.nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1),
                                                 reduction=reduction)

tokenizer = Tokenizer.from_directory()
torch.manual_seed(0)
model = Bigram(tokenizer.get_vocab_size())
opt = torch.optim.AdamW(model.parameters(), lr=0.1)
loader = make_dataloader(tokenizer, 4, MAX_SEQ_LEN, "train")
before = evaluate_bpb(model, tokenizer, 4)
for _ in range(20):
    x, y, epoch = next(loader)
    loss = model(x, y)
    opt.zero_grad()
    loss.backward()
    opt.step()
print(json.dumps({"T": MAX_SEQ_LEN, "budget": TIME_BUDGET, "eval": EVAL_TOKENS, "vocab": VOCAB_SIZE,
                  "device": PLATFORM["device"], "shape": list(x.shape), "epoch": epoch,
                  "before": before, "after": evaluate_bpb(model, tokenizer, 4)}))
"""


def test_upstream_style_train_imports_from_prepare(run_dir):
    """An upstream-style train.py (`from prepare import MAX_SEQ_LEN, ..., evaluate_bpb`) runs unchanged: the
    constants are ground.json's test profile, the loader gives (B, T) rows, and training lowers val_bpb."""
    script = run_dir / "upstream_train.py"
    script.write_text(UPSTREAM_STYLE_TRAIN)
    env = dict(os.environ, AUTORESEARCH_GROUND=str(run_dir / "ground.json"), PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, cwd=run_dir, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert (out["T"], out["budget"], out["eval"], out["vocab"]) == (64, 2, 4096, 512)
    assert out["device"] == "cpu" and out["shape"] == [4, 64] and out["epoch"] >= 1
    assert 0 < out["after"] < out["before"] < 20


def test_epochs_in_summary_and_a_warning_when_the_data_repeats(tmp_path, run_dir):
    """`epochs` = tokens trained / distinct train tokens, in the summary, the run's record and memory.md; past 4
    passes the run says that val_bpb measures memorization (a corpus of a few hundred tokens)."""
    small = tmp_path / "small"
    small.mkdir()
    for i in range(3):
        (small / f"{i}.txt").write_text(" ".join(f"word{(i * 7 + j) % 50}" for j in range(300)))
    g = json.loads((run_dir / "ground.json").read_text())
    g["data"].update(local_dir=str(small), cache_dir=str(tmp_path / "cache"))
    g["test"]["max_steps"] = 12                  # steps, not the 2 s budget: a loaded machine trains as many
    write_json(run_dir / "ground.json", g)
    r = run_script("prepare.py", run_dir)
    assert r.returncode == 0, r.stderr
    assert "loader: one pass of best-fit packing into rows of 65 tokens uses" in r.stdout
    r = run_script("train.py", run_dir)
    assert r.returncode == 0, r.stderr[-2000:]
    summary = parse_summary(r.stdout)
    idx = ledger.read_index(run_dir / "sessions")[summary["run_id"]]
    assert float(summary["epochs"]) > 4 and idx["epochs"] == pytest.approx(float(summary["epochs"]), abs=0.01)
    assert "!! this run read the train split" in r.stdout
    recent = (run_dir / "sessions" / "memory.md").read_text().split("## Recent runs", 1)[1]
    assert f" | {idx['epochs']:.1f} ! | " in recent


def test_configuration_fingerprint_ignores_comments_and_key_order(tmp_path, monkeypatch):
    """A configuration is what trains: comments, blank lines and model.json's key order do not make a new one;
    a code or value change does."""
    from harness import identity
    src = (REPO / "train.py").read_text()
    model = json.loads((REPO / "model.json").read_text())
    variants = {"same": (src, model),
                "comments": (src.replace("def norm(x):\n", "# a comment\n\ndef norm(x):  # and another\n", 1),
                             dict(reversed(list(model.items())))),
                "code": (src.replace("return F.rms_norm(x, (x.size(-1),))",
                                     "return F.rms_norm(x, (x.size(-1),), eps=1e-6)"), model),
                "value": (src, dict(model, matrix_lr=0.05))}
    prints = {}
    for name, (code, m) in variants.items():
        (tmp_path / f"{name}.py").write_text(code)
        write_json(tmp_path / f"{name}.json", m)
        monkeypatch.setenv("AUTORESEARCH_MODEL", str(tmp_path / f"{name}.json"))
        prints[name] = identity.config_fingerprint(tmp_path / f"{name}.py")
    assert prints["comments"] == prints["same"]
    assert len({prints["same"], prints["code"], prints["value"]}) == 3


@pytest.mark.slow
def test_a_compiled_cpu_run_that_recompiles_in_its_budget_is_not_judged(run_dir):
    """processor.compile true compiles on the CPU (inductor's C++ backend); a model that reads a module-level
    number turning from int 1 to float 1.0 at step 3 recompiles in a counted step: the run is recorded as a crash
    naming it, its val_bpb kept in its JSON only, and `next:` says how to find the cause."""
    g = json.loads((run_dir / "ground.json").read_text())
    g["processor"]["compile"] = True
    g["test"].update(time_budget_s=6, excluded_steps=2)   # steps of ms: the recompile, ~10 s, ends it
    write_json(run_dir / "ground.json", g)
    src = (REPO / "train.py").read_text()
    src = src.replace("def norm(x):", "RC_ONE = 1\n\n\ndef norm(x):", 1)
    embed = "        x = norm(self.transformer.wte(idx))"
    src = src.replace(embed + "\n", embed + " * RC_ONE\n")
    flip = "        globals()['RC_ONE'] = 1.0 if step >= 4 else 1\n"
    src = src.replace("        lrm = set_schedules(", flip + "        lrm = set_schedules(", 1)
    assert src.count("RC_ONE") == 3
    (run_dir / "train_rc.py").write_text(src)
    env = dict(os.environ, AUTORESEARCH_GROUND=str(run_dir / "ground.json"), PYTHONPATH=str(REPO),
               AUTORESEARCH_MODEL=str(run_dir / "model.json"), PYTHONUNBUFFERED="1")
    r = subprocess.run([sys.executable, str(run_dir / "train_rc.py"), "--description", "recompiles"], env=env,
                       capture_output=True, text=True, cwd=run_dir, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "  compile          True  (forced by ground.json (inductor's C++ backend))" in r.stdout
    summary = parse_summary(r.stdout)
    assert summary["status"] == "crash" and summary["next"].startswith("recompiled after the warm-up: not judged")
    assert "!! recompiled after the warm-up: 1 graph(s) compiled in counted steps (val_bpb " in r.stdout
    row = ledger.read_ledger(run_dir / "results.tsv")[-1]
    assert (row["status"], row["val_bpb"]) == ("crash", None)
    rec = json.loads((run_dir / "sessions" / f"{row['run_id']}.json").read_text())
    assert rec["platform"]["compile"] is True and rec["metrics"]["compiled_in_budget"] == 1
    assert math.isfinite(rec["metrics"]["val_bpb"]) and float(summary["val_bpb"]) == round(rec["metrics"]["val_bpb"], 6)


@pytest.mark.slow
def test_fp16_says_how_many_steps_its_grad_scaler_skipped(run_dir):
    """processor.dtype float16 (the Volta/Turing path, forced here on the CPU): the GradScaler's skipped steps
    (a step whose fp16 gradients overflowed at the loss scale trains nothing) are counted and printed."""
    g = json.loads((run_dir / "ground.json").read_text())
    g["processor"]["dtype"] = "float16"
    g["test"]["max_steps"] = 6
    write_json(run_dir / "ground.json", g)
    r = run_script("train.py", run_dir)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "use_grad_scaler  True  (fp16 gradients underflow without loss scaling)" in r.stdout
    assert re.search(r"^gradscaler: loss scale from 2\^16 \([\d,]+ tokens a step\), doubled after 200 steps without "
                     r"inf/nan, halved \(the step skipped\) on one$", r.stdout, re.M)
    m = re.search(r"^gradscaler: (\d+) of (\d+) steps skipped \(inf/nan gradients at the loss scale; final scale "
                  r"([\d.e+]+)\)$", r.stdout, re.M)
    skipped, steps, scale = int(m.group(1)), int(m.group(2)), float(m.group(3))
    assert steps == 6 and 0 <= skipped <= steps and scale == 65536.0 / 2 ** skipped      # halved once per skip
    assert parse_summary(r.stdout)["dtype"] == "float16"
