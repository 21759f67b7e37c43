"""The eval's graph compiled by a second process (harness/warm_eval.py): when it starts, what it runs, what it may
not do, how the eval learns how it ended. On the GPU: tests/bench/bench_overhead.py
(docs/records/2026-11-28_new-shape-overhead-h200/)."""

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from harness import dataloader, ledger, tokenizer, warm_eval
from conftest import REPO, run_script

PLATFORM = {"compile": True, "compile_scope": "model", "dtype": "bfloat16"}


@dataclass
class Config:
    sequence_len: int = 8
    vocab_size: int = 16


@pytest.fixture(autouse=True)
def logs_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    yield
    warm_eval.stop()


def _fake_gpu(monkeypatch, free_gib):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (int(free_gib * 2**30), 80 * 2**30))


def _as_command(monkeypatch, tmp_path, body, *args, flags=()):
    """Make `python [flags] fake_train.py *args` this process's command line, fake_train.py running `body`."""
    script = tmp_path / "fake_train.py"
    script.write_text("import json, os, sys, time\n" + body)
    monkeypatch.setattr(sys, "argv", [str(script), *args])
    monkeypatch.setattr(sys, "orig_argv", [sys.executable, *flags, str(script), *args])


CUDA = torch.device("cuda")       # a device object only: the GPU's free memory is faked


def _start(world=1, scope="model"):
    return warm_eval.start(torch.nn.Linear(4, 4), Config(), dict(PLATFORM, compile_scope=scope), 2, CUDA, world)


def test_start_runs_this_command_again_marked_and_nicer(tmp_path, monkeypatch, capsys):
    _fake_gpu(monkeypatch, 40)
    seen = tmp_path / "seen.json"
    _as_command(monkeypatch, tmp_path, "time.sleep(0.5)\n"
                f"json.dump([sys.argv[1:], os.environ['{warm_eval.EVAL_GRAPH_ONLY}'], os.getppid(), "
                f"os.environ['{warm_eval.SIGNATURE}'], os.getpriority(os.PRIO_PROCESS, 0), sys.flags.utf8_mode], "
                f"open({str(seen)!r}, 'w'))\n",
                "--description", "x y", "--seed", "43", flags=("-X", "utf8"))
    proc = _start()
    assert proc is not None and proc in warm_eval._RUNNING
    out = capsys.readouterr().out
    assert out.startswith("\neval graph: compiling in a second process while this one trains")
    assert "the GPU has 40.0 GiB free, it needs about 2.0)" in out
    warm_eval.finish(proc)
    assert re.fullmatch(r"eval graph: compiled by the second process( \(waited \d+\.\ds for it\))?\n",
                        capsys.readouterr().out)
    argv, marked, parent, sig, nice, utf8 = json.loads(seen.read_text())
    assert argv == ["--description", "x y", "--seed", "43"] and utf8 == 1      # the interpreter's options too
    assert marked == str(os.getpid()) == str(parent)
    assert sig == warm_eval.signature(Config(), PLATFORM, 2)
    assert nice == min(19, os.getpriority(os.PRIO_PROCESS, 0) + warm_eval.NICENESS)
    assert not Path(proc.log_path).exists() and warm_eval._RUNNING == []    # a success leaves no log behind


def test_a_failed_second_process_keeps_its_log_and_the_eval_compiles(tmp_path, monkeypatch, capsys):
    _fake_gpu(monkeypatch, 40)
    _as_command(monkeypatch, tmp_path, "print('no such model'); sys.exit(3)\n")
    proc = _start()
    capsys.readouterr()
    warm_eval.finish(proc)
    assert capsys.readouterr().out == (f"eval graph: the second process failed (exit 3, log: {proc.log_path}); "
                                       "the eval compiles it\n")
    assert Path(proc.log_path).read_text() == "no such model\n" and Path(proc.log_path).parent == tmp_path


def test_a_second_process_still_running_is_stopped(tmp_path, monkeypatch, capsys):
    _fake_gpu(monkeypatch, 40)
    monkeypatch.setattr(warm_eval, "WAIT_S", 0.5)
    _as_command(monkeypatch, tmp_path, "time.sleep(60)\n")
    proc = _start()
    warm_eval.finish(proc)
    assert proc.returncode == -9 and warm_eval._RUNNING == []
    assert "still running after 0.5s and was stopped" in capsys.readouterr().out


def test_a_run_that_ends_early_stops_it(tmp_path, monkeypatch):
    _fake_gpu(monkeypatch, 40)
    _as_command(monkeypatch, tmp_path, "time.sleep(60)\n")
    proc = _start()
    warm_eval.stop()                          # what Run.finish calls first, on a crash or an interrupt too
    assert proc.returncode == -9 and warm_eval._RUNNING == []


def test_no_second_process_without_room_a_script_or_one_process(tmp_path, monkeypatch, capsys):
    model = torch.nn.Linear(1024, 1024, bias=False)           # 4 MiB of parameters
    config = Config(sequence_len=2048, vocab_size=8192)       # with 128 rows: 4 GiB of bf16 logits
    need_gib = (4 * 2**20 + 2 * 2**30 + 4 * 128 * 2048 * 8192) / 2**30
    assert round(need_gib, 3) == 10.004
    _as_command(monkeypatch, tmp_path, "")
    _fake_gpu(monkeypatch, need_gib - 0.01)
    assert warm_eval.start(model, config, PLATFORM, 128, CUDA, 1) is None
    assert capsys.readouterr().out == ("\neval graph: compiled after training (the GPU has 10.0 GiB free; a second "
                                       "process compiling it now would need about 10.0)\n")
    _fake_gpu(monkeypatch, 40)                                # the blocks scope runs the loss eagerly: 10x the logits
    assert warm_eval.start(model, config, dict(PLATFORM, compile_scope="blocks"), 128, CUDA, 1) is None
    assert "would need about 42.0)" in capsys.readouterr().out
    assert warm_eval.start(model, config, PLATFORM, 128, CUDA, 2) is None
    assert "a second process is started for one-process runs only" in capsys.readouterr().out
    monkeypatch.setattr(sys, "argv", ["-c"])
    assert warm_eval.start(model, config, PLATFORM, 128, CUDA, 1) is None
    assert "this process was not started from a script file ('-c')" in capsys.readouterr().out
    _as_command(monkeypatch, tmp_path, "")                   # a script run by a `python -c` driver (a profiler)
    monkeypatch.setattr(sys, "orig_argv", [sys.executable, "-c", "import runpy; runpy.run_path('fake_train.py')"])
    assert warm_eval.start(model, config, PLATFORM, 128, CUDA, 1) is None
    assert "this process was not started as `python <script>` (it ran ['-c'])" in capsys.readouterr().out
    assert warm_eval.start(model, config, PLATFORM, 128, torch.device("cpu"), 1) is None   # no graph: silent
    assert warm_eval.start(model, config, dict(PLATFORM, compile=False), 128, CUDA, 1) is None
    assert capsys.readouterr().out == ""
    warm_eval.finish(None)                                    # nothing started: nothing to wait for
    assert capsys.readouterr().out == ""


def test_a_second_process_that_cannot_start_leaves_the_run_alone(tmp_path, monkeypatch, capsys):
    _fake_gpu(monkeypatch, 40)
    _as_command(monkeypatch, tmp_path, "")

    def no_fork(*a, **k):
        raise OSError(11, "Resource temporarily unavailable")
    monkeypatch.setattr(subprocess, "Popen", no_fork)
    assert _start() is None
    assert capsys.readouterr().out == ("\neval graph: compiled after training (could not start a second process: "
                                       "[Errno 11] Resource temporarily unavailable)\n")


def test_the_second_process_runs_the_val_split():
    tok = tokenizer.Tokenizer.from_directory()
    loader = dataloader.make_dataloader(tok, 2, 64, "val")   # the val split is what it runs
    x, y, _ = next(loader)
    loader.close()
    assert x.shape == y.shape == (2, 64)


def test_train_py_as_a_second_process_checks_it_built_the_same_model(run_dir):
    r = run_script("train.py", run_dir, env_extra={warm_eval.EVAL_GRAPH_ONLY: str(os.getpid()),
                                                     warm_eval.SIGNATURE: "0" * 16})
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    assert "this process set up another model than the training process" in r.stderr
    assert "step 00000" not in r.stdout and "\n---\n" not in r.stdout       # no training, no summary
    assert not (run_dir / "results.tsv").exists() or ledger.read_ledger(run_dir / "results.tsv") == []
    sessions = run_dir / "sessions"
    assert not sessions.exists() or sorted(p.name for p in sessions.iterdir()) == []


def test_the_second_process_exits_when_the_training_process_is_gone():
    code = "from harness import warm_eval; assert warm_eval.second_process(); import time; time.sleep(30)"
    t0 = time.time()
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, timeout=20,
                       env=dict(os.environ, **{warm_eval.EVAL_GRAPH_ONLY: "1"}))       # pid 1 is not its parent
    assert r.returncode == 3 and time.time() - t0 < 10
