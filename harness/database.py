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
import sys
import time

from harness import settings
from harness.config import ConfigError
from harness.decide import decide
from harness.ledger import LEDGER_COLUMNS, FileLedger, ledger_paths
from harness.settings import Settings
from harness.util import atomic_write_text

RUNS, CLAIMS = "autoresearch_runs", "autoresearch_claims"
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
          "expires double precision NOT NULL);")
LOCK = 0x6175746f72        # pg_advisory_xact_lock key: one writer decides at a time, on every host
CONNECT_TIMEOUT_S = 3
RETRY_DELAYS_S = (0.5, 1.5)    # a server restarting answers again within a few seconds
_REFUSED = ("28P01", "28000", "3D000")     # bad password, no such role / not authorized, no such database


class Unreachable(Exception):
    """The database did not answer (down, restarting, no route): the run is queued locally."""


def host_name() -> str:
    import socket
    return os.environ.get("AUTORESEARCH_HOST") or socket.gethostname()


class PostgresLedger:
    """The shared backend: the same methods as harness.ledger.FileLedger, over one database for all hosts."""

    def __init__(self, url: str, local: FileLedger, env: str = "AUTORESEARCH_DATABASE_URL"):
        self.url, self.local, self.env = url, local, env
        self.results, self.sessions = local.results, local.sessions
        self.queue_path = self.sessions / "queue.jsonl"
        self.note = None
        self._schema_ready = False
        self._conn = None

    # -- connection -------------------------------------------------------------------------
    def _say(self, e: Exception, limit: int = 160) -> str:
        """An error as one line, without the URL or its password (messages end up in logs and memory.md)."""
        from urllib.parse import urlsplit
        text = " ".join(str(e).split())
        with contextlib.suppress(ValueError):
            secret = urlsplit(self.url).password
            text = text.replace(self.url, f"${self.env}").replace(secret, "***") if secret else text
        return text.replace(self.url, f"${self.env}")[-limit:]

    def _connect(self):
        import psycopg
        try:
            conn = psycopg.connect(self.url, connect_timeout=CONNECT_TIMEOUT_S, autocommit=True)
        except psycopg.OperationalError as e:
            text = self._say(e)
            if getattr(e, "sqlstate", None) in _REFUSED or "authentication failed" in text or "does not exist" in text:
                raise ConfigError(f"ground.json: key 'ledger.database_url_env': the database named by ${self.env} "
                                  f"refused the connection: {text}") from None
            raise Unreachable(text) from None
        except psycopg.Error as e:
            raise ConfigError(f"ground.json: key 'ledger.database_url_env': ${self.env} is not a usable "
                              f"postgresql:// URL ({self._say(e, 120)})") from None
        if not self._schema_ready:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK,))
                conn.execute(SCHEMA)
            self._schema_ready = True
        return conn

    def _retry(self, work):
        """work(conn) in one transaction on the store's connection; a lost connection (a server restart) is opened
        again and the transaction retried, then Unreachable."""
        import psycopg
        for delay in RETRY_DELAYS_S + (None,):
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = self._connect()
                with self._conn.transaction():
                    return work(self._conn)
            except (Unreachable, psycopg.OperationalError) as e:
                self.close()
                if delay is None:
                    raise Unreachable(self._say(e)) from None
                time.sleep(delay)
            except psycopg.Error as e:            # a damaged schema, a full disk on the server: said, not retried
                self.close()
                raise ConfigError(f"the shared ledger (${self.env}): {type(e).__name__}: {self._say(e)}") from None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def check(self) -> None:
        """Before training: the local paths, and the credentials (refused: exit 2; unreachable: a notice)."""
        self.local.check()
        try:
            self._retry(lambda conn: None)
        except Unreachable as e:
            print(f"ledger: the shared database is unreachable ({e}); this run will be recorded locally and queued")

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

    def _insert(self, conn, row: dict, entry: dict, status: str | None) -> str:
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK,))
        done = conn.execute(f"SELECT status FROM {RUNS} WHERE run_id = %s", (row["run_id"],)).fetchone()
        if done:                                          # sent before (a lost answer, a re-sent queue): once only
            return done[0]
        key = row["comparability_key"]
        rows, index = [], {}           # what the keep rule reads: the key's scores, configurations and seeds
        for seq, run_id, val_bpb, st, fp, seed in conn.execute(
                f"SELECT seq, run_id, val_bpb, status, entry->>'fingerprint', entry->'seed' FROM {RUNS} "
                "WHERE comparability_key = %s ORDER BY seq", (key,)):
            rows.append({"run_id": run_id, "val_bpb": val_bpb, "status": st, "comparability_key": key, "line": seq})
            index[run_id] = {"fingerprint": fp, "seed": seed}
        status = status or decide(rows, index, key, entry.get("fingerprint"), entry.get("seed"), row.get("val_bpb"))
        row = dict(row, status=status, val_bpb=None if status in ("crash", "interrupted") else row.get("val_bpb"))
        values = [row.get(c) for c in _COLS]
        conn.execute(f"INSERT INTO {RUNS} (run_id, {_QCOLS}, host, entry) VALUES (%s, "
                     + ", ".join(["%s"] * len(_COLS)) + ", %s, %s::jsonb)",
                     [row["run_id"], *values, entry.get("host") or host_name(), json.dumps(entry, default=str)])
        conn.execute(f"DELETE FROM {CLAIMS} WHERE run_id = %s", (row["run_id"],))
        return status

    def append(self, row: dict, entry: dict, status: str | None = None, after=None) -> dict:
        """Into the database (the status decided there), then into the local mirror; unreachable: decided and
        recorded locally, and queued. after(self) (memory.md) runs under the local lock."""
        entry = dict(entry, host=entry.get("host") or host_name())
        try:
            self.send_queued()
            shared = self._retry(lambda conn: self._insert(conn, row, entry, status))
        except (Unreachable, ConfigError) as e:          # nothing is lost: the run waits in the local queue
            def queue(store):                             # under the local lock, with the local row
                with open(self.queue_path, "a", encoding="utf-8") as f:
                    f.write(json.dumps({"row": row, "entry": entry, "status": status}, default=str) + "\n")
                    f.flush()
                    os.fsync(f.fileno())
                if after is not None:
                    after(self)
            print(f"ledger: the shared database did not take the run ({e}); recorded locally and queued in "
                  f"{self.queue_path} (sent with the next run, or: uv run prepare.py --send-queued)")
            return self.local.append(row, entry, status, after=queue)
        out = self.local.append(row, entry, shared)
        if after is not None:
            with self.local.lock():
                after(self)
        return out

    def send_queued(self) -> list[dict]:
        """Send the runs recorded while the database was unreachable, oldest first. Returns those sent."""
        if not self.queue_path.exists():
            return []
        sent = []
        with self.local.lock():
            items = []
            for line in self.queue_path.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    items.append(json.loads(line))
                except ValueError:
                    print(f"warning: {self.queue_path.name}: skipped a torn line", file=sys.stderr)
            left = list(items)
            try:
                for item in items:
                    forced = item["status"] if item["status"] in ("crash", "interrupted") else None
                    shared = self._retry(lambda conn: self._insert(conn, item["row"], item["entry"], forced))
                    sent.append(dict(item["row"], status=shared))
                    left.pop(0)
            finally:
                if left:
                    atomic_write_text(self.queue_path, "".join(json.dumps(i, default=str) + "\n" for i in left))
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
                         (claim["run_id"], json.dumps(claim, default=str), claim["expires"]))
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
        return sorted((c for (c,) in found), key=lambda c: (c["started"], c["run_id"]))

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
    return PostgresLedger(url, local, cfg.database_url_env)

