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
import re
import sys
import time

from harness import settings
from harness.config import ConfigError
from harness.decide import ACCEPTED, UNSCORED, decide_entry
from harness.identity import host_name
from harness.ledger import LEDGER_COLUMNS, FileLedger, claim_order, ledger_paths
from harness.settings import Settings
from harness.util import atomic_write_text

RUNS, CLAIMS, FILES = "autoresearch_runs", "autoresearch_claims", "autoresearch_files"
_TYPES = {"val_bpb": "double precision", "memory_gb": "double precision", "peak_vram_mb": "double precision",
          "mfu_percent": "double precision", "training_seconds": "double precision",
          "total_tokens_M": "double precision", "num_params_M": "double precision", "num_steps": "integer"}
_COLS = [c for c in LEDGER_COLUMNS if c != "run_id"]
_QCOLS = ", ".join(f'"{c}"' for c in _COLS)
SCHEMA = (f"CREATE TABLE IF NOT EXISTS {RUNS} (seq bigserial PRIMARY KEY, run_id text UNIQUE NOT NULL, "
          + ", ".join(f'"{c}" {_TYPES.get(c, "text")}' for c in _COLS)
          + ", host text NOT NULL, entry jsonb NOT NULL, recorded_at timestamptz NOT NULL DEFAULT now());"
          f"CREATE INDEX IF NOT EXISTS {RUNS}_key ON {RUNS} (comparability_key);"
          f"CREATE TABLE IF NOT EXISTS {CLAIMS} (run_id text PRIMARY KEY, claim jsonb NOT NULL, "
          "expires double precision NOT NULL);"
          f"CREATE TABLE IF NOT EXISTS {FILES} (run_id text PRIMARY KEY, files jsonb NOT NULL);")
LOCK = 0x6175746f72        # pg_advisory_xact_lock key: one writer decides at a time, on every host
CONNECT_TIMEOUT_S = 3
RETRY_DELAYS_S = (0.5, 1.5)    # a server restarting answers again within a few seconds
DOWN_MEMORY_S = 20             # after a failed retry: the rest of this record (memory.md, claims) does not wait again
_REFUSED = ("28P01", "28000", "3D000")     # bad password, no such role / not authorized, no such database
_BAD_VALUE = re.compile(r"connection is bad: invalid ")   # libpq refusing a value of the URL (not "invalid" in a host)


class Unreachable(Exception):
    """The database did not answer (down, restarting, no route): the run is queued locally."""


class Rejected(ConfigError):
    """The database answered and refused this statement (bad data, no privilege): retrying will not help."""


def _json(obj) -> str:
    return json.dumps(obj, default=str).replace("\\u0000", "")       # jsonb refuses NUL characters


class PostgresLedger:
    """The shared backend: the same methods as harness.ledger.FileLedger, over one database for all hosts."""

    def __init__(self, url: str, local: FileLedger, env: str = "AUTORESEARCH_DATABASE_URL"):
        self.url, self.local, self.env = url, local, env
        self.results, self.sessions = local.results, local.sessions
        self.queue_path = self.sessions / "queue.jsonl"
        self.note = None
        self._schema_ready = False
        self._conn = None
        self._down_until, self._down_reason = 0.0, ""

    # -- connection -------------------------------------------------------------------------
    def _say(self, e: Exception, limit: int = 300) -> str:
        """An error as one line, without the URL or its password (messages end up in logs and memory.md)."""
        text = " ".join(str(e).split()).replace(self.url, f"${self.env}")
        rest = self.url.split("://", 1)[-1]
        if "@" in rest and ":" in rest.rsplit("@", 1)[0]:      # user:password@host, maybe an unencoded @ or :
            password = rest.rsplit("@", 1)[0].split(":", 1)[1]
            pieces = [password] + [p for p in re.split(r"[@:/#]", password) if len(p) >= 3]
            for piece in sorted(pieces, key=len, reverse=True):
                text = text.replace(piece, "***")
        return text[:limit]

    def check_url(self) -> None:
        """What no wait will mend, before any connection: a URL psycopg cannot read, a port that is not a number
        (psycopg would report it as a host it cannot resolve, and the run would queue forever)."""
        from psycopg import Error, conninfo
        try:
            info = conninfo.conninfo_to_dict(self.url)
        except Error as e:
            raise ConfigError(f"ground.json: key 'ledger.database_url_env': ${self.env} is not a usable "
                              f"postgresql:// URL ({self._say(e, 120)})") from None
        if any(p.strip() and not p.strip().isdigit() for p in str(info.get("port", "")).split(",")):   # "": default
            raise ConfigError(f"ground.json: key 'ledger.database_url_env': the port in ${self.env} is not a number "
                              f"({self._say(ValueError(info['port']), 40)})")

    def _connect(self):
        import psycopg
        try:
            # a client that dies inside a transaction must not hold the lock every host waits for
            conn = psycopg.connect(self.url, connect_timeout=CONNECT_TIMEOUT_S, autocommit=True, keepalives=1,
                                   keepalives_idle=10, keepalives_interval=5, keepalives_count=3,
                                   options="-c lock_timeout=30s -c idle_in_transaction_session_timeout=60s")
        except psycopg.OperationalError as e:
            text = self._say(e)
            if (getattr(e, "sqlstate", None) in _REFUSED or "authentication failed" in text or "does not exist" in text
                    or _BAD_VALUE.match(text)):            # wrong credentials or URL: waiting will not help
                raise ConfigError(f"ground.json: key 'ledger.database_url_env': the database named by ${self.env} "
                                  f"refused the connection (check the user, password and database name in "
                                  f"${self.env}; the database must exist): {text}") from None
            raise Unreachable(text) from None
        except psycopg.Error as e:
            raise ConfigError(f"ground.json: key 'ledger.database_url_env': ${self.env} is not a usable "
                              f"postgresql:// URL ({self._say(e, 120)})") from None
        if not self._schema_ready:
            try:
                with conn.transaction():                # created once; a role without CREATE can use existing tables
                    exists = conn.execute(f"SELECT to_regclass('{RUNS}'), to_regclass('{CLAIMS}'), "
                                          f"to_regclass('{FILES}')").fetchone()
                    if None in exists:
                        conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK,))
                        conn.execute(SCHEMA)
            except psycopg.Error:
                conn.close()
                raise
            self._schema_ready = True
        return conn

    def _retry(self, work):
        """work(conn) in one transaction on the store's connection; a lost connection (a server restart) is opened
        again and the transaction retried, then Unreachable."""
        import psycopg
        if time.monotonic() < self._down_until:          # just tried and failed: do not wait again within a record
            raise Unreachable(self._down_reason)
        for delay in RETRY_DELAYS_S + (None,):
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = self._connect()
                with self._conn.transaction():
                    return work(self._conn)
            except (Unreachable, psycopg.OperationalError) as e:
                self.close()
                if delay is None:
                    self._down_until, self._down_reason = time.monotonic() + DOWN_MEMORY_S, self._say(e)
                    raise Unreachable(self._down_reason) from None
                time.sleep(delay)
            except psycopg.Error as e:            # bad data, no privilege, a full disk on the server: not retried
                self.close()
                raise Rejected(f"the shared ledger (${self.env}): {type(e).__name__}: {self._say(e)}") from None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

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
    @staticmethod
    def _rows(cur) -> tuple[list[dict], dict]:
        rows, index = [], {}
        for seq, run_id, *values, entry in cur:
            row = dict(zip(_COLS, values), run_id=run_id, line=seq)
            rows.append(row)
            index[run_id] = dict(entry, run_id=run_id)
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
            return self.local.read()

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
            with self.local.lock():                      # the queue line before the local row: never local only
                self.sessions.mkdir(parents=True, exist_ok=True)
                with open(self.queue_path, "a", encoding="utf-8") as f:
                    f.write(_json({"row": row, "entry": entry, "status": status, "files": files}) + "\n")
                    f.flush()
                    os.fsync(f.fileno())
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
        """Send the runs recorded while the database did not take them, oldest first; a run the database refuses
        (bad data) moves to queue.rejected.jsonl with the reason. Returns those sent."""
        if not self.queue_path.exists():
            return []
        sent, rejected = [], self.queue_path.with_name("queue.rejected.jsonl")
        with self.local.lock():
            lines = self.queue_path.read_text(encoding="utf-8", errors="replace").splitlines()
            left = [line for line in lines if line.strip()]
            try:
                while left:
                    try:
                        item = json.loads(left[0])
                        forced = item["status"] if item["status"] in UNSCORED else None
                        shared = self._retry(lambda conn: self._insert(conn, item["row"], item["entry"], forced,
                                                                       item.get("files")))
                        sent.append(dict(item["row"], status=shared))
                    except (ValueError, KeyError, TypeError, Rejected) as e:   # kept aside, with the reason
                        with open(rejected, "a", encoding="utf-8") as f:
                            f.write(_json({"line": left[0], "reason": str(e)[:300]}) + "\n")
                        print(f"warning: a queued run the shared database cannot take moved to {rejected}: {e}",
                              file=sys.stderr)
                    left.pop(0)
            finally:
                if left:
                    atomic_write_text(self.queue_path, "".join(line + "\n" for line in left))
                else:
                    self.queue_path.unlink(missing_ok=True)
        for r in sent:
            print(f"ledger: sent queued run {r['run_id']} to the shared database: {r['status']}")
        return sent

    # -- runs in flight ---------------------------------------------------------------------
    def claim(self, claim: dict) -> None:
        def work(conn):
            conn.execute(f"DELETE FROM {CLAIMS} WHERE expires < %s", (claim["started"],))
            conn.execute(f"INSERT INTO {CLAIMS} (run_id, claim, expires) VALUES (%s, %s::jsonb, %s) ON CONFLICT "
                         "(run_id) DO UPDATE SET claim = EXCLUDED.claim, expires = EXCLUDED.expires",
                         (claim["run_id"], _json(claim), claim["expires"]))
        try:
            self._retry(work)
        except (Unreachable, ConfigError) as e:
            print(f"ledger: the shared database did not take this run's claim ({e}); other agents do not see it")

    def claims(self, now: float) -> list[dict]:
        try:
            found = self._retry(lambda conn: conn.execute(
                f"SELECT claim FROM {CLAIMS} WHERE expires > %s", (now,)).fetchall())
        except (Unreachable, ConfigError):
            return []
        return sorted((c for (c,) in found), key=claim_order)

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

