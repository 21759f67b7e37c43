"""Ledger: results.tsv, append-only under a file lock, and the one strict parser every reader shares.

    uv run prepare.py --memory        # re-reads the ledger and regenerates sessions/memory.md

One row per run, never rewritten. The status of a new row is decided here, under the lock,
against the rows of the same comparability key. Upstream's 5-column and the fork's 9-column
ledgers are read too; a corrupt line is warned about and skipped.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
from pathlib import Path

from harness import settings
from harness.config import ConfigError
from harness.decide import decide
from harness.settings import Settings

LEDGER_COLUMNS = ("run_id", "commit", "val_bpb", "memory_gb", "status", "description", "peak_vram_mb", "mfu_percent",
                  "training_seconds", "total_tokens_M", "num_params_M", "num_steps", "mode", "comparability_key",
                  "timestamp")
STATUSES = ("baseline", "keep", "confirm", "discard", "repeat", "rerun", "crash", "interrupted")   # harness.decide
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


def clean_text(text: str, limit: int = 200) -> str:
    """One line, no tabs: safe inside a TSV cell and a markdown table."""
    return re.sub(r"[\t\r\n|]+", " ", str(text)).strip()[:limit]


def read_ledger(path: Path, warn=None) -> list[dict]:
    """Parse a ledger: ours (15 columns), upstream's 5-column or the fork's 9-column one, by header.
    Typed rows; crash rows get val_bpb None (upstream's 0.000000 included). A corrupt line is
    warned about and skipped, never rewritten."""
    warn = warn or (lambda m: print(f"warning: {m}", file=sys.stderr))
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8", errors="replace").split("\n")
    header = lines[0].rstrip("\r").split("\t")
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
        if row["status"] in ("crash", "interrupted") or (row["val_bpb"] is not None
                                                         and not math.isfinite(row["val_bpb"])):
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
    digits = {"val_bpb": 6, "memory_gb": 1, "peak_vram_mb": 1, "mfu_percent": 2, "training_seconds": 1,
              "total_tokens_M": 1, "num_params_M": 1}
    return "\t".join(clean_text(_fmt(row.get(c), digits.get(c, 6)), 300) for c in LEDGER_COLUMNS) + "\n"


def read_index(sessions: Path) -> dict:
    """sessions/index.jsonl: run_id -> what the ledger row does not hold (fingerprint, seed, model, branch, ...)."""
    out = {}
    p = sessions / "index.jsonl"
    if p.exists():
        for line in p.read_text(encoding="utf-8").splitlines():
            try:
                e = json.loads(line)
                out[e["run_id"]] = e
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
    return out


def append_record(results: Path, sessions: Path, row: dict, index_entry: dict, status: str | None = None,
                  after=None) -> dict:
    """Under the ledger lock: decide the status (unless given), append the row and its index entry, then
    call after(results, sessions) (the memory writer) before the lock is released. Returns the row as written."""
    with ledger_lock(results):
        rows = read_ledger(results, warn=lambda m: None)
        row = dict(row)
        row["status"] = status or decide(rows, read_index(sessions), row["comparability_key"],
                                         index_entry.get("fingerprint"), index_entry.get("seed"), row.get("val_bpb"))
        if row["status"] in ("crash", "interrupted"):
            row["val_bpb"] = None
        new = not results.exists() or results.stat().st_size == 0
        with open(results, "a", encoding="utf-8") as f:
            if new:
                f.write("\t".join(LEDGER_COLUMNS) + "\n")
            f.write(ledger_line(row))
            f.flush()
            os.fsync(f.fileno())
        sessions.mkdir(parents=True, exist_ok=True)
        with open(sessions / "index.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(dict(index_entry, run_id=row["run_id"]), sort_keys=True) + "\n")
        if after is not None:
            after(results, sessions)
    return row
