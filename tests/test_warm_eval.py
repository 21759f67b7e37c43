"""The eval's graph compiled by a second process (harness/warm_eval.py): when it starts, what it runs, how the
eval learns how it ended. On the GPU: tests/bench/bench_overhead.py (docs/PERFORMANCE.md)."""

import re
import sys
from pathlib import Path

import torch

from harness import ledger, warm_eval
from conftest import run_script


def test_the_second_process_scores_one_val_batch_and_records_nothing(run_dir):
    r = run_script("train.py", run_dir, "--seed", "43", warm_eval.FLAG)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "eval graph compiled in" in r.stdout
    assert "step 00000" not in r.stdout and "\n---\n" not in r.stdout       # no training, no summary
    assert not (run_dir / "results.tsv").exists() or ledger.read_ledger(run_dir / "results.tsv") == []
    sessions = run_dir / "sessions"
    assert not sessions.exists() or sorted(p.name for p in sessions.iterdir()) == []


def _fake_gpu(monkeypatch, free_gib):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (int(free_gib * 2**30), 80 * 2**30))


def _script(tmp_path, body):
    p = tmp_path / "fake_train.py"
    p.write_text("import sys\n" + body)
    return p


def test_start_reruns_the_command_with_the_flag_and_finish_says_it_worked(tmp_path, monkeypatch, capsys):
    _fake_gpu(monkeypatch, 40)
    argv_file = tmp_path / "argv.txt"
    script = _script(tmp_path, f"open({str(argv_file)!r}, 'w').write(' '.join(sys.argv[1:]))\nprint('compiled')\n")
    monkeypatch.setattr(sys, "argv", [str(script), "--seed", "43"])
    proc = warm_eval.start(torch.nn.Linear(4, 4), 2, 8, 16, torch.device("cpu"), 1)
    assert proc is not None
    out = capsys.readouterr().out
    assert out.startswith("\neval graph: compiling in a second process while this one trains")
    assert "the GPU has 40.0 GiB free, it needs about 2.0)" in out
    warm_eval.finish(proc)
    assert argv_file.read_text() == f"--seed 43 {warm_eval.FLAG}"
    assert re.fullmatch(r"eval graph: compiled by the second process( \(waited \d+\.\ds for it\))?\n",
                        capsys.readouterr().out)
    assert not Path(proc.log_path).exists()                   # a success leaves no log behind


def test_a_failed_second_process_keeps_its_log_and_the_eval_compiles(tmp_path, monkeypatch, capsys):
    _fake_gpu(monkeypatch, 40)
    script = _script(tmp_path, "print('no such model'); sys.exit(3)\n")
    monkeypatch.setattr(sys, "argv", [str(script)])
    proc = warm_eval.start(torch.nn.Linear(4, 4), 2, 8, 16, torch.device("cpu"), 1)
    capsys.readouterr()
    warm_eval.finish(proc)
    assert capsys.readouterr().out == (f"eval graph: the second process failed (exit 3, log: {proc.log_path}); "
                                       "the eval compiles it\n")
    assert Path(proc.log_path).read_text() == "no such model\n"


def test_a_second_process_still_running_is_stopped(tmp_path, monkeypatch, capsys):
    _fake_gpu(monkeypatch, 40)
    monkeypatch.setattr(warm_eval, "WAIT_S", 0.5)
    script = _script(tmp_path, "import time; time.sleep(60)\n")
    monkeypatch.setattr(sys, "argv", [str(script)])
    proc = warm_eval.start(torch.nn.Linear(4, 4), 2, 8, 16, torch.device("cpu"), 1)
    warm_eval.finish(proc)
    assert proc.returncode is not None and proc.returncode != 0
    assert "still running after 0.5s and was stopped" in capsys.readouterr().out


def test_no_second_process_without_room_for_it_or_under_torchrun(monkeypatch, capsys):
    model = torch.nn.Linear(1024, 1024, bias=False)           # 4 MiB of parameters
    B, T, V = 128, 2048, 8192                                 # an eval batch's bf16 logits: 4 GiB
    need_gib = (4 * 2**20 + 2 * B * T * V * 2 + 2 * 2**30) / 2**30
    _fake_gpu(monkeypatch, need_gib - 0.01)
    assert warm_eval.start(model, B, T, V, torch.device("cpu"), 1) is None
    assert capsys.readouterr().out == ("\neval graph: compiled after training (the GPU has 10.0 GiB free; a second "
                                       "process compiling it now would need about 10.0)\n")
    assert round(need_gib, 3) == 10.004
    _fake_gpu(monkeypatch, 40)
    assert warm_eval.start(model, B, T, V, torch.device("cpu"), 2) is None
    assert "a second process is started for one-process runs only" in capsys.readouterr().out
    warm_eval.finish(None)                                    # nothing started: nothing to wait for
    assert capsys.readouterr().out == ""
