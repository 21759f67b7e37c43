"""Ledger costs for a large ledger, file and PostgreSQL backends (not a test; prints the figures).

    uv run python tests/bench/bench_memory.py [--rows 10000]
    uv run --extra shared python tests/bench/bench_memory.py --backend postgres    # starts a PostgreSQL server

Prints memory.md's regeneration time, and with progress.png (target: <= 1 s at 10,000 rows, linear in rows;
memory.md <= 8 KB) and the cost of
recording one run (decide + append + mirror, without memory.md) into a ledger of --append-rows rows.
"""

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from harness import database, ledger, memory  # noqa: E402


def synthetic(n: int, rng: random.Random):
    """n (row, index entry) pairs like a long night's: mostly discards, some keeps and crashes, real-size entries."""
    statuses = ["discard"] * 6 + ["keep", "crash", "interrupted"]
    functions = {f"fn{k}": f"{k:08x}" for k in range(40)}
    for i in range(n):
        st = "baseline" if i == 0 else rng.choice(statuses)
        row = {c: None for c in ledger.LEDGER_COLUMNS}
        row.update(run_id=f"20261126T{i:06d}Z-{i:07x}-abcd", commit=f"{i:07x}", status=st,
                   val_bpb=None if st in ("crash", "interrupted") else 1.0 - i * 1e-5 + rng.random() * 0.01,
                   description=f"experiment {i}: try matrix_lr {rng.choice([0.02, 0.04, 0.06])} and depth "
                               f"{rng.randint(4, 16)}",
                   mode="train", comparability_key="climbmix-train-0123456789", timestamp="2026-11-26T00:00:00+00:00",
                   peak_vram_mb=45000.0, mfu_percent=39.6, training_seconds=300.0, total_tokens_M=497.5,
                   num_params_M=50.3, num_steps=949)
        model = {"depth": rng.randint(4, 16), "matrix_lr": rng.choice([0.02, 0.03, 0.04, 0.05, 0.06]),
                 "embedding_lr": 0.6, "window_pattern": rng.choice(["SSSL", "SL", "L"]),
                 "extra": {"mlp_ratio": rng.choice([3, 4, 5])}}
        entry = {"run_id": row["run_id"], "model": model, "fingerprint": f"fp{rng.randint(0, 3000)}",
                 "seed": 42 + rng.randint(0, 2), "train_py": dict(functions, fn0=f"{i:08x}"), "host": "gpu-box",
                 "branch": "autoresearch/gpu0", "commit": row["commit"], "parent": f"{i - 1:07x}",
                 "error": "OutOfMemoryError: CUDA out of memory" if st == "crash" else None}
        yield row, entry


def timed(fn, repeat=3) -> list[float]:
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=10000)
    ap.add_argument("--append-rows", type=int, default=200, help="records timed one by one")
    ap.add_argument("--backend", choices=("file", "postgres"), default="file")
    args = ap.parse_args()
    d = Path(tempfile.mkdtemp())
    local = ledger.FileLedger(d / "results.tsv", d / "sessions")
    local.sessions.mkdir()
    server = None
    if args.backend == "postgres":
        from conftest import PostgresServer
        server = PostgresServer()
        store = database.PostgresLedger(server.new_database("bench"), local)
    else:
        store = local
    pairs = list(synthetic(args.rows, random.Random(0)))
    # one run recorded at a time (decide under the lock, append, local mirror): the per-record cost
    per = []
    for row, entry in pairs[:args.append_rows]:
        t0 = time.perf_counter()
        store.append(dict(row, status=None), entry, row["status"] if row["status"] in ("crash", "interrupted")
                     else None)
        per.append(time.perf_counter() - t0)
    rest = pairs[args.append_rows:]
    if server is not None:                           # the rest in bulk: the same rows the appends would write
        import psycopg
        with psycopg.connect(store.url) as conn:
            cols = [c for c in ledger.LEDGER_COLUMNS if c != "run_id"]
            conn.cursor().executemany(
                f"INSERT INTO {database.RUNS} (run_id, {', '.join(chr(34) + c + chr(34) for c in cols)}, host, entry)"
                f" VALUES (%s, {', '.join(['%s'] * len(cols))}, %s, %s::jsonb)",
                [[r["run_id"], *[r[c] for c in cols], "gpu-box", json.dumps(e)] for r, e in rest])
    else:
        with open(local.results, "a") as f, open(local.sessions / "index.jsonl", "a") as idx:
            for r, e in rest:
                f.write(ledger.ledger_line(r))
                idx.write(json.dumps(e) + "\n")
    late = []
    for row, entry in synthetic(20, random.Random(1)):
        row.update(run_id="late-" + row["run_id"], status=None)
        t0 = time.perf_counter()
        store.append(row, dict(entry, run_id=row["run_id"]))
        late.append(time.perf_counter() - t0)
    regen = timed(lambda: memory.write_memory(store))
    whole = timed(lambda: memory.write_memory(store, plot=True))     # what every run pays: memory.md + progress.png
    size = (local.sessions / "memory.md").stat().st_size
    print(f"backend: {args.backend}")
    print(f"record one run (decide + append + mirror; ledger of 0..{args.append_rows} rows): median "
          f"{1000 * statistics.median(per):.1f} ms, p90 {1000 * sorted(per)[int(0.9 * len(per))]:.1f} ms")
    print(f"record one run into a ledger of {args.rows:,} rows: median {1000 * statistics.median(late):.1f} ms")
    print(f"rows: {args.rows:,}  memory.md regeneration: {min(regen):.3f} s (best of 3; "
          f"{', '.join(f'{t:.3f}' for t in regen)})  memory.md: {size:,} bytes")
    print(f"rows: {args.rows:,}  memory.md + progress.png (the whole regeneration after a run): {min(whole):.3f} s "
          f"(best of 3; {', '.join(f'{t:.3f}' for t in whole)})")
    if server is not None:
        server.stop()


if __name__ == "__main__":
    main()
