"""Ledger and memory: rows written by 8 concurrent processes against the count expected; statuses against the
keep rule; the strict parser on ours, upstream's and the fork's ledgers; memory.md against its expected lines
(Notes kept, deterministic, size bound); --record-crash and --memory.

    uv run pytest tests/test_ledger.py
"""

import json
import multiprocessing as mp
import shlex

import pytest

from harness import config, digest, ledger, lineage, memory, nextstep, record, session
from conftest import run_script
from harness.hardware import get_platform as hardware_platform

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


def test_a_floor_measured_on_varying_step_counts_is_flagged(tmp_path):
    """A wall-clock budget on a busy machine gives one configuration different step counts: the digest says so."""
    res, ses = tmp_path / "r.tsv", tmp_path / "s"
    record.append_run(res, ses, _row("a", 1.0, num_steps=200), _entry(fp="A", seed=42))
    record.append_run(res, ses, _row("b", 1.01, num_steps=205), _entry(fp="A", seed=43))
    assert "!! the floor's runs" not in (ses / "memory.md").read_text()         # within 3%: fine
    record.append_run(res, ses, _row("c", 1.05, num_steps=192), _entry(fp="A", seed=44))
    assert ("- !! the floor's runs trained 192..205 steps: the machine's speed varied, and that spread is in the "
            "floor; set `max_steps` (e.g. 192, their lower quartile) in ground.json's profile") in \
        (ses / "memory.md").read_text()
    rows, index = ledger.FileLedger(res, ses).read()                  # next: says the same, not "a third seed"
    assert nextstep.next_step(rows[-1], rows, index, "main") == (
        "nothing decided (another seed of a kept configuration); the floor's runs trained 192..205 steps (the "
        "machine's speed varied): the floor mixes that spread with the seeds': set max_steps (e.g. 192) in "
        "ground.json's profile, in a commit of its own (a new key), and run that commit unchanged, its baseline: "
        "uv run train.py")
    record.append_run(res, ses, _row("d", 1.3, num_steps=80), _entry(fp="A", seed=45))     # one run starved by the host
    assert "trained 80..205 steps" in (ses / "memory.md").read_text()
    assert "(e.g. 192, their lower quartile" in (ses / "memory.md").read_text()           # not the starved 80


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


def test_notes_survive_and_memory_is_deterministic(tmp_path):
    res, ses = tmp_path / "r.tsv", tmp_path / "s"
    record.append_run(res, ses, _row("a", 1.0), _entry())
    mem = ses / "memory.md"
    notes = "## Notes\n\n- hypothesis: deeper is better\n- lesson: lr 0.1 diverges | keep\n"
    mem.write_text(mem.read_text().split("## Notes")[0] + notes)
    record.append_run(res, ses, _row("b", 0.9), _entry({"depth": 10, "matrix_lr": 0.04}))
    text = mem.read_text()
    assert text.endswith(notes)
    first = mem.read_bytes()
    memory.write_memory(ledger.FileLedger(res, ses))
    assert mem.read_bytes() == first


def test_memory_sections(tmp_path):
    res, ses = tmp_path / "r.tsv", tmp_path / "s"
    base = {"depth": 8, "matrix_lr": 0.04, "extra": {"mlp": 4}}
    fns = {"GPT.forward": "f1", "MLP.forward": "m1", "(module level)": "x1"}
    e = lambda model, fp, seed=42, commit=None, parent=None, fn=fns, **kw: _entry(  # noqa: E731
        model, fp, seed=seed, commit=commit, parent=parent, train_py=fn, **kw)
    record.append_run(res, ses, _row("r1", 1.00, commit="c1"), e(base, "A", commit="c1", parent="c0"))
    record.append_run(res, ses, _row("r1b", 1.02, commit="c1"), e(base, "A", 43, commit="c1", parent="c0"))
    for seed, v in ((42, 0.70), (43, 0.71), (44, 0.69)):      # kept on its third seed
        record.append_run(res, ses, _row("r2" if seed == 44 else f"r2-{seed}", v, commit="c2"),
                      e(dict(base, matrix_lr=0.06), "B", seed, commit="c2", parent="c1"))
    record.append_run(res, ses, _row("r3", 0.99, commit="c3"), e(dict(base, matrix_lr=0.06), "C", commit="c3",
                                                              parent="c2", fn=dict(fns, **{"MLP.forward": "m2"})))
    # a crash that changed depth only: charged to depth 12, not to matrix_lr 0.06
    record.append_run(res, ses, _row("r4", None, commit="c4"), e(dict(base, matrix_lr=0.06, depth=12), "D",
                                                              commit="c4", parent="c2",
                                                              error="OutOfMemoryError: CUDA out of memory"))
    # depth 4 requested, both capped to 2: the edit is cancelled
    capped = e(dict(base, matrix_lr=0.06, depth=2), "E", commit="c5", parent="c2",
               model_changes_by_mode={"depth": [4, 2]})
    record.append_run(res, ses, _row("r5", 0.95, commit="c5"), capped)
    text = (ses / "memory.md").read_text()
    assert "- best: val_bpb 0.700000 (mean of 3 seeds) — r2 (c2) — desc r2" in text
    assert "- since the last improvement: 3 configurations tried in 3 runs (2 discard, 1 crash)" in text
    assert "`depth=8, extra.mlp=4, matrix_lr=0.06`" in text                      # best configuration
    assert "- commit to return to after a discard or a crash: `git reset --hard c2` (the last kept commit of main)" \
        in text
    assert ("- vs its parent run r2 (keep, 0.690000; its configuration 0.700000 over 3 seeds): "
            "depth: 8 -> 4 (capped to 2)" in text)
    assert "- !! depth 8 -> 4 trains as 2 either way (capped): this run trained its parent's model" not in text
    assert "| r4 | crash | — |  | 42 | 10 |  | desc r4 — OutOfMemoryError: CUDA out of memory |" in text
    # a value's figure is its best configuration's mean over seeds (B: 0.70, 0.71, 0.69), never one lucky seed
    assert ("| depth | 8 -> 0.700000 over 3 seeds (6 runs); 4 (capped to 2) -> 0.950000 over 1 seed not kept (1 run); "
            "12 -> — (1 run, 1 crash) |") in text
    assert "| matrix_lr | 0.06 -> 0.700000 over 3 seeds (6 runs); 0.04 -> 1.010000 over 2 seeds (2 runs) |" in text
    record.append_run(res, ses, _row("r6", 0.97, commit="c6"), e(dict(base, matrix_lr=0.06), "C", commit="c6",
                                                              parent="c3", fn=dict(fns, **{"MLP.forward": "m2"})))
    text = (ses / "memory.md").read_text()
    # r6 ran r3's files again on a new commit: against its parent (r3) nothing changed; against the best, train.py
    assert "- vs its parent run r3 (discard, 0.990000): no change to model.json or train.py" in text
    assert "- vs the best run r2: train.py: MLP.forward changed" in text
    assert "- this configuration: 2 seeds" not in text                   # same seed 42: r6 is a rerun of r3
    assert "| 4 | 0.950000 | discard (reverted) | 42 | r5 | desc r5 |" in text


def test_since_last_improvement_counts_configurations_and_keeps_kills_apart(tmp_path):
    """Another seed of one edit is not another try, a repeat of the best is not a try, and a run killed outright
    (the host may have done it) is neither a crash of its edit nor charged to the keys it changed."""
    res, ses = tmp_path / "r.tsv", tmp_path / "s"
    base = {"depth": 8, "matrix_lr": 0.04}
    record.append_run(res, ses, _row("a", 1.00, commit="c1"), _entry(base, "A", seed=42, commit="c1", parent="c0"))
    record.append_run(res, ses, _row("b", 1.01, commit="c1"), _entry(base, "A", seed=43, commit="c1", parent="c0"))
    record.append_run(res, ses, _row("c", 1.02, commit="c1"), _entry(base, "A", seed=44, commit="c1", parent="c0"))
    for rid, seed, v in (("d", 42, 0.99), ("e", 43, 1.05)):           # one edit under two seeds: confirm, discard
        record.append_run(res, ses, _row(rid, v, commit="c2"), _entry(dict(base, matrix_lr=0.05), "B", seed=seed,
                                                                   commit="c2", parent="c1"))
    record.append_run(res, ses, _row("f", None, commit="c3"),
                  _entry(dict(base, depth=12), "C", commit="c3", parent="c1", error="killed: Killed"))
    record.append_run(res, ses, _row("g", None, commit="c4"),
                  _entry(dict(base, depth=10), "D", commit="c4", parent="c1", error="RuntimeError: shapes"))
    text = (ses / "memory.md").read_text()
    statuses = [r["status"] for r in ledger.read_ledger(res)]
    assert statuses == ["baseline", "repeat", "repeat", "confirm", "discard", "crash", "crash"]
    assert ("- since the last improvement: 3 configurations tried in 4 runs (1 confirm, 1 discard, 1 crash, "
            "1 killed)") in text
    assert "| depth | 8 -> 1.010000 over 3 seeds (5 runs); 10 -> — (1 run, 1 crash); 12 -> — (1 run, 1 killed) |" \
        in text
    # a run of the best configuration killed and recorded late (another of its seeds): not a try either
    record.append_run(res, ses, _row("h", None, commit="c1"),
                  _entry(base, "A", seed=45, commit="c1", parent="c0", error="killed: Killed"))
    assert ("- since the last improvement: 3 configurations tried in 4 runs (1 confirm, 1 discard, 1 crash, "
            "1 killed)") in (ses / "memory.md").read_text()


def test_cap_that_cancels_an_edit_is_said(tmp_path):
    res, ses = tmp_path / "r.tsv", tmp_path / "s"
    base = {"depth": 2, "matrix_lr": 0.04}
    record.append_run(res, ses, _row("p", 1.0, commit="c1"), _entry(base, "A", commit="c1", parent="c0",
                                                               model_changes_by_mode={"depth": [8, 2]}))
    record.append_run(res, ses, _row("q", 1.01, commit="c2"), _entry(base, "B", commit="c2", parent="c1",
                                                                model_changes_by_mode={"depth": [4, 2]}))
    text = (ses / "memory.md").read_text()
    assert "- vs its parent run p (baseline, 1.000000): depth: 8 (capped to 2) -> 4 (capped to 2)" in text
    assert "- !! depth 8 -> 4 trains as 2 either way (capped): this run trained its parent's model" in text


def test_torchrun_split_is_not_called_a_cap(tmp_path):
    """Under torchrun device_batch_size is split over the processes (the same batch, smaller micro-steps): memory.md
    says so rather than "capped", says both where a mode's cap applied first, and only a cap where no split
    followed it."""
    res, ses = tmp_path / "r.tsv", tmp_path / "s"
    m = {"depth": 8, "device_batch_size": 32}
    four = {"world": 4, "caps": {}}
    test_four = {"world": 4, "caps": {"device_batch_size": 16}}
    record.append_run(res, ses, _row("p", 1.0, commit="c1"), _entry(m, "A", commit="c1", parent="c0", key_parts=four,
                                                               model_changes_by_mode={"device_batch_size": [128, 32]}))
    record.append_run(res, ses, _row("q", 1.01, commit="c2"), _entry(dict(m, device_batch_size=4), "B", commit="c2",
                                                                parent="c1", key_parts=test_four,
                                                                model_changes_by_mode={"device_batch_size": [64, 4]}))
    record.append_run(res, ses, _row("r", 1.02, commit="c3"), _entry(dict(m, device_batch_size=16), "C", commit="c3",
                                                                parent="c1", key_parts=test_four,
                                                                model_changes_by_mode={"device_batch_size": [64, 16]}))
    text = (ses / "memory.md").read_text()
    assert ("- vs its parent run p (baseline, 1.000000): device_batch_size: 128 (32 per process x 4 processes) -> "
            "64 (capped to 16)\n") in text
    row = next(line for line in text.splitlines() if line.startswith("| device_batch_size |"))
    assert "128 (32 per process x 4 processes) -> 1.000000 over 1 seed (1 run)" in row
    assert "64 (capped to 16, then 4 per process x 4 processes) -> " in row and "64 (capped to 16) -> " in row
    assert "capped to 32" not in text and "capped to 4)" not in text



def test_commands_start_the_next_run_as_this_one_was_started(tmp_path):
    """A run started by torchrun gets its next commands for torchrun: a plain `uv run train.py` would be another
    key (the process count is in it), and its seed a `rerun` or a stray baseline there."""
    res, ses = tmp_path / "r.tsv", tmp_path / "s"
    four = {"key_parts": {"world": 4}, "launch": {"per_node": 4}}
    record.append_run(res, ses, _row("a", 1.0, commit="c1"), _entry(None, "A", commit="c1", parent="c0", **four))
    text = (ses / "memory.md").read_text()
    assert "(`uv run torchrun --standalone --nproc_per_node=4 train.py --seed 43` on the baseline's commit)" in text
    rows, index = ledger.read_ledger(res), ledger.read_index(ses)
    assert nextstep.next_step(rows[-1], rows, index, "main").endswith(
        "re-run it unchanged under another seed: uv run torchrun --standalone --nproc_per_node=4 train.py --seed 43")
    record.append_run(res, ses, _row("b", 1.0, commit="c1"), _entry(None, "A", seed=43, commit="c1", parent="c0"))
    rows, index = ledger.read_ledger(res), ledger.read_index(ses)     # an entry from before launches were kept
    assert nextstep.next_step(rows[-1], rows, index, "main").endswith(
        "a third seed narrows it, usually: uv run train.py --seed 44")
    record.append_run(res, ses, _row("c", 0.9, commit="c2"), _entry({"depth": 9}, "C", commit="c2", parent="c1",
                                                               key_parts={"world": 2}, launch={"per_node": 1}))
    assert [r["status"] for r in ledger.read_ledger(res)][-1] == "confirm"
    assert ("- pending: better than the best, not yet by the margin with 3+ seeds; re-run this commit unchanged: "
            "`uv run torchrun --nnodes=2 --nproc_per_node=1 --node_rank=<this node's rank> --master_addr=<node 0> "
            "--master_port=29500 train.py --seed 43`") in (ses / "memory.md").read_text()
    # its value is pending, not "not kept", while the confirm runs
    assert "| depth | 9 -> 0.900000 over 1 seed pending (1 run); 8 -> 1.000000 over 2 seeds (2 runs) |" in \
        (ses / "memory.md").read_text()
    old = {"key_parts": {"world": 2}}                    # recorded before launches were kept: its key's processes
    assert lineage.train_command(old, 44) == "uv run torchrun --standalone --nproc_per_node=2 train.py --seed 44"


def test_an_edit_made_with_a_key_change_is_said_to_be_unjudged(tmp_path):
    """A key's first run is its baseline, compared with nothing: when it also carries an edit (FA4 installed, then
    an edit run), next: and memory.md say the edit was never judged and how to judge it; once the key before's
    best has run under the new key, they stop saying it."""
    res, ses = tmp_path / "r.tsv", tmp_path / "s"
    fn = {"GPT.forward": "f1"}
    record.append_run(res, ses, _row("a", 1.00, commit="c1"), _entry({"depth": 8}, "A", commit="c1", train_py=fn))
    record.append_run(res, ses, _row("b", 0.99, commit="c1"), _entry({"depth": 8}, "A", seed=43, commit="c1",
                                                                train_py=fn))
    edit = _entry({"depth": 10}, "B", commit="c2", parent="c1", train_py=fn)
    record.append_run(res, ses, _row("c", 0.95, key="k2", commit="c2"), edit)
    rows, index = ledger.read_ledger(res), ledger.read_index(ses)
    assert [r["status"] for r in rows] == ["baseline", "repeat", "baseline"]
    assert nextstep.next_step(rows[-1], rows, index, "main").endswith(
        "--seed 43; !! a new key's baseline, not the key before's best (a): its edits were never judged (memory.md)")
    text = (ses / "memory.md").read_text()
    assert ("- !! this key's baseline is not the best configuration of the key before (a: depth: 8 -> 10): what it "
            "changed was never judged; run that one here too: `uv run prepare.py --restore a`, commit, run it: "
            "`uv run train.py`") in text
    record.append_run(res, ses, _row("d", 0.97, key="k2", commit="c3"), _entry({"depth": 8}, "A", commit="c3",
                                                                          parent="c2", train_py=fn))
    assert "never judged" not in (ses / "memory.md").read_text()        # the old best ran under k2: compared
    # a key change made alone (k2's best, c, run unchanged) leaves nothing unjudged
    record.append_run(res, ses, _row("e", 0.96, key="k3", commit="c2"), _entry({"depth": 10}, "B", commit="c2",
                                                                          train_py=fn))
    rows, index = ledger.read_ledger(res), ledger.read_index(ses)
    assert "never judged" not in nextstep.next_step(rows[-1], rows, index, "main")
    assert "never judged" not in (ses / "memory.md").read_text()
    # keys that alternate: k2 is judged by the k1 best it had when it started, not by a k1 keep made later
    record.append_run(res, ses, _row("g", 0.90, commit="c7"), _entry({"depth": 12}, "G", commit="c7", parent="c1",
                                                                train_py=fn))
    record.append_run(res, ses, _row("g2", 0.91, commit="c7"), _entry({"depth": 12}, "G", seed=43, commit="c7",
                                                                 parent="c1", train_py=fn))
    record.append_run(res, ses, _row("g3", 0.905, commit="c7"), _entry({"depth": 12}, "G", seed=44, commit="c7",
                                                                  parent="c1", train_py=fn))
    record.append_run(res, ses, _row("h", 0.96, key="k2", commit="c2"), _entry({"depth": 10}, "B", seed=44, commit="c2",
                                                                          train_py=fn))
    rows, index = ledger.read_ledger(res), ledger.read_index(ses)
    assert rows[-2]["status"] == "keep" and "never judged" not in (ses / "memory.md").read_text()
    # a shared ledger: another host's first run on its own GPU's key is not judged by this host's keys
    res, ses = tmp_path / "shared.tsv", tmp_path / "shared"
    for rid, seed in (("s1", 42), ("s2", 43)):
        record.append_run(res, ses, _row(rid, 1.0, commit="c1"), _entry({"depth": 8}, "A", seed=seed, commit="c1",
                                                                   train_py=fn, host="h100-box"))
    record.append_run(res, ses, _row("t", 0.99, key="k9", commit="c9"), _entry({"depth": 6}, "F", commit="c9",
                                                                          train_py=fn, host="h200-box"))
    rows, index = ledger.read_ledger(res), ledger.read_index(ses)
    assert "never judged" not in nextstep.next_step(rows[-1], rows, index, "main")


def test_a_crash_neither_hides_nor_stands_for_an_unjudged_baseline(tmp_path):
    """The new key's first run crashes with the old best's files, then an edit becomes its baseline: still unjudged,
    and the change named is the baseline's. A key with only a crash in between is skipped for the one before."""
    res, ses = tmp_path / "r.tsv", tmp_path / "s"
    fn = {"GPT.forward": "f1"}
    run = lambda rid, v, key, model, fp, **kw: record.append_run(  # noqa: E731
        res, ses, _row(rid, v, key=key, commit=f"c{rid}"), _entry(model, fp, commit=f"c{rid}", train_py=fn, **kw))
    run("a", 1.0, "k1", {"depth": 8}, "A")
    run("z", None, "k2", {"depth": 8}, "A", error="RuntimeError: x")          # the old best, crashed under k2
    run("y", 0.9, "k2", {"depth": 10}, "Y")
    text = (ses / "memory.md").read_text()
    assert "configuration of the key before (a: depth: 8 -> 10): what it changed was never judged" in text
    run("q", None, "k3", {"depth": 8}, "A", error="RuntimeError: x")          # k3: a crash only, no best
    run("w", 0.95, "k4", {"depth": 9}, "W")
    assert "the key before (a: depth: 8 -> 9)" not in (ses / "memory.md").read_text()   # k2's best (y) is before
    assert "the key before (y: depth: 10 -> 9)" in (ses / "memory.md").read_text()

def test_memory_bounded_for_a_huge_ledger(tmp_path):
    rows = [dict(_row(f"run{i:05d}", 1.0 - i * 1e-6, description="x" * 150), line=i + 2, status="discard")
            for i in range(10000)]
    rows[0]["status"] = "baseline"
    index = {r["run_id"]: {"model": {f"k{j}": i % 50 for j in range(30)}, "fingerprint": f"f{i % 97}"}
             for i, r in enumerate(rows)}
    text = memory.render_memory(rows, index, "")
    assert len(text.encode()) <= memory.MEMORY_MAX_BYTES + 200


def test_record_crash_from_a_killed_runs_log(run_dir):
    ses = run_dir / "sessions"
    ses.mkdir()
    rid = "20261126T000000Z-abcdef0-1234"
    (ses / f"{rid}.json").write_text(json.dumps({
        "run_id": rid, "status": "running", "description": "wider model", "mode": "test",
        "comparability_key": "local-test-abc", "timestamp": "2026-11-26T00:00:00+00:00", "fingerprint": "F1",
        "model": {"depth": 12}, "git": {"commit": "abcdef0", "branch": "main", "worktree": "/w", "dirty": False}}))
    (ses / f"{rid}.log").write_text("run_start: {}\nstep 00001 | loss 3.2\rstep 00002 | loss 3.1\n"
                                    "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB\n")
    elsewhere = run_script("prepare.py", run_dir, "--record-crash", str(ses / f"{rid}.log"))    # another checkout's run
    assert (elsewhere.returncode, elsewhere.stderr.strip()) == (2, (
        f"error: {rid}.json: run {rid} ran in /w; record it there: cd /w && env AUTORESEARCH_GROUND="
        f"{run_dir / 'ground.json'} AUTORESEARCH_MODEL={run_dir / 'model.json'} uv run prepare.py --record-crash "
        f"{ses / f'{rid}.log'}"))
    rec = json.loads((ses / f"{rid}.json").read_text())
    (ses / f"{rid}.json").write_text(json.dumps(dict(rec, git=dict(rec["git"], worktree=str(config.REPO_DIR)))))
    bad = run_script("prepare.py", run_dir, "--record-crash", str(ses / f"{rid}.log"),
                     env_extra={"AUTORESEARCH_HOST": "gpu-1\n## Notes"})          # no command line can carry it
    assert (bad.returncode, bad.stderr.strip()) == (2, "error: AUTORESEARCH_HOST: a control character in "
                                                       "'gpu-1\\n## Notes'")
    import time
    from harness import database            # a run still running on this machine records itself: refused
    store, now = ledger.FileLedger(run_dir / "results.tsv", ses), time.time()
    store.claim({"run_id": rid, "started": now, "expires": now + 600, **ledger.process_claim(database.host_name())})
    alive = run_script("prepare.py", run_dir, "--record-crash", str(ses / f"{rid}.log"))
    assert (alive.returncode, alive.stderr.strip()) == (2, f"error: run {rid} is still running on this machine: it "
                                                           "records itself")
    assert not (run_dir / "results.tsv").exists()
    store.claims_path.unlink()
    r = run_script("prepare.py", run_dir, "--record-crash", str(ses / f"{rid}.log"))
    assert r.returncode == 0, r.stderr
    rows = ledger.read_ledger(run_dir / "results.tsv")
    assert [(x["run_id"], x["status"], x["val_bpb"], x["commit"], x["comparability_key"]) for x in rows] == \
        [(rid, "crash", None, "abcdef0", "local-test-abc")]
    # the log ends on an exception the run raised (it died before recording it): the edit's crash, not a kill
    assert (ledger.read_index(ses)[rid]["error"]
            == "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB")
    assert json.loads((ses / f"{rid}.json").read_text())["status"] == "crash"
    assert "CUDA out of memory" in (ses / "memory.md").read_text()
    again = run_script("prepare.py", run_dir, "--record-crash", str(ses / f"{rid}.log"))
    assert again.returncode == 2
    assert again.stderr.strip() == f"error: results.tsv: run {rid} is already recorded (crash in {rid}.json)"
    missing = run_script("prepare.py", run_dir, "--record-crash", str(ses / "nope.log"))
    assert missing.returncode == 2 and missing.stderr.strip() == f"error: {ses / 'nope.log'}: no such log file"


def test_memory_cli_regenerates(run_dir):
    res, ses = run_dir / "results.tsv", run_dir / "sessions"
    record.append_run(res, ses, _row("a", 1.0), _entry())
    (ses / "memory.md").unlink()
    r = run_script("prepare.py", run_dir, "--memory")
    assert r.returncode == 0 and "best: val_bpb 1.000000 (1 seed) — a" in (ses / "memory.md").read_text()


def test_memory_names_branches_when_agents_share_a_ledger(tmp_path):
    res, ses = tmp_path / "r.tsv", tmp_path / "s"
    for rid, v, fp, branch, wt in [("a", 1.0, "A", "autoresearch/gpu0", "/w0"),
                                   ("b", 0.9, "B", "autoresearch/gpu1", "/w1"),
                                   ("c", 0.95, "C", "autoresearch/gpu0", "/w0")]:
        record.append_run(res, ses, _row(rid, v), dict(_entry(fp=fp), branch=branch, worktree=wt))
    text = (ses / "memory.md").read_text()
    assert "- runs by branch @ worktree: autoresearch/gpu0 @ /w0 (2), autoresearch/gpu1 @ /w1 (1)" in text
    assert "| b | confirm | 0.900000 | -0.1000 | 42 | 10 |  | [autoresearch/gpu1] desc b |" in text


def test_memory_cli_on_a_ledger_with_a_bad_header_exits_2(run_dir):
    (run_dir / "results.tsv").write_text("foo\tbar\n")
    r = run_script("prepare.py", run_dir, "--memory")
    assert r.returncode == 2
    assert r.stderr.strip() == ("error: results.tsv: header line: expected a ledger header with columns commit, "
                                "val_bpb, "
                                "status, description; missing commit, val_bpb, status, description")
    assert not (run_dir / "sessions" / "memory.md").exists()


def test_a_parent_run_is_of_the_same_key_and_a_killed_run_is_told_apart():
    """A run's parent is a run of the same comparability key (a changed ground.json makes another key: its first
    run has none); a run killed outright is told to re-run unchanged unless its edit made it too slow or large."""
    from harness.nextstep import next_step
    rows = [dict(_row("old", 1.0, key="k1", commit="c1"), status="baseline", line=2),
            dict(_row("new", 0.9, key="k2", commit="c2"), status="baseline", line=3),
            dict(_row("edit", 0.8, key="k2", commit="c3"), status="discard", line=4),
            dict(_row("dead", None, key="k2", commit="c4"), status="crash", line=5)]
    index = {"old": _entry(commit="c1", parent="c0"), "new": _entry(commit="c2", parent="c1"),
             "edit": _entry(commit="c3", parent="c2"),
             "dead": _entry(commit="c4", parent="c2", error="killed: Killed", fp="fp-dead")}
    parents = lineage.parent_runs(rows, index)
    assert parents["new"] is None                              # c1's run is of key k1: not this run's parent
    assert parents["edit"]["run_id"] == "new" and parents["dead"]["run_id"] == "new"
    said = next_step(rows[-1], rows, index, "main")
    assert said.startswith("killed outright: if the edit made it too slow or too large, fix that, `git commit -a "
                           "--amend` and run again; if the host or you stopped it, run this commit again unchanged: "
                           "uv run train.py --seed 42; or give up: ")
    assert said.endswith("git reset --hard c2")
    # recorded late, after the same configuration ran again under its seed: nothing left to re-run
    late = rows[:3] + [dict(_row("again", 0.85, key="k2", commit="c4"), status="discard", line=5),
                       dict(rows[3], line=6)]
    index["again"] = _entry(commit="c4", parent="c2", fp="fp-dead")
    assert next_step(late[-1], late, index, "main") == ("killed outright; this configuration has a result under seed "
                                                        "42 already (again, discard): nothing to re-run; it was "
                                                        "discarded: git reset --hard c2")      # and the way back
    # a killed run of the best commit, recorded late (after another seed of it): the next commit's parent is the
    # scored run of that commit, not the crash (its diff and val_bpb are what the agent built on)
    late = [dict(_row("base", 1.0, key="k2", commit="c2"), status="baseline", line=2),
            dict(_row("seed43", 0.99, key="k2", commit="c2"), status="repeat", line=3),
            dict(_row("killed", None, key="k2", commit="c2"), status="crash", line=4),
            dict(_row("next", 0.98, key="k2", commit="c5"), status="confirm", line=5)]
    idx = {"base": _entry(commit="c2"), "seed43": _entry(commit="c2", seed=43),
           "killed": _entry(commit="c2", seed=44, error="killed: Killed"), "next": _entry(commit="c5", parent="c2")}
    assert lineage.parent_runs(late, idx)["next"]["run_id"] == "seed43"
    index["dead"]["error"] = "RuntimeError: shapes"
    assert next_step(rows[-1], rows, index, "main").startswith("fix a trivial bug")


def test_a_capped_edit_has_its_parents_fingerprint(tmp_path, monkeypatch):
    from harness.identity import config_fingerprint
    model = json.loads(config.model_path().read_text())
    prints = []
    for depth in (8, 4):
        path = tmp_path / f"model_{depth}.json"
        path.write_text(json.dumps(dict(model, depth=depth)))
        monkeypatch.setenv("AUTORESEARCH_MODEL", str(path))
        prints.append((config_fingerprint(), config_fingerprint(capped={"depth": 2})))
    assert prints[0][0] != prints[1][0]                # as written: two configurations
    assert prints[0][1] == prints[1][1]                # as trained under a depth cap of 2: one


def test_a_kept_value_shows_its_kept_configuration_not_a_luckier_one_that_was_not_kept(tmp_path):
    res, ses = tmp_path / "r.tsv", tmp_path / "s"
    base = {"depth": 8, "matrix_lr": 0.04}
    for rid, seed, v in (("a", 42, 1.00), ("b", 43, 1.02), ("c", 44, 1.01)):
        record.append_run(res, ses, _row(rid, v, commit="c1"), _entry(base, "A", seed=seed, commit="c1", parent="c0"))
    record.append_run(res, ses, _row("d", 0.995, commit="c2"), _entry(dict(base, matrix_lr=0.05), "B", commit="c2",
                                                                   parent="c1"))
    record.append_run(res, ses, _row("e", None, commit="c3"), _entry(dict(base, depth=4), "C", commit="c3",
                                                                  parent="c1", error="RuntimeError: shapes"))
    text = (ses / "memory.md").read_text()
    assert [r["status"] for r in ledger.read_ledger(res)][-2:] == ["confirm", "crash"]   # d pending on one seed
    assert "| matrix_lr | 0.05 -> 0.995000 over 1 seed not kept (1 run); 0.04 -> 1.010000 over 3 seeds (4 runs) |" \
        in text
    # depth 8 is in the kept configuration (1.01) and in the pending one (0.995): the kept one's mean is shown
    assert "| depth | 8 -> 1.010000 over 3 seeds (4 runs); 4 -> — (1 run, 1 crash) |" in text


def test_a_cap_cancelled_edit_under_a_new_seed_is_a_repeat_that_sends_the_agent_home(tmp_path):
    from harness.nextstep import next_step
    res, ses = tmp_path / "r.tsv", tmp_path / "s"
    trained = {"depth": 2, "matrix_lr": 0.04}
    cap8, cap4 = {"depth": [8, 2]}, {"depth": [4, 2]}
    for rid, seed in (("a", 42), ("b", 43)):
        record.append_run(res, ses, _row(rid, 1.0 + seed / 1000, commit="c1"),
                      _entry(trained, "A", seed=seed, commit="c1", parent="c0", model_changes_by_mode=cap8))
    row = record.append_run(res, ses, _row("c", 0.9, commit="c2"),
                        _entry(trained, "A", seed=44, commit="c2", parent="c1", model_changes_by_mode=cap4))
    assert row["status"] == "repeat"                    # depth 4 trains as 2: the kept configuration, another seed
    store = ledger.FileLedger(res, ses)
    rows, index = store.read()
    assert lineage.return_commit(rows, index, "k1", "main") == "c1"       # c2's files differ: not a return point
    assert next_step(rows[-1], rows, index, "main") == (
        "this edit trains its parent's model (a cap of this mode cancels it): nothing was judged; go back and try an "
        "edit the caps allow: git reset --hard c1")
    record.append_run(res, ses, _row("d", 1.0, commit="c1"),
                  _entry(trained, "A", seed=45, commit="c1", parent="c0", model_changes_by_mode=cap8))
    rows, index = store.read()
    assert lineage.return_commit(rows, index, "k1", "main") == "c1"       # a clean repeat of the kept files: home


def test_after_a_restore_a_discard_returns_to_the_restored_commit(monkeypatch):
    """Host b restores host a's kept run (`prepare.py --restore`), commits it (r1) and runs an edit on top without
    running r1 first: the discard must send b back to r1, whose files are the kept run's byte for byte, not to b's
    own baseline (a configuration the best has left behind, against which b's next edits would be judged wrongly).
    A parent whose commit also changed other files (ground.json) is no such point: going back would undo them."""
    rows = [_row("a-base", 1.00, commit="a0", status="baseline"), _row("b-base", 1.00, commit="b0", status="baseline"),
            _row("a-keep", 0.90, commit="a1", status="keep"), _row("b-edit", 0.95, commit="e1", status="discard")]
    index = {"a-base": _entry(fp="F0", host="a", commit="a0", files_sha="S0"),
             "b-base": _entry(fp="F0", host="b", commit="b0", files_sha="S0"),
             "a-keep": _entry(fp="FK", host="a", commit="a1", files_sha="SK", parent="a0", parent_files_sha="S0"),
             "b-edit": _entry(fp="FE", host="b", commit="e1", files_sha="SE", parent="r1", parent_files_sha="SK")}
    assert lineage.return_commit(rows, index, "k1", "main", "b") == "r1"
    monkeypatch.setenv("AUTORESEARCH_HOST", "b")
    assert nextstep.next_step(rows[-1], rows, index, "main") == "git reset --hard r1"          # a discard
    # an amend of a keep: its parent holds the baseline's files, but runs there speak for it (k1 is later, kept)
    amend = [_row("base", 1.0, commit="k0", status="baseline"), _row("keep", 0.9, commit="k1", status="keep"),
             _row("amended", 0.95, commit="a1", status="discard")]
    amend_index = {"base": _entry(fp="F0", commit="k0", files_sha="S0"),
                   "keep": _entry(fp="F1", commit="k1", files_sha="S1", parent="k0", parent_files_sha="S0"),
                   "amended": _entry(fp="F2", commit="a1", files_sha="S2", parent="k0", parent_files_sha="S0")}
    assert lineage.return_commit(amend, amend_index, "k1", "main") == "k1"
    index["b-edit"]["parent_files_sha"] = None            # the edit's commit changed ground.json too (or an old run)
    assert lineage.return_commit(rows, index, "k1", "main", "b") == "b0"
    index["b-edit"]["parent_files_sha"] = "SX"            # a parent with files no accepted run has
    assert lineage.return_commit(rows, index, "k1", "main", "b") == "b0"


def _checkout_in_a_repo(tmp_path, monkeypatch):
    """A git repository at tmp_path whose checkout of this project is the folder sub/ (as inside a larger
    repository): REPO_DIR and ground.json there. Returns (sub, git)."""
    import subprocess
    from harness import config as cfg, identity
    sub = tmp_path / "sub"
    sub.mkdir()
    monkeypatch.setattr(cfg, "REPO_DIR", sub)
    monkeypatch.setattr(identity, "REPO_DIR", sub)
    monkeypatch.delenv("AUTORESEARCH_MODEL", raising=False)
    monkeypatch.setenv("AUTORESEARCH_GROUND", str(sub / "ground.json"))
    git = lambda *a: subprocess.run(["git", *a], cwd=sub, check=True, capture_output=True)   # noqa: E731
    git("init", "-q", str(tmp_path))
    git("config", "user.email", "t@t")
    git("config", "user.name", "t")
    return sub, git


def test_a_runs_git_info_digests_its_files_and_its_parents(tmp_path, monkeypatch):
    """files_sha: the agent's two files as the run reads them; parent_files_sha: as HEAD~1 holds them, only when HEAD
    changed nothing but them (a reset to the parent must not undo a ground.json change)."""
    from harness import identity
    sub, git = _checkout_in_a_repo(tmp_path, monkeypatch)
    assert identity.git_info()["parent_files_sha"] is None                 # no commit yet
    kept = {"model.json": '{"depth": 4}\n', "train.py": "print('kept')\n"}
    for name, text in kept.items():
        (sub / name).write_text(text)
    (sub / "ground.json").write_text("{}\n")
    git("add", "-A")
    git("commit", "-qm", "restored")
    assert identity.git_info()["parent_files_sha"] is None                 # the first commit: no parent
    (sub / "model.json").write_text('{"depth": 6}\n')
    git("commit", "-qam", "edit")
    info = identity.git_info()
    assert info["parent_files_sha"] == identity.files_digest(kept)
    assert info["files_sha"] == identity.files_digest({**kept, "model.json": '{"depth": 6}\n'})
    (sub / "ground.json").write_text('{"x": 1}\n')
    (sub / "model.json").write_text('{"depth": 8}\n')
    git("commit", "-qam", "edit with a ground.json change")
    assert identity.git_info()["parent_files_sha"] is None
    (tmp_path / "elsewhere.txt").write_text("x\n")                         # outside the checkout, in the repository
    (sub / "model.json").write_text('{"depth": 10}\n')
    git("add", "-A")
    git("commit", "-qm", "edit with another file of the repository")
    assert identity.git_info()["parent_files_sha"] is None


def test_a_run_says_when_ground_json_is_not_committed_on_its_own(tmp_path, monkeypatch):
    """A trial: ground.json edited for a shared ledger and left uncommitted, then swept into the first experiment's
    commit by `git commit -am`; the discard's reset undid it and later runs used the local ledger, silently."""
    from harness import identity
    sub, git = _checkout_in_a_repo(tmp_path, monkeypatch)
    for name in ("ground.json", "model.json", "train.py"):
        (sub / name).write_text("{}\n")
    git("add", "-A")
    git("commit", "-qm", "start")
    assert identity.ground_commit_note(after_a_run=True) is None
    (sub / "ground.json").write_text('{"ledger": "postgres"}\n')
    assert identity.ground_commit_note(after_a_run=False) == identity.GroundNote(
        "!! ground.json has uncommitted changes: commit them on their own first (`git commit ground.json -m \"ground: "
        "...\"`); in an experiment's commit, the `git reset --hard` after a discard would undo them", uncommitted=True)
    (sub / "model.json").write_text('{"depth": 4}\n')
    git("commit", "-qam", "depth 4")
    split = ("!! this commit changes ground.json with model.json: the `git reset --hard` after a discard would undo "
             "ground.json too; split it: `git reset --soft HEAD~1 && git commit ground.json -m \"ground: ...\" && git "
             "commit -am \"<the edit>\"`")
    assert identity.ground_commit_note(after_a_run=True) == identity.GroundNote(split, uncommitted=False)
    # a commit whose parent was never run is not an experiment's (a fresh clone's HEAD, the user's set-up): silent
    assert identity.ground_commit_note(after_a_run=False) is None
    git("reset", "-q", "--soft", "HEAD~1")              # the split it asks for
    git("commit", "-qm", "ground: postgres", "ground.json")
    git("commit", "-qam", "depth 4")
    assert identity.ground_commit_note(after_a_run=True) is None
    monkeypatch.setenv("AUTORESEARCH_GROUND", str(tmp_path.parent / "shared-ground.json"))
    (sub / "ground.json").write_text('{"x": 1}\n')
    assert identity.ground_commit_note(after_a_run=True) is None   # a ground.json outside the repository: not here


def test_a_killed_run_of_a_discarded_configuration_is_sent_home(monkeypatch):
    """A trial: a run killed outright and recorded later, when its configuration had been run (seed 42) and discarded
    meanwhile: nothing to re-run, and the agent, still on the discarded commit, is told the way back."""
    monkeypatch.delenv("AUTORESEARCH_HOST", raising=False)
    rows = [_row("base", 1.00, commit="c0", status="baseline"), _row("edit", 1.05, commit="c1", status="discard"),
            _row("kill", None, commit="c1", status="crash")]
    index = {"base": _entry(fp="A", commit="c0"), "edit": _entry(fp="B", commit="c1", parent="c0"),
             "kill": _entry(fp="B", commit="c1", parent="c0", error=digest.KILLED + "no error message")}
    assert nextstep.next_step(rows[-1], rows, index, "main") == (
        "killed outright; this configuration has a result under seed 42 already (edit, discard): nothing to re-run; "
        "it was discarded: git reset --hard c0")
    # discarded under another key only (another GPU, another ground.json): not this key's verdict
    elsewhere = [dict(rows[1], run_id="old", comparability_key="k0")] + [dict(r) for r in rows]
    elsewhere[2]["status"] = "confirm"
    index["old"] = dict(index["edit"])
    assert nextstep.next_step(elsewhere[-1], elsewhere, index, "main").endswith("(edit, confirm): nothing to re-run")
    rows[1]["status"] = "confirm"                          # pending: another seed, not the way back
    assert nextstep.next_step(rows[-1], rows, index, "main").endswith("(edit, confirm): nothing to re-run")


def test_next_keeps_a_ground_json_not_committed_on_its_own(monkeypatch):
    """A trial: the discard's `git reset --hard` dropped the user's uncommitted (or committed-with-the-edit) ground.json
    change and later runs used another key without a word. next: now carries ground.json over the reset and commits
    it on its own; after a keep it asks for the commit first (uncommitted), or says nothing more (committed)."""
    from harness.identity import GroundNote, keeping_ground
    monkeypatch.setenv("AUTORESEARCH_GROUND", str(config.REPO_DIR / "ground.json"))
    uncommitted = GroundNote("!! ground.json has uncommitted changes: ...", uncommitted=True)
    with_edit = GroundNote("!! this commit changes ground.json ...", uncommitted=False)
    assert keeping_ground("git reset --hard c0", uncommitted) == (
        "cp ground.json ground.json.keep && git reset --hard c0 && mv ground.json.keep ground.json && git commit "
        "ground.json -m \"ground: the user's settings\" (keeping ground.json: it is not committed on its own)")
    assert keeping_ground("crashed: fix it; or give up: git reset --hard c0", with_edit).startswith(
        "crashed: fix it; or give up: cp ground.json ground.json.keep && git reset --hard c0 && mv ")
    keep = "keep this commit and build on it"
    assert keeping_ground(keep, uncommitted) == ("first commit ground.json on its own: `git commit ground.json -m "
                                                 f"\"ground: the user's settings\"`; then: {keep}")
    assert keeping_ground(keep, with_edit) == keep and keeping_ground(keep, None) == keep


def test_running_now_names_the_recorded_run_of_the_same_seed():
    """A claim under seed 42 of a configuration recorded under seeds 42 and 43: the line names the seed-42 run (the
    one it duplicates), not the latest; under seed 44 it names the latest and says it is another seed."""
    rows = [_row("s42", 1.00, status="baseline", line=2), _row("s43", 1.01, status="repeat", line=3)]
    index = {"s42": _entry(fp="A", seed=42), "s43": _entry(fp="A", seed=43)}
    claim = {"run_id": "new", "fingerprint": "A", "host": "h", "branch": "main", "seed": 42, "comparability_key": "k1",
             "description": "again", "model": {}, "started": 0.0, "expires": 900.0}
    lines = digest.running_now(rows, index, [claim], 60.0, None, "k1")
    assert lines[2] == "  - !! already recorded: 2 run(s), this seed s42 (baseline, 1.000000); it will be a `rerun`"
    lines = digest.running_now(rows, index, [dict(claim, seed=44)], 60.0, None, "k1")
    assert lines[2] == "  - already recorded: 2 run(s), last s43 (repeat, 1.010000); this is another seed"


def test_comparability_key_changes_with_the_gpu_and_kernel_choices():
    """A fixed time budget buys more tokens on a faster GPU or kernel (FA4 over cuDNN: ~2% more steps): runs that
    differ there are another key, never compared, as are runs with another number of warm-up steps outside the
    budget (they train); PLATFORM's other entries (reasons, peak FLOPs) do not count."""
    from harness import identity, settings, sources, tokenizer
    s = settings.current()
    tok, manifest = tokenizer.Tokenizer.from_directory(), sources.load_manifest(s)
    h100 = {"device_name": "NVIDIA H100 80GB HBM3", "dtype": "bfloat16", "attention": "cudnn", "mlp": "triton",
            "rope": "triton", "loss": "triton", "compile": True, "compile_scope": "model", "world_size": 1,
            "peak_flops": 989.4e12, "reasons": {"attention": "x"}}
    key = identity.comparability_key(s, tok, manifest, h100)
    assert key == identity.comparability_key(s, tok, manifest, dict(h100, peak_flops=1.0, reasons={}))
    others = [dict(h100, attention="fa4"), dict(h100, device_name="NVIDIA H200"), dict(h100, dtype="float16"),
              dict(h100, compile_scope="blocks"), dict(h100, world_size=2), dict(h100, mlp="plain")]
    keys = {identity.comparability_key(s, tok, manifest, p) for p in others}
    assert len(keys) == len(others) and key not in keys
    assert key.startswith(f"{manifest['source']}-{s.mode}-")
    import dataclasses        # the warm-up steps outside the budget train too: another count, other tokens
    assert identity.comparability_key(dataclasses.replace(s, excluded_steps=s.excluded_steps + 1), tok, manifest,
                                    h100) not in keys | {key}


def test_a_backend_refused_at_start_up_keeps_the_runs_key():
    """confirm_attention may move a run to the next backend when the model's shapes are refused (an edit's doing):
    the run stays in its lineage's key, computed from this machine's PLATFORM, and its record says what ran."""
    from harness import hardware, identity, record, settings, sources, tokenizer
    s, tok = settings.current(), tokenizer.Tokenizer.from_directory()
    m, changes = settings.effective_model(config.load_model(), s)
    P = hardware.get_platform()
    fell_back = record.Run(s, tok, m, changes, "fallback", dict(P, attention="flex", mlp="plain", reasons={}), None, 42)
    assert fell_back.key == identity.comparability_key(s, tok, sources.load_manifest(s), P)
    assert fell_back.key != identity.comparability_key(s, tok, sources.load_manifest(s), dict(P, attention="flex"))
    assert (fell_back.record["platform"]["attention"], fell_back.record["platform"]["mlp"]) == ("flex", "plain")


def test_memory_says_why_the_key_changed():
    """A new key (here: FA4 installed, and another GPU) starts a new baseline; memory.md says what separates it
    from the key before, from the parts of the key each run's index entry keeps, so the agent does not read the
    fresh lineage as lost work."""
    import dataclasses
    from harness import identity, settings, sources, tokenizer
    s = settings.current()
    tok, manifest = tokenizer.Tokenizer.from_directory(), sources.load_manifest(s)
    h100 = {"device_name": "NVIDIA H100 80GB HBM3", "dtype": "bfloat16", "attention": "cudnn", "mlp": "triton",
            "rope": "triton", "loss": "triton", "compile": True, "compile_scope": "model", "world_size": 1}
    h200_fa4 = dict(h100, attention="fa4", device_name="NVIDIA H200")
    rows = [_row("a", 1.0, key="k1", status="baseline", line=2), _row("b", 0.99, key="k1", status="repeat", line=3),
            _row("c", 0.98, key="k2", status="baseline", line=4)]
    parts = lambda p, s=s: identity.key_parts(s, tok, manifest, p)                    # noqa: E731
    index = {"a": _entry(key_parts=parts(h100)), "b": _entry(key_parts=parts(h100)),
             "c": _entry(key_parts=parts(h200_fa4))}
    text = memory.render_memory(rows, index, "")
    assert ("- this key against `k1` (the key its first run's host ran before it): attention: cudnn -> fa4; "
            "device_name: NVIDIA H100 80GB HBM3 -> NVIDIA H200\n") in text
    index["c"] = _entry(key_parts=parts(dict(h100, world_size=2), dataclasses.replace(s, time_budget_s=120.0)))
    assert (f"(the key its first run's host ran before it): processes: 1 -> 2; time_budget_s: {s.time_budget_s} "
            "-> 120.0\n" in memory.render_memory(rows, index, ""))
    index["c"] = _entry(key_parts=parts(h100, dataclasses.replace(s, max_steps=22)))
    assert (f"(the key its first run's host ran before it): max_steps: {s.max_steps} -> 22; schedule: seconds -> "
            "steps\n" in memory.render_memory(rows, index, ""))
    index["b"] = _entry()                                                # a run recorded before the parts were kept
    assert "this key against" not in memory.render_memory(rows, index, "")
    # on a shared ledger the key compared is the one this host came from, not another host's latest
    rows = [_row("a", 1.0, key="k1", status="baseline", line=2), _row("x", 0.9, key="kx", status="baseline", line=3),
            _row("c", 0.98, key="k2", status="baseline", line=4)]
    index = {"a": _entry(key_parts=parts(h100), host="h1"), "x": _entry(key_parts=parts(h100), host="h2"),
             "c": _entry(key_parts=parts(h200_fa4), host="h1")}
    assert "- this key against `k1` (the key its first run's host ran before it): attention: cudnn -> fa4" in \
        memory.render_memory(rows, index, "")
    index["c"]["host"] = "h3"                                          # a host with no key before: the latest one
    assert "- this key against `kx` (its latest run): attention: cudnn -> fa4" in memory.render_memory(rows, index, "")


def test_recorded_runs_keep_the_parts_of_their_key():
    """The index entry a real run writes holds the parts its key hashes (what memory.md compares across keys)."""
    import dataclasses
    from harness import identity, record, settings, sources, tokenizer
    s, tok = settings.current(), tokenizer.Tokenizer.from_directory()
    m, changes = settings.effective_model(config.load_model(), s)
    for steps in (s.excluded_steps, s.excluded_steps + 1):
        run = record.Run(dataclasses.replace(s, excluded_steps=steps), tok, m, changes, f"steps {steps}",
                         hardware_platform(), None, 42)
        run.finish({"val_bpb": 1.0, "num_steps": 10})
    rows, index = run.store.read()
    assert [index[r["run_id"]]["key_parts"]["excluded_steps"] for r in rows[-2:]] == [s.excluded_steps,
                                                                                     s.excluded_steps + 1]
    assert run.key == identity.comparability_key(run.s, tok, sources.load_manifest(s), hardware_platform())
    text = (run.sessions / "memory.md").read_text()
    assert (f"(the key its first run's host ran before it): excluded_steps: {s.excluded_steps} -> "
            f"{s.excluded_steps + 1}\n") in text


def test_another_agents_ended_run_is_neither_running_nor_this_agents_to_record(capsys, monkeypatch, run_dir):
    """Two agents on one machine (AUTORESEARCH_HOST apart): agent b's run of this configuration was killed outright.
    Agent a's run does not call it "already running under the same seed" (it is not running) and does not tell a to
    record it (memory.md says whose it is); agent b is told."""
    import subprocess
    import sys
    import time
    from harness import ledger as ldg, record, settings, tokenizer
    monkeypatch.setenv("AUTORESEARCH_GROUND", str(run_dir / "ground.json"))      # a ledger of its own
    settings.reset()
    s, tok = settings.current(), tokenizer.Tokenizer.from_directory()
    m, changes = settings.effective_model(config.load_model(), s)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    monkeypatch.setenv("AUTORESEARCH_HOST", "agent-a")
    run = record.Run(s, tok, m, changes, "a's run", hardware_platform(), None, 42)
    run.sessions.mkdir(parents=True)
    (run.sessions / "b.json").write_text('{"status": "running"}')
    claim = dict(ldg.process_claim("agent-a"), pid=dead.pid, pid_start=None, run_id="b", host="agent-b",
                 comparability_key=run.key, fingerprint=run.record["fingerprint"], seed=42, started=time.time(),
                 expires=time.time() + 600, log=str(run.sessions / "b.log"), record=str(run.sessions / "b.json"))
    run.store.claim(claim)
    capsys.readouterr()
    rows, index = run.store.read()
    assert run.announce(rows, index) == []
    assert "b.log" not in capsys.readouterr().out
    monkeypatch.setenv("AUTORESEARCH_HOST", "agent-b")
    rows, index = run.store.read()
    run.announce(rows, index)
    assert "!! a run started on this machine ended without a record: b; record it: " in capsys.readouterr().out


def test_a_run_that_compiled_in_its_budget_is_not_judged(capsys):
    """A recompile after the warm-up spends budget seconds on compiling, more on an empty cache (the GPU check: 7
    steps against 43): the run is recorded as a crash with its reason, its val_bpb kept in its record only, and
    `next:` asks for the cause; a run without one is judged as usual, and a crash that never reached the end has
    no count at all (not measured, not zero)."""
    from harness import record, settings, tokenizer
    s, tok = settings.current(), tokenizer.Tokenizer.from_directory()
    m, changes = settings.effective_model(config.load_model(), s)
    run = record.Run(s, tok, m, changes, "recompiles", hardware_platform(), None, 9001)    # no other test's seed
    row = run.finish({"val_bpb": 1.25, "num_steps": 10, "compiled_in_budget": 3})
    out = capsys.readouterr().out
    reason = ("recompiled after the warm-up: 3 graph(s) compiled in counted steps (val_bpb 1.250000, not judged: "
              "the compile took budget seconds)")
    assert f"!! {reason}\n" in out and row["status"] == "crash" and row["val_bpb"] is None
    assert "\nnext: recompiled after the warm-up: not judged; find the cause (`TORCH_LOGS=recompiles` in front" in out
    assert "`git commit -a --amend`, and run again; or give up on it: git reset --hard" in out
    rows, index = run.store.read()
    assert (rows[-1]["status"], rows[-1]["val_bpb"]) == ("crash", None)
    assert (index[run.run_id]["compiled_in_budget"], index[run.run_id]["error"]) == (3, reason)
    assert run.record["metrics"]["val_bpb"] == 1.25                     # measured, kept in sessions/<run_id>.json
    recent = [x for x in (run.sessions / "memory.md").read_text().splitlines() if x.startswith(f"| {run.run_id} |")]
    assert recent and "| crash |" in recent[0] and "— recompiled after the warm-up: 3 graph(s) compiled" in recent[0]
    clean = record.Run(s, tok, m, changes, "no recompiles", hardware_platform(), None, 9002)
    assert clean.finish({"val_bpb": 1.0, "num_steps": 10, "compiled_in_budget": 0})["status"] != "crash"
    assert "recompiled" not in capsys.readouterr().out
    broke = record.Run(s, tok, m, changes, "diverged", hardware_platform(), None, 9003)
    broke.crash("val_bpb is nan", {"num_steps": 4})
    assert broke.store.read()[1][broke.run_id]["compiled_in_budget"] is None


def test_a_compiled_run_without_warm_up_steps_says_its_compile_is_counted():
    import dataclasses
    from harness import settings
    s, m = settings.current(), config.load_model()
    compiled = dict(hardware_platform(), compile=True)
    said = "!! excluded_steps 0: step 0's compile counts in the budget, as many seconds as the compile cache makes it"
    assert any(x.startswith(said) for x in session.setup_lines(dataclasses.replace(s, excluded_steps=0), m, {},
                                                              compiled, 1))
    for quiet in (dataclasses.replace(s, excluded_steps=1), dataclasses.replace(s, excluded_steps=0, max_steps=9)):
        assert not any(x.startswith("!! excluded_steps") for x in session.setup_lines(quiet, m, {}, compiled, 1))


def test_under_max_steps_the_steps_decide_what_is_comparable(capsys):
    """With max_steps the steps end the run: a run stopped short of them (the hard limit on a loaded host) trained
    another model and is not judged; a recompile costs it wall time, not steps, and is judged as usual."""
    import dataclasses
    from harness import record, settings, tokenizer
    s = dataclasses.replace(settings.current(), max_steps=22)
    tok = tokenizer.Tokenizer.from_directory()
    m, changes = settings.effective_model(config.load_model(), s)
    short = record.Run(s, tok, m, changes, "cut short", hardware_platform(), None, 9101)
    row = short.finish({"val_bpb": 2.5, "num_steps": 8, "compiled_in_budget": 0,
                        "training_seconds": 4 * s.time_budget_s})             # 8 steps in 4 budgets: 2 fit one
    assert (row["status"], row["val_bpb"]) == ("crash", None)
    out = capsys.readouterr().out
    assert "!! stopped at step 8 of max_steps 22 (about 2 steps fit the budget; val_bpb 2.500000, not judged)\n" in out
    assert "\nnext: stopped at step 8 of max_steps 22, by the hard limit: not judged; if your edit slowed the step, " \
           "make it faster, `git commit -a --amend` and run again, or give up on it: " in out
    assert ("lower max_steps in ground.json's profile (e.g. 2, the steps that fit the budget at this run's pace), in "
            "a commit of its own (a new key), and run that commit\n") in out
    # a pace inflated by compiles, or time spent before the counted steps, gives no number to lower max_steps to
    for seed, extra, why in ((9103, {"compiled_in_budget": 2}, "2 graph(s) compiled in counted steps; "),
                             (9104, {"training_seconds": 0.001}, "")):
        run = record.Run(s, tok, m, changes, "short", hardware_platform(), None, seed)
        metrics = {"val_bpb": 2.5, "num_steps": 8, "compiled_in_budget": 0, "training_seconds": 4 * s.time_budget_s}
        run.finish({**metrics, **extra})
        out = capsys.readouterr().out
        assert f"!! stopped at step 8 of max_steps 22 ({why}val_bpb 2.500000, not judged)\n" in out
        assert "lower max_steps in ground.json's profile, in a commit of its own" in out and "(e.g." not in out
    full = record.Run(s, tok, m, changes, "recompiled, all steps", hardware_platform(), None, 9102)
    assert full.finish({"val_bpb": 2.25, "num_steps": 22, "compiled_in_budget": 1})["status"] != "crash"
    assert "not judged" not in capsys.readouterr().out


def test_cpu_threads_are_part_of_a_cpu_runs_key():
    """On a CPU the thread count sets the speed (steps in the budget) and the order of the sums: runs on 1 and on 2
    threads are another key, and memory.md names the difference; a GPU's key does not hold it."""
    import torch
    from harness import identity, settings, sources, tokenizer
    s, tok = settings.current(), tokenizer.Tokenizer.from_directory()
    manifest, cpu = sources.load_manifest(s), dict(hardware_platform(), device="cpu")
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = identity.key_parts(s, tok, manifest, cpu)
        torch.set_num_threads(2)
        two = identity.key_parts(s, tok, manifest, cpu)
        gpu = identity.key_parts(s, tok, manifest, dict(cpu, device="cuda"))
    finally:
        torch.set_num_threads(before)
    assert (one["threads"], two["threads"]) == (1, 2) and identity.key_of(one) != identity.key_of(two)
    assert "threads" not in gpu
    rows = [_row("a", 1.0, key=identity.key_of(one), status="baseline", line=2),
            _row("b", 1.0, key=identity.key_of(two), status="baseline", line=3)]
    text = memory.render_memory(rows, {"a": _entry(key_parts=one), "b": _entry(key_parts=two)}, "")
    assert (f"- this key against `{identity.key_of(one)}` (the key its first run's host ran before it): CPU threads "
            "(OMP_NUM_THREADS): 1 -> 2\n") in text
    # the next command keeps the thread count the run was given, or the key it asks for would be another one
    one_thread = {"key_parts": one, "launch": {"per_node": 1, "omp_num_threads": "1"}}
    assert lineage.train_command(one_thread, 43) == "env OMP_NUM_THREADS=1 uv run train.py --seed 43"   # timeout-safe
    assert lineage.train_command({"key_parts": two, "launch": {"per_node": 1}}, 43) == "uv run train.py --seed 43"
    assert lineage.train_command({"key_parts": gpu, "launch": one_thread["launch"]}, 43) == "uv run train.py --seed 43"


def test_a_launch_records_the_thread_setting_it_was_given(monkeypatch):
    from harness import identity
    for var in ("OMP_NUM_THREADS", *identity.HARNESS_ENV):
        monkeypatch.delenv(var, raising=False)
    assert identity.launch_info() == {"per_node": 1, "env": {}}
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert identity.launch_info() == {"per_node": 1, "omp_num_threads": "1", "env": {}}


def test_the_next_command_repeats_the_variables_its_agent_typed(monkeypatch, tmp_path):
    """`AUTORESEARCH_GROUND=g.json uv run train.py` typed once: the commands that run prints for its agent must name
    g.json again, or the second seed they ask for reads the default ground.json (other data, another key) into
    another ledger; a model.json elsewhere, or a host name, likewise. memory.md, read by every agent of a ledger
    (several per host, one per GPU), repeats none: one agent's host name would make another's runs its own."""
    from harness import identity
    monkeypatch.chdir(tmp_path)
    for var in ("OMP_NUM_THREADS", *identity.HARNESS_ENV):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AUTORESEARCH_GROUND", "my ground.json")
    monkeypatch.setenv("AUTORESEARCH_HOST", "gpu-7")
    env = identity.harness_env()
    assert env == {"AUTORESEARCH_GROUND": str(tmp_path / "my ground.json"), "AUTORESEARCH_HOST": "gpu-7"}
    assert identity.launch_info()["env"] == env                      # kept in the run's record
    ground = shlex.quote(str(tmp_path / "my ground.json"))
    one = {"key_parts": {"world": 1}, "launch": {"per_node": 1}}
    assert lineage.train_command(one, 43, env) == (
        f"env AUTORESEARCH_GROUND={ground} AUTORESEARCH_HOST=gpu-7 uv run train.py --seed 43")
    assert lineage.train_command(one, 43) == "uv run train.py --seed 43"          # memory.md's form
    # a CPU key's thread count first; torchrun on one node passes them to every process; on several nodes the
    # command runs on each, from its own checkout with its own variables: none
    threads = {"key_parts": {"world": 1, "threads": 1}, "launch": {"per_node": 1, "omp_num_threads": "1"}}
    assert lineage.train_command(threads, 44, env) == (
        f"env OMP_NUM_THREADS=1 AUTORESEARCH_GROUND={ground} AUTORESEARCH_HOST=gpu-7 uv run train.py --seed 44")
    assert lineage.train_command({"key_parts": {"world": 2}, "launch": {"per_node": 2}}, 43, env) == (
        f"env AUTORESEARCH_GROUND={ground} AUTORESEARCH_HOST=gpu-7 uv run torchrun --standalone "
        "--nproc_per_node=2 train.py --seed 43")
    assert lineage.train_command({"key_parts": {"world": 2}, "launch": {"per_node": 1}}, 43, env).startswith(
        "uv run torchrun --nnodes=2 ")
    assert lineage.way_back(None, "r1", env).endswith(f"to build on the best: env AUTORESEARCH_GROUND={ground} "
                                                     "AUTORESEARCH_HOST=gpu-7 uv run prepare.py --restore r1)")
    # the command runs: a shell splits it back into the same variables and arguments
    words = shlex.split(lineage.train_command(one, 43, env))
    assert words[:3] == ["env", f"AUTORESEARCH_GROUND={tmp_path / 'my ground.json'}", "AUTORESEARCH_HOST=gpu-7"]
    # a value no command line can carry is refused where it is read, naming the variable
    monkeypatch.setenv("AUTORESEARCH_HOST", "gpu-7\n## Notes")
    with pytest.raises(config.ConfigError, match=r"^AUTORESEARCH_HOST: a control character"):
        identity.harness_env()


def test_a_new_keys_first_run_that_crashed_is_told_what_to_return_to(tmp_path):
    """A key whose first run crashed (e.g. a max_steps commit stopped short) has nothing kept: the agent is told
    what to return to, not a guessed commit (a first run's git parent is the harness's own history), in words no
    shell reads as a redirect, and memory.md does not send it to a baseline that does not exist."""
    res, ses = tmp_path / "r.tsv", tmp_path / "s"
    record.append_run(res, ses, _row("a", None, status="crash", commit="c1"),
                  _entry(fp="A", commit="c1", parent="c0", error="stopped at step 141 of max_steps 5000 (about 24 "
                         "steps fit the budget; val_bpb 2.1, not judged)"), status="crash")
    rows, index = ledger.FileLedger(res, ses).read()
    said = nextstep.next_step(rows[-1], rows, index, "main")
    assert ("give up on it: return to the commit you started from with `git reset --hard` (nothing kept in this "
            "key on this host yet);") in said                  # not its git parent: a first run's is the harness's
    assert "lower max_steps in ground.json's profile (e.g. 24, the steps that fit the budget" in said
    text = (ses / "memory.md").read_text()
    assert "- noise floor: not measured yet: no run of this key has a val_bpb yet (the last run says why)\n" in text
    assert "on the baseline's commit" not in text
    assert lineage.way_back("c9", "x") == "git reset --hard c9"
