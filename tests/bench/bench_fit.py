"""The batch fit (harness/fit.py) on this GPU under memory caps: the device_batch_size it picks for the default
model.json and how long the probe takes (not a test; prints the figures).

    python tests/bench/bench_fit.py [--caps none,24,16,12]

Random tokens, train.py's own model built as a run builds it (build_config with PLATFORM's kernels, not compiled), T = 2048, one
process; each cap in a fresh subprocess (a per-process memory fraction cannot be raised again).
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def one(cap: str, cache: str) -> dict:
    sys.path.insert(0, str(REPO))
    import torch
    import train
    from harness import fit
    from harness.config import load_model
    from harness.hardware import get_platform
    if cap != "none":
        os.environ[fit.MEMORY_ENV] = cap
    m, P = load_model(REPO / "model.json"), get_platform()
    model = train.build_model(train.build_config(m, 2048, 8192, P), torch.device("cuda"))   # PLATFORM's kernels
    t0 = time.perf_counter()
    b, line = fit.fit_batch(model, m, 2048, 1, 8192, torch.device("cuda", 0), torch.autocast("cuda", torch.bfloat16),
                            Path(cache))
    return {"cap_gb": cap, "device_batch_size": b, "grad_accum": m.total_batch_size // (b * 2048),
            "probe_s": round(time.perf_counter() - t0, 2), "line": line}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--caps", default="none,24,16,12")
    ap.add_argument("--one")
    ap.add_argument("--cache", default="/tmp/bench_fit.json")
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.cache)))
        return
    Path(args.cache).unlink(missing_ok=True)
    for cap in args.caps.split(","):
        r = subprocess.run([sys.executable, __file__, "--one", cap, "--cache", args.cache], capture_output=True,
                           text=True)
        print(r.stdout.strip().splitlines()[-1] if r.returncode == 0 else f"cap {cap}: failed\n{r.stderr[-2000:]}",
              flush=True)


if __name__ == "__main__":
    main()
