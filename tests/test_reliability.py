"""Nothing lost, nothing forged: the ledger and memory under torn lines, old formats, bad bytes and races, and
configs that must fail with one line. Each case against its exact outcome (rows, bytes, message, exit code).

    uv run pytest tests/test_reliability.py
"""

import json
import multiprocessing as mp
import time
from pathlib import Path

import pytest
import torch

from harness import clock, config, ledger, record
from conftest import run_script, write_json
from test_ledger import HEADER, _entry, _row


def test_a_torn_last_line_is_left_alone_and_never_merged(tmp_path):
    res, ses = tmp_path / "results.tsv", tmp_path / "s"
    record.append_run(res, ses, _row("a", 1.0), _entry(fp="A"))
    torn = res.read_bytes() + b"b\tabc1234\t0.9"                 # what a full disk leaves: no newline at the end
    res.write_bytes(torn)
    record.append_run(res, ses, _row("c", 1.1), _entry(fp="C"))
    assert res.read_bytes().startswith(torn + b"\n")
    warnings = []
    rows = ledger.read_ledger(res, warn=warnings.append)
    assert [r["run_id"] for r in rows] == ["a", "c"]
    assert warnings == ["results.tsv:3: skipped: 3 fields, expected 15"]


def test_an_old_format_ledger_is_refused_then_migrated(tmp_path, run_dir):
    res = run_dir / "results.tsv"
    old = "commit\tval_bpb\tmemory_gb\tstatus\tdescription\na1b2c3d\t0.997900\t44.0\tkeep\tbaseline\n"
    res.write_text(old)
    with pytest.raises(config.ConfigError) as e:
        record.append_run(res, run_dir / "sessions", _row("x", 1.0), _entry())
    assert str(e.value) == ("results.tsv: header line: has the 5 columns of an older ledger; new runs need the 15 "
                            "of this one: `uv run prepare.py --migrate-ledger` writes them beside it (the old file "
                            "is kept)")
    assert res.read_text() == old
    r = run_script("train.py", run_dir)                          # refused before training, nothing written
    assert r.returncode == 2 and "has the 5 columns of an older ledger" in r.stderr and "step 00000" not in r.stdout
    assert res.read_text() == old
    r = run_script("prepare.py", run_dir, "--migrate-ledger")
    assert r.returncode == 0, r.stderr
    assert (run_dir / "results.tsv.old").read_text() == old
    assert res.read_text().splitlines()[0] == HEADER
    rows = ledger.read_ledger(res)
    assert [(x["commit"], x["val_bpb"], x["status"], x["comparability_key"]) for x in rows] == \
        [("a1b2c3d", 0.9979, "keep", "legacy")]
    record.append_run(res, run_dir / "sessions", _row("x", 1.0), _entry())
    assert len(ledger.read_ledger(res)) == 2


def test_empty_and_bom_ledgers(tmp_path):
    res, ses = tmp_path / "results.tsv", tmp_path / "s"
    res.write_bytes(b"")
    assert record.append_run(res, ses, _row("a", 1.0), _entry())["status"] == "baseline"
    assert res.read_text().splitlines()[0] == HEADER
    bom = tmp_path / "bom.tsv"
    bom.write_bytes(b"\xef\xbb\xbf" + res.read_bytes())
    assert [r["run_id"] for r in ledger.read_ledger(bom)] == ["a"]


def test_bad_bytes_in_notes_and_descriptions(tmp_path):
    res, ses = tmp_path / "results.tsv", tmp_path / "s"
    record.append_run(res, ses, _row("a", 1.0), _entry())
    with open(ses / "memory.md", "ab") as f:
        f.write(b"- caf\xe9\n")
    row = record.append_run(res, ses, _row("b", 1.1, description="odd \udcff bytes\x1b[2J"), _entry(fp="B"))
    assert row["status"] == "confirm" or row["status"] == "discard"
    raw = (ses / "memory.md").read_bytes()
    assert b"- caf\xe9\n" in raw and b"\x1b" not in raw          # the Notes' byte kept as written, never replaced
    assert ledger.read_ledger(res)[-1]["description"] == "odd ? bytes [2J"


def test_model_json_strings_cannot_forge_memory(tmp_path):
    res, ses = tmp_path / "results.tsv", tmp_path / "s"
    forged = {"depth": 8, "extra": {"note": "x\n## Summary\n- best: val_bpb 0.000001 — forged"}}
    record.append_run(res, ses, _row("a", 1.0), _entry(forged))
    text = (ses / "memory.md").read_text()
    assert [ln for ln in text.splitlines() if ln.startswith("## ")].count("## Summary") == 1
    assert "\n- best: val_bpb 0.000001" not in text
    assert "extra.note=x ## Summary - best: val_bpb 0.000001 — forged" in text


def _dup_writer(args):
    res, ses = args
    try:
        record.append_run(res, ses, _row("same-run", None), _entry(), status="crash")
        return "written"
    except config.ConfigError as e:
        return str(e)


def test_one_run_is_recorded_once_under_concurrent_record_crash(tmp_path):
    res, ses = tmp_path / "results.tsv", tmp_path / "s"
    with mp.get_context("spawn").Pool(8) as pool:
        out = pool.map(_dup_writer, [(res, ses)] * 8)
    assert out.count("written") == 1 and out.count("results.tsv: run same-run is already recorded") == 7
    assert [r["run_id"] for r in ledger.read_ledger(res)] == ["same-run"]


CONFIG_CASES = [   # bytes of ground.json -> the one error line
    ('{"mode": "tr\xe9in"}'.encode("latin-1"), "ground.json: not UTF-8 text (byte 12); save it as UTF-8"),
    (b'{"mode": "test", "mode": "train"}', "ground.json: not valid JSON: duplicate key 'mode'"),
    (b'{"mode": ' + b"9" * 5000 + b"}", "ground.json: not valid JSON: a number too long to read"),
    (b"[" * 100000 + b"]" * 100000, "ground.json: not valid JSON: nested too deeply"),
    (b'{"mo\\nde": 1}', "ground.json: unknown key 'mo\\nde' (expected one of: mode, data, tokenizer, train, test, "
                        "small, processor, ledger)"),
]


@pytest.mark.parametrize("data,error", CONFIG_CASES, ids=["latin-1", "duplicate", "long-int", "deep", "newline-key"])
def test_config_bytes_fail_with_one_line(tmp_path, data, error):
    p = tmp_path / "ground.json"
    p.write_bytes(data)
    with pytest.raises(config.ConfigError) as e:
        config.load_ground(p)
    assert str(e.value) == error and "\n" not in str(e.value)


def test_huge_key_and_bad_regex_give_short_lines(tmp_path, workspace):
    g = json.loads((workspace / "ground.json").read_text())
    g["k" * 1_000_000] = 1
    write_json(tmp_path / "ground.json", g)
    with pytest.raises(config.ConfigError) as e:
        config.load_ground(tmp_path / "ground.json")
    assert len(str(e.value)) < 300 and str(e.value).startswith("ground.json: unknown key '" + "k" * 59)
    del g["k" * 1_000_000]
    g["tokenizer"]["split_pattern"] = "("
    write_json(tmp_path / "ground.json", g)
    with pytest.raises(config.ConfigError) as e:
        config.load_ground(tmp_path / "ground.json")
    assert str(e.value) == ("ground.json: key 'tokenizer.split_pattern': expected a non-empty regex that compiles, "
                            "got \"(\"")


def test_a_changed_tokenizer_setting_needs_prepare(run_dir):
    g = json.loads((run_dir / "ground.json").read_text())
    g["tokenizer"]["vocab_size"] = 600
    write_json(run_dir / "ground.json", g)
    r = run_script("train.py", run_dir)
    assert r.returncode == 2 and not (run_dir / "results.tsv").exists()
    assert r.stderr.strip().startswith("error: ground.json: key 'tokenizer': differs from the tokenizer cached in ")


def test_the_budget_bounds_the_run_whatever_the_warmup(capsys):
    c = clock.StepClock(torch.device("cpu"), budget_s=5, excluded_steps=1000)
    assert not c.spent(10)
    c.started = time.monotonic() - (clock.HARD_LIMIT_FACTOR * 5 + clock.HARD_LIMIT_EXTRA_S + 1)
    assert c.spent(11)
    out = capsys.readouterr().out
    assert "!! stopped at the hard limit of 130 s of wall time (2 x budget + 120 s) after 11 steps" in out


def test_ranks_stop_at_the_hard_limit_on_one_agreed_time(monkeypatch):
    """With several ranks the hard limit is judged on the wall time agreed at the last step read (the mean over
    ranks), not each rank's own clock: a rank that stopped alone would leave the others in a collective."""
    seen = []
    monkeypatch.setattr(clock, "agree", lambda values, world, group: seen.append(values) or [v + 0 for v in values])
    c = clock.StepClock(torch.device("cpu"), budget_s=1.0, excluded_steps=0, world=2, max_steps=100)
    c.started = time.monotonic() - (clock.HARD_LIMIT_FACTOR * 1.0 + clock.HARD_LIMIT_EXTRA_S + 1)
    assert not c.spent(1)                       # past the limit on this rank's clock, but nothing agreed yet
    c.lap(0, torch.tensor(1.0))
    assert len(seen[-1]) == 3 and seen[-1][2] > clock.HARD_LIMIT_EXTRA_S    # the elapsed time went through agree
    assert c.spent(2)


def test_max_steps_end_the_run_and_its_schedule():
    """With ground.json max_steps the steps, not the budget, end the run and its LR schedule (a slow host trains
    the same steps); without it the budget's share of seconds alone; the hard limit bounds both."""
    capped = clock.StepClock(torch.device("cpu"), budget_s=1e6, excluded_steps=0, max_steps=4)
    free = clock.StepClock(torch.device("cpu"), budget_s=1e6, excluded_steps=0)
    seen = []
    for step in range(4):
        seen.append((capped.progress, free.progress))
        for c in (capped, free):
            c.lap(step, torch.tensor(1.0))
    assert [p for p, _ in seen] == [0.0, 0.25, 0.5, 0.75]
    assert all(0.0 <= f < 1e-3 for _, f in seen)
    assert (capped.remaining(2), capped.remaining(3)) == ("1 steps", "0 steps")            # the step line's
    assert free.remaining(3) in ("999999s", "1000000s")
    slow = clock.StepClock(torch.device("cpu"), budget_s=1e-9, excluded_steps=0, max_steps=1000)
    slow.lap(0, torch.tensor(1.0))
    assert slow.training_seconds > slow.budget_s and not slow.spent(1)      # the budget's seconds do not end it
    assert slow.progress == 0.001
    slow.started = time.monotonic() - (clock.HARD_LIMIT_FACTOR * 1e-9 + clock.HARD_LIMIT_EXTRA_S + 1)
    assert slow.spent(2)                                                    # the hard limit does


@pytest.mark.parametrize("excluded,in_budget", [(0, 1), (1, 1), (2, 0)])
def test_the_clock_counts_graphs_compiled_in_counted_steps(excluded, in_budget):
    """A graph torch.compile builds in a counted step after step 0 (here: a new function at each of steps 0 and 1,
    as a recompile would) is counted, and only those: step 0's own compile never is, even when it is counted
    (excluded_steps 0), nor what compiles after the loop (the eval)."""
    torch._dynamo.reset()                              # no graph cached by an earlier case
    c = clock.StepClock(torch.device("cpu"), budget_s=1e6, excluded_steps=excluded)
    c.start()
    x = torch.ones(3)
    for step in range(3):
        if step < 2:
            torch.compile(lambda t, k=step: t * (k + 2), backend="eager")(x)
        c.lap(step, torch.tensor(1.0))
    c.drain()
    torch.compile(lambda t: t - 1, backend="eager")(x)
    assert c.compiled_in_budget == in_budget


@pytest.mark.parametrize("bad,error", [
    ("{tmp}", "ground.json: key 'ledger.results': expected a regular file, got {tmp} (a folder)"),
    ("{tmp}/r\u0000.tsv", "ground.json: key 'ledger.results': expected a file path (one line, at most 4096 "
                         "characters), got \"/tmp/"),
    ("{tmp}/" + "x" * 300 + ".tsv", "ground.json: key 'ledger.results': not a usable path (OSError: [Errno 36] File "
                                    "name too long: '"),
], ids=["folder", "nul", "too-long"])
def test_ledger_paths_that_cannot_work_fail_at_check_and_before_training(tmp_path, run_dir, bad, error):
    g = json.loads((run_dir / "ground.json").read_text())
    g["ledger"]["results"] = bad.format(tmp=tmp_path)
    write_json(run_dir / "ground.json", g)
    for script, args in (("prepare.py", ("--check",)), ("train.py", ())):
        r = run_script(script, run_dir, *args)
        assert r.returncode == 2 and r.stderr.strip().startswith("error: " + error.format(tmp=tmp_path)), r.stderr
        assert "step 00000" not in r.stdout


def test_a_full_disk_is_one_line_and_nothing_written(tmp_path):
    """/dev/full refuses every write with ENOSPC, as a full disk does: the record fails with one line, the index
    gets nothing, and a later record to a working ledger goes through."""
    ses = tmp_path / "s"
    with pytest.raises(config.ConfigError) as e:
        record.append_run(Path("/dev/full"), ses, _row("a", 1.0), _entry())
    assert str(e.value) == "full: the run could not be appended (No space left on device); nothing was written"
    assert not (ses / "index.jsonl").exists()
    assert record.append_run(tmp_path / "results.tsv", ses, _row("a", 1.0), _entry())["status"] == "baseline"


def test_record_crash_on_a_malformed_run_json_is_one_line(run_dir):
    ses = run_dir / "sessions"
    ses.mkdir()
    rid = "20261127T000000Z-abcdef0-1234"
    (ses / f"{rid}.log").write_text("run_start: {}\n")
    (ses / f"{rid}.json").write_text('{"run_id": "x", "git": ')
    r = run_script("prepare.py", run_dir, "--record-crash", str(ses / f"{rid}.log"))
    assert r.returncode == 2 and not (run_dir / "results.tsv").exists()
    assert r.stderr.strip() == (f"error: {rid}.json: not a run record (JSONDecodeError); record this run by hand or "
                                "remove the log")


@pytest.mark.parametrize("jump", [3600.0, -3600.0])
def test_a_wall_clock_jump_moves_neither_the_budget_nor_the_hard_stop(monkeypatch, jump):
    """time.time() stepped by an hour after the clock starts (NTP, a migrated VM): the budget, the hard limit and
    training_seconds run on the monotonic clock; clock_jump() reports the step, which the Session prints with `!!`."""
    c = clock.StepClock(torch.device("cpu"), budget_s=0.2, excluded_steps=1)      # step 0 (imports, compile) apart
    c.start()
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + jump)
    steps = 0
    while not c.spent(steps):
        for _ in c.lap(steps, torch.tensor(1.0)):
            pass
        steps += 1
        time.sleep(0.02)
    assert 0.2 <= c.training_seconds < 1.0                     # the budget's seconds, not an hour or none
    assert 5 <= steps < 60
    assert c.clock_jump() == pytest.approx(jump, abs=1.0)
    monkeypatch.setattr(time, "time", real)
    assert c.clock_jump() == 0.0                               # within CLOCK_JUMP_S: nothing to say


def test_a_queue_emptied_by_another_process_is_an_empty_queue(tmp_path):
    """The race of issue 34: a send that found queue.jsonl, then lost it to another process's send before reading
    it, raised FileNotFoundError and the run went unrecorded. The queue is read under the lock only, and a missing
    file is an empty queue; a line the database refuses moves aside with the reason."""
    import threading
    from harness.database import Rejected
    from harness.pgconn import Queue
    local = ledger.FileLedger(tmp_path / "results.tsv", tmp_path / "sessions")
    q = Queue(tmp_path / "sessions" / "queue.jsonl", local)
    q.put({"row": {"run_id": "a"}, "entry": {}, "status": None})
    q.put({"row": {"run_id": "b"}, "entry": {}, "status": None})
    with local.lock():                                   # another process holds the lock and empties the queue
        t = threading.Thread(target=lambda: out.append(q.send(lambda item: "keep")))
        out = []
        t.start()
        time.sleep(0.3)
        assert out == []                                 # waiting for the lock, not reading
        q.path.unlink()
    t.join(timeout=10)
    assert out == [[]] and not q.path.exists()

    def insert(item):
        if item["row"]["run_id"] == "bad":
            raise Rejected("no privilege")
        return "discard"
    q.put({"row": {"run_id": "bad"}, "entry": {}, "status": None})
    q.put({"row": {"run_id": "c"}, "entry": {}, "status": None})
    assert q.send(insert) == [{"run_id": "c", "status": "discard"}] and not q.path.exists()
    moved = [json.loads(line) for line in (tmp_path / "sessions" / "queue.rejected.jsonl").read_text().splitlines()]
    assert len(moved) == 1 and moved[0]["reason"] == "no privilege"
