"""A run killed outright (OOM killer, SIGKILL, a timeout), recorded afterwards from its log and run record.

    uv run prepare.py --record-crash sessions/<run_id>.log

The row and index entry come from harness/record.py's builders (run_row, run_entry), the same as a run that
records itself; the reason is the log's last error line, marked `killed: ` when the process was killed.
"""

from __future__ import annotations

import json
import re
import shlex
import time
from pathlib import Path

from harness import settings
from harness.checked import RUN_ID, read_record
from harness.config import REPO_DIR, ConfigError
from harness.database import open_ledger
from harness.errors import ErrorKind
from harness.digest import KILLED
from harness.identity import harness_env, host_name
from harness.ledger import claim_state
from harness.lineage import env_assignments, env_prefix
from harness.record import append_run, run_entry, run_row
from harness.settings import Settings
from harness.util import atomic_write_text

_ERROR_LINE = re.compile(r"(Error|Exception|Killed|killed|CRASH|FAIL|Traceback|out of memory|OOM)")


def record_crash_from_log(log: Path, s: Settings | None = None) -> dict:
    """For a run killed outright (OOM killer, timeout): write its crash row from the saved log."""
    s = s or settings.current()
    if not log.exists():
        raise ConfigError(f"{log}: no such log file")
    run_id = log.name[:-4] if log.name.endswith(".log") else log.name
    store = open_ledger(s)
    getattr(store, "local", store).check()      # a ledger that cannot take the row: one line, before anything
    results, sessions = store.results, store.sessions
    if log.resolve().parent != sessions.resolve() or not RUN_ID.fullmatch(run_id):
        raise ConfigError(f"--record-crash {str(log)[:100]}: expected a run's log in {sessions} (<run_id>.log)")
    rec_path = log.with_suffix(".json")
    if not rec_path.exists():
        raise ConfigError(f"{rec_path}: no run record beside the log (not a train.py run log?)")
    rec, damage = read_record(rec_path)           # harness/checked.py: damaged fields are set aside, said here
    if rec is None:
        raise ConfigError(f"{damage[0]}; record this run by hand or remove the log")
    for line in damage:
        print(f"!! {line}")
    worktree = (rec.get("git") or {}).get("worktree")
    if worktree and Path(worktree).resolve() != REPO_DIR.resolve():      # its commits and return points are there
        raise ConfigError(f"{rec_path.name}: run {run_id} ran in {worktree}; record it there: cd "
                          f"{shlex.quote(worktree)} && {env_prefix(harness_env())}uv run prepare.py --record-crash "
                          f"{shlex.quote(str(log))}")
    started, here = (rec.get("launch") or {}).get("env"), harness_env()     # None: recorded before launches kept it
    if started is not None and started != here:         # another ledger, model.json or host than the run's
        said = lambda env: env_assignments(env) or "no AUTORESEARCH_ variables"                     # noqa: E731
        unset = " ".join(f"-u {var}" for var in here if var not in started)
        command = " ".join(w for w in ("env", unset, env_assignments(started), "uv run prepare.py --record-crash",
                                       shlex.quote(str(log))) if w)
        raise ConfigError(f"{rec_path.name}: run {run_id} was started with {said(started)}, this process with "
                          f"{said(here)}; record it as it ran: {command}")
    if any(r["run_id"] == run_id for r in store.read()[0]) or rec.get("status", "running") != "running":
        raise ConfigError(f"{results.name}: run {run_id} is already recorded ({rec.get('status')} in {rec_path.name})")
    if any(c["run_id"] == run_id and claim_state(c, host_name()) == "alive" for c in store.claims(time.time())):
        raise ConfigError(f"run {run_id} is still running on this machine: it records itself")
    lines = [ln.strip() for ln in re.split(r"[\r\n]", log.read_text(encoding="utf-8", errors="replace")) if ln.strip()]
    errs = [ln for ln in lines if _ERROR_LINE.search(ln)]
    reason = errs[-1] if errs else (f"no error message; last output: {lines[-1][:120]}" if lines
                                    else "no output at all")
    raised = bool(errs) and re.search(r"\w(Error|Exception)\b", reason) and not re.search(r"[Kk]illed", reason)
    error = reason if raised else KILLED + reason      # a raised exception the run could not record is the edit's
    row, entry = run_row(run_id, rec, {}), run_entry(rec, error)
    if not raised:
        entry["error_kind"] = ErrorKind.KILLED.value
    row = append_run(results, sessions, row, entry, status="crash", store=store)
    original = json.loads(rec_path.read_text(encoding="utf-8", errors="replace"))   # damaged fields kept as found
    original.update(status="crash", error=entry["error"])
    atomic_write_text(rec_path, json.dumps(original, indent=2, default=str))
    return row
