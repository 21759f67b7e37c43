"""The human's held-out score: bits per byte on a second pinned split, for the baseline and kept runs only.

    uv run prepare.py          # makes the split: climbmix's data.heldout_shard, local's second-to-last file,
                               # builtin's next 5% of files by path hash; its hash enters the comparability key

A night of selections on val_bpb can overfit val itself (modded-nanogpt #223). The held-out split is never
trained on and never shown to the agent: its scores go to the run record (sessions/<run_id>.json),
sessions/heldout.jsonl and the shared database's table, and to the human's views (progress.png, the notebook),
never to memory.md, `next:` or the run's output, which prints only the time the score added.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import time

from harness.checked import check, read_jsonl
from harness.config import ConfigError
from harness.evaluate import evaluate_bpb, heldout_rows
from harness.pgconn import HELDOUT, HELDOUT_TABLE, Unreachable
from harness.plot import write_progress_png

HELDOUT_STATUSES = ("baseline", "keep")      # the configurations the night's progress is made of
HELDOUT_FILE = "heldout.jsonl"


def score(run, model, tokenizer, batch_size: int, autocast) -> dict | None:
    """After `run` was recorded as a baseline or a keep: score the held-out split with the same model and metric,
    store it for the human, and print the time it took (never the score). Returns the stored entry."""
    status = (run.recorded or {}).get("status")
    if status not in HELDOUT_STATUSES:
        return None
    rows = heldout_rows(tokenizer)
    if not rows:
        print("heldout: none prepared (data prepared before held-out splits existed); run `uv run prepare.py` "
              "again to add one (a new comparability key)")
        return None
    t0 = time.monotonic()
    with autocast:
        bpb = evaluate_bpb(model, tokenizer, batch_size, split="heldout")
    seconds = time.monotonic() - t0
    entry = {"run_id": run.run_id, "heldout_bpb": bpb, "heldout_seconds": seconds, "rows": rows, "status": status,
             "val_bpb": run.recorded.get("val_bpb"), "comparability_key": run.key,
             "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    try:
        add(run.store, entry)
    except OSError as e:
        print(f"!! heldout: scored but not stored ({e}); the run itself is recorded")
    run.record["heldout"] = entry
    with contextlib.suppress(OSError):
        run._write_json()
    print(f"heldout: the human's held-out split ({rows} rows) scored for this {status} in {seconds:.1f}s; its score "
          f"is for the human's views, not for this protocol")
    return entry


def add(store, entry: dict) -> None:
    """Append one score under the ledger's lock (and insert it into the shared database when there is one), then
    redraw progress.png, whose second panel shows it."""
    local = getattr(store, "local", store)
    with store.lock():
        with open(local.sessions / HELDOUT_FILE, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry, sort_keys=True) + "\n")
        if hasattr(store, "db"):      # the local file keeps it when the database cannot (down; a role without
            try:                       # CREATE on a database made before this table existed)
                store.db.retry(lambda conn: _insert(conn, entry))
            except (Unreachable, ConfigError) as e:
                print(f"!! heldout: kept in {HELDOUT_FILE} only; the shared database did not take it ({e})")
        rows, index = store.read()
        write_progress_png(rows, index, local.sessions, read(store))


def _insert(conn, entry: dict) -> None:
    if conn.execute(f"SELECT to_regclass('{HELDOUT}')").fetchone()[0] is None:    # only then: CREATE needs a grant
        conn.execute(HELDOUT_TABLE)
    conn.execute(f"INSERT INTO {HELDOUT} (run_id, entry) VALUES (%s, %s) ON CONFLICT (run_id) DO NOTHING",
                 (entry["run_id"], json.dumps(entry)))


def read(store) -> dict:
    """run_id -> held-out entry: this host's sessions/heldout.jsonl, and every host's in the shared database, each
    checked (harness/checked.py); a damaged one is set aside (the scores are the human's view, never an input to a
    decision)."""
    out, _ = read_jsonl(getattr(store, "local", store).sessions / HELDOUT_FILE, "heldout")
    if hasattr(store, "db"):
        with contextlib.suppress(Unreachable, ConfigError):    # unreachable: this host's scores still show
            for (e,) in store.db.retry(lambda conn: conn.execute(f"SELECT entry FROM {HELDOUT}").fetchall()):
                if (e := check(e, "heldout", HELDOUT)[0]) is not None:
                    out.setdefault(e["run_id"], e)
    return out
