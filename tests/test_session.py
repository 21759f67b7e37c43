"""The Session that train.py opens (harness/session.py): train.py holds only research, and a train.py whose loop
lost a harness call is still recorded, as a crash that names the missing call.

Compared: copies of train.py with one line deleted (run.finish, run.lap, the run.steps loop) run as subprocesses
in test mode, against the ledger row and exit code they leave; train.py's own source against the layout rules.

    uv run pytest tests/test_session.py
"""

import ast
import os
import re
import subprocess
import sys

import pytest

from harness import ledger, session
from conftest import REPO, run_script

TRAIN = (REPO / "train.py").read_text()


def test_train_py_imports_the_harness_in_one_line_and_stays_short():
    tree = ast.parse(TRAIN)
    harness_imports = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))
                       and "harness" in (getattr(n, "module", None) or "")]
    assert [n.module for n in harness_imports] == ["harness.session"]
    assert len(TRAIN.splitlines()) <= 600
    # nothing that decides how the run is recorded lives in train.py: no such name is used in its code
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} | {
        n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    assert not names & {"start_run", "warm_eval", "_exit", "excepthook", "metrics", "record", "finish_run",
                        "evaluate_bpb", "StepClock", "sys", "os"}
    assert {"steps", "lap", "finish", "prepare"} <= names           # the Session's calls, each once below


def _variant(tmp_path, drop: str, replace: str = "") -> str:
    """A copy of train.py with the line holding `drop` replaced, next to the run's ground.json."""
    lines = TRAIN.splitlines(keepends=True)
    hits = [i for i, line in enumerate(lines) if drop in line]
    assert len(hits) == 1, drop
    indent = re.match(r"\s*", lines[hits[0]]).group(0)
    lines[hits[0]] = f"{indent}{replace}\n" if replace else f"{indent}pass\n"
    path = tmp_path / "train_variant.py"
    path.write_text("".join(lines))
    return str(path)


def _run_variant(run_dir, script):
    env = {"PYTHONPATH": str(REPO)}
    return run_script(script, run_dir, "--description", "variant", env_extra=env)


@pytest.mark.slow
@pytest.mark.parametrize("drop, reason", [
    ("run.finish(model)", session.MISSING_FINISH),
    ("run.lap(train_loss", session.MISSING_LAP.format(step=0)),
])
def test_a_train_py_missing_a_harness_call_is_recorded_as_a_crash_naming_it(run_dir, drop, reason):
    r = _run_variant(run_dir, _variant(run_dir, drop))
    assert r.returncode == 1, r.stdout[-1500:] + r.stderr[-1500:]
    rows = ledger.read_ledger(run_dir / "results.tsv")
    assert [(row["status"], row["val_bpb"]) for row in rows] == [("crash", None)]
    index = ledger.read_index(run_dir / "sessions")
    assert index[rows[0]["run_id"]]["error"] == reason
    assert f"CRASH: {reason}" in r.stdout and "Traceback" not in r.stderr
    assert "next: fix a trivial bug" in r.stdout


@pytest.mark.slow
def test_a_train_py_with_its_own_loop_is_recorded_as_a_crash(run_dir):
    """The agent replaced `for step in run.steps():` with a loop of its own: no clock ran, so no budget was
    measured; the run says so instead of recording a val_bpb it cannot vouch for."""
    script = _variant(run_dir, "for step in run.steps():", "for step in range(3):")
    script_text = open(script).read().replace("        run.lap(train_loss, lrm=lrm, epoch=epoch)\n", "")
    open(script, "w").write(script_text)
    r = _run_variant(run_dir, script)
    assert r.returncode == 1, r.stdout[-1500:] + r.stderr[-1500:]
    rows = ledger.read_ledger(run_dir / "results.tsv")
    index = ledger.read_index(run_dir / "sessions")
    assert rows[0]["status"] == "crash" and index[rows[0]["run_id"]]["error"] == session.MISSING_STEPS


def test_the_upstream_import_line_still_works():
    """Upstream's train.py imports its five names from prepare in one line."""
    code = "from prepare import MAX_SEQ_LEN, TIME_BUDGET, Tokenizer, make_dataloader, evaluate_bpb"
    ns = {}
    cwd = os.getcwd()
    try:
        os.chdir(REPO)
        exec(code, ns)
    finally:
        os.chdir(cwd)
    assert ns["MAX_SEQ_LEN"] > 0 and ns["TIME_BUDGET"] > 0 and callable(ns["evaluate_bpb"])


@pytest.mark.parametrize("args", [["--help"], ["--check"]])
def test_prepare_answers_help_and_config_errors_without_importing_torch(run_dir, args):
    """`-X importtime` lists every module imported: torch is not among them for --help, nor for --check when
    model.json is broken (the error line comes first)."""
    (run_dir / "model.json").write_text('{"depth": "eight"}')
    env = dict(os.environ, AUTORESEARCH_GROUND=str(run_dir / "ground.json"),
               AUTORESEARCH_MODEL=str(run_dir / "model.json"))
    r = subprocess.run([sys.executable, "-X", "importtime", str(REPO / "prepare.py"), *args], capture_output=True,
                       text=True, env=env, cwd=run_dir, timeout=60)
    imported = {line.rsplit("|", 1)[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    assert "torch" not in imported and "numpy" not in imported
    if args == ["--help"]:
        assert r.returncode == 0 and "--record-crash LOG" in r.stdout
    else:
        errors = [line for line in r.stderr.splitlines() if not line.startswith("import time:")]
        assert r.returncode == 2 and errors == [
            "error: model.json: key 'depth': expected an integer between 1 and 256, got \"eight\""]
