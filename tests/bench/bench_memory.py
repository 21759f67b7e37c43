"""Memory regeneration cost for a large ledger (not a test; prints the figures).

    uv run python tests/bench/bench_memory.py [--rows 10000]

Targets: regeneration <= 1 s and memory.md <= 8 KB for 10,000 rows.
"""

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from harness import ledger, memory


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=10000)
    args = ap.parse_args()
    d = Path(tempfile.mkdtemp())
    results, sessions = d / "results.tsv", d / "sessions"
    sessions.mkdir()
    rng = random.Random(0)
    statuses = ["discard"] * 6 + ["keep", "crash", "interrupted"]
    with open(results, "w") as f, open(sessions / "index.jsonl", "w") as idx:
        f.write("\t".join(ledger.LEDGER_COLUMNS) + "\n")
        for i in range(args.rows):
            st = "baseline" if i == 0 else rng.choice(statuses)
            row = {c: None for c in ledger.LEDGER_COLUMNS}
            row.update(run_id=f"20261126T{i:06d}Z-{i:07x}-abcd", commit=f"{i:07x}", status=st,
                       val_bpb=None if st in ("crash", "interrupted") else 1.0 - i * 1e-5 + rng.random() * 0.01,
                       description=f"experiment {i}: try matrix_lr {rng.choice([0.02, 0.04, 0.06])} and depth "
                                   f"{rng.randint(4, 16)}",
                       mode="train", comparability_key="climbmix-train-0123456789",
                           timestamp="2026-11-26T00:00:00+00:00",
                       peak_vram_mb=45000.0, mfu_percent=39.6, training_seconds=300.0, total_tokens_M=497.5,
                       num_params_M=50.3, num_steps=949)
            f.write(ledger.ledger_line(row))
            model = {"depth": rng.randint(4, 16), "matrix_lr": rng.choice([0.02, 0.03, 0.04, 0.05, 0.06]),
                     "embedding_lr": 0.6, "window_pattern": rng.choice(["SSSL", "SL", "L"]),
                     "extra": {"mlp_ratio": rng.choice([3, 4, 5])}}
            idx.write(json.dumps({"run_id": row["run_id"], "model": model, "fingerprint": f"fp{rng.randint(0, 3000)}",
                                  "error": "OutOfMemoryError: CUDA out of memory" if st == "crash" else None}) + "\n")
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        memory.write_memory(ledger.FileLedger(results, sessions))
        times.append(time.perf_counter() - t0)
    size = (sessions / "memory.md").stat().st_size
    print(f"rows: {args.rows:,}  regeneration: {min(times):.3f} s (best of 3; {', '.join(f'{t:.3f}' for t in times)})  "
          f"memory.md: {size:,} bytes")


if __name__ == "__main__":
    main()
