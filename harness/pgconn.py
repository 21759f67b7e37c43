"""The shared database's plumbing: its tables, one connection that keeps the URL out of every message and retries
a lost server, and the local queue of runs it did not take (harness/database.py builds the ledger on these).

    uv run pytest tests/test_shared_ledger.py      # against a PostgreSQL server the tests start
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
import time

from harness.config import ConfigError
from harness.ledger import LEDGER_COLUMNS, FileLedger
from harness.util import atomic_write_text

RUNS, CLAIMS, FILES, HELDOUT = "autoresearch_runs", "autoresearch_claims", "autoresearch_files", "autoresearch_heldout"
_TYPES = {"val_bpb": "double precision", "memory_gb": "double precision", "peak_vram_mb": "double precision",
          "mfu_percent": "double precision", "training_seconds": "double precision",
          "total_tokens_M": "double precision", "num_params_M": "double precision", "num_steps": "integer"}
_COLS = [c for c in LEDGER_COLUMNS if c != "run_id"]
_QCOLS = ", ".join(f'"{c}"' for c in _COLS)
# the human's held-out scores: also created on its own by harness/heldout.py on a database made before it existed
HELDOUT_TABLE = f"CREATE TABLE IF NOT EXISTS {HELDOUT} (run_id text PRIMARY KEY, entry jsonb NOT NULL);"
SCHEMA = (f"CREATE TABLE IF NOT EXISTS {RUNS} (seq bigserial PRIMARY KEY, run_id text UNIQUE NOT NULL, "
          + ", ".join(f'"{c}" {_TYPES.get(c, "text")}' for c in _COLS)
          + ", host text NOT NULL, entry jsonb NOT NULL, recorded_at timestamptz NOT NULL DEFAULT now());"
          f"CREATE INDEX IF NOT EXISTS {RUNS}_key ON {RUNS} (comparability_key);"
          f"CREATE TABLE IF NOT EXISTS {CLAIMS} (run_id text PRIMARY KEY, claim jsonb NOT NULL, "
          "expires double precision NOT NULL);"
          f"CREATE TABLE IF NOT EXISTS {FILES} (run_id text PRIMARY KEY, files jsonb NOT NULL);" + HELDOUT_TABLE)
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


class Connection:
    """The shared database's connection: the URL and its password kept out of every message, the schema created
    once, a lost connection opened again and its transaction retried, a server found down remembered briefly."""

    def __init__(self, url: str, env: str):
        self.url, self.env = url, env
        self.schema_ready = False
        self._conn = None
        self._down_until, self._down_reason = 0.0, ""
        self._lock = threading.RLock()     # one transaction at a time: threads (the live view's, a live claim's) share it

    def say(self, e: Exception, limit: int = 300) -> str:
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
        userinfo = self.url.split("://", 1)[-1].rpartition("@")[0]
        if re.search(r"[@/#?]", userinfo) or userinfo.count(":") > 1:     # libpq would read a host out of it
            raise ConfigError(f"ground.json: key 'ledger.database_url_env': the user or password in ${self.env} holds "
                              f"@ : / # or ? unencoded; percent-encode them (python -c \"import urllib.parse, "
                              f"getpass; print(urllib.parse.quote(getpass.getpass(), safe=''))\")")
        try:
            info = conninfo.conninfo_to_dict(self.url)
        except Error as e:
            raise ConfigError(f"ground.json: key 'ledger.database_url_env': ${self.env} is not a usable "
                              f"postgresql:// URL ({self.say(e, 120)})") from None
        if any(p.strip() and not p.strip().isdigit() for p in str(info.get("port", "")).split(",")):   # "": default
            raise ConfigError(f"ground.json: key 'ledger.database_url_env': the port in ${self.env} is not a number "
                              f"({self.say(ValueError(info['port']), 40)})")

    def _connect(self):
        import psycopg
        try:
            # a client that dies inside a transaction must not hold the lock every host waits for
            # the URL's own options (a search_path schema) kept: ours are added after them, never in their place
            mine = "-c lock_timeout=30s -c idle_in_transaction_session_timeout=60s"
            theirs = psycopg.conninfo.conninfo_to_dict(self.url).get("options") or ""
            conn = psycopg.connect(self.url, connect_timeout=CONNECT_TIMEOUT_S, autocommit=True, keepalives=1,
                                   keepalives_idle=10, keepalives_interval=5, keepalives_count=3,
                                   options=f"{theirs} {mine}".strip())
        except psycopg.OperationalError as e:
            text = self.say(e)
            if (getattr(e, "sqlstate", None) in _REFUSED or "authentication failed" in text or "does not exist" in text
                    or _BAD_VALUE.match(text)):            # wrong credentials or URL: waiting will not help
                raise ConfigError(f"ground.json: key 'ledger.database_url_env': the database named by ${self.env} "
                                  f"refused the connection (check the user, password and database name in "
                                  f"${self.env}; the database must exist): {text}") from None
            raise Unreachable(text) from None
        except psycopg.Error as e:
            raise ConfigError(f"ground.json: key 'ledger.database_url_env': ${self.env} is not a usable "
                              f"postgresql:// URL ({self.say(e, 120)})") from None
        if not self.schema_ready:
            try:
                with conn.transaction():                # created once; a role without CREATE can use existing tables
                    exists = conn.execute(f"SELECT to_regclass('{RUNS}'), to_regclass('{CLAIMS}'), "
                                          f"to_regclass('{FILES}')").fetchone()   # heldout: harness/heldout.py
                    if None in exists:
                        conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK,))
                        conn.execute(SCHEMA)
            except psycopg.Error:
                conn.close()
                raise
            self.schema_ready = True
        return conn

    def retry(self, work):
        """work(conn) in one transaction on the store's connection; a lost connection (a server restart) is opened
        again and the transaction retried, then Unreachable."""
        with self._lock:
            return self._retry(work)

    def _retry(self, work):
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
                    self._down_until, self._down_reason = time.monotonic() + DOWN_MEMORY_S, self.say(e)
                    raise Unreachable(self._down_reason) from None
                time.sleep(delay)
            except psycopg.Error as e:            # bad data, no privilege, a full disk on the server: not retried
                self.close()
                raise Rejected(f"the shared ledger (${self.env}): {type(e).__name__}: {self.say(e)}") from None

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None



class Queue:
    """Runs the database did not take, one JSON line each in sessions/queue.jsonl: appended, read and emptied only
    under the local ledger's lock (a missing or emptied file is an empty queue), sent oldest first, each exactly
    once; a line the database refuses moves to queue.rejected.jsonl with the reason."""

    def __init__(self, path, local: FileLedger):
        self.path, self.local = path, local

    def put(self, item: dict) -> None:
        with self.local.lock():                      # the queue line before the local row: never local only
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(_json(item) + "\n")
                f.flush()
                os.fsync(f.fileno())

    def send(self, insert) -> list[dict]:
        """insert(item) -> the status the database decided, for each queued item; returns the rows sent."""
        sent, rejected = [], self.path.with_name("queue.rejected.jsonl")
        with self.local.lock():
            try:
                lines = self.path.read_text(encoding="utf-8", errors="replace").splitlines()
            except FileNotFoundError:                # sent by another process meanwhile
                return []
            left = [line for line in lines if line.strip()]
            try:
                while left:
                    try:
                        item = json.loads(left[0])
                        sent.append(dict(item["row"], status=insert(item)))
                    except (ValueError, KeyError, TypeError, RecursionError, Rejected) as e:   # kept aside, why
                        with open(rejected, "a", encoding="utf-8") as f:
                            f.write(_json({"line": left[0], "reason": str(e)[:300]}) + "\n")
                        print(f"warning: a queued run the shared database cannot take moved to {rejected}: {e}",
                              file=sys.stderr)
                    left.pop(0)
            finally:
                if left:
                    atomic_write_text(self.path, "".join(line + "\n" for line in left))
                else:
                    self.path.unlink(missing_ok=True)
        return sent
