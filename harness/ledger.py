"""Ledger: results.tsv, append-only under a file lock, and the one strict parser every reader shares.

    uv run prepare.py --memory        # re-reads the ledger and regenerates sessions/memory.md

One row per run, never rewritten. The status of a new row is decided here, under the lock,
against the rows of the same comparability key. Upstream's 5-column and the fork's 9-column
ledgers are read too; a corrupt line is warned about and skipped.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import stat
import sys
from pathlib import Path

from harness import settings
from harness.checked import read_jsonl, read_record, verify_rows
from harness.config import ConfigError
from harness.decide import UNSCORED, VAL_DIGITS, decide_entry
from harness.settings import Settings
from harness.util import atomic_write_text

LEDGER_COLUMNS = ("run_id", "commit", "val_bpb", "memory_gb", "status", "description", "peak_vram_mb", "mfu_percent",
                  "training_seconds", "total_tokens_M", "num_params_M", "num_steps", "mode", "comparability_key",
                  "timestamp")
STATUSES = ("baseline", "keep", "confirm", "discard", "repeat", "rerun", "pruned", "crash", "interrupted",  # decide
            "unverified")                 # read only: a row with no run record (harness/checked.py verify_rows)
_FLOAT_COLS = ("val_bpb", "memory_gb", "peak_vram_mb", "mfu_percent", "training_seconds", "total_tokens_M",
               "num_params_M")
_REQUIRED_COLS = ("commit", "val_bpb", "status", "description")
LEGACY_KEY = "legacy"          # comparability key given to rows from upstream/fork ledgers that have none


def ledger_paths(s: Settings | None = None) -> tuple[Path, Path]:
    s = s or settings.current()
    return s.path(s.ground.ledger.results), s.path(s.ground.ledger.sessions_dir)


def ledger_lock(results: Path):
    from filelock import FileLock
    results.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(results) + ".lock", timeout=120)


def clean_text(text, limit: int = 200) -> str:
    """One line of valid UTF-8 with no tabs, control characters or table bars: safe inside a TSV cell and a
    markdown table, and unable to start a line of its own in memory.md. Every text the harness writes into
    results.tsv or memory.md from outside (descriptions, model.json values, errors) goes through here."""
    text = str(text).encode("utf-8", "replace").decode("utf-8")       # lone surrogates from odd argv bytes
    return re.sub(r"[\x00-\x1f\x7f|]+", " ", text).strip()[:limit]


def read_ledger(path: Path, warn=None) -> list[dict]:
    """Parse a ledger: ours (15 columns), upstream's 5-column or the fork's 9-column one, by header.
    Typed rows; crash rows get val_bpb None (upstream's 0.000000 included). A corrupt line is
    warned about and skipped, never rewritten."""
    warn = warn or (lambda m: print(f"warning: {m}", file=sys.stderr))
    if not path.exists() or path.stat().st_size == 0:
        return []                                  # an empty file is an empty ledger: the next run writes the header
    lines = path.read_text(encoding="utf-8", errors="replace").split("\n")
    header = lines[0].lstrip("\ufeff").rstrip("\r").split("\t")
    missing = [c for c in _REQUIRED_COLS if c not in header]
    if missing:
        raise ConfigError(f"{path.name}: header line: expected a ledger header with columns "
                          f"{', '.join(_REQUIRED_COLS)}; missing {', '.join(missing)}")
    rows = []
    for n, line in enumerate(lines[1:], 2):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        cells = line.split("\t")
        if len(cells) != len(header):
            warn(f"{path.name}:{n}: skipped: {len(cells)} fields, expected {len(header)}")
            continue
        raw = dict(zip(header, cells))
        row = {c: None for c in LEDGER_COLUMNS}
        try:
            for c in header:
                if c not in row:
                    continue
                v = raw[c]
                if c in _FLOAT_COLS:
                    row[c] = float(v) if v not in ("", "nan") else None
                elif c == "num_steps":
                    row[c] = int(float(v)) if v else None
                else:
                    row[c] = v
        except ValueError:
            warn(f"{path.name}:{n}: skipped: {c} = {raw[c]!r} is not a number")
            continue
        if row["status"] not in STATUSES:
            warn(f"{path.name}:{n}: skipped: unknown status {row['status']!r}")
            continue
        if row["status"] in UNSCORED or (row["val_bpb"] is not None and not math.isfinite(row["val_bpb"])):
            row["val_bpb"] = None        # upstream wrote 0.000000 for crashes: never a best result
        row["run_id"] = row["run_id"] or f"line{n}-{row['commit']}"
        row["comparability_key"] = row["comparability_key"] or LEGACY_KEY
        row["line"] = n
        rows.append(row)
    return rows


def _fmt(v, digits=6) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def ledger_line(row: dict) -> str:
    digits = {"val_bpb": VAL_DIGITS, "memory_gb": 1, "peak_vram_mb": 1, "mfu_percent": 2, "training_seconds": 1,
              "total_tokens_M": 1, "num_params_M": 1}
    return "\t".join(clean_text(_fmt(row.get(c), digits.get(c, 6)), 300) for c in LEDGER_COLUMNS) + "\n"


def check_paths(results: Path, sessions: Path) -> None:
    """The ledger file and the sessions folder can be written: checked by --check and before a run trains,
    so that a path that cannot work fails in a second, not after five minutes of training."""
    for path, kind in ((results, "ledger.results"), (sessions, "ledger.sessions_dir")):
        try:
            st = os.stat(path)
            exists, is_dir, is_file = True, stat.S_ISDIR(st.st_mode), stat.S_ISREG(st.st_mode)
        except FileNotFoundError:
            exists, is_dir, is_file = False, False, False
        except (OSError, ValueError) as e:      # a NUL byte, a name too long (pathlib would answer "no such file")
            raise ConfigError(f"ground.json: key '{kind}': not a usable path ({type(e).__name__}: "
                              f"{str(e)[:60]})") from None
        if kind == "ledger.results" and exists and not is_file:      # a folder, /dev/full, /dev/null: rows lost
            raise ConfigError(f"ground.json: key '{kind}': expected a regular file, got {str(path)[:100]}"
                              f"{' (a folder)' if is_dir else ''}")
        if kind == "ledger.sessions_dir" and exists and not is_dir:
            raise ConfigError(f"ground.json: key '{kind}': expected a folder, got the file {str(path)[:100]}")
        parent = path.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not os.access(parent, os.W_OK):
            raise ConfigError(f"ground.json: key '{kind}': {str(parent)[:100]} is not writable")
    for path in (Path(f"{results}.lock"), Path(f"{results}.claims"), sessions / "memory.md", sessions / "index.jsonl"):
        if path.is_dir():                      # the harness writes these as files: a folder there stops every record
            raise ConfigError(f"{path}: is a folder where the harness writes a file; move it away")
    check_columns(results)


def _last_byte(path: Path) -> bytes:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1)


def check_columns(results: Path) -> None:
    """Refuse to append our rows to a ledger with other columns (upstream's 5, the fork's 9, a damaged header):
    a mix would make every new row unreadable. Called at a run's start, before training, and at every append."""
    if not results.exists() or results.stat().st_size == 0:
        return
    with open(results, encoding="utf-8", errors="replace") as f:
        header = f.readline().lstrip("\ufeff").rstrip("\r\n").split("\t")
    if tuple(header) != LEDGER_COLUMNS:
        read_ledger(results, warn=lambda m: None)        # a header without the required columns: its own error
        raise ConfigError(f"{results.name}: header line: has the {len(header)} columns of an older ledger; new runs "
                          f"need the {len(LEDGER_COLUMNS)} of this one: `uv run prepare.py --migrate-ledger` writes "
                          f"them beside it (the old file is kept)")


def migrate_ledger(results: Path) -> Path:
    """Rewrite an upstream or fork ledger with this ledger's columns (rows as read: crashes without a val_bpb,
    comparability key `legacy`); the old file is kept as <name>.old. Returns the old file's new path."""
    with ledger_lock(results):
        rows = read_ledger(results)
        old = results.with_name(results.name + ".old")
        if old.exists():
            raise ConfigError(f"{old.name}: exists already; move it away first")
        text = "\t".join(LEDGER_COLUMNS) + "\n" + "".join(ledger_line(r) for r in rows)
        os.replace(results, old)
        atomic_write_text(results, text)
    return old


def read_index(sessions: Path, damage: list | None = None, memo: dict | None = None) -> dict:
    """sessions/index.jsonl: run_id -> what the ledger row does not hold (fingerprint, seed, model, branch, ...),
    each entry checked (harness/checked.py); what was set aside is added to `damage`."""
    index, problems = read_jsonl(sessions / "index.jsonl", "index", memo=memo)
    if damage is not None:
        damage += problems
    return index


def append_record(results: Path, sessions: Path, row: dict, index_entry: dict, status: str | None = None,
                  after=None) -> dict:
    """Under the ledger lock: decide the status (unless given), append the row and its index entry, then
    call after(results, sessions) (the memory writer) before the lock is released. Returns the row as written."""
    with ledger_lock(results):
        rows, index = read_ledger(results, warn=lambda m: None), read_index(sessions)
        verify_rows(rows, index, LEGACY_KEY, sessions)     # a row with no run record decides nothing
        row, index_entry = dict(row), dict(index_entry)
        row["status"] = decide_entry(rows, index, row, index_entry, status)
        if row["status"] in UNSCORED:
            row["val_bpb"] = None
        if any(r["run_id"] == row["run_id"] for r in rows):
            raise ConfigError(f"{results.name}: run {row['run_id']} is already recorded")
        check_columns(results)
        new = not results.exists() or results.stat().st_size == 0
        torn = not new and _last_byte(results) != b"\n"
        data = (("\t".join(LEDGER_COLUMNS) + "\n") if new else "") + ("\n" if torn else "") + ledger_line(row)
        size = results.stat().st_size if results.exists() else 0
        try:                                       # the row whole or not at all: a failed write is cut back
            with open(results, "ab") as f:
                f.write(data.encode("utf-8"))
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            with contextlib.suppress(OSError):
                os.truncate(results, size)
            raise ConfigError(f"{results.name}: the run could not be appended ({e.strerror or type(e).__name__}); "
                              f"nothing was written") from None
        sessions.mkdir(parents=True, exist_ok=True)
        with open(sessions / "index.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(dict(index_entry, run_id=row["run_id"]), sort_keys=True) + "\n")
        if after is not None:
            after(results, sessions)
    return row


def claim_order(claim: dict) -> tuple:
    """Claims oldest first (both backends list them so)."""
    return claim["started"], claim["run_id"]


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks since boot) of a Linux process; None elsewhere, or when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rest = text[text.rindex(")") + 2:].split()
    return rest[0], int(rest[19])


def machine_identity(host: str) -> str:
    """The machine and PID namespace a process runs in: Linux's boot id and PID namespace (host names repeat
    across machines and containers, and agents on one machine may name themselves apart); elsewhere the host."""
    try:
        return f"{Path('/proc/sys/kernel/random/boot_id').read_text().strip()} {os.readlink('/proc/self/ns/pid')}"
    except OSError:
        return f"host {host}"


def process_claim(host: str) -> dict:
    """What a run's claim records of its process, for claim_state: pid, machine, start time (the claim adds its
    log and record paths: every claim claim_state can find gone has them)."""
    stat = _proc_stat(os.getpid())
    return {"pid": os.getpid(), "machine": machine_identity(host), "pid_start": stat[1] if stat else None}


def claim_state(claim: dict, host: str) -> str:
    """"gone": a claim made on this machine whose process has ended (killed outright: SIGKILL, the OOM killer)
    while its record still says running; "alive": its process runs here; "unknown": another machine's claim, or
    one without a pid (it lasts until recorded or expired)."""
    pid, start = claim.get("pid"), claim.get("pid_start")
    if os.name == "nt" or not isinstance(pid, int) or claim.get("machine") != machine_identity(host):
        return "unknown"                       # (on Windows, signal 0 is CTRL_C_EVENT: never sent)
    try:
        os.kill(pid, 0)
        stat = _proc_stat(pid)                 # a zombie, or the pid reused by another process: ended too
        ended = stat is not None and (stat[0] == "Z" or (start is not None and stat[1] != start))
    except ProcessLookupError:
        ended = True
    except OSError:                            # PermissionError: alive, another user's
        ended = False
    if not ended:
        return "alive"
    try:                                       # recorded (or queued for the shared ledger) after all: not gone
        status = json.loads(Path(claim["record"]).read_text(encoding="utf-8")).get("status")
    except (KeyError, OSError, ValueError, AttributeError, RecursionError):
        status = "running"
    return "gone" if status == "running" else "unknown"


class FileLedger:
    """The default backend: results.tsv and sessions/index.jsonl under a file lock, on one host (or a real shared
    POSIX volume). harness.database.PostgresLedger has the same methods; memory and record use only these."""

    def __init__(self, results: Path, sessions: Path):
        self.results, self.sessions = results, sessions
        self.claims_path = results.with_name(results.name + ".claims")
        self.memo = {}                        # index.jsonl's lines parsed once per process (harness/checked.py)
        self.note, self.damage = None, []     # memory.md's lines: where its rows came from; entries set aside

    def lock(self):
        return ledger_lock(self.results)

    def check(self) -> None:
        check_paths(self.results, self.sessions)

    def read(self) -> tuple[list[dict], dict]:
        self.damage = []                      # entries set aside, for memory.md's `!!` lines
        rows, index = read_ledger(self.results, warn=lambda m: None), read_index(self.sessions, self.damage, self.memo)
        if n := verify_rows(rows, index, LEGACY_KEY, self.sessions):
            self.damage.append(f"{self.results.name}: {n} row(s) with no run record in index.jsonl (hand-added, or "
                               f"killed between row and record): shown as unverified, never a best")
        return rows, index

    def append(self, row: dict, entry: dict, status: str | None = None, after=None, files: dict | None = None) -> dict:
        """Decide, append and drop the run's claim under the lock; then after(self) (memory.md), still under it.
        `files` (model.json and train.py) stay in the run's own record, sessions/<run_id>.json."""
        def recorded(results, sessions):
            self._drop_claim(row["run_id"])
            if after is not None:
                after(self)
        return append_record(self.results, self.sessions, row, entry, status, after=recorded)

    # -- runs in flight: what each started run trains, until it is recorded or its claim expires ----------
    def _read_claims(self) -> list[dict]:
        claims, _ = read_jsonl(self.claims_path, "claim")        # a damaged claim: set aside (it only informs)
        return list(claims.values())

    def _write_claims(self, claims: list[dict]) -> None:
        if not claims:
            self.claims_path.unlink(missing_ok=True)
            return
        atomic_write_text(self.claims_path, "".join(json.dumps(c, sort_keys=True) + "\n" for c in claims))

    def claim(self, claim: dict) -> None:
        with self.lock():
            live = [c for c in self._read_claims()
                    if c["run_id"] != claim["run_id"] and c["expires"] > claim["started"]]      # expired: dropped
            self._write_claims(live + [claim])

    def _drop_claim(self, run_id: str) -> None:
        claims = self._read_claims()
        if any(c["run_id"] == run_id for c in claims):
            self._write_claims([c for c in claims if c["run_id"] != run_id])

    def claims(self, now: float) -> list[dict]:
        return sorted((c for c in self._read_claims() if c["expires"] > now), key=claim_order)

    def send_queued(self) -> list[dict]:
        return []                             # nothing is ever queued: the file is always there

    def files(self, run_id: str) -> dict | None:
        """model.json and train.py as trained, from sessions/<run_id>.json (a hand-made row's id names no file)."""
        if Path(str(run_id)).name != str(run_id) or str(run_id).startswith("."):     # a name, never a path
            return None
        found = (read_record(self.sessions / f"{run_id}.json")[0] or {}).get("files")
        return found if isinstance(found, dict) and {"model.json", "train.py"} <= set(found) else None
