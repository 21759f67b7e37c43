"""README against the code: the test command is the one .ci/run runs; every documented prepare.py flag exists.

    uv run pytest tests/test_readme.py
"""

import re

from conftest import REPO, run_script


def _readme():
    return (REPO / "README.md").read_text()


def test_ci_runs_the_readme_test_command():
    readme = _readme()
    block = readme.split("Tests (CPU only", 1)[1]
    test_cmd = re.search(r"```bash\n(.+?)\n```", block, re.S).group(1).strip()
    assert test_cmd == "uv run --all-extras pytest"
    ci = [ln.strip() for ln in (REPO / ".ci" / "run").read_text().splitlines()
          if ln.strip() and not ln.strip().startswith("#")]
    assert ci[-1] == test_cmd
    assert "pip install --quiet uv" in (REPO / ".ci" / "run").read_text()


def test_quick_start_commands():
    readme = _readme()
    quick = re.search(r"## Quick start.*?```bash\n(.+?)\n```", readme, re.S).group(1).splitlines()
    assert quick == ["pip install uv", "uv run prepare.py && uv run train.py"]


def test_documented_cli_flags_exist(run_dir):
    helptext = run_script("prepare.py", run_dir, "--help").stdout
    for flag in re.findall(r"uv run prepare\.py[^`|]*?(--[a-z-]+)", _readme()):
        assert flag in helptext, flag
    train_help = run_script("train.py", run_dir, "--help").stdout
    assert "--description" in train_help
