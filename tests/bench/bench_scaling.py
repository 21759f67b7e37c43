"""Data-parallel scaling on one host (not a test; prints one table).

    python3 tests/bench/bench_scaling.py [--gpus 1,2,4] [--budget 30]

Runs the default model.json in train mode with `torchrun --nproc_per_node=N train.py` for
each N (N=1 runs plain `train.py`) on the benchmark workspace of bench_gpu.py, sharing the
compile caches, and prints tokens/s in total and per GPU against the one-GPU figure.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import bench_gpu  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gpus", default="1,2,4")
    ap.add_argument("--budget", type=float, default=30)
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    args = ap.parse_args()
    import torch
    print(f"GPUs: {torch.cuda.device_count()} x {torch.cuda.get_device_name()}  torch {torch.__version__}")
    root = Path(tempfile.mkdtemp(prefix="scaling_"))
    ground = bench_gpu.bench_workspace(root, args.budget)
    env = dict(os.environ, AUTORESEARCH_GROUND=str(ground), PYTHONUNBUFFERED="1",
               TORCHINDUCTOR_CACHE_DIR=str(root / "inductor"), TRITON_CACHE_DIR=str(root / "triton"))
    results = []
    for n in [int(x) for x in args.gpus.split(",")]:
        cmd = [sys.executable, str(REPO / "train.py"), "--description", f"scaling {n}"]
        if n > 1:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}"] + cmd[1:]
        t0 = time.time()
        r = subprocess.run(cmd, capture_output=True, text=True, env=env)
        (Path(args.out) / f"scaling_{n}.log").write_text(r.stdout + r.stderr)
        if r.returncode != 0:
            print(f"N={n}: failed: {(r.stdout + r.stderr).strip().splitlines()[-1][:200]}")
            continue
        summary = dict(re.findall(r"^(\w+):\s+(.+)$", r.stdout.split("\n---\n")[-1], re.M))
        tok = float(summary["tokens_per_sec"])
        res = {"gpus": n, "tok_s": tok, "per_gpu": tok / n, "mfu": float(summary["mfu_percent"]),
               "val_bpb": float(summary["val_bpb"]), "steps": int(summary["num_steps"]), "wall_s": time.time() - t0}
        results.append(res)
        print(json.dumps(res), flush=True)
    base = next((r["per_gpu"] for r in results if r["gpus"] == 1), None)
    (Path(args.out) / "scaling.json").write_text(json.dumps({"gpu": torch.cuda.get_device_name(), "results": results},
                                                            indent=2))
    print("\n| GPUs | tokens/s | per GPU | vs 1 GPU | MFU % | steps |")
    print("|---|---|---|---|---|---|")
    for r in results:
        eff = f"{100 * r['per_gpu'] / base:.1f}%" if base else "—"
        print(f"| {r['gpus']} | {r['tok_s'] / 1e6:.3f}M | {r['per_gpu'] / 1e6:.3f}M | {eff} | {r['mfu']:.1f} | "
              f"{r['steps']} |")


if __name__ == "__main__":
    main()
