"""sessions/memory.md (harness/digest.py values, harness/memory.py renderers): its sections against the ledger they
summarize, Notes kept, deterministic, bounded; the key's changes said; --memory.

    uv run pytest tests/test_memory.py
"""

import pytest

from harness import digest, ledger, memory, nextstep, record
from conftest import run_script
from test_ledger import _entry, _row


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


def test_the_digest_values_memory_md_renders(tmp_path):
    """The values behind the summary, asserted as values (the renderer may word them as it likes)."""
    res, ses = tmp_path / "results.tsv", tmp_path / "sessions"
    for rid, v, fp, seed, status, error in [("a", 1.00, "A", 42, None, None), ("b", 1.02, "A", 43, None, None),
                                            ("c", 1.05, "B", 42, None, None), ("d", None, "C", 42, "crash",
                                                                                 "killed: no output"),
                                            ("e", 0.99, "D", 42, None, None)]:
        record.append_run(res, ses, _row(rid, v, commit=rid), _entry(fp=fp, seed=seed, commit=rid, error=error),
                          status)
    rows, index = ledger.read_ledger(res), ledger.read_index(ses)
    d = digest.digest(rows, index)
    assert [r["status"] for r in rows] == ["baseline", "repeat", "discard", "crash", "confirm"]
    assert d.key == "k1" and d.best_cfg.fingerprint == "A" and d.best_cfg.mean == pytest.approx(1.01)
    assert d.best["run_id"] == "a" and d.pending == "D"                  # e's configuration is being confirmed
    assert [r["run_id"] for r in d.since] == ["e", "d", "c"]              # newest first, after the last improvement
    assert d.counts["crash"] == 1 and d.killed == 1 and d.counts["confirm"] == 1
    assert d.st.sigma == pytest.approx(0.0141421, rel=1e-4) and d.st.dof == 1
    text = memory.render_memory(rows, index, "")
    assert f"{d.best_cfg.mean:.6f}" in text and "0.014142" in text        # the renderer shows those values


def test_the_summary_gives_the_paired_margin_and_the_last_decision(tmp_path):
    """Seeds that move configurations together (+-0.05 by seed): memory.md says so with the paired margin, and the
    last run's decision, with the numbers it was made on, is one line of the digest."""
    res, ses = tmp_path / "results.tsv", tmp_path / "sessions"
    effect = {42: 0.05, 43: -0.05, 44: 0.0}
    runs = [(f"a{s}", "A", s, 1.0 + e) for s, e in effect.items()]
    for fp, shift, noise in (("C", 0.01, (0.001, -0.002, 0.001)), ("D", 0.02, (-0.001, 0.002, -0.001)),
                             ("E", 0.015, (0.002, 0.0, -0.002))):
        runs += [(f"{fp}{s}", fp, s, 1.0 + shift + e + n) for (s, e), n in zip(effect.items(), noise)]
    runs.append(("b42", "B", 42, 1.0 + 0.05 - 0.02))
    for rid, fp, seed, v in runs:
        record.append_run(res, ses, _row(rid, v, commit=rid), _entry(fp=fp, seed=seed, commit=rid))
    rows, index = ledger.read_ledger(res), ledger.read_index(ses)
    decision = index["b42"]["decision"]
    assert rows[-1]["status"] == "confirm" and decision["paired"] and decision["diff"] == pytest.approx(-0.02)
    text = (ses / "memory.md").read_text()
    assert "seeds move configurations together here (paired spread " in text
    assert f"- decision: {decision['reason']} (paired on the seeds both ran)" in text


def test_the_noise_section_always_lists_the_best_first():
    """The trial's memory.md left the best configuration out of "Noise" when four others had more seeds."""
    rows, index = [], {}
    def add(run_id, v, status, fp, seed):
        rows.append(dict(_row(run_id, v, status=status), line=len(rows) + 2))
        index[run_id] = dict(_entry(fp=fp, seed=seed), run_id=run_id)
    add("a42", 0.90, "baseline", "A", 42)
    add("a43", 0.91, "repeat", "A", 43)
    for fp in "BCDE":
        for k, st in enumerate(("confirm", "confirm", "discard")):
            add(f"{fp}{k}", 0.95 + k * 0.001, st, fp, 42 + k)
    text = memory.render_memory(rows, index, "")
    noise = text.split("## Noise (configurations run under several seeds)\n")[1].split("\n\n")[0].splitlines()
    assert noise[0] == "- A (the best): 2 runs, mean 0.905000, val_bpb 0.900000..0.910000 (spread 0.010000)"
    assert len(noise) == 4 and all("(the best)" not in line for line in noise[1:])


def test_a_pruned_run_is_recorded_with_its_reason_and_never_enters_a_mean(tmp_path):
    """A run the early stop ended: `pruned` in results.tsv with no val_bpb, its reason (from a real Pruner) on the
    memory's last-run line within the cut, the tried list saying why, and the best's mean and floor unchanged."""
    from harness import prune
    res, ses = tmp_path / "results.tsv", tmp_path / "sessions"
    best = [[i / 10, 5.0 - 0.3 * i] for i in range(11)]                     # 5.0 -> 2.0, straight
    for rid, v, seed in (("a", 1.00, 42), ("b", 1.02, 43)):
        record.append_run(res, ses, _row(rid, v, commit=rid), _entry(fp="A", seed=seed, commit=rid, curve=best))
    before = digest.digest(ledger.read_ledger(res), ledger.read_index(ses))
    p = prune.Pruner([best, [[x, y + 0.01] for x, y in best]])
    for step in range(20, 30):
        p.check(step, step / 50, 4.5)                                      # the best had 4.5 at 17%: far behind
    assert p.stopped.startswith("stopped early at step 22 (44% of the budget): more than 20% behind the best ")
    record.append_run(res, ses, _row("c", None, commit="c", num_steps=23), _entry(fp="B", seed=42, commit="c",
                                                                                 error=p.stopped), "pruned")
    rows, index = ledger.read_ledger(res), ledger.read_index(ses)
    assert [r["status"] for r in rows] == ["baseline", "repeat", "pruned"] and rows[-1]["val_bpb"] is None
    d = digest.digest(rows, index)
    assert d.best_cfg.fingerprint == "A" and d.best_cfg.mean == pytest.approx(before.best_cfg.mean) == 1.01
    assert (d.st.sigma, d.st.dof) == (before.st.sigma, before.st.dof)
    text = memory.render_memory(rows, index, "")
    reason = next(line for line in text.splitlines() if line.startswith("- reason: "))
    assert reason.startswith("- reason: stopped early at step 22 (44% of the budget): more than 20% behind the best "
                             "configuration; train loss 4.5000 above")
    assert "- comparability key: `k1` — 3 runs: 1 baseline, 1 repeat, 1 pruned" in text
    assert "| c | pruned | — |  | 42 | 23 |  | desc c — stopped early at step 22 (44% of the budget): more than 20% " \
           "behind the |" in text


# the CPU trial of session 19 (test mode): the baseline A, an erratic edit U, a loser M, a steady gain W
TRIAL = {"A": [(42, 2.300452, None), (43, 2.303790, None), (44, 2.315886, None)],
         "U": [(42, 2.275893, "confirm"), (43, 2.359479, "discard")], "M": [(42, 2.280279, "confirm"),
                                                                             (43, 2.311239, "discard")],
         "W": [(42, 2.262299, "confirm"), (43, 2.273505, "confirm"), (44, 2.285694, "confirm"),
               (45, 2.273211, "confirm")]}


def _trial_ledger(res, ses, order: str, runs: dict = TRIAL) -> str:
    """The trial's runs, configuration by configuration in `order`, recorded; memory.md as rendered then."""
    for fp in order:
        for seed, v, status in runs[fp]:
            rid = f"{fp.lower()}{seed}"
            record.append_run(res, ses, _row(rid, v, commit=rid), _entry(fp=fp, seed=seed, commit=rid), status)
    return memory.render_memory(ledger.read_ledger(res), ledger.read_index(ses), "")


def test_memory_says_when_an_unstable_configuration_is_left_out_of_the_floor(tmp_path):
    text = _trial_ledger(tmp_path / "results.tsv", tmp_path / "sessions", "AUMW")
    assert "- noise floor: sigma 0.012147 from 9 runs of 3 configuration(s) under several seeds (dof 6)" in text
    assert "; 1 configuration(s) left out as unstable (seeds spread beyond all others' at 99.5%)" in text


def test_a_copy_is_found_at_the_ledgers_precision_and_a_pending_configuration_is_judged_with_its_spread(tmp_path):
    """results.tsv keeps six decimals while a run's own val_bpb has all of them: a no-op's first run must still be
    found a copy of the best (the review of session 19). And while an erratic configuration waits for its next seed,
    memory.md shows the floor it will be judged on: its own spread in it, nothing said to be left out."""
    res, ses = tmp_path / "results.tsv", tmp_path / "sessions"
    for rid, v, fp, seed in (("a42", 1.0123456789123, "A", 42), ("a43", 1.0201234567, "A", 43),
                             ("a44", 1.0301, "A", 44)):
        record.append_run(res, ses, _row(rid, v, commit=rid), _entry(fp=fp, seed=seed, commit=rid))
    row = record.append_run(res, ses, _row("n42", 1.0123456789123, commit="n42"), _entry(fp="N", seed=42, commit="n42"))
    index = ledger.read_index(ses)
    assert row["status"] == "discard" and index["n42"]["decision"]["reason"].startswith("a copy of the best: seed 42")
    pending = dict(TRIAL, U=[(42, 2.275893, "confirm"), (43, 2.359479, "confirm")])     # U waits for a third seed
    text = _trial_ledger(tmp_path / "r2.tsv", tmp_path / "s2", "AMWU", pending)
    assert "left out as unstable" not in text and "from 11 runs of 4 configuration(s) under several seeds (dof 7)" in text
