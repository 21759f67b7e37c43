"""The command line behind `uv run prepare.py`: prepare data + tokenizer, check configs, maintain the ledger.

    uv run prepare.py [--source auto|climbmix|local|builtin|builtin-stdlib] [--num-shards N] [--download-workers N]
    uv run prepare.py --check | --memory | --migrate-ledger | --send-queued | --restore RUN_ID | --record-crash LOG
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from harness.config import ConfigError, agent_files, fail, ground_path, load_ground, load_model, model_path

# Everything else is imported where a command needs it: `--help` and a config error answer without torch.


def _uncommitted(path: Path) -> str | None:
    """Why `path` cannot be overwritten by --restore: uncommitted edits in its own git checkout (wherever it is), or
    no checkout to tell; None when it is clean."""
    git = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", path.name], cwd=path.parent,
                         capture_output=True, text=True)
    if git.returncode != 0:
        return f"cannot tell whether {path} has uncommitted edits (not in a git checkout)"
    return f"{path} has uncommitted edits; commit or discard them first" if git.stdout.strip() else None


def restore_run(run_id: str, s=None) -> list[str]:
    """Write a recorded run's model.json and train.py over this checkout's (refused over uncommitted edits, and
    before anything is written when the recorded files do not load). Returns the files that changed."""
    import tempfile
    from harness.checked import RUN_ID
    from harness.database import open_ledger
    from harness.util import atomic_write_text
    if not RUN_ID.fullmatch(run_id):
        raise ConfigError(f"--restore: expected a run id as the ledger writes them (e.g. 20261207T101539Z-d8efdd3-"
                          f"741b1a92), got {json.dumps(run_id[:80])}")
    store = open_ledger(s)
    files = store.files(run_id)
    if files is None and store.note:
        raise ConfigError(f"--restore {run_id}: {store.note}")
    if files is None:
        raise ConfigError(f"--restore {run_id}: no model.json and train.py recorded for this run (kept runs of other "
                          f"hosts, or runs with a record in this sessions folder)")
    if not all(isinstance(files.get(n), str) for n in ("model.json", "train.py")):
        raise ConfigError(f"--restore {run_id}: the record's files are damaged (model.json and train.py as text "
                          f"expected); nothing was written")
    with tempfile.TemporaryDirectory() as tmp:          # the recorded model.json must load as a run would load it
        (Path(tmp) / "model.json").write_text(files["model.json"], encoding="utf-8")
        try:
            load_model(Path(tmp) / "model.json")
        except ConfigError as e:
            raise ConfigError(f"--restore {run_id}: its recorded {e}; nothing was written") from None
    for path in agent_files().values():
        if path.exists() and (why := _uncommitted(path.resolve())):
            raise ConfigError(f"--restore: {why}")
    changed = []
    for name, path in agent_files().items():
        if not path.exists() or path.read_text(encoding="utf-8", errors="replace") != files[name]:
            atomic_write_text(path, files[name])
            changed.append(name)
    return changed


def check(verbose: bool = True) -> tuple:
    """Validate ground.json and model.json (before torch is imported), then the ledger, the data and the tokenizer;
    print the mode and PLATFORM."""
    try:
        load_ground()
        load_model()
    except ConfigError as e:
        fail(str(e))
    from harness import settings
    from harness.database import PostgresLedger, open_ledger
    from harness.hardware import get_platform, platform_lines
    from harness.settings import describe_changes, effective_model
    from harness.sources import load_manifest
    from harness.tokenizer import Tokenizer
    s = settings.current()
    try:
        model, changes = effective_model(load_model(), s)
    except ConfigError as e:
        fail(str(e))
    try:
        store = open_ledger(s)
        store.check()
        manifest = load_manifest(s)
    except ConfigError as e:
        fail(str(e))
    Tokenizer.from_directory()                     # exits 2 when missing, or stale against ground.json
    p = get_platform()
    if verbose:
        print(f"ground.json: ok ({ground_path()})")
        shared = (f"; shared: postgres via ${s.ground.ledger.database_url_env}" if isinstance(store, PostgresLedger)
                  else "")
        print(f"ledger: ok ({store.results}, {store.sessions}{shared}); data: {manifest['source']} "
              f"({len(manifest['train'])} train files)")
        print(f"model.json:  ok ({model_path()})")
        print(f"mode: {s.mode} ({s.mode_reason})")
        print(f"  max_seq_len {s.max_seq_len}, time_budget_s {s.time_budget_s:g}, eval_tokens {s.eval_tokens:,}, "
              f"excluded_steps {s.excluded_steps}, max_steps {s.max_steps or 'none'}")
        for line in describe_changes(changes, s):
            print(f"  {line}")
        print("\n".join(platform_lines(p)))
        print("\n".join(card_lines(s, model, p)))
    return s, model, changes


def card_lines(s, model, p: dict) -> list[str]:
    """The batch split this card holds (on a CUDA GPU the run's own forward/backward probe, cached for the first
    run) and the tokens/s to expect of it."""
    import contextlib
    import io

    import torch
    import train                                   # the agent's model, built as a run builds it
    from harness.cards import rate_line
    from harness.fit import BUSY_BYTES, fit_batch, held_by_others
    from harness.tokenizer import Tokenizer
    b, why = model.device_batch_size, "no CUDA GPU: model.json's device_batch_size, capped by the profile"
    try:
        config = train.build_config(model, s.max_seq_len, Tokenizer.from_directory().get_vocab_size(), p)
        with contextlib.redirect_stdout(io.StringIO()):        # build_model prints the config a run prints
            device = torch.device("cuda")
            others = held_by_others(device) if p["device"] == "cuda" else 0
            if others > BUSY_BYTES:
                why = (f"not probed: other processes hold {others / 2**30:.1f} GB of this card (a run's own probe "
                       f"decides; model.json's value shown)")
            elif p["device"] == "cuda":
                net = train.build_model(config, device)
                autocast = torch.autocast("cuda", getattr(torch, p["dtype"]), enabled=p["dtype"] != "float32")
                b, why = fit_batch(net, model, s.max_seq_len, 1, config.vocab_size, device, autocast,
                                   s.cache_dir / "batch_fit.json")
                del net
            with torch.device("meta"):
                flops = train.GPT(config).estimate_flops()
    except (ConfigError, torch.cuda.OutOfMemoryError, AttributeError, TypeError) as e:   # train.py is the agent's
        return [f"batch: not probed ({type(e).__name__}: {str(e)[:160]})"]
    accum = model.total_batch_size // (b * s.max_seq_len)
    return [f"batch: {model.total_batch_size:,} tokens/step = {b} x {s.max_seq_len} x {accum} accumulation "
            f"steps ({why})", rate_line(p["device_name"], p["peak_flops"], flops)]


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description="Prepare data and tokenizer; validate configs; maintain the ledger.")
    ap.add_argument("--source", choices=("auto", "climbmix", "local", "builtin", "builtin-stdlib"),
                    help="override ground.json data.source")
    ap.add_argument("--num-shards", type=int,
                    help="ClimbMix train shards to download (ground.json data.num_train_shards)")
    ap.add_argument("--download-workers", type=int, help="parallel downloads (ground.json data.download_workers)")
    ap.add_argument("--check", action="store_true", help="validate ground.json and model.json, print mode and PLATFORM")
    ap.add_argument("--memory", action="store_true", help="regenerate sessions/memory.md from the ledger")
    ap.add_argument("--record-crash", metavar="LOG", help="record a killed run (sessions/<run_id>.log) as a crash")
    ap.add_argument("--send-queued", action="store_true",
                    help="send the runs recorded while the shared database was unreachable (ledger.backend postgres)")
    ap.add_argument("--restore", metavar="RUN_ID",
                    help="write a recorded run's model.json and train.py here (a kept run of another host, too)")
    ap.add_argument("--serve", action="store_true",
                    help="the live view of the ledger in a browser (needs the web extra: uv run --extra web ...)")
    ap.add_argument("--bind", default="127.0.0.1", help="--serve's interface (another than 127.0.0.1 needs a token)")
    ap.add_argument("--port", type=int, default=8765, help="--serve's port (default 8765)")
    ap.add_argument("--token", help="--serve's access token (or $AUTORESEARCH_WEB_TOKEN, kept out of `ps`)")
    ap.add_argument("--migrate-ledger", action="store_true",
                    help="rewrite an upstream/fork results.tsv with this ledger's columns (the old file is kept)")
    return ap


def send_queued(s) -> int:
    from harness.database import Unreachable, open_ledger
    from harness.memory import regenerate_memory
    try:
        sent = open_ledger(s).send_queued()
    except Unreachable as e:
        print(f"error: the shared database is unreachable ({e}); the queue is kept", file=sys.stderr)
        return 1
    print(f"sent: {len(sent)} queued run(s)")
    print(f"memory: {regenerate_memory(s)}")
    return 0


def restore(run_id: str, s) -> int:
    from harness.database import open_ledger
    from harness.decide import ACCEPTED, run_fingerprint
    changed = restore_run(run_id, s)
    rows, index = open_ledger(s).read()
    run = next((r for r in rows if r["run_id"] == run_id), None)
    if run and not any(r["status"] in ACCEPTED and r["comparability_key"] == run["comparability_key"]
                       and run_fingerprint(r, index) == run_fingerprint(run, index) for r in rows):
        print(f"!! run {run_id} is a `{run['status']}`: its configuration was never kept (memory.md's "
              f"best is the one to build on)")
    print(f"restored {', '.join(changed)} from run {run_id}; commit it: git commit -am \"build on "
          f"{run_id}\"" if changed else f"run {run_id}: model.json and train.py are already these")
    return 0


def serve(args, s) -> int:
    try:
        from harness import web
    except ImportError as e:
        raise ConfigError(f"--serve: the live view needs the web extra ({e.name} is missing): uv run --extra web "
                          f"prepare.py --serve") from None
    if not 0 < args.port < 65536:
        raise ConfigError(f"--port: expected a port number between 1 and 65535, got {args.port}")
    return web.serve(s, args.bind, args.port, args.token)


def migrate(s) -> int:
    from harness.ledger import LEDGER_COLUMNS, ledger_paths, migrate_ledger
    from harness.memory import regenerate_memory
    results, _ = ledger_paths(s)
    if not results.is_file():
        raise ConfigError(f"--migrate-ledger: no ledger to migrate at {results} (ground.json ledger.results)")
    old = migrate_ledger(results)
    print(f"ledger: {results} rewritten with {len(LEDGER_COLUMNS)} columns; the old file is {old}")
    print(f"memory: {regenerate_memory(s)}")
    return 0


def record_crash(log: str, s) -> int:
    from harness.database import open_ledger
    from harness.identity import harness_env
    from harness.ledger import ledger_paths
    from harness.nextstep import next_step
    from harness.recover import record_crash_from_log
    row = record_crash_from_log(Path(log), s)
    print(f"recorded: {row['run_id']} crash -> {ledger_paths(s)[0]}")
    print(f"next: {next_step(row, *open_ledger(s).read(), None, harness_env())}")
    return 0


def prepare(args, s) -> int:
    """Data, tokenizer, token cache (the default command)."""
    from harness.dataloader import packing_report
    from harness.evaluate import eval_rows
    from harness.sources import prepare_data
    from harness.tokenizer import Tokenizer, tokenize_file, train_tokenizer
    t0 = time.time()
    print(f"mode: {s.mode} ({s.mode_reason}); cache: {s.cache_dir}")
    manifest = prepare_data(s, args.source, args.num_shards, args.download_workers)
    train_tokenizer(s, manifest)
    tok = Tokenizer.from_directory()
    ntok = 0
    for path in manifest["train"] + [manifest["val"]] + ([manifest["heldout"]] if manifest.get("heldout") else []):
        tokens, _ = tokenize_file(s, tok, path)
        ntok += len(tokens)
    print(f"tokens: {ntok:,} cached under {s.cache_dir / 'tokens' / tok.fingerprint()}")
    used, cached = packing_report(s, tok, manifest["train"], s.max_seq_len)
    split = "split into row-sized pieces" if s.ground.data.split_long_documents else "cropped"
    print(f"loader: one pass of best-fit packing into rows of {s.max_seq_len + 1} tokens uses {used:,} of the "
          f"{cached:,} cached train tokens ({100 * used / max(cached, 1):.1f}%; longer documents are {split})")
    eval_rows(tok, s, verbose=True)
    print(f"done in {time.time() - t0:.1f}s. Next: uv run train.py")
    return 0


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    for name in ("num_shards", "download_workers"):
        v = getattr(args, name)
        if v is not None and v < 1:
            fail(f"--{name.replace('_', '-')}: expected an integer >= 1, got {v}")
    for flag, value in (("--restore", args.restore), ("--record-crash", args.record_crash)):
        if value is not None and not value.strip():
            fail(f"{flag}: expected a value (a run id, a log path), got an empty one")
    if args.check:
        check()
        return 0
    from harness import settings
    s = settings.current()
    try:
        if args.memory:
            from harness.memory import regenerate_memory
            print(f"memory: {regenerate_memory(s)}")
            return 0
        if args.send_queued:
            return send_queued(s)
        if args.restore is not None:
            return restore(args.restore, s)
        if args.migrate_ledger:
            return migrate(s)
        if args.serve:
            return serve(args, s)
        if args.record_crash is not None:
            return record_crash(args.record_crash, s)
        return prepare(args, s)
    except ConfigError as e:
        fail(str(e))
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
