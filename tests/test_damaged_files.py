"""Harness-written files damaged (issue 34, round 2): each one set aside with one line, never a traceback, and the
next run or digest still written; --restore and --record-crash take only what the ledger writes.

    uv run pytest tests/test_damaged_files.py
"""

import json

import pytest

from harness import checked, ledger, record
from conftest import run_script
from test_ledger import _entry, _row

RID = "20261207T000000Z-abcdef0-00000001"


def _ledger_with_two_runs(run_dir):
    store = ledger.FileLedger(run_dir / "results.tsv", run_dir / "sessions")
    record.append_run(store.results, store.sessions, _row("20261207T000000Z-abcdef0-0a", 1.0), _entry(fp="A"))
    record.append_run(store.results, store.sessions, _row("20261207T000000Z-abcdef0-0b", 1.1), _entry(fp="B"))
    return store


@pytest.mark.parametrize("field, value", [("model", "notadict"), ("git", "abc"), ("launch", {"env": []}),
                                          ("seed", "42"), ("curve", {"a": 1})])
def test_a_damaged_run_record_is_recorded_as_a_crash_and_the_memory_goes_on(run_dir, field, value):
    store = _ledger_with_two_runs(run_dir)
    rec = {"run_id": RID, "status": "running", "git": {"commit": "abcdef0"}, "seed": 42, field: value}
    (store.sessions / f"{RID}.json").write_text(json.dumps(rec))
    (store.sessions / f"{RID}.log").write_text("step 00001 | loss 9.0\nKilled\n")
    r = run_script("prepare.py", run_dir, "--record-crash", str(store.sessions / f"{RID}.log"))
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    shown = f"{field}.env" if field == "launch" else field
    assert f"!! {RID}.json: key '{shown}'" in r.stdout and "set aside" in r.stdout
    rows, index = store.read()
    assert [x["status"] for x in rows][-1] == "crash" and rows[-1]["run_id"] == RID and store.damage == []
    assert json.loads((store.sessions / f"{RID}.json").read_text())[field] == value     # the file keeps what it had
    m = run_script("prepare.py", run_dir, "--memory")
    assert m.returncode == 0 and "Traceback" not in m.stderr


def test_a_damaged_index_line_is_one_line_in_memory_md_and_the_rest_is_read(run_dir):
    store = _ledger_with_two_runs(run_dir)
    with open(store.sessions / "index.jsonl", "a") as f:
        f.write(json.dumps({"run_id": "20261207T000000Z-abcdef0-0c", "model": "notadict", "seed": 43}) + "\n")
        f.write("[1, 2]\n{not json\n")
    index = ledger.read_index(store.sessions, damage := [])
    assert index["20261207T000000Z-abcdef0-0c"] == {"run_id": "20261207T000000Z-abcdef0-0c", "seed": 43}
    assert damage == ["index.jsonl:3: key 'model' is \"notadict\", not what the harness writes: that field set aside",
                      "index.jsonl:4: not a JSON object (list): set aside", "index.jsonl:5: not JSON: set aside"]
    m = run_script("prepare.py", run_dir, "--memory")
    assert m.returncode == 0 and m.stdout.count("!! damaged entry: index.jsonl:") == 3
    memory = (store.sessions / "memory.md").read_text()
    assert "!! damaged entry: index.jsonl:3: key 'model' is \"notadict\"" in memory
    assert "## Best configuration" in memory or "best:" in memory


@pytest.mark.parametrize("claim", [{"run_id": "x", "expires": 9e99}, {"run_id": "x", "started": "soon", "expires": 9e99},
                                   {"started": 1.0, "expires": 9e99}, "text"])
def test_a_damaged_claim_is_set_aside(tmp_path, claim):
    store = ledger.FileLedger(tmp_path / "results.tsv", tmp_path / "sessions")
    good = {"run_id": "y", "started": 1.0, "expires": 9e99, "host": "h"}
    store.claims_path.write_text(json.dumps(claim) + "\n" + json.dumps(good) + "\n")
    assert [c["run_id"] for c in store.claims(2.0)] == ["y"]


@pytest.mark.parametrize("name", ["sessions/memory.md", "sessions/index.jsonl", "results.tsv.claims"])
def test_a_folder_where_the_harness_writes_a_file_is_one_line(run_dir, name):
    _ledger_with_two_runs(run_dir)
    (run_dir / name).unlink(missing_ok=True)
    (run_dir / name).mkdir()
    for args in (["--memory"], ["--check"]):
        r = run_script("prepare.py", run_dir, *args)
        assert (r.returncode, r.stderr.strip()) == (2, f"error: {run_dir / name}: is a folder where the harness "
                                                       f"writes a file; move it away")


@pytest.mark.parametrize("arg", ["../../evil", "/etc/passwd", "20261207T000000Z-abc/../x-00", "", "  "])
def test_restore_takes_only_a_run_id(run_dir, arg):
    (run_dir / "sessions").mkdir()
    evil = run_dir.parent / "evil.json"
    evil.write_text(json.dumps({"files": {"model.json": "{}", "train.py": "print('owned')\n"}}))
    r = run_script("prepare.py", run_dir, "--restore", arg)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert "expected a run id" in r.stderr or "expected a value" in r.stderr


@pytest.mark.parametrize("files, why", [({"model.json": '{"depth": "eight"}', "train.py": "x = 1\n"},
                                         "its recorded model.json: key 'depth'"),
                                        ({"model.json": "{not json", "train.py": "x = 1\n"}, "its recorded model.json"),
                                        ({"model.json": 1, "train.py": 2}, "the record's files are damaged")])
def test_restore_validates_the_recorded_files_before_writing(run_dir, files, why):
    (run_dir / "sessions").mkdir()
    (run_dir / "sessions" / f"{RID}.json").write_text(json.dumps({"run_id": RID, "files": files}))
    before = (run_dir / "model.json").read_text()
    r = run_script("prepare.py", run_dir, "--restore", RID)
    assert r.returncode == 2 and why in r.stderr and "nothing was written" in r.stderr, r.stderr
    assert (run_dir / "model.json").read_text() == before


@pytest.mark.parametrize("arg", ["", "../x.log", "/tmp/elsewhere/20261207T000000Z-abcdef0-00000001.log"])
def test_record_crash_takes_only_a_log_in_the_sessions_folder(run_dir, tmp_path, arg):
    (run_dir / "sessions").mkdir()
    r = run_script("prepare.py", run_dir, "--record-crash", arg)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and not (run_dir / "results.tsv").exists()


def test_the_run_id_pattern_is_the_one_runs_get():
    assert checked.RUN_ID.fullmatch("20261207T101539Z-d8efdd3-741b1a92")
    assert not checked.RUN_ID.fullmatch("20261207T101539Z-d8e/../x-741b1a92")


@pytest.mark.slow
@pytest.mark.parametrize("when", ["training", "recording"])
def test_a_process_group_ctrl_c_twice_is_one_interrupted_row(run_dir, when):
    """What a terminal's Ctrl-C and `timeout` do: SIGINT to the whole process group, twice. The handler writes
    through fresh streams (the signal may come inside a write to the log), and a second signal while recording is
    ignored: one `interrupted` row, no traceback in the log, and `next:` runs the commit again."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from conftest import REPO
    g = json.loads((run_dir / "ground.json").read_text())
    g["test"]["time_budget_s"] = 60 if when == "training" else 2
    (run_dir / "ground.json").write_text(json.dumps(g))
    env = dict(os.environ, AUTORESEARCH_GROUND=str(run_dir / "ground.json"),
               AUTORESEARCH_MODEL=str(run_dir / "model.json"), PYTHONUNBUFFERED="1")
    p = subprocess.Popen([sys.executable, str(REPO / "train.py")], cwd=run_dir, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, start_new_session=True)
    marker = "step 00002" if when == "training" else "eval"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        logs = list((run_dir / "sessions").glob("*.log")) if (run_dir / "sessions").exists() else []
        if logs and marker in logs[0].read_text(errors="replace"):
            break
        time.sleep(0.02)
    os.killpg(p.pid, signal.SIGINT)
    time.sleep(0.01)
    os.killpg(p.pid, signal.SIGINT)
    out, _ = p.communicate(timeout=120)
    rows = ledger.read_ledger(run_dir / "results.tsv")
    log = next((run_dir / "sessions").glob("*.log")).read_text(errors="replace")
    assert len(rows) == 1 and "Traceback" not in log and "reentrant" not in log, out[-3000:]
    if rows[0]["status"] == "interrupted":       # recording had not begun: the interrupt is the outcome
        assert p.returncode == 130 and "next: " in out and "uv run train.py" in out.split("next: ")[-1]
    else:                                        # it had: the run's own outcome stands, recorded once
        assert when == "recording" and rows[0]["status"] == "baseline" and p.returncode in (0, 130)


@pytest.mark.parametrize("notes", [b"\xef\xbb\xbf## Notes\n- after a BOM\n", b"## notes\n- lower case\n",
                                   b"### Notes\n- level 3\n", b"## Notes\n- caf\xe9 in Latin-1\n\x00 and a NUL\n"])
def test_the_notes_are_kept_byte_for_byte_whatever_their_header(tmp_path, notes):
    res, ses = tmp_path / "results.tsv", tmp_path / "s"
    record.append_run(res, ses, _row("20261207T000000Z-abcdef0-0a", 1.0), _entry())
    memory = ses / "memory.md"
    memory.write_bytes(memory.read_bytes().split(b"## Notes")[0] + notes)
    for _ in range(2):                                   # regenerated twice: the same bytes, one header
        record.append_run(res, ses, _row(f"20261207T00000{_}Z-abcdef0-0b", 1.1), _entry(fp=f"B{_}"))
        raw = memory.read_bytes()
        assert raw.endswith(b"\n" + notes) and raw.lower().count(b"notes\n") == 1


def test_a_memory_md_without_its_notes_header_is_kept_whole_beside_it(tmp_path, capsys):
    res, ses = tmp_path / "results.tsv", tmp_path / "s"
    record.append_run(res, ses, _row("20261207T000000Z-abcdef0-0a", 1.0), _entry())
    memory = ses / "memory.md"
    old = memory.read_bytes().split(b"## Notes")[0] + b"my plan: try a deeper model\n"
    memory.write_bytes(old)
    record.append_run(res, ses, _row("20261207T000000Z-abcdef0-0b", 1.1), _entry(fp="B"))
    assert (ses / "memory.notes-lost.md").read_bytes() == old
    assert "!! memory.md had no Notes header" in capsys.readouterr().out and b"## Notes" in memory.read_bytes()


def test_migrate_without_a_ledger_is_one_line(run_dir):
    r = run_script("prepare.py", run_dir, "--migrate-ledger")
    assert (r.returncode, r.stderr.strip()) == (2, f"error: --migrate-ledger: no ledger to migrate at "
                                                   f"{run_dir / 'results.tsv'} (ground.json ledger.results)")


@pytest.mark.parametrize("device", ["/dev/full", "/dev/null"])
def test_a_ledger_that_cannot_hold_rows_fails_at_check(run_dir, device):
    g = json.loads((run_dir / "ground.json").read_text())
    g["ledger"]["results"] = device
    (run_dir / "ground.json").write_text(json.dumps(g))
    r = run_script("prepare.py", run_dir, "--check")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "ledger.results" in r.stderr, r.stderr


def test_a_hand_added_row_is_unverified_and_never_the_best(tmp_path):
    store = ledger.FileLedger(tmp_path / "results.tsv", tmp_path / "sessions")
    record.append_run(store.results, store.sessions, _row("20261207T000000Z-abcdef0-0a", 1.0), _entry(fp="A"))
    record.append_run(store.results, store.sessions, _row("20261207T000000Z-abcdef0-0b", 1.01, status="repeat"),
                      _entry(fp="A", seed=43))
    with open(store.results, "a") as f:                      # a well-formed row, forged by hand: no run record
        f.write(ledger.ledger_line(_row("20261207T000000Z-abcdef0-ff", 0.1, status="keep")))
    rows, index = store.read()
    assert [r["status"] for r in rows] == ["baseline", "repeat", "unverified"]
    assert store.damage == ["results.tsv: 1 row(s) with no run record in index.jsonl (hand-added, or killed between "
                            "row and record): shown as unverified, never a best"]
    row = record.append_run(store.results, store.sessions, _row("20261207T000000Z-abcdef0-0c", 0.99),
                            _entry(fp="B"))
    assert row["status"] == "confirm"                       # better than the real best (1.005); against 0.1: discard
    memory = (store.sessions / "memory.md").read_text()
    assert "best: val_bpb 1.005000" in memory and "0.100000" not in memory.split("## Recent")[0]
    assert "!! damaged entry: results.tsv: 1 row(s) with no run record" in memory


@pytest.mark.parametrize("same", [True, False])
def test_a_run_killed_between_its_row_and_its_index_line_is_reconciled_from_its_record(tmp_path, same):
    store = ledger.FileLedger(tmp_path / "results.tsv", tmp_path / "sessions")
    record.append_run(store.results, store.sessions, _row("20261207T000000Z-abcdef0-0a", 1.0), _entry(fp="A"))
    rid = "20261207T000000Z-abcdef0-0b"
    row = _row(rid, 1.01, status="repeat")
    (store.sessions / f"{rid}.json").write_text(json.dumps({
        "run_id": rid, "status": "running", "row": dict(row, val_bpb=1.01 if same else 0.5),
        "index_entry": _entry(fp="A", seed=43)}))
    with open(store.results, "a") as f:                      # the row landed; the kill came before index.jsonl
        f.write(ledger.ledger_line(row))
    rows, index = store.read()
    if same:
        assert rows[-1]["status"] == "repeat" and index[rid]["fingerprint"] == "A" and index[rid]["seed"] == 43
        assert store.damage == []
    else:                                                     # the record disagrees on val_bpb: not believed
        assert rows[-1]["status"] == "unverified" and rid not in index


def test_a_disk_full_after_the_row_says_recorded(tmp_path, monkeypatch, capsys):
    store = ledger.FileLedger(tmp_path / "results.tsv", tmp_path / "sessions")

    def full(*a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(record, "write_memory", full)
    row = record.append_run(store.results, store.sessions, _row("20261207T000000Z-abcdef0-0a", 1.0), _entry())
    assert row["status"] == "baseline" and len(ledger.read_ledger(store.results)) == 1
    assert "!! recorded; memory.md could not be written: OSError: [Errno 28] No space left on device" in \
        capsys.readouterr().out


@pytest.mark.slow
def test_a_shortened_description_says_so_and_keeps_its_full_text(run_dir):
    text = "try a deeper model | with " + "x" * 300 + "\nand a second line"
    r = run_script("train.py", run_dir, "--description", text)
    assert r.returncode == 0, r.stderr[-2000:]
    (row,) = ledger.read_ledger(run_dir / "results.tsv")
    rec = json.loads((run_dir / "sessions" / f"{row['run_id']}.json").read_text())
    assert len(row["description"]) == 200 and "|" not in row["description"] and rec["description_full"] == text
    assert "!! the description was shortened or cleaned for the ledger" in r.stdout


def test_json_nested_past_the_parser_is_a_damaged_line(run_dir):
    """tests/bench/fuzz_files.py found it: json.loads raises RecursionError, not ValueError, on deep nesting."""
    store = _ledger_with_two_runs(run_dir)
    with open(store.sessions / "index.jsonl", "a") as f:
        f.write("[" * 100000 + "]" * 100000 + "\n")
    index = ledger.read_index(store.sessions, damage := [])
    assert len(index) == 2 and damage == ["index.jsonl:3: not JSON: set aside"]
    m = run_script("prepare.py", run_dir, "--memory")
    assert m.returncode == 0 and "Traceback" not in m.stderr


def test_record_crash_with_the_ledger_a_folder_is_one_line(run_dir):
    (run_dir / "sessions").mkdir()
    (run_dir / "results.tsv").mkdir()
    (run_dir / "sessions" / f"{RID}.json").write_text(json.dumps({"run_id": RID, "status": "running"}))
    (run_dir / "sessions" / f"{RID}.log").write_text("Killed\n")
    r = run_script("prepare.py", run_dir, "--record-crash", str(run_dir / "sessions" / f"{RID}.log"))
    assert (r.returncode, r.stderr.strip()) == (2, f"error: ground.json: key 'ledger.results': expected a regular "
                                                   f"file, got {run_dir / 'results.tsv'} (a folder)")


def test_a_claim_of_a_recorded_run_is_neither_running_nor_lost(tmp_path, capsys):
    """A SIGKILL after the row (before the claim was dropped): the next start does not say the run ended without
    a record, and memory.md does not list it as running."""
    from harness.ledger import process_claim
    store = ledger.FileLedger(tmp_path / "results.tsv", tmp_path / "sessions")
    rid = "20261207T000000Z-abcdef0-0a"
    record.append_run(store.results, store.sessions, _row(rid, 1.0), _entry())
    store.claim(dict(run_id=rid, started=1.0, expires=9e99, host="h", log="x.log", record=str(tmp_path / "none.json"),
                     **process_claim("h")))
    from harness import memory
    memory.write_memory(store, now=2.0)
    text = (store.sessions / "memory.md").read_text()
    assert "Running now" not in text and rid in text
