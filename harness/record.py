"""Run records: the Session (harness/session.py) calls start_run() once; every outcome is recorded.

    uv run pytest tests/test_train.py      # results, crashes, signals, through train.py

A Run tees the console to sessions/<run_id>.log, writes sessions/<run_id>.json (configs, PLATFORM,
versions, commit, metrics), and records exactly once: finish() with the metrics, crash() with a
reason, or on its own for an uncaught exception or SIGINT/SIGTERM.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import json
import math
import os
import sys
import time
from pathlib import Path

from harness import settings, warm_eval
from harness.config import REPO_DIR, ConfigError, ModelConfig, fail
from harness.evaluate import eval_rows
from harness.hardware import get_platform
from harness.identity import (config_fingerprint, git_info, ground_commit_note, harness_env, host_name, keeping_ground,
                               key_of, key_parts, launch_info, library_versions, train_py_functions, trained_files)
from harness.decide import is_scored, run_fingerprint, standing
from harness.errors import ErrorKind
from harness.database import open_ledger
from harness.ledger import LEGACY_KEY, FileLedger, claim_state, clean_text, process_claim
from harness.liveclaim import LiveClaim
from harness.lineage import RECOMPILED, STOPPED_SHORT, env_prefix, parent_run
from harness.digest import cancelled_by_caps, floor_step_spread
from harness.memory import write_memory
from harness.nextstep import next_step
from harness.settings import Settings
from harness.sources import load_manifest
from harness.tokenizer import Tokenizer
from harness.util import Tee, atomic_write_text

CLAIM_GRACE_S = 600      # a claim outlives its run's hard wall limit (harness.clock): then its machine died
EPOCHS_WARN = 4          # passes over the train split past which a run says it repeats its data

# ---------------------------------------------------------------------------
# One row into the ledger, the digest regenerated
# ---------------------------------------------------------------------------

def run_row(run_id: str, rec: dict, metrics: dict) -> dict:
    """The ledger row of a run from its record (sessions/<run_id>.json) and metrics: one builder for a run that
    records itself and for one recorded afterwards from its log (harness/recover.py)."""
    vram = metrics.get("peak_vram_mb")
    return {"run_id": run_id, "commit": (rec.get("git") or {}).get("commit", ""), "val_bpb": metrics.get("val_bpb"),
            "memory_gb": None if vram is None else vram / 1024, "description": rec.get("description", ""),
            "peak_vram_mb": vram, "mfu_percent": metrics.get("mfu_percent"),
            "training_seconds": metrics.get("training_seconds"), "total_tokens_M": metrics.get("total_tokens_M"),
            "num_params_M": metrics.get("num_params_M"), "num_steps": metrics.get("num_steps"),
            "mode": rec.get("mode", ""), "comparability_key": rec.get("comparability_key", LEGACY_KEY),
            "timestamp": rec.get("timestamp", "")}


def run_entry(rec: dict, error: str | None) -> dict:
    """What the ledger row does not hold and memory.md needs (configuration, seed, lineage, caps), from the run's
    record."""
    git = rec.get("git") or {}
    return {"model": rec.get("model"), "fingerprint": rec.get("fingerprint"), "seed": rec.get("seed"), "error": error,
            "train_py": rec.get("train_py"), "model_changes_by_mode": rec.get("model_changes_by_mode"),
            "commit": git.get("commit"), "parent": git.get("parent"), "branch": git.get("branch"),
            "files_sha": git.get("files_sha"), "parent_files_sha": git.get("parent_files_sha"),
            "worktree": git.get("worktree"), "dirty": git.get("dirty"), "host": rec.get("host"),
            "key_parts": rec.get("key_parts"), "launch": rec.get("launch")}

def append_run(results: Path, sessions: Path, row: dict, index_entry: dict, status: str | None = None,
           plot: bool = False, store=None, files: dict | None = None) -> dict:
    """Append one run to the ledger (results.tsv, or `store`) and regenerate memory.md (and progress.png)."""
    store = store or FileLedger(results, sessions)

    def digest(st):                        # the row is in: a disk that fills now costs the digest, not the record
        try:
            write_memory(st, plot)
        except OSError as e:
            print(f"!! recorded; memory.md could not be written: {type(e).__name__}: {e}")
    return store.append(row, index_entry, status, after=digest, files=files)


# ---------------------------------------------------------------------------
# The run: console log, JSON record, exactly one ledger row
# ---------------------------------------------------------------------------

class Run:
    """One experiment's record. Created by start_run(); finish() or crash() records it once."""

    def __init__(self, s: Settings, tokenizer: Tokenizer, model: ModelConfig, model_changes: dict,
                 description: str | None, platform: dict, extra: dict | None = None, seed: int | None = None):
        self.s = s
        self.seed = seed
        self.git = git_info()
        stamp = _dt.datetime.now(_dt.timezone.utc)
        self.run_id = f"{stamp:%Y%m%dT%H%M%SZ}-{self.git['commit']}-{os.urandom(4).hex()}"
        self.timestamp = stamp.isoformat(timespec="seconds")
        default = (f"(uncommitted edits on {self.git['commit']})" if self.git["dirty"]
                   else self.git["subject"] or "(no description)")
        self.description = clean_text(description or default, 200)
        self.full_description = str(description or default)
        self.manifest = load_manifest(s)
        # the key from this machine's PLATFORM, not the run's copy: a backend the model's shapes refused at start-up
        # (confirm_attention) is the edit's doing, judged in its lineage's key; the record keeps what ran
        self.key_parts = key_parts(s, tokenizer, self.manifest, get_platform())
        self.key = key_of(self.key_parts)
        self.store = open_ledger(s)
        self.results, self.sessions = self.store.results, self.store.sessions
        self.store.check()            # a ledger this run could not be added to: refused before training
        self.model = dataclasses.asdict(model)
        self.model["adam_betas"] = list(self.model["adam_betas"])
        self.record = {
            "run_id": self.run_id, "status": "running", "timestamp": self.timestamp, "description": self.description,
            "git": self.git, "comparability_key": self.key, "key_parts": self.key_parts, "launch": launch_info(),
            "mode": s.mode, "mode_reason": s.mode_reason,
            "fingerprint": config_fingerprint(capped={k: v for k, (_, v) in model_changes.items()
                                                      if k in s.model_caps}),
            "seed": seed, "model": self.model, "train_py": train_py_functions(),
            "model_changes_by_mode": {k: list(v) for k, v in model_changes.items()},
            "ground": dataclasses.asdict(s.ground), "platform": platform, "versions": library_versions(),
            "data": {k: self.manifest[k] for k in ("source", "val", "val_sha256")},
            "tokenizer": tokenizer.fingerprint(), "eval_tokens": eval_rows(tokenizer, s)[0] * s.max_seq_len,
            "argv": sys.argv, "host": host_name(), "files": trained_files(), **(extra or {}),
            **({"description_full": self.full_description} if self.full_description != self.description else {}),
        }
        self.recorded = None
        self.warnings = []                 # the start's `!!` lines, said again before `next:`
        self.ground = None                 # identity.ground_commit_note at the start: `next:` keeps ground.json
        self._finishing, self.live = False, None      # live: harness/liveclaim.py, from the claim on
        self.log_path = self.sessions / f"{self.run_id}.log"
        self.json_path = self.sessions / f"{self.run_id}.json"

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> "Run":
        import signal
        self.sessions.mkdir(parents=True, exist_ok=True)
        sys.stdout, sys.stderr = Tee(sys.stdout, self.log_path), Tee(sys.stderr, self.log_path)
        start = {"run_id": self.run_id, "comparability_key": self.key, "commit": self.git["commit"]}
        print(f"run_start: {json.dumps(start)}")
        print(f"run_id: {self.run_id}  commit: {self.git['commit']}{' (dirty)' if self.git['dirty'] else ''}")
        print("versions: " + ", ".join(f"{k} {v}" for k, v in self.record["versions"].items() if v))
        print(f"seed: {self.seed}  configuration: {self.record['fingerprint']} (model.json + train.py)")
        rows, index = self.store.read()
        self.ground = ground_commit_note(after_a_run=any(r["commit"] == self.git.get("parent") for r in rows))
        self.warnings = self.cap_warnings(rows, index) + ([self.ground.line] if self.ground else [])
        if self.full_description != self.description:      # the ledger's cell is one clean line of 200 at most
            self.warnings.append(f"!! the description was shortened or cleaned for the ledger (one line, no control "
                                 f"characters or bars, at most 200 characters); the full text is in {self.json_path}")
        for line in self.warnings:
            print(line)
        self._write_json()
        self.warnings += self.announce(rows, index)
        self._prev_hook = sys.excepthook
        sys.excepthook = self._excepthook
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._on_signal)
        return self

    def _write_json(self):
        atomic_write_text(self.json_path, json.dumps(self.record, indent=2, default=str))

    def _excepthook(self, etype, value, tb):
        self._prev_hook(etype, value, tb)          # the traceback first: the record and `next:` end the log
        if self.recorded is None and not issubclass(etype, (SystemExit,)):
            lines = str(value).strip().splitlines()
            self.crash(f"{etype.__name__}: {lines[-1] if lines else ''}".strip().rstrip(":"))

    def _on_signal(self, signum, frame):
        import signal
        name = signal.Signals(signum).name
        if self.recorded is not None:        # recorded already (the held-out eval runs after): just stop
            os._exit(128 + signum)
        if self._finishing:                  # the outcome is being recorded: interrupting that would lose it
            return                           # (no word: a write here could land inside the one it interrupted)
        for stream in (sys.stdout, sys.stderr):
            getattr(stream, "reopen", lambda: None)()      # the signal may have come inside a write to the old ones
        print(f"\n{name} received: recording the run as interrupted")
        self.finish({}, status="interrupted", error=f"{name} received")
        raise SystemExit(128 + signum)

    def _row(self, metrics: dict) -> dict:
        return run_row(self.run_id, self.record, metrics)

    def finish(self, metrics: dict, status: str | None = None, error: str | None = None) -> dict:
        """Record the outcome once: status decided against the ledger unless given. Returns the row."""
        if self.recorded is not None or self._finishing:
            return self.recorded
        self._finishing = True
        warm_eval.stop()                     # a run ending early leaves no second process behind
        if self.live is not None:
            self.live.stop()                 # no claim written after the record deletes it
        metrics = {k: (float(v) if isinstance(v, (int, float)) and k != "num_steps" else v) for k, v in metrics.items()}
        compiled = metrics.get("compiled_in_budget")           # None: not measured (a crash, an interrupt)
        row = self._row(metrics)
        kind = fit = None
        if status is None and (short := self._not_comparable(metrics)):      # not a measure of the idea
            (kind, error, fit), status, row["val_bpb"] = short, "crash", None
            print(f"!! {error}")
        index_entry = dict(self._index_entry(error), epochs=metrics.get("epochs"), curve=metrics.get("curve"),
                           **({"error_kind": kind.value, "fit_steps": fit} if kind else {}),
                           host_speed=self.record.get("host_speed"),
                           compiled_in_budget=None if compiled is None else int(compiled))
        if (metrics.get("epochs") or 0) > EPOCHS_WARN:
            print(f"!! this run read the train split {metrics['epochs']:.1f} times: past a few passes val_bpb "
                  f"measures memorization as much as learning, and what wins here may not transfer")
        self.record.update(metrics=metrics, error=error, row=row, index_entry=index_entry)
        with contextlib.suppress(OSError):
            self._write_json()               # before the row: a kill between row and index line is reconciled from it
        try:
            self.recorded = append_run(self.results, self.sessions, row, index_entry, status, plot=True,
                                   store=self.store, files=self.record["files"])
        except (ConfigError, OSError) as e:  # a ledger damaged by hand, a full disk
            self.recorded = {"status": "unrecorded"}
            with contextlib.suppress(OSError):
                self._write_json()           # the row stays in the run's JSON for a later --record-crash
            fail(f"{e} (this run was not recorded; its log is {self.log_path})")
        self.record.update(status=self.recorded["status"], metrics=metrics, error=error,
                           finished=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
        self._write_json()
        print(f"recorded: {self.recorded['status']} -> {self.results} ; digest -> {self.sessions / 'memory.md'}")
        rows, index = self.store.read()
        spread = self.step_spread(rows, index)
        for line in self.warnings + [spread] * bool(spread):
            print(line)
        self.next_step = keeping_ground(next_step(self.recorded, rows, index, self.git.get("branch"), harness_env()),
                                        self.ground)
        if spread and self.recorded["status"] in ("keep", "confirm", "discard"):
            self.next_step = f"{spread}; meanwhile: {self.next_step}"
        print(f"next: {self.next_step}")
        return self.recorded

    def step_spread(self, rows: list[dict], index: dict) -> str | None:
        """The `!!` line when the runs this run's decision rests on trained different step counts (the machine's
        speed varied under a time budget), else None."""
        spread = None if self.s.max_steps else floor_step_spread(rows, index, self.key, standing(rows, index, self.key))
        if spread is None:
            return None
        return (f"!! the floor's runs trained {spread[0]}..{spread[1]} steps: the machine's speed moved val_bpb as "
                f"much as an edit could; this decision mixes the two. Set max_steps (e.g. {spread[2]}) in "
                f"ground.json's profile, in a commit of its own (a new key)")

    def _index_entry(self, error: str | None) -> dict:
        return run_entry(self.record, error)

    def _not_comparable(self, metrics: dict) -> tuple[ErrorKind, str, int | None] | None:
        """Why a finished run measured something else than its configuration, or None: under max_steps it stopped
        short of them (the hard limit); under a time budget a graph compiled in counted steps took budget seconds,
        as many as the compile cache made it (harness/clock.py). Recorded as a crash with this reason."""
        steps, v = metrics.get("num_steps") or 0, "?" if metrics.get("val_bpb") is None else f"{metrics['val_bpb']:.6f}"
        if self.s.max_steps and steps < self.s.max_steps:
            pace, graphs = metrics.get("training_seconds") or 0.0, int(metrics.get("compiled_in_budget") or 0)
            timed = steps - self.s.excluded_steps                        # the steps training_seconds holds
            fit = self.s.excluded_steps + int(timed * self.s.time_budget_s / pace) if pace and timed > 0 else 0
            why = (f"{graphs} graph(s) compiled in counted steps; " if graphs else          # their seconds, not a pace
                   f"about {fit} steps fit the budget; " if 0 < fit < self.s.max_steps else "")
            return (ErrorKind.STOPPED_SHORT, f"{STOPPED_SHORT} {steps} of max_steps {self.s.max_steps} ({why}val_bpb "
                    f"{v}, not judged)", fit if 0 < fit < self.s.max_steps and not graphs else None)
        if metrics.get("compiled_in_budget") and not self.s.max_steps:
            return (ErrorKind.RECOMPILED, f"{RECOMPILED}: {int(metrics['compiled_in_budget'])} graph(s) compiled in "
                    f"counted steps (val_bpb {v}, not judged: the compile took budget seconds)", None)
        return None

    def announce(self, rows: list[dict], index: dict) -> list[str]:
        """Claim the run in the ledger (other agents see it in memory.md's "Running now" until it is recorded or
        expires), and print `!!` where its configuration is already running or already recorded (returned)."""
        now = time.time()
        fp = self.record["fingerprint"]
        claim = {k: v for k, v in self._index_entry(None).items()
                 if k not in ("error", "dirty", "parent", "commit", "key_parts", "launch")}
        claim.update(run_id=self.run_id, comparability_key=self.key, description=self.description, started=now,
                     expires=now + 2 * self.s.time_budget_s + CLAIM_GRACE_S, log=str(self.log_path.resolve()),
                     record=str(self.json_path.resolve()), **process_claim(host_name()))
        lines = []
        recorded = {r["run_id"] for r in rows}                 # a kill after the row: recorded, its claim stale
        for c in (c for c in self.store.claims(now) if c["run_id"] not in recorded):
            if claim_state(c, host_name()) == "gone":         # killed outright: not running; told to its own agent
                mine = c.get("host") in (None, host_name()) and c.get("worktree") in (None, str(REPO_DIR))
                if mine:                                      # (no word here that --record-crash reads as a reason)
                    print(f"!! a run started on this machine ended without a record: {c['run_id']}; record it: "
                          f"{env_prefix(harness_env())}uv run prepare.py --record-crash {c['log']}")
            elif c["run_id"] != self.run_id and (c.get("comparability_key"), c.get("fingerprint")) == (self.key, fp):
                where = f"{c.get('host')}/{c.get('branch')}, started {(now - c['started']) / 60:.0f} min ago"
                lines.append(f"!! this configuration is already running under the same seed: {where} ({c['run_id']})"
                             if c.get("seed") == self.seed else
                             f"this configuration is also running under seed {c.get('seed')}: {where} ({c['run_id']})")
        done = [r for r in rows if r["comparability_key"] == self.key and run_fingerprint(r, index) == fp
                and is_scored(r)]                                               # a crash does not make a rerun
        seeds = sorted({index.get(r["run_id"], {}).get("seed") for r in done}, key=str)
        same = [r for r in done if index.get(r["run_id"], {}).get("seed") == self.seed]
        if same:
            lines.append(f"!! this configuration already ran under seed {self.seed} ({same[-1]['run_id']}, "
                         f"{same[-1]['status']}): this run will be a `rerun`, not judged")
        elif done:
            lines.append(f"another seed of a configuration already recorded under seeds {', '.join(map(str, seeds))} "
                         f"(a confirmation, or a repeat)")
        for line in lines:
            print(line)
        self.store.claim(claim)
        self.live = LiveClaim(self.store, claim)      # the claim again with the curve so far (the shared ledger)
        with self.store.lock():              # memory.md's "Running now" as of this start, for every agent reading it
            write_memory(self.store)
        return [line for line in lines if line.startswith("!!")]

    def cap_warnings(self, rows: list[dict], index: dict) -> list[str]:
        """`!!` lines for model.json edits from the parent run that the mode's caps cancel (nothing is trained
        differently), so that the agent does not read the outcome as the edit's."""
        me = {"run_id": "\0this", "commit": self.git["commit"], "comparability_key": self.key, "line": math.inf}
        parent = parent_run(rows, {**index, "\0this": self._index_entry(None)}, me)
        if parent is None:
            return []
        return [f"!! model.json {line}: this run trains its parent's model ({parent['run_id']})"
                for line in cancelled_by_caps(index.get(parent["run_id"], {}), self._index_entry(None))]

    def print_summary(self, total_seconds: float) -> None:
        """The `---` block after a recorded run: a public API (fixed keys, `key: value`) that agents grep; kept in
        the harness so that no edit of train.py can change it."""
        x, p = self.record["metrics"], self.record["platform"]
        print("---")
        for key, value in (("val_bpb", f"{x['val_bpb']:.6f}"), ("training_seconds", f"{x['training_seconds']:.1f}"),
                           ("total_seconds", f"{total_seconds:.1f}"), ("peak_vram_mb", f"{x['peak_vram_mb']:.1f}"),
                           ("mfu_percent", f"{x['mfu_percent']:.2f}"), ("total_tokens_M", f"{x['total_tokens_M']:.1f}"),
                           ("num_steps", int(x["num_steps"])), ("num_params_M", f"{x['num_params_M']:.1f}"),
                           ("depth", self.model["depth"]), ("tokens_per_sec", f"{x['tokens_per_second']:.0f}"),
                           ("run_id", self.run_id), ("status", self.recorded["status"]), ("mode", self.s.mode),
                           ("device", p["device"]), ("dtype", p["dtype"]), ("attention", p["attention"]),
                           ("world_size", int(x["world_size"])), ("epochs", f"{x['epochs']:.2f}"), ("seed", self.seed),
                           ("next", self.next_step)):
            print(f"{key + ':':<18}{value}")

    def crash(self, reason: str, metrics: dict | None = None) -> dict:
        print(f"CRASH: {reason}")
        return self.finish(metrics or {}, status="crash", error=reason)


def start_run(tokenizer: Tokenizer, model: ModelConfig, model_changes: dict, description: str | None = None,
              extra: dict | None = None, platform: dict | None = None, seed: int | None = None) -> Run:
    """Begin recording: tee the console to sessions/<run_id>.log, record crashes and signals. `platform` is
    PLATFORM as the run uses it (after confirm_attention); default get_platform().
    Bad input found here (data not prepared, source changed) exits 2 before anything is written."""
    try:
        run = Run(settings.current(), tokenizer, model, model_changes, description, platform or get_platform(), extra,
                  seed)
    except ConfigError as e:
        fail(str(e))
    return run.start()
