"""The ledger backends against each other, and the shared one against a real PostgreSQL server the tests start:
the keep rule and claims on both backends (one suite); 8 processes with a server restart; an unreachable server;
bad credentials; two agents on one database seeing each other's run in flight.

    uv run pytest tests/test_shared_ledger.py
"""

import json
import multiprocessing as mp
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from harness import config, database, ledger, memory, record
from conftest import REPO, run_script, write_json
from test_ledger import SCENARIO, _entry, _row


def _pg_store(postgres, tmp_path, name, host=None):
    local = ledger.FileLedger(tmp_path / "results.tsv", tmp_path / "sessions")
    return database.PostgresLedger(postgres.new_database(name) if host is None else name, local)


@pytest.fixture(params=["file", "postgres"])
def store(request, tmp_path):
    """The same interface over a file ledger or a fresh PostgreSQL database (with its local mirror)."""
    local = ledger.FileLedger(tmp_path / "results.tsv", tmp_path / "sessions")
    if request.param == "file":
        return local
    pg = request.getfixturevalue("postgres")
    return database.PostgresLedger(pg.new_database(re.sub(r"\W", "_", request.node.name)[-50:]), local)


def test_both_backends_follow_the_keep_rule(store):
    got = [record.append_run(store.results, store.sessions, _row(rid, v, key), _entry(fp=fp, seed=seed),
                         store=store)["status"] for rid, v, key, fp, seed, _ in SCENARIO]
    assert got == [s for *_, s in SCENARIO]
    rows, index = store.read()
    assert [r["run_id"] for r in rows] == [rid for rid, *_ in SCENARIO]
    assert [r["status"] for r in rows] == got and rows[-1]["val_bpb"] is None
    assert index["j"]["fingerprint"] == "C" and index["j"]["seed"] == 44
    mirror = ledger.read_ledger(store.results)                  # the machine's results.tsv: the same rows
    assert [(r["run_id"], r["status"], r["val_bpb"]) for r in mirror] == [(r["run_id"], r["status"], r["val_bpb"])
                                                                         for r in rows]
    digest = (store.sessions / "memory.md").read_text()
    assert "- best: val_bpb 0.800000 (mean of 3 seeds) — j (000000j) — desc j" in digest
    assert "- noise floor: sigma 0.009354 from 9 runs of 3 configuration(s) under several seeds (dof 6)" in digest


def test_both_backends_flag_reruns_and_keep_crashes_out_of_the_scores(store):
    rec = lambda rid, v, fp, seed, status=None: record.append_run(    # noqa: E731
        store.results, store.sessions, _row(rid, v), _entry(fp=fp, seed=seed, error="OOM" if status else None),
        status, store=store)["status"]
    assert [rec("a", 1.0, "A", 42), rec("b", 0.5, "A", 43), rec("c", 0.4, "A", 42)] == ["baseline", "repeat", "rerun"]
    assert rec("d", 0.1, "B", 42, status="crash") == "crash"
    rows, index = store.read()
    assert rows[-1]["val_bpb"] is None and index["d"]["error"] == "OOM"
    digest = (store.sessions / "memory.md").read_text()
    assert "- best: val_bpb 0.750000 (mean of 2 seeds) — a (000000a) — desc a" in digest   # the rerun left out
    assert "| d | crash | — |" in digest


def _claim(run_id, fp, host, now, key="k1", **kw):
    return {"run_id": run_id, "fingerprint": fp, "host": host, "branch": "autoresearch/gpu0", "seed": 42,
            "comparability_key": key, "description": f"try {fp}", "model": {"depth": 10, "matrix_lr": 0.04},
            "started": now, "expires": now + 900, **kw}


def test_both_backends_keep_claims_until_recorded_or_expired(store):
    now = 1_800_000_000.0
    record.append_run(store.results, store.sessions, _row("base", 1.0), _entry(fp="A"), store=store)
    store.claim(_claim("r1", "B", "host-a", now))
    store.claim(_claim("r2", "A", "host-b", now + 60))                   # a configuration already recorded
    store.claim(_claim("old", "C", "host-c", now - 2000, expires=now - 1))     # its machine died: expired
    assert [c["run_id"] for c in store.claims(now + 120)] == ["r1", "r2"]
    memory.write_memory(store, now=now + 120)
    digest = (store.sessions / "memory.md").read_text()
    lines = digest.split("## Running now")[1].split("\n## ")[0].splitlines()
    assert lines[1] == ("- host-a/autoresearch/gpu0 — 2 min — try B — configuration B, seed 42 — vs the best: "
                        "depth: 8 -> 10")
    assert lines[3] == "  - !! already recorded: 1 run(s), this seed base (baseline, 1.000000); it will be a `rerun`"
    assert "host-c" not in digest
    record.append_run(store.results, store.sessions, _row("r1", 0.99), _entry(fp="B"), store=store)
    assert [c["run_id"] for c in store.claims(now + 120)] == ["r2"]       # recorded: its claim is gone
    # another agent's branch: each branch is told its own commit to return to
    record.append_run(store.results, store.sessions, _row("g1", 0.98), _entry(fp="G", branch="autoresearch/gpu1"),
                  store=store)
    h = "" if isinstance(store, ledger.FileLedger) else f"{database.host_name()}/"   # the database adds the host
    assert (f"- commit to return to after a discard or a crash, by agent: {h}autoresearch/gpu1: `git reset --hard "
            f"000base`; {h}main: `git reset --hard 000base`") in (store.sessions / "memory.md").read_text()


def test_a_run_killed_outright_here_is_not_shown_as_running(store, tmp_path):
    """A run killed with SIGKILL leaves its claim behind; on the machine that made it (its boot and PID namespace,
    whatever the host names), its ended process shows: memory.md says it ended without a record, with the command
    that records it, and does not count it as a configuration in flight. Live processes, a pid reused by another
    process, another machine's claims, and a run recorded (or queued) after all are judged as before."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    now, here = time.time(), database.host_name()
    me = ledger.process_claim(here)
    running, recorded = tmp_path / "running.json", tmp_path / "recorded.json"
    running.write_text('{"status": "running"}')
    recorded.write_text('{"status": "baseline"}')
    killed = dict(me, pid=dead.pid, record=str(running), log="/logs/killed.log")
    store.claim(_claim("killed", "B", "agent-gpu0", now - 120, **killed))
    store.claim(_claim("alive", "B", "agent-gpu1", now - 60, **me, record=str(running)))
    store.claim(_claim("elsewhere", "C", here, now - 30, **dict(killed, machine="another machine")))
    assert [ledger.claim_state(c, here) for c in store.claims(now)] == ["gone", "alive", "unknown"]
    assert ledger.claim_state(dict(killed, record=str(recorded)), here) == "unknown"   # queued, not killed
    if me["pid_start"] is not None:                                                     # Linux: the pid reused
        assert ledger.claim_state(dict(me, pid_start=me["pid_start"] - 1, record=str(running)), here) == "gone"
    memory.write_memory(store, now=now)
    lines = (store.sessions / "memory.md").read_text().split("## Running now")[1].split("\n## ")[0].splitlines()
    assert lines[1].startswith("- agent-gpu0/autoresearch/gpu0 — 2 min — try B — configuration B, seed 42")
    assert lines[2] == ("  - its process ended without a record; its agent (agent-gpu0/autoresearch/gpu0) records it: "
                        "`uv run prepare.py --record-crash /logs/killed.log`")         # whose, on a shared machine
    assert lines[3].startswith("- agent-gpu1/autoresearch/gpu0 — 1 min — try B")
    assert lines[4].startswith(f"- {here}/autoresearch/gpu0 — 0 min — try C") and len(lines) == 5  # no duplicate


def test_each_agent_returns_to_a_commit_its_own_checkout_has(tmp_path):
    """Hosts do not share commits: an agent is sent back to a kept commit of its own host and branch (a re-run of
    a kept configuration counts, e.g. after --restore), never to another host's; with none, to --restore."""
    from harness.nextstep import next_step
    st = ledger.FileLedger(tmp_path / "results.tsv", tmp_path / "sessions")
    rec = lambda rid, v, fp, seed, host, commit: record.append_run(   # noqa: E731
        st.results, st.sessions, _row(rid, v, commit=commit),
        _entry(fp=fp, seed=seed, host=host, branch="autoresearch/gpu0", commit=commit), store=st)
    rec("base", 1.0, "A", 42, "h1", "c1base")
    assert rec("h2first", 1.01, "A", 43, "h2", "c2first")["status"] == "repeat"    # h2 starts from the same files
    assert rec("h3try", 1.2, "B", 42, "h3", "c3try")["status"] == "discard"
    text = (st.sessions / "memory.md").read_text()
    assert ("- commit to return to after a discard or a crash, by agent: h1/autoresearch/gpu0: `git reset --hard "
            "c1base`; h2/autoresearch/gpu0: `git reset --hard c2first`; h3/autoresearch/gpu0: nothing kept there yet "
            "(`uv run prepare.py --restore <run_id>` builds on a kept run)") in text
    rows, index = st.read()
    os.environ["AUTORESEARCH_HOST"] = "h3"
    try:
        assert next_step(rows[-1], rows, index, "autoresearch/gpu0") == (
            "return to the commit you started from with `git reset --hard` (nothing kept in this key on this host "
            "yet; to build on the best: uv run prepare.py --restore base)")
    finally:
        os.environ.pop("AUTORESEARCH_HOST")


# ---------------------------------------------------------------------------
# PostgreSQL only: several processes, a restart, an unreachable server, bad credentials
# ---------------------------------------------------------------------------

def _writer(args):
    url, folder, proc = args
    os.environ["AUTORESEARCH_HOST"] = f"host-{proc}"
    store = database.PostgresLedger(url, ledger.FileLedger(folder / "results.tsv", folder / "sessions"))
    for i in range(25):
        record.append_run(store.results, store.sessions, _row(f"p{proc}-r{i:02d}", 1.0 + proc * 0.01 + i * 1e-4),
                      _entry({"depth": proc, "matrix_lr": i / 100}, fp=f"fp{proc}-{i}", seed=42), store=store)
        time.sleep(0.05)
    return proc


@pytest.mark.slow
def test_eight_processes_and_a_server_restart_lose_and_double_nothing(postgres, tmp_path):
    url = postgres.new_database("eight")
    folders = [tmp_path / f"machine{p}" for p in range(8)]
    with mp.get_context("spawn").Pool(8) as pool:
        done = pool.map_async(_writer, [(url, f, p) for p, f in enumerate(folders)])
        import psycopg
        before = 0
        for _ in range(600):                         # restart once the database holds some rows
            time.sleep(0.1)
            with psycopg.connect(url) as conn:
                if conn.execute(f"SELECT to_regclass('{database.RUNS}')").fetchone()[0]:
                    before = conn.execute(f"SELECT count(*) FROM {database.RUNS}").fetchone()[0]
                    if before >= 40:
                        break
        postgres.restart()
        assert 40 <= before < 200                    # the writers were mid-way
        assert sorted(done.get(timeout=600)) == list(range(8))
    stores = [database.PostgresLedger(url, ledger.FileLedger(f / "results.tsv", f / "sessions")) for f in folders]
    for st in stores:                                # what the restart left queued, sent once
        st.send_queued()
        assert not st.queue_path.exists()
    rows, index = stores[0].read()
    assert len(rows) == 200 and len({r["run_id"] for r in rows}) == 200
    assert {index[r["run_id"]]["host"] for r in rows} == {f"host-{p}" for p in range(8)}
    for p, st in enumerate(stores):                  # every machine's results.tsv holds its own 25 runs, whole
        local = ledger.read_ledger(st.results)
        assert sorted(r["run_id"] for r in local) == [f"p{p}-r{i:02d}" for i in range(25)]
        assert all(len(line.split("\t")) == len(ledger.LEDGER_COLUMNS)
                   for line in st.results.read_text().splitlines())
    digests = set()
    for st in stores:
        memory.write_memory(st, now=1_800_000_000.0)
        digests.add((st.sessions / "memory.md").read_text())
    assert len(digests) == 1 and "200 runs" in digests.pop()           # the same digest on every machine


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_server_queues_the_run_and_sends_it_once(postgres, tmp_path, capsys):
    url = postgres.new_database("offline")
    local = ledger.FileLedger(tmp_path / "results.tsv", tmp_path / "sessions")
    down = database.PostgresLedger(f"postgresql://agent:x@127.0.0.1:{_free_port()}/offline", local)
    assert record.append_run(local.results, local.sessions, _row("a", 1.0), _entry(fp="A"), store=down)["status"] == \
        "baseline"                                                       # decided against the local ledger
    assert "did not take the run" in capsys.readouterr().out
    assert [json.loads(x)["row"]["run_id"] for x in down.queue_path.read_text().splitlines()] == ["a"]
    assert "the shared ledger could not be read" in (local.sessions / "memory.md").read_text()
    up = database.PostgresLedger(url, local)
    # the queue goes first, then the new run: both in the database, in order, once
    record.append_run(local.results, local.sessions, _row("b", 1.01), _entry(fp="A", seed=43), store=up)
    assert [(r["run_id"], r["status"]) for r in up.read()[0]] == [("a", "baseline"), ("b", "repeat")]
    assert not up.queue_path.exists() and up.send_queued() == []
    # an answer lost after the commit: the queue still holds a run the database has; sending it again adds nothing
    up.queue_path.write_text(json.dumps({"row": _row("b", 1.01), "entry": _entry(fp="A", seed=43),
                                         "status": None}) + "\n")
    assert [r["status"] for r in up.send_queued()] == ["repeat"]
    assert len(up.read()[0]) == 2 and len(ledger.read_ledger(local.results)) == 2


def test_bad_credentials_are_one_line_and_lose_nothing(postgres, tmp_path, run_dir):
    postgres.new_database("creds")
    local = ledger.FileLedger(tmp_path / "api" / "results.tsv", tmp_path / "api" / "sessions")
    bad = database.PostgresLedger(postgres.url("creds", password="wrong"), local)
    with pytest.raises(config.ConfigError) as e:
        bad.check()
    assert str(e.value).startswith("ground.json: key 'ledger.database_url_env': the database named by "
                                   "$AUTORESEARCH_DATABASE_URL refused the connection (check the user, password "
                                   "and database name in $AUTORESEARCH_DATABASE_URL; the database must exist):")
    assert 'password authentication failed for user "agent"' in str(e.value) and "\n" not in str(e.value)
    record.append_run(local.results, local.sessions, _row("a", 1.0), _entry(), store=bad)      # kept and queued
    assert len(ledger.read_ledger(local.results)) == 1 and bad.queue_path.exists()
    # the command line: exit 2, one line, before anything is trained or written
    g = json.loads((run_dir / "ground.json").read_text())
    g["ledger"].update(backend="postgres")
    write_json(run_dir / "ground.json", g)
    env = dict(os.environ, AUTORESEARCH_GROUND=str(run_dir / "ground.json"),
               AUTORESEARCH_MODEL=str(run_dir / "model.json"))
    for url, expect in ((postgres.url("creds", password="wrong"), "refused the connection"),
                        (None, "the environment variable AUTORESEARCH_DATABASE_URL is not set")):
        env.pop("AUTORESEARCH_DATABASE_URL", None)
        if url:
            env["AUTORESEARCH_DATABASE_URL"] = url
        r = subprocess.run([sys.executable, str(REPO / "train.py")], capture_output=True, text=True, env=env,
                           cwd=run_dir, timeout=300)
        assert r.returncode == 2 and expect in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert not (run_dir / "results.tsv").exists() and not (run_dir / "sessions").exists()


def test_a_url_in_ground_json_is_refused(run_dir):
    g = json.loads((run_dir / "ground.json").read_text())
    g["ledger"].update(backend="postgres", database_url_env="postgresql://agent:pw@db/x")
    write_json(run_dir / "ground.json", g)
    with pytest.raises(config.ConfigError) as e:
        config.load_ground(run_dir / "ground.json")
    assert str(e.value).startswith("ground.json: key 'ledger.database_url_env': expected the name of an "
                                   "environment variable")


# ---------------------------------------------------------------------------
# Two agents, one database: the second sees the first one's run in flight
# ---------------------------------------------------------------------------

@pytest.mark.slow
def test_a_second_agent_sees_the_first_ones_run_in_flight(postgres, tmp_path, workspace):
    url = postgres.new_database("agents")
    g = json.loads((workspace / "ground.json").read_text())
    procs, outs = {}, {}
    for name in ("a", "b"):
        d = tmp_path / name
        d.mkdir()
        g["ledger"] = {"results": str(d / "results.tsv"), "sessions_dir": str(d / "sessions"), "backend": "postgres"}
        write_json(d / "ground.json", g)
    env = lambda name: dict(os.environ, AUTORESEARCH_GROUND=str(tmp_path / name / "ground.json"),  # noqa: E731
                            AUTORESEARCH_MODEL=str(workspace / "model.json"), AUTORESEARCH_DATABASE_URL=url,
                            AUTORESEARCH_HOST=f"host-{name}", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    procs["a"] = subprocess.Popen([sys.executable, str(REPO / "train.py"), "--description", "agent a"],
                                  env=env("a"), cwd=tmp_path / "a", stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True)
    import psycopg
    for _ in range(1200):                              # agent a has claimed its run: freeze it there
        time.sleep(0.1)
        with psycopg.connect(url) as conn:
            if conn.execute(f"SELECT to_regclass('{database.CLAIMS}')").fetchone()[0] and \
                    conn.execute(f"SELECT count(*) FROM {database.CLAIMS}").fetchone()[0]:
                break
    procs["a"].send_signal(signal.SIGSTOP)
    try:
        b = subprocess.run([sys.executable, str(REPO / "train.py"), "--description", "agent b"],
                           env=env("b"), cwd=tmp_path / "b", capture_output=True, text=True, timeout=600)
    finally:
        procs["a"].send_signal(signal.SIGCONT)
    outs["a"] = procs["a"].communicate(timeout=600)[0]
    assert b.returncode == 0 and procs["a"].returncode == 0, (b.stdout[-2000:], b.stderr[-2000:], outs["a"][-2000:])
    assert re.search(r"!! this configuration is already running under the same seed: host-a/\S+, started \d+ min "
                     r"ago", b.stdout)
    digest_b = (tmp_path / "b" / "sessions" / "memory.md").read_text()
    running = digest_b.split("## Running now")[1].split("\n## ")[0]
    assert "- host-a/" in running and "agent a" in running and "host-b" not in running
    rows, index = database.PostgresLedger(url, ledger.FileLedger(tmp_path / "x.tsv", tmp_path / "x")).read()
    assert sorted((index[r["run_id"]]["host"], r["description"]) for r in rows) == [("host-a", "agent a"),
                                                                                   ("host-b", "agent b")]
    digest_a = (tmp_path / "a" / "sessions" / "memory.md").read_text()
    assert "## Running now" not in digest_a and "2 runs" in digest_a         # both recorded: nothing in flight


def test_errors_never_show_the_url_or_its_password(tmp_path):
    pytest.importorskip("psycopg")
    local = ledger.FileLedger(tmp_path / "results.tsv", tmp_path / "sessions")
    store = database.PostgresLedger("postgresql://agent:topsecret@127.0.0.1:1/x?bogus=1", local)
    with pytest.raises(config.ConfigError) as e:
        store.check()
    assert str(e.value) == ("ground.json: key 'ledger.database_url_env': $AUTORESEARCH_DATABASE_URL is not a usable "
                            "postgresql:// URL (invalid URI query parameter: \"bogus\")")
    down = database.PostgresLedger(f"postgresql://agent:topsecret@127.0.0.1:{_free_port()}/x", local)
    with pytest.raises(database.Unreachable) as e:
        down._retry(lambda conn: None)
    assert "topsecret" not in str(e.value) and "127.0.0.1" in str(e.value)


def test_a_bad_port_stops_the_run_and_an_unresolved_host_queues_it(tmp_path):
    """What waiting cannot mend stops the run (exit 2): a port that is not a number, which psycopg reports as a host
    it cannot resolve; a host that does not resolve now (DNS down, a host named *.invalid) is unreachable: the run
    is recorded locally and queued, as when the server is down."""
    pytest.importorskip("psycopg")
    local = ledger.FileLedger(tmp_path / "results.tsv", tmp_path / "sessions")
    with pytest.raises(config.ConfigError) as e:
        database.PostgresLedger("postgresql://agent:topsecret@localhost:notaport/x", local).check_url()
    assert str(e.value) == ("ground.json: key 'ledger.database_url_env': the port in $AUTORESEARCH_DATABASE_URL is "
                            "not a number (notaport)")
    for url in ("postgresql://agent@h1,h2:5433/x", "postgresql://agent@h1:5432,h2/x", "postgresql:///x?host=/run/pg",
                "host=h1 port=5432 dbname=x"):                   # an empty port is libpq's default: accepted
        database.PostgresLedger(url, local).check_url()
    unresolved = database.PostgresLedger("postgresql://agent:topsecret@nohost.invalid:5432/x", local)
    unresolved.check_url()                                       # a well-formed URL
    with pytest.raises(database.Unreachable) as e:
        unresolved._retry(lambda conn: None)
    assert "nohost.invalid" in str(e.value) and "topsecret" not in str(e.value)


def test_a_queued_run_the_database_refuses_is_set_aside_not_blocking(postgres, tmp_path):
    local = ledger.FileLedger(tmp_path / "results.tsv", tmp_path / "sessions")
    store = database.PostgresLedger(postgres.new_database("poison"), local)
    local.sessions.mkdir()
    bad = _row("bad", 1.0, num_steps="many")                       # an integer column: the database says no
    store.queue_path.write_text(json.dumps({"row": bad, "entry": _entry(), "status": None}) + "\n")
    record.append_run(local.results, local.sessions, _row("next", 1.0), _entry(fp="N"), store=store)
    assert [r["run_id"] for r in store.read()[0]] == ["next"] and not store.queue_path.exists()
    (aside,) = (local.sessions / "queue.rejected.jsonl").read_text().splitlines()
    assert json.loads(json.loads(aside)["line"])["row"]["run_id"] == "bad"
    assert "InvalidTextRepresentation" in json.loads(aside)["reason"]
    # another host's run with the same run_id is not taken for this one (queued here, not dropped)
    os.environ["AUTORESEARCH_HOST"] = "other-host"
    try:
        record.append_run(tmp_path / "o.tsv", tmp_path / "o", _row("next", 0.5), _entry(fp="M"),
                      store=database.PostgresLedger(store.url, ledger.FileLedger(tmp_path / "o.tsv", tmp_path / "o")))
    finally:
        os.environ.pop("AUTORESEARCH_HOST")
    assert [r["val_bpb"] for r in store.read()[0]] == [1.0]
    assert (tmp_path / "o" / "queue.jsonl").exists()


def test_a_password_with_unencoded_characters_is_not_shown(tmp_path):
    pytest.importorskip("psycopg")
    local = ledger.FileLedger(tmp_path / "results.tsv", tmp_path / "sessions")
    store = database.PostgresLedger(f"postgresql://agent:p@ss:w0rd@127.0.0.1:{_free_port()}/x", local)
    with pytest.raises((config.ConfigError, database.Unreachable)) as e:
        store._retry(lambda conn: None)
    assert "ss:w0rd" not in str(e.value) and "w0rd" not in str(e.value) and "p@ss" not in str(e.value)


def test_the_command_line_on_the_shared_ledger(postgres, run_dir):
    url = postgres.new_database("cli")
    g = json.loads((run_dir / "ground.json").read_text())
    g["ledger"].update(backend="postgres")
    write_json(run_dir / "ground.json", g)
    r = run_script("prepare.py", run_dir, "--check", env_extra={"AUTORESEARCH_DATABASE_URL": url})
    assert r.returncode == 0 and "ledger: the shared database answers ($AUTORESEARCH_DATABASE_URL)" in r.stdout
    assert "shared: postgres via $AUTORESEARCH_DATABASE_URL" in r.stdout
    queue = run_dir / "sessions" / "queue.jsonl"
    queue.parent.mkdir()
    queue.write_text(json.dumps({"row": _row("q", 1.0), "entry": _entry(), "status": None}) + "\n")
    down = f"postgresql://agent:x@127.0.0.1:{_free_port()}/cli"
    r = run_script("prepare.py", run_dir, "--send-queued", env_extra={"AUTORESEARCH_DATABASE_URL": down})
    assert r.returncode == 1 and r.stderr.startswith("error: the shared database is unreachable (")
    assert r.stderr.strip().endswith("the queue is kept") and queue.exists()
    r = run_script("prepare.py", run_dir, "--send-queued", env_extra={"AUTORESEARCH_DATABASE_URL": url})
    assert r.returncode == 0 and "sent: 1 queued run(s)" in r.stdout and not queue.exists()
    assert "memory: " in r.stdout and "- best: val_bpb 1.000000 (1 seed) — q" in (run_dir / "sessions" /
                                                                               "memory.md").read_text()


def test_two_send_queued_at_once_send_each_run_once(postgres, run_dir):
    """Two `prepare.py --send-queued` started together on one host's queue (an agent's and the user's) while a run
    of this host records (its append sends the queue first): the local lock lets one send at a time, the others find
    the queue emptied; every queued run and the recording one are in the database once, none set aside."""
    url = postgres.new_database("send_race")
    g = json.loads((run_dir / "ground.json").read_text())
    g["ledger"].update(backend="postgres")
    write_json(run_dir / "ground.json", g)
    queue = run_dir / "sessions" / "queue.jsonl"
    queue.parent.mkdir()
    queue.write_text("".join(json.dumps({"row": _row(f"q{i}", 1.0 + i / 1000), "entry": _entry(fp="A", seed=42 + i),
                                         "status": None}) + "\n" for i in range(6)))
    env = dict(os.environ, AUTORESEARCH_GROUND=str(run_dir / "ground.json"), AUTORESEARCH_MODEL=str(run_dir /
               "model.json"), AUTORESEARCH_DATABASE_URL=url, PYTHONUNBUFFERED="1")
    procs = [subprocess.Popen([sys.executable, str(REPO / "prepare.py"), "--send-queued"], cwd=run_dir, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    store = database.PostgresLedger(url, ledger.FileLedger(run_dir / "results.tsv", run_dir / "sessions"))
    time.sleep(1.0)                                  # a run of this host records while the two send
    record.append_run(store.results, store.sessions, _row("live", 1.01), _entry(fp="A", seed=60), store=store)
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    sent = [int(re.search(r"^sent: (\d+) queued run\(s\)$", out, re.M).group(1)) for out, _ in outs]
    assert sum(sent) <= 6 and not queue.exists() and not queue.with_name("queue.rejected.jsonl").exists()
    rows, _ = store.read()                           # the recording run sends what the two have not yet
    assert sorted(r["run_id"] for r in rows) == ["live"] + [f"q{i}" for i in range(6)]
    assert [r["status"] for r in rows if r["run_id"] != "live"] == ["baseline"] + ["repeat"] * 5


def test_both_backends_keep_the_files_of_a_kept_run_for_other_agents(store, tmp_path):
    files = {"model.json": '{"depth": 6}\n', "train.py": "# the kept train.py\n"}
    if isinstance(store, ledger.FileLedger):              # one host: the run's own record holds them
        store.sessions.mkdir(parents=True)
        (store.sessions / "base.json").write_text(json.dumps({"run_id": "base", "files": files}))
    record.append_run(store.results, store.sessions, _row("base", 1.0), _entry(fp="A"), store=store, files=files)
    record.append_run(store.results, store.sessions, _row("d", 1.2), _entry(fp="D"), store=store,
                  files={"model.json": "{}", "train.py": "# discarded"})
    assert store.files("base") == files
    if isinstance(store, database.PostgresLedger):        # another machine finds a kept run's files, not others'
        other = database.PostgresLedger(store.url, ledger.FileLedger(tmp_path / "o.tsv", tmp_path / "o"))
        assert other.files("base") == files and other.files("d") is None
        assert "- to build on another agent's kept run" not in (store.sessions / "memory.md").read_text()


@pytest.mark.slow
def test_restore_writes_a_kept_runs_files_into_a_clone(tmp_path, workspace):
    R1, R2 = "20261207T000000Z-abcdef0-0001", "20261207T000000Z-abcdef0-0002"
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    from conftest import sync_working_tree
    sync_working_tree(clone)
    subprocess.run(["git", "-C", str(clone), "-c", "user.email=a@b", "-c", "user.name=a", "commit", "-qam", "sync",
                    "--allow-empty"], check=True)
    g = json.loads((workspace / "ground.json").read_text())
    g["ledger"] = {"results": str(tmp_path / "results.tsv"), "sessions_dir": str(tmp_path / "sessions")}
    write_json(tmp_path / "ground.json", g)
    (tmp_path / "sessions").mkdir()
    kept = {"model.json": (clone / "model.json").read_text().replace('"depth": 8', '"depth": 6'),
            "train.py": (clone / "train.py").read_text() + "\n# kept on another branch\n"}
    (tmp_path / "sessions" / f"{R1}.json").write_text(json.dumps({"run_id": R1, "files": kept}))
    env = dict(os.environ, AUTORESEARCH_GROUND=str(tmp_path / "ground.json"))
    env.pop("AUTORESEARCH_MODEL", None)
    restore = lambda: subprocess.run([sys.executable, "prepare.py", "--restore", R1], cwd=clone, env=env,  # noqa
                                     capture_output=True, text=True, timeout=120)
    (clone / "train.py").write_text((clone / "train.py").read_text() + "# an uncommitted edit\n")
    r = restore()
    assert r.returncode == 2 and "uncommitted edits; commit or discard them first" in r.stderr
    subprocess.run(["git", "-C", str(clone), "checkout", "-q", "--", "train.py"], check=True)
    r = restore()
    assert r.returncode == 0 and f"restored model.json, train.py from run {R1}" in r.stdout, r.stderr
    assert (clone / "train.py").read_text() == kept["train.py"] and '"depth": 6' in (clone / "model.json").read_text()
    assert "!!" not in r.stdout                                      # a run the ledger does not hold: no status
    # a run the ledger holds as a discard: restored, with a word that it was never kept
    store = ledger.FileLedger(tmp_path / "results.tsv", tmp_path / "sessions")
    record.append_run(store.results, store.sessions, _row("base", 1.0), _entry(fp="A"))
    record.append_run(store.results, store.sessions, _row(R2, 1.1, status="discard"), _entry(fp="B"), "discard")
    (tmp_path / "sessions" / f"{R2}.json").write_text(json.dumps({"run_id": R2, "files": kept}))
    subprocess.run(["git", "-C", str(clone), "checkout", "-q", "--", "train.py", "model.json"], check=True)
    r = subprocess.run([sys.executable, "prepare.py", "--restore", R2], cwd=clone, env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.splitlines()[-2:] == [      # the warning before the commit it asks for
        f"!! run {R2} is a `discard`: its configuration was never kept (memory.md's best is the one to build on)",
        f"restored model.json, train.py from run {R2}; commit it: git commit -am \"build on {R2}\""]
    r = subprocess.run([sys.executable, "prepare.py", "--restore", R1.replace("0001", "0009")], cwd=clone, env=env,
                       capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and "no model.json and train.py recorded for this run" in r.stderr


def test_a_crashed_configuration_retried_is_not_called_a_rerun(tmp_path):
    st = ledger.FileLedger(tmp_path / "results.tsv", tmp_path / "sessions")
    record.append_run(st.results, st.sessions, _row("base", 1.0), _entry(fp="A"), store=st)
    record.append_run(st.results, st.sessions, _row("boom", None), _entry(fp="B", error="OOM"), "crash", store=st)
    st.claim(_claim("retry", "B", "h1", 1_800_000_000.0))                # the fixed config again, seed 42
    memory.write_memory(st, now=1_800_000_060.0)
    running = (st.sessions / "memory.md").read_text().split("## Running now")[1].split("\n## ")[0]
    assert "already recorded" not in running and "!!" not in running


@pytest.mark.parametrize("password", ["pa@ssword1", "p@ss:w0rd/#", "a/b", "x?y"])
def test_an_unencoded_password_stops_the_run_with_one_line_and_no_fragment(tmp_path, password):
    pytest.importorskip("psycopg")
    local = ledger.FileLedger(tmp_path / "results.tsv", tmp_path / "sessions")
    with pytest.raises(config.ConfigError) as e:
        database.PostgresLedger(f"postgresql://agent:{password}@db-host:5432/x", local).check_url()
    assert str(e.value).startswith("ground.json: key 'ledger.database_url_env': the user or password in "
                                   "$AUTORESEARCH_DATABASE_URL holds @ : / # or ? unencoded; percent-encode them")
    assert not any(piece in str(e.value) for piece in (password, "ssword1", "w0rd", "db-host"))
    database.PostgresLedger("postgresql://agent:p%40ss%3Aw0rd%2F%23@db-host:5432/x", local).check_url()   # encoded


def test_a_schema_in_the_url_holds_the_tables(postgres, tmp_path):
    import psycopg
    url = postgres.new_database("schemas")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA proj_a")
    local = ledger.FileLedger(tmp_path / "results.tsv", tmp_path / "sessions")
    store = database.PostgresLedger(url + ("&" if "?" in url else "?") + "options=-csearch_path%3Dproj_a", local)
    record.append_run(local.results, local.sessions, _row("a", 1.0), _entry(), store=store)
    with psycopg.connect(url, autocommit=True) as conn:
        found = conn.execute("SELECT to_regclass('proj_a.autoresearch_runs'), to_regclass('public.autoresearch_runs'),"
                             " (SELECT count(*) FROM proj_a.autoresearch_runs)").fetchone()
    assert found[0] is not None and found[1] is None and found[2] == 1
    shown = store.db.retry(lambda conn: conn.execute("SELECT current_setting('search_path'), "
                                                     "current_setting('lock_timeout')").fetchone())
    assert shown == ("proj_a", "30s")               # the URL's option and the store's own, both in force


def test_a_role_with_the_documented_grants_records_runs(postgres, tmp_path):
    """docs/USAGE.md's grants, run as written: the owner creates the tables, a role that owns nothing records runs,
    held-out scores and claims through them."""
    import re
    import psycopg
    from harness import heldout
    url = postgres.new_database("grants")
    owner = database.PostgresLedger(url, ledger.FileLedger(tmp_path / "o.tsv", tmp_path / "o"))
    owner.check()                                              # creates the tables
    grants = re.search(r"    (GRANT USAGE ON SCHEMA.*?TO agent;)\n\n", (REPO / "docs" / "USAGE.md").read_text(),
                       re.S).group(1).replace("TO agent", "TO runner")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP ROLE IF EXISTS runner")
        conn.execute("CREATE ROLE runner LOGIN PASSWORD 'runner-pw'")
        conn.execute(grants)
    local = ledger.FileLedger(tmp_path / "results.tsv", tmp_path / "sessions")
    store = database.PostgresLedger(url.replace(f"agent:{postgres.PASSWORD}", "runner:runner-pw"), local)
    record.append_run(local.results, local.sessions, _row("a", 1.0), _entry(), store=store)
    store.claim({"run_id": "b", "started": 1.0, "expires": 9e99, "host": "h"})
    heldout.add(store, {"run_id": "a", "heldout_bpb": 1.1})
    assert [r["run_id"] for r in store.read()[0]] == ["a"] and [c["run_id"] for c in store.claims(2.0)] == ["b"]
    assert heldout.read(database.PostgresLedger(url, ledger.FileLedger(tmp_path / "x.tsv", tmp_path / "x")))["a"][
        "heldout_bpb"] == 1.1                                  # in the database, not only in this host's file


def test_a_queued_runs_record_learns_the_databases_decision(postgres, tmp_path, capsys):
    """Host B, offline, records its first run as its own baseline; the database already holds host A's baseline of
    the key, so the sent run is re-decided (a repeat of A's configuration): B's record says both decisions."""
    url = postgres.new_database("mirror")
    a = ledger.FileLedger(tmp_path / "a.tsv", tmp_path / "a")
    record.append_run(a.results, a.sessions, _row("20261207T000000Z-aaaaaaa-0a", 1.0), _entry(fp="A"),
                      store=database.PostgresLedger(url, a))
    b = ledger.FileLedger(tmp_path / "b.tsv", tmp_path / "b")
    rid = "20261207T000000Z-bbbbbbb-0b"
    down = database.PostgresLedger(f"postgresql://agent:x@127.0.0.1:{_free_port()}/mirror", b)
    assert record.append_run(b.results, b.sessions, _row(rid, 1.01), _entry(fp="A", seed=43),
                             store=down)["status"] == "baseline"
    (b.sessions / f"{rid}.json").write_text(json.dumps({"run_id": rid, "status": "baseline"}))
    capsys.readouterr()
    sent = database.PostgresLedger(url, b).send_queued()
    assert [r["status"] for r in sent] == ["repeat"]
    assert (f"ledger: sent queued run {rid} to the shared database: repeat (this host had decided baseline; the "
            f"database's decision stands)") in capsys.readouterr().out
    rec = json.loads((b.sessions / f"{rid}.json").read_text())
    assert (rec["shared_status"], rec["local_status"]) == ("repeat", "baseline")
