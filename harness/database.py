"""The shared ledger: the runs of agents on several hosts in one PostgreSQL database, with a local mirror and queue.

    export AUTORESEARCH_DATABASE_URL=postgresql://agent:PASSWORD@db-host/autoresearch    # never in a tracked file
    uv sync --extra shared      # psycopg; then ground.json "ledger": {"backend": "postgres", ...}
    uv run prepare.py --send-queued      # send the runs recorded while the database was unreachable

Each run is appended in one transaction: its status is decided under an advisory lock against every
host's rows of its comparability key, and its claim (the run in flight) is dropped. The machine's
results.tsv and sessions/ get the same row, as with the file backend (the mirror); memory.md is
generated from all hosts' rows. When the database cannot be reached, the run is decided against the
local ledger, recorded there and queued in sessions/queue.jsonl; the queue is sent before the next
record or by --send-queued, re-decided against the shared rows, exactly once (run_id is unique).
"""

from __future__ import annotations

import contextlib
import json
import os

from harness import settings
from harness.checked import RUN_ID, check
from harness.config import ConfigError
from harness.decide import ACCEPTED, UNSCORED, decide_entry
from harness.identity import host_name
from harness.ledger import FileLedger, claim_order, ledger_paths
from harness.pgconn import (CLAIMS, FILES, LOCK, RUNS, SCHEMA, Connection, Queue, Rejected, Unreachable,  # noqa: F401
                            _COLS, _QCOLS, _json)
from harness.settings import Settings
from harness.util import atomic_write_text

class PostgresLedger:
    """The shared backend: the same methods as harness.ledger.FileLedger, over one database for all hosts."""

    def __init__(self, url: str, local: FileLedger, env: str = "AUTORESEARCH_DATABASE_URL"):
        self.url, self.local, self.env = url, local, env
        self.results, self.sessions = local.results, local.sessions
        self.db = Connection(url, env)
        self.queue = Queue(self.sessions / "queue.jsonl", local)
        self.note, self.damage = None, []
        self._say, self._retry, self.check_url, self.close = self.db.say, self.db.retry, self.db.check_url, \
            self.db.close

    @property
    def queue_path(self):
        return self.queue.path

    def check(self) -> None:
        """Before training: the local paths, and the credentials (refused: exit 2; unreachable: a notice)."""
        self.local.check()
        try:
            self._retry(lambda conn: None)
            print(f"ledger: the shared database answers (${self.env})")
        except Unreachable as e:
            print(f"ledger: the shared database is unreachable ({e}); runs are recorded locally and queued until it "
                  f"answers")

    # -- rows -------------------------------------------------------------------------------
    def _rows(self, cur) -> tuple[list[dict], dict]:
        rows, index, self.damage = [], {}, []
        for seq, run_id, *values, entry in cur:
            row = dict(zip(_COLS, values), run_id=run_id, line=seq)
            rows.append(row)
            entry, problems = check(dict(entry, run_id=run_id) if isinstance(entry, dict) else entry, "index",
                                    f"{RUNS} row {seq}")
            self.damage += problems
            if entry is not None:
                index[run_id] = entry
        return rows, index

    def read(self) -> tuple[list[dict], dict]:
        """All hosts' runs in the order the database received them; this machine's alone when it is unreachable."""
        try:
            rows, index = self._retry(lambda conn: self._rows(
                conn.execute(f"SELECT seq, run_id, {_QCOLS}, entry FROM {RUNS} ORDER BY seq")))
            self.note = None
            return rows, index
        except (Unreachable, ConfigError) as e:
            self.note = f"the shared ledger could not be read ({e}): this machine's runs only"
            found = self.local.read()
            self.damage = self.local.damage
            return found

    def _insert(self, conn, row: dict, entry: dict, status: str | None, files: dict | None = None) -> str:
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK,))
        host = entry.get("host") or host_name()
        done = conn.execute(f"SELECT status, host FROM {RUNS} WHERE run_id = %s", (row["run_id"],)).fetchone()
        if done and done[1] == host:                      # sent before (a lost answer, a re-sent queue): once only
            return done[0]
        if done:
            raise Rejected(f"{RUNS}: run_id {row['run_id']} is already recorded by host {done[1]}")
        key = row["comparability_key"]
        rows, index = [], {}           # what the keep rule reads: the key's scores, configurations and seeds
        for seq, run_id, val_bpb, st, fp, seed, speed in conn.execute(
                f"SELECT seq, run_id, val_bpb, status, entry->>'fingerprint', entry->'seed', entry->'host_speed' "
                f"FROM {RUNS} WHERE comparability_key = %s ORDER BY seq", (key,)):
            rows.append({"run_id": run_id, "val_bpb": val_bpb, "status": st, "comparability_key": key, "line": seq})
            index[run_id] = {"fingerprint": fp, "seed": seed, "host_speed": speed}
        status = decide_entry(rows, index, row, entry, status)
        row = dict(row, status=status, val_bpb=None if status in UNSCORED else row.get("val_bpb"))
        values = [row.get(c) for c in _COLS]
        conn.execute(f"INSERT INTO {RUNS} (run_id, {_QCOLS}, host, entry) VALUES (%s, "
                     + ", ".join(["%s"] * len(_COLS)) + ", %s, %s::jsonb)",
                     [row["run_id"], *values, host, _json(entry)])
        conn.execute(f"DELETE FROM {CLAIMS} WHERE run_id = %s", (row["run_id"],))
        if files and status in ACCEPTED:                # what another host needs to build on it (--restore)
            conn.execute(f"INSERT INTO {FILES} (run_id, files) VALUES (%s, %s::jsonb)", (row["run_id"], _json(files)))
        return status

    def append(self, row: dict, entry: dict, status: str | None = None, after=None, files: dict | None = None) -> dict:
        """Into the database (the status decided there), then into the local mirror; not taken: queued first, then
        decided and recorded locally. after(self) (memory.md) runs under the local lock."""
        entry = dict(entry, host=entry.get("host") or host_name())
        try:
            with contextlib.suppress(Unreachable, ConfigError):      # what stays queued stays; this run goes on
                self.send_queued()
            shared = self._retry(lambda conn: self._insert(conn, row, entry, status, files))
        except (Unreachable, ConfigError) as e:          # nothing is lost: the run waits in the local queue
            print(f"ledger: the shared database did not take the run ({e}); queued in {self.queue_path} and recorded "
                  f"locally (sent with the next run, or: uv run prepare.py --send-queued)")
            self.queue.put({"row": row, "entry": entry, "status": status, "files": files})
            return self.local.append(row, entry, status, after=after and (lambda store: after(self)))
        try:
            out = self.local.append(row, entry, shared)
        except (ConfigError, OSError) as e:              # in the shared ledger already: the mirror only lacks it
            print(f"warning: the run is in the shared ledger ({shared}) but not in {self.results.name}: {e}")
            out = dict(row, status=shared)
        if after is not None:
            with self.local.lock():
                after(self)
        return out

    def send_queued(self) -> list[dict]:
        """Send the runs recorded while the database did not take them (harness.pgconn.Queue), each re-decided
        against the shared rows. Returns those sent."""
        def insert(item):
            forced = item["status"] if item["status"] in UNSCORED else None
            return self._retry(lambda conn: self._insert(conn, item["row"], item["entry"], forced, item.get("files")))
        sent = self.queue.send(insert)
        local = {r["run_id"]: r["status"] for r in self.local.read()[0]}
        for r in sent:
            here = local.get(r["run_id"])
            print(f"ledger: sent queued run {r['run_id']} to the shared database: {r['status']}" +
                  (f" (this host had decided {here}; the database's decision stands)" if here not in (None, r["status"])
                   else ""))
            if here not in (None, r["status"]):      # the mirror's row stays as written; its record says so
                self._annotate(r["run_id"], r["status"], here)
        return sent

    def _annotate(self, run_id: str, shared: str, here: str) -> None:
        if not RUN_ID.fullmatch(str(run_id)):   # a queue edited by hand names no file outside sessions/
            return
        path = self.sessions / f"{run_id}.json"
        with contextlib.suppress(OSError, ValueError, AttributeError, RecursionError):
            rec = json.loads(path.read_text(encoding="utf-8"))
            rec.update(shared_status=shared, local_status=here)
            atomic_write_text(path, json.dumps(rec, indent=2, default=str))

    # -- runs in flight ---------------------------------------------------------------------
    def claim(self, claim: dict, quiet: bool = False) -> bool:
        """The run's claim, inserted or replaced (harness/liveclaim.py sends it again with the curve so far).
        Returns whether the database took it; `quiet`: say nothing when it did not."""
        def work(conn):
            conn.execute(f"DELETE FROM {CLAIMS} WHERE expires < %s", (claim["started"],))
            conn.execute(f"INSERT INTO {CLAIMS} (run_id, claim, expires) VALUES (%s, %s::jsonb, %s) ON CONFLICT "
                         "(run_id) DO UPDATE SET claim = EXCLUDED.claim, expires = EXCLUDED.expires",
                         (claim["run_id"], _json(claim), claim["expires"]))
        try:
            self._retry(work)
            return True
        except (Unreachable, ConfigError) as e:
            if not quiet:
                print(f"ledger: the shared database did not take this run's claim ({e}); other agents do not see it")
            return False

    def claims(self, now: float) -> list[dict]:
        try:
            found = self._retry(lambda conn: conn.execute(
                f"SELECT claim FROM {CLAIMS} WHERE expires > %s", (now,)).fetchall())
        except (Unreachable, ConfigError):
            return []
        checked = [check(c, "claim", f"{CLAIMS} row")[0] for (c,) in found]      # a damaged claim: set aside
        return sorted((c for c in checked if c is not None), key=claim_order)

    def files(self, run_id: str) -> dict | None:
        """model.json and train.py of an accepted run, from whichever host recorded it (this one's record first)."""
        local = self.local.files(run_id)
        if local is not None:
            return local
        try:
            found = self._retry(lambda conn: conn.execute(f"SELECT files FROM {FILES} WHERE run_id = %s",
                                                          (run_id,)).fetchone())
        except (Unreachable, ConfigError) as e:
            self.note = f"the shared ledger could not be read ({e})"
            return None
        return found[0] if found else None

    def lock(self):
        return self.local.lock()


def open_ledger(s: Settings | None = None):
    """The ledger ground.json names: FileLedger, or PostgresLedger over the URL in the environment."""
    s = s or settings.current()
    local = FileLedger(*ledger_paths(s))
    cfg = s.ground.ledger
    if cfg.backend == "file":
        return local
    url = os.environ.get(cfg.database_url_env, "").strip()
    if not url:
        raise ConfigError(f"ground.json: key 'ledger.database_url_env': the environment variable "
                          f"{cfg.database_url_env} is not set (it holds the shared ledger's postgresql:// URL)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise ConfigError("ground.json: key 'ledger.backend': \"postgres\" needs psycopg: "
                          "`uv sync --extra shared`") from None
    store = PostgresLedger(url, local, cfg.database_url_env)
    store.check_url()
    return store

