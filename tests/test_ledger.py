"""The ledger (harness/ledger.py): rows written by 8 concurrent processes against the count expected; statuses
against the keep rule; the strict parser on ours, upstream's and the fork's ledgers; corrupt lines. The helpers
_row and _entry build rows and index entries for the other ledger-side tests (memory, lineage, identity, record).

    uv run pytest tests/test_ledger.py
"""

import multiprocessing as mp

import pytest

from harness import config, ledger, memory, record

HEADER = "\t".join(ledger.LEDGER_COLUMNS)


def _row(run_id, val_bpb, key="k1", **kw):
    r = {c: None for c in ledger.LEDGER_COLUMNS}
    r.update(run_id=run_id, commit=run_id[-7:].rjust(7, "0"), val_bpb=val_bpb, description=f"desc {run_id}",
             mode="test", comparability_key=key, timestamp="2026-11-26T00:00:00+00:00", peak_vram_mb=1024.0,
             num_steps=10)
    r.update(kw)
    return r


def _entry(model=None, fp="fp0", error=None, seed=42, **kw):
    return {"model": model or {"depth": 8, "matrix_lr": 0.04}, "fingerprint": fp, "error": error, "seed": seed,
            "branch": "main", "worktree": "/w", "dirty": False, **kw}


def _writer(args):
    results, sessions, proc = args
    for i in range(50):
        record.append_run(results, sessions, _row(f"p{proc}-r{i:02d}", 1.0 + proc * 0.01 + i * 1e-4),
                              _entry({"depth": proc, "matrix_lr": i / 100}, fp=f"fp{proc}-{i}"))
    return proc


def test_eight_processes_fifty_records_each(tmp_path):
    results, sessions = tmp_path / "results.tsv", tmp_path / "sessions"
    ctx = mp.get_context("spawn")
    with ctx.Pool(8) as pool:
        assert sorted(pool.map(_writer, [(results, sessions, p) for p in range(8)])) == list(range(8))
    lines = results.read_text().splitlines()
    assert lines[0] == HEADER and len(lines) == 401
    assert all(len(line.split("\t")) == len(ledger.LEDGER_COLUMNS) for line in lines)
    rows = ledger.read_ledger(results)
    assert len(rows) == 400 and len({r["run_id"] for r in rows}) == 400
    assert sum(r["status"] == "baseline" for r in rows) == 1
    # every run is a configuration of its own, run once: no noise floor, so nothing can be kept
    assert {r["status"] for r in rows} <= {"baseline", "confirm", "discard"}
    assert len(ledger.read_index(sessions)) == 400
    digest = (sessions / "memory.md").read_text()
    assert "400 runs" in digest and len(digest.encode()) <= memory.MEMORY_MAX_BYTES + 200
    base = next(r for r in rows if r["status"] == "baseline")
    assert f"best: val_bpb {base['val_bpb']:.6f} (1 seed) — {base['run_id']}" in digest
    assert "- noise floor: not measured yet" in digest


SCENARIO = [   # run_id, val_bpb, key, fingerprint, seed -> status (harness/decide.py's rule)
    ("a", 1.00, "k1", "A", 42, "baseline"),
    ("b", 1.02, "k1", "A", 43, "repeat"),      # the baseline's second seed: the floor exists (dof 1)
    ("c", 1.00, "k1", "A", 42, "rerun"),       # same configuration, same seed: flagged, not judged
    ("d", 0.99, "k1", "B", 42, "confirm"),     # better than the best's mean (1.01): needs 3 seeds
    ("e", 0.985, "k1", "B", 43, "confirm"),
    ("f", 0.995, "k1", "B", 44, "confirm"),    # mean 0.99 over 3 seeds: better, but inside the margin
    ("g", 1.00, "k1", "B", 45, "discard"),     # the fourth and last seed: still not better by the margin
    ("h", 0.80, "k1", "C", 42, "confirm"),     # far better, but one run is never a keep
    ("i", 0.81, "k1", "C", 43, "confirm"),
    ("j", 0.79, "k1", "C", 44, "keep"),        # mean 0.80 over 3 seeds, 0.21 better: beyond the margin
    ("k", 0.80, "k1", "C", 42, "rerun"),
    ("l", 2.00, "k2", "A", 42, "baseline"),    # another comparability key starts its own line
    ("m", None, "k1", "D", 42, "crash"),
]


def test_statuses_follow_the_noise_aware_rule(tmp_path):
    res, ses = tmp_path / "r.tsv", tmp_path / "s"
    got = [record.append_run(res, ses, _row(rid, v, key), _entry(fp=fp, seed=seed))["status"]
           for rid, v, key, fp, seed, _ in SCENARIO]
    assert got == [s for *_, s in SCENARIO]
    crash_line = res.read_text().splitlines()[-1].split("\t")
    assert crash_line[2] == "" and crash_line[4] == "crash"          # empty metric, never 0.0
    digest = (ses / "memory.md").read_text()
    assert ("comparability key: `k1` — 12 runs: 1 baseline, 1 keep, 5 confirm, 1 discard, 1 repeat, 2 rerun, "
            "1 crash" in digest)
    assert "other keys (not compared): `k2` (1)" in digest
    assert "- best: val_bpb 0.800000 (mean of 3 seeds) — j (000000j) — desc j" in digest
    # the floor pools A (1.00, 1.02), B (0.99, 0.985, 0.995, 1.00) and C (0.80, 0.81, 0.79); reruns left out
    assert "- noise floor: sigma 0.009354 from 9 runs of 3 configuration(s) under several seeds (dof 6)" in digest
    # runs of a configuration that was discarded are off the kept line
    assert "| 4 | 0.985000 | confirm (reverted) | 43 | e | desc e |" in digest


def test_an_unchanged_rerun_is_never_kept(tmp_path):
    """Another seed of an accepted configuration is `repeat` however low it scores; the same seed is `rerun`."""
    res, ses = tmp_path / "r.tsv", tmp_path / "s"
    record.append_run(res, ses, _row("a", 1.0), _entry(fp="A", seed=42))
    assert record.append_run(res, ses, _row("b", 0.5), _entry(fp="A", seed=43))["status"] == "repeat"
    assert record.append_run(res, ses, _row("c", 0.4), _entry(fp="A", seed=42))["status"] == "rerun"
    assert record.append_run(res, ses, _row("d", 0.3), _entry(fp="A", seed=44))["status"] == "repeat"


def test_description_tabs_and_newlines_are_neutralized(tmp_path):
    res, ses = tmp_path / "r.tsv", tmp_path / "s"
    record.append_run(res, ses, _row("x", 1.0, description="a\tb\nc|d"), _entry())
    assert ledger.read_ledger(res)[0]["description"] == "a b c d"


def test_reads_upstream_five_column_ledger(tmp_path):
    p = tmp_path / "results.tsv"
    p.write_text("commit\tval_bpb\tmemory_gb\tstatus\tdescription\n"
                 "a1b2c3d\t0.997900\t44.0\tkeep\tbaseline\n"
                 "b2c3d4e\t0.000000\t0.0\tcrash\tdouble the width (OOM)\n"
                 "c3d4e5f\t0.993200\t44.2\tkeep\tincrease LR\n")
    rows = ledger.read_ledger(p)
    assert [(r["commit"], r["val_bpb"], r["status"]) for r in rows] == \
        [("a1b2c3d", 0.9979, "keep"), ("b2c3d4e", None, "crash"), ("c3d4e5f", 0.9932, "keep")]
    assert rows[0]["comparability_key"] == ledger.LEGACY_KEY and rows[0]["run_id"] == "line2-a1b2c3d"
    text = memory.render_memory(rows, {}, "")
    assert "best: val_bpb 0.993200" in text                 # the crash's 0.000000 is not a best


def test_reads_fork_nine_column_ledger(tmp_path):
    p = tmp_path / "results.tsv"
    p.write_text("commit\tval_bpb\tmemory_gb\tstatus\tdescription\tpeak_vram_mb\tmfu_percent\ttraining_seconds\t"
                 "num_params_M\n"
                 "a1b2c3d\t1.010000\t44.0\tkeep\tbase\t45062.2\t39.6\t300.1\t50.3\n")
    r = ledger.read_ledger(p)[0]
    assert (r["val_bpb"], r["peak_vram_mb"], r["mfu_percent"], r["training_seconds"], r["num_params_M"]) == \
        (1.01, 45062.2, 39.6, 300.1, 50.3)


def test_corrupt_lines_warned_skipped_never_rewritten(tmp_path):
    p = tmp_path / "results.tsv"
    good = ledger.ledger_line(_row("g", 1.0, status="baseline"))
    bad_number = good.replace("1.000000", "abc")
    bad_status = ledger.ledger_line(_row("h", 1.0, status="maybe"))
    text = HEADER + "\n" + good + "only\ttwo\n" + bad_number + bad_status
    p.write_text(text)
    warnings = []
    rows = ledger.read_ledger(p, warn=warnings.append)
    assert len(rows) == 1
    assert warnings[0] == "results.tsv:3: skipped: 2 fields, expected 15"
    assert warnings[1] == "results.tsv:4: skipped: val_bpb = 'abc' is not a number"
    assert warnings[2] == "results.tsv:5: skipped: unknown status 'maybe'"
    record.append_run(p, tmp_path / "s", _row("h", 0.5), _entry())
    assert p.read_text().startswith(text)                   # appended after, nothing rewritten


def test_bad_header_is_a_clear_error(tmp_path):
    p = tmp_path / "results.tsv"
    p.write_text("foo\tbar\n1\t2\n")
    with pytest.raises(config.ConfigError) as e:
        ledger.read_ledger(p)
    assert (str(e.value)
            == "results.tsv: header line: expected a ledger header with columns commit, val_bpb, status, description; "
               "missing commit, val_bpb, status, description")
