"""analysis.ipynb executed headless (nbclient) on sample ledgers: its tables against the ledger, progress.png written.

    uv run pytest tests/test_notebook.py
"""

import json
import os

import nbformat
import pytest
from nbclient import NotebookClient

from harness import ledger
from conftest import REPO


def _sample_ledger(path):
    rows = [("r1", 1.00, "baseline", "baseline"), ("r2", 0.98, "keep", "lr up"), ("r3", 0.99, "discard", "deeper"),
            ("r4", None, "crash", "too wide"), ("r5", 0.97, "keep", "warmdown 0.6"), ("r6", None, "interrupted",
                                                                                      "ctrl-c"),
            ("r7", 2.0, "baseline", "other key")]
    with open(path, "w") as f:
        f.write("\t".join(ledger.LEDGER_COLUMNS) + "\n")
        for i, (rid, v, st, d) in enumerate(rows):
            row = {c: None for c in ledger.LEDGER_COLUMNS}
            row.update(run_id=rid, commit=f"{i:07d}", val_bpb=v, status=st, description=d, mode="train",
                       comparability_key="k2" if rid == "r7" else "k1", timestamp="2026-11-26T00:00:00+00:00",
                       peak_vram_mb=45000.0, mfu_percent=39.6, training_seconds=300.0, total_tokens_M=497.0,
                       num_params_M=50.3, num_steps=949)
            f.write(ledger.ledger_line(row))
    # keep the last row in k1 so the plot shows the main key
    lines = open(path).read().splitlines()
    open(path, "w").write("\n".join([lines[0], lines[7]] + lines[1:7]) + "\n")


def _execute(tmp_path, results, env=None):
    nb = nbformat.read(REPO / "analysis.ipynb", as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")     # committed stripped
    old = dict(os.environ)
    os.environ.update(AUTORESEARCH_REPO=str(REPO), **(env or {"AUTORESEARCH_RESULTS": str(results)}))
    try:
        NotebookClient(nb, timeout=180, kernel_name="python3",
                       resources={"metadata": {"path": str(tmp_path)}}).execute()
    finally:
        os.environ.clear()
        os.environ.update(old)
    return nb


def _text(nb):
    out = []
    for c in nb.cells:
        for o in c.get("outputs", []):
            out.append(o.get("text", "") + json.dumps(o.get("data", {})))
    return "\n".join(out)


@pytest.mark.slow
def test_notebook_on_our_ledger(tmp_path):
    results = tmp_path / "results.tsv"
    _sample_ledger(results)
    (tmp_path / "sessions").mkdir()
    (tmp_path / "sessions" / "heldout.jsonl").write_text("".join(     # the baseline's and the two keeps' scores
        json.dumps({"run_id": r, "heldout_bpb": h}) + "\n" for r, h in (("r1", 1.10), ("r2", 1.09), ("r5", 1.1125)))
        + "not json\n")
    nb = _execute(tmp_path, results)
    png = tmp_path / "progress.png"
    assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    text = _text(nb)
    assert "7 runs" in text and "keep rate: 66.7% of 3 decided experiments" in text
    assert "wrote progress.png" in text and "warmdown 0.6" in text
    held = next(c for c in nb.cells if "heldout.read" in c.source)
    table = json.dumps(held.outputs[0]["data"])
    # val gains 0.02 and 0.03; held-out gains 0.01 and -0.0125 (the second keep overfit val)
    assert "1.1125" in table and "-0.0125" in table and "0.03" in table and "r7" not in table


@pytest.mark.slow
def test_notebook_on_upstream_ledger(tmp_path):
    results = tmp_path / "results.tsv"
    results.write_text("commit\tval_bpb\tmemory_gb\tstatus\tdescription\n"
                       "a1b2c3d\t0.997900\t44.0\tkeep\tbaseline\n"
                       "b2c3d4e\t0.000000\t0.0\tcrash\tdouble the width (OOM)\n"
                       "c3d4e5f\t0.993200\t44.2\tkeep\tincrease LR\n")
    nb = _execute(tmp_path, results)
    assert (tmp_path / "progress.png").exists()
    assert "3 runs" in _text(nb)


@pytest.mark.slow
@pytest.mark.parametrize("content,message", [
    (None, "no runs to show"), ("", "no runs to show"),
    ("\t".join(ledger.LEDGER_COLUMNS) + "\n", "no runs to show"),
    ("foo\tbar\n", "error: results.tsv: header line: expected a ledger header with columns commit, val_bpb, status, "
                   "description; missing commit, val_bpb, status, description"),
], ids=["missing", "empty", "header-only", "refused"])
def test_notebook_says_when_there_is_nothing_to_show(tmp_path, content, message):
    """Before the first run, or on a ledger the harness refuses, the notebook prints one line instead of a
    traceback, and its later cells do nothing."""
    results = tmp_path / "results.tsv"
    if content is not None:
        results.write_text(content)
    text = _text(_execute(tmp_path, results))
    assert message in text and "Traceback" not in text and not (tmp_path / "progress.png").exists()


@pytest.mark.slow
def test_notebook_on_the_shared_ledger(tmp_path, postgres, run_dir):
    """With ground.json's backend postgres, the notebook shows every host's runs, not this machine's mirror."""
    from harness import database, record
    from test_ledger import _entry, _row
    url = postgres.new_database("notebook")
    for host, rid, v in (("host-a", "a1", 1.0), ("host-b", "b1", 0.99), ("host-a", "a2", 1.01)):
        folder = tmp_path / host
        store = database.PostgresLedger(url, ledger.FileLedger(folder / "results.tsv", folder / "sessions"))
        record.append_run(store.results, store.sessions, _row(rid, v), _entry(fp=rid, host=host), store=store)
    g = json.loads((run_dir / "ground.json").read_text())
    g["ledger"].update(backend="postgres")
    (run_dir / "ground.json").write_text(json.dumps(g))
    text = _text(_execute(tmp_path, None, env={"AUTORESEARCH_GROUND": str(run_dir / "ground.json"),
                                               "AUTORESEARCH_DATABASE_URL": url}))
    assert "the shared ledger ($AUTORESEARCH_DATABASE_URL): 3 runs" in text and "Traceback" not in text
