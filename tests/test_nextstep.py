"""The `next:` line (harness/nextstep.py) for the statuses that carry a command: the command's seed and what it
returns to, asserted as values of the line.

    uv run pytest tests/test_nextstep.py
"""

from harness import ledger, nextstep, record
from test_ledger import _entry, _row


def _ledger(tmp_path, runs):
    res, ses = tmp_path / "results.tsv", tmp_path / "sessions"
    for rid, v, fp, seed, status in runs:
        record.append_run(res, ses, _row(rid, v, commit=rid), _entry(fp=fp, seed=seed, commit=rid), status)
    return ledger.read_ledger(res), ledger.read_index(ses)


def test_a_rerun_says_how_to_measure_it_under_another_seed(tmp_path):
    rows, index = _ledger(tmp_path, [("a", 1.0, "A", 42, None), ("b", 1.0, "A", 42, None)])
    assert [r["status"] for r in rows] == ["baseline", "rerun"]
    said = nextstep.next_step(rows[-1], rows, index, "main")
    assert said.endswith("or measure it under another seed: uv run train.py --seed 43")
    assert "go back first if you like: git reset --hard a;" in said   # the kept run's commit, not the re-run's


def test_an_interrupted_run_is_run_again_under_its_own_seed(tmp_path):
    rows, index = _ledger(tmp_path, [("a", 1.0, "A", 42, None), ("b", None, "B", 44, "interrupted")])
    said = nextstep.next_step(rows[-1], rows, index, "main")
    assert said.startswith("interrupted (a signal, not the edit): run this commit again unchanged: "
                           "uv run train.py --seed 44; or git reset --hard a")
    assert "fix a trivial bug" not in said


def test_a_pruned_run_goes_back_and_names_the_switch(tmp_path):
    rows, index = _ledger(tmp_path, [("a", 1.0, "A", 42, None), ("b", None, "B", 42, "pruned")])
    said = nextstep.next_step(rows[-1], rows, index, "main")
    assert "go back: git reset --hard a;" in said and '"prune": false' in said
