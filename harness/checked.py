"""Every harness-written file read through one check: run records, index entries, claims, held-out scores.

    uv run prepare.py --memory        # a damaged entry is named in one `!!` line of memory.md and set aside

The harness writes these files, but a crash, a full disk or a hand edit can leave anything in them. Each entry is
checked against the types the harness writes (SCHEMAS): an entry that is not an object or lacks its run_id is set
aside whole; a field of the wrong type is set aside alone (read as missing, which every reader handles). Each
problem is one line naming the file, the line and the key. Readers collect them (`Damage`), memory.md shows them
as `!!` lines, and nothing damaged stops a later run from recording or the digest from being written.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

RUN_ID = re.compile(r"\d{8}T\d{6}Z-[A-Za-z0-9]{1,40}-[0-9a-f]{1,16}")     # harness/record.py: time-commit-random

_NUM = (int, float)
_TEXT = str
_OBJ = dict
_LIST = list
# key -> the types the harness writes (None is always allowed: "not known"); keys not listed are not read as typed
_ENTRY = {"run_id": _TEXT, "model": _OBJ, "fingerprint": _TEXT, "seed": int, "error": _TEXT, "train_py": _OBJ,
          "model_changes_by_mode": _OBJ, "commit": _TEXT, "parent": _TEXT, "branch": _TEXT, "files_sha": _TEXT,
          "parent_files_sha": _TEXT, "worktree": _TEXT, "dirty": (bool, _LIST), "host": _TEXT, "key_parts": _OBJ,
          "launch": _OBJ, "curve": _LIST, "epochs": _NUM, "host_speed": _NUM, "compiled_in_budget": int,
          "error_kind": _TEXT, "fit_steps": int, "decision": _OBJ}
SCHEMAS = {
    "index": _ENTRY,
    "record": dict(_ENTRY, status=_TEXT, timestamp=_TEXT, description=_TEXT, git=_OBJ, files=_OBJ, metrics=_OBJ,
                   comparability_key=_TEXT, mode=_TEXT, argv=_LIST, world_size=int, row=_OBJ, index_entry=_OBJ),
    "claim": dict(_ENTRY, started=_NUM, expires=_NUM, pid=int, pid_start=int, machine=_TEXT, log=_TEXT,
                  record=_TEXT, comparability_key=_TEXT, description=_TEXT),
    "heldout": {"run_id": _TEXT, "heldout_bpb": _NUM, "heldout_seconds": _NUM, "rows": int, "val_bpb": _NUM},
}
REQUIRED = {"index": ("run_id",), "record": ("run_id",), "claim": ("run_id", "started", "expires"),
            "heldout": ("run_id", "heldout_bpb")}
_NESTED = {("launch", "env"): _OBJ, ("git", "commit"): _TEXT, ("git", "worktree"): _TEXT, ("launch", "per_node"): int}


def _show(v) -> str:
    text = json.dumps(v, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def _ok(value, types) -> bool:
    if value is None:
        return True
    if isinstance(value, bool) and types in (int, _NUM):
        return False
    if types is _NUM and isinstance(value, float):
        return value == value and abs(value) != float("inf")
    return isinstance(value, types)


def check(obj, kind: str, where: str) -> tuple[dict | None, list[str]]:
    """(the entry with damaged fields set aside, or None when it cannot be used at all; the problems)."""
    schema = SCHEMAS[kind]
    if not isinstance(obj, dict):
        return None, [f"{where}: not a JSON object ({type(obj).__name__}): set aside"]
    missing = [k for k in REQUIRED[kind] if not _ok(obj.get(k), schema[k]) or obj.get(k) is None]
    if missing:
        return None, [f"{where}: key '{missing[0]}' missing or damaged ({_show(obj.get(missing[0]))}): set aside"]
    out, problems = dict(obj), []
    for key in [k for k in out if k in schema]:          # a key not there reads as None, which is always allowed
        types = schema[key]
        if not _ok(out[key], types):
            problems.append(f"{where}: key '{key}' is {_show(out.pop(key))}, not what the harness writes: that "
                            f"field set aside")
    for (outer, inner), types in _NESTED.items():
        if isinstance(out.get(outer), dict) and not _ok(out[outer].get(inner), types):
            problems.append(f"{where}: key '{outer}.{inner}' is {_show(out[outer][inner])}: that field set aside")
            out[outer] = {k: v for k, v in out[outer].items() if k != inner}
    return out, problems


_NOT_JSON = object()


def read_jsonl(path: Path, kind: str, key: str = "run_id", memo: dict | None = None) -> tuple[dict, list[str]]:
    """key -> the last valid entry of a JSON-lines file the harness appends to; a missing file is empty. `memo`
    (a dict the caller keeps) holds each line's checked entry: a reader that reads the file again (the live view)
    parses only its new lines."""
    out, problems = {}, []
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return out, problems
    except OSError as e:                   # a folder in its place, no permission
        return out, [f"{path.name}: cannot be read ({type(e).__name__}): its entries are not shown"]
    for n, line in enumerate(raw.decode("utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        if memo is not None and (n, line) in memo:
            entry, found = memo[(n, line)]
            entry = None if entry is None else dict(entry)          # a reader may change its copy
        else:
            try:
                obj = json.loads(line)
            except (ValueError, RecursionError):       # RecursionError: nested deeper than the parser goes
                obj = _NOT_JSON
            entry, found = check(obj, kind, f"{path.name}:{n}") if obj is not _NOT_JSON else (
                None, [f"{path.name}:{n}: not JSON: set aside"])
            if memo is not None:
                memo[(n, line)] = (None if entry is None else dict(entry), found)
        problems += found
        if entry is not None:
            out[entry[key]] = entry
    return out, problems


def read_record(path: Path) -> tuple[dict | None, list[str]]:
    """A run record, sessions/<run_id>.json: (the checked record or None, the problems)."""
    try:
        obj = json.loads(path.read_text(encoding="utf-8", errors="replace"))
    except FileNotFoundError:
        return None, [f"{path.name}: no such run record"]
    except (OSError, ValueError, RecursionError) as e:
        return None, [f"{path.name}: not a run record ({type(e).__name__})"]
    return check(obj, "record", path.name)


def verify_rows(rows: list[dict], index: dict, legacy_key: str, sessions: Path | None = None) -> int:
    """Rows of results.tsv with no index entry of their run (every recorded run has one) become `unverified`: never
    a best, a floor or a bar. A run killed between its row and its index line is reconciled from its run record
    (written before the row), when that record holds the same run and val_bpb. This catches a hand-added row, not a
    determined forger (who would add both lines; a signed ledger or the shared database's permissions would stop
    that). Returns how many rows were marked; rows are fresh per read, so the file is never changed."""
    n = 0
    for r in rows:
        if r.get("run_id") in index or r.get("comparability_key") == legacy_key or r["status"] == "unverified":
            continue
        entry = _entry_from_record(sessions, r) if sessions is not None else None
        if entry is not None:
            index[r["run_id"]] = entry
        else:
            r["status"], n = "unverified", n + 1
    return n


def _entry_from_record(sessions: Path, row: dict) -> dict | None:
    run_id = str(row.get("run_id"))
    if not RUN_ID.fullmatch(run_id):
        return None
    rec, _ = read_record(sessions / f"{run_id}.json")
    written = (rec or {}).get("row")
    if not isinstance(written, dict) or not isinstance(rec.get("index_entry"), dict) or written.get("run_id") != run_id:
        return None
    mine, theirs = written.get("val_bpb"), row.get("val_bpb")
    same = (mine is None and theirs is None) or (_ok(mine, _NUM) and mine is not None and theirs is not None
                                                 and abs(mine - theirs) < 5e-7)
    return check(dict(rec["index_entry"], run_id=run_id), "index", f"{run_id}.json")[0] if same else None
