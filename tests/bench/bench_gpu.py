"""GPU benchmark for the default model.json in train mode (not a test; prints one table).

    python3 tests/bench/bench_gpu.py [--budget 40] [--variants auto,auto_warm,flex,sdpa,fp16] [--out DIR]

Runs train.py as a subprocess per variant (auto = the default platform choice: cuDNN where
cudnn-frontend loads on Hopper+, else flex; flex, sdpa = forced attention backends; fp16 = forced
float16 + GradScaler; turing = what a Volta/Turing card gets: float16 + GradScaler, SDPA, no
compile) on a workspace that reuses the prepared tokenizer and train shards, with a val file large
enough for the full eval size (the builtin val file
is smaller than 20M tokens, so it is repeated: for timing only, never for a metric). The
default variant runs twice, first with empty compile caches (cold), then again (warm); every
other variant starts with empty caches of its own.
Prints steady-state tokens/s and MFU, step-time spread (steps timed on the GPU's clock), peak
VRAM, the host's seconds blocked on the loader over the timed steps, startup+compile seconds,
evaluate_bpb seconds, and the dataloader's packing rate on one core.
"""

import argparse
import datetime as dt
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "bench"))
from harness import config, settings, sources, tokenizer, util  # noqa: E402
from bench_loader import loader_rate  # noqa: E402


def bench_workspace(root: Path, budget: float) -> Path:
    s = settings.current()
    m = sources.load_manifest(s)
    cache = root / "cache"
    (cache / "data").mkdir(parents=True)
    shutil.copytree(tokenizer.tokenizer_dir(s), cache / "tokenizer")
    docs = sources.read_documents(m["val"])
    for path in m["train"]:
        docs += sources.read_documents(path)
    tok = tokenizer.Tokenizer.from_directory()
    need = s.ground.train.eval_tokens * 1.3
    have = sum(len(x) for x in tok.encode(docs[:2000])) / 2000 * len(docs)
    reps = max(1, int(np.ceil(need / have)))
    big_val = cache / "data" / "val_timing_only.parquet"
    sources.write_text_parquet(big_val, docs * reps)
    manifest = {"source": "local", "reason": "bench", "train": m["train"], "val": str(big_val),
                "val_sha256": util.file_sha256(big_val), "created": "bench"}
    (cache / "data" / "manifest.json").write_text(json.dumps(manifest))
    g = json.loads(config.ground_path().read_text())
    g.update(mode="train")
    g["data"].update(source="auto", cache_dir=str(cache))
    g["train"]["time_budget_s"] = budget
    g["ledger"] = {"results": str(root / "results.tsv"), "sessions_dir": str(root / "sessions")}
    (root / "ground.json").write_text(json.dumps(g, indent=2))
    return root / "ground.json"


def run_variant(ground: Path, name: str, processor: dict, env_extra: dict, out: Path) -> dict:
    g = json.loads(ground.read_text())
    g["processor"].update(processor)
    gp = ground.with_name(f"ground_{name}.json")
    gp.write_text(json.dumps(g, indent=2))
    env = dict(os.environ, AUTORESEARCH_GROUND=str(gp), PYTHONUNBUFFERED="1", **env_extra)
    if name == "turing":    # eager fp16 needs smaller micro-batches (a 16 GB card would anyway)
        m = json.loads(config.model_path().read_text())
        m["device_batch_size"] = 16
        mp = ground.with_name("model_turing.json")
        mp.write_text(json.dumps(m))
        env["AUTORESEARCH_MODEL"] = str(mp)
    t0 = time.time()
    r = subprocess.run([sys.executable, str(REPO / "train.py"), "--description", f"bench {name}"],
                       capture_output=True, text=True, env=env)
    wall = time.time() - t0
    (out / f"bench_{name}.log").write_text(r.stdout + r.stderr)
    if r.returncode != 0:
        return {"name": name, "error": (r.stdout + r.stderr).strip().splitlines()[-1][:200]}
    summary = dict(re.findall(r"^(\w+):\s+(.+)$", r.stdout.split("\n---\n")[-1], re.M))
    rec = json.loads((Path(g["ledger"]["sessions_dir"]) / f"{summary['run_id']}.json").read_text())
    steps = [float(x) for x in re.findall(r"step \d+ .*?dt: (\d+)ms", r.stdout)]
    timed = steps[g["train"]["excluded_steps"]:-1] or steps
    med = statistics.median(timed)
    met = rec["metrics"]
    return {"name": name, "tok_s": float(summary["tokens_per_sec"]), "mfu": float(summary["mfu_percent"]),
            "median_step_ms": med, "max_step_ms": max(timed), "slow_steps": sum(t > 1.1 * med for t in timed),
            "timed_steps": len(timed), "peak_vram_mb": float(summary["peak_vram_mb"]),
            "first_step_s": steps[0] / 1000, "startup_s": met["startup_seconds"],
            "to_first_timed_step_s": met["total_seconds"] - met["training_seconds"] - met["eval_seconds"],
            "loader_wait_s": met["loader_wait_seconds"], "eval_s": met["eval_seconds"],
                "eval_tokens": rec.get("eval_tokens"), "val_bpb": float(summary["val_bpb"]),
            "wall_s": wall, "attention": summary["attention"], "dtype": summary["dtype"]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", type=float, default=40)
    ap.add_argument("--variants", default="auto,auto_warm,flex,sdpa,fp16")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import torch
    print(f"GPU: {torch.cuda.get_device_name()}  torch {torch.__version__}  date {dt.date.today()}  budget "
          f"{args.budget:g}s")
    rate = loader_rate()
    print(f"dataloader packing: {rate / 1e6:.2f}M tokens/s on one core", flush=True)
    root = Path(tempfile.mkdtemp(prefix="bench_"))
    ground = bench_workspace(root, args.budget)
    def caches(name):                   # empty compile caches of its own: every variant starts cold
        return {"TORCHINDUCTOR_CACHE_DIR": str(root / name / "inductor"),
                "TRITON_CACHE_DIR": str(root / name / "triton")}
    plan = {"auto": ({}, caches("auto")), "auto_warm": ({}, caches("auto")),     # warm: auto's caches again
            "flex": ({"attention": "flex"}, caches("flex")), "sdpa": ({"attention": "sdpa"}, caches("sdpa")),
            "fp16": ({"dtype": "float16"}, caches("fp16")),
            "turing": ({"dtype": "float16", "attention": "sdpa", "compile": False}, caches("turing"))}
    results = []
    for name in args.variants.split(","):
        proc, env = plan[name]
        res = run_variant(ground, name, proc, env, out)
        results.append(res)
        print(json.dumps(res), flush=True)
    (out / "bench.json").write_text(json.dumps({"gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
                                                "loader_tok_s": rate, "results": results}, indent=2))
    print()
    print("| variant | attention | dtype | tok/s | MFU % | median step ms | steps >10% slow | peak VRAM MB | "
          "loader wait s | startup+compile s | eval s (tokens) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        if "error" in r:
            print(f"| {r['name']} | error: {r['error']} |")
            continue
        print(f"| {r['name']} | {r['attention']} | {r['dtype']} | {r['tok_s'] / 1e6:.3f}M | {r['mfu']:.1f} | "
              f"{r['median_step_ms']:.0f} | {r['slow_steps']}/{r['timed_steps']} | {r['peak_vram_mb']:.0f} | "
              f"{r['loader_wait_s']:.2f} | "
              f"{r['to_first_timed_step_s']:.1f} | {r['eval_s']:.1f} ({r['eval_tokens'] or 0:,}) |")


if __name__ == "__main__":
    main()
