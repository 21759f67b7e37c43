"""The default model.json on smaller cards, emulated by capping this GPU's memory (not a test; prints figures).

    python3 tests/bench/bench_caps.py --out /tmp/caps prepare probe cap:none cap:24 cap:16 cap:12 cap:8 \\
        cap:none fp16 small:12
    python3 tests/bench/bench_caps.py --out /tmp/caps --table          # the markdown table of what ran

Every run is train.py in train mode on the builtin corpus, seed 42, ended by `max_steps` (--steps, default 100)
so that each trains the same tokens: a cap changes only the batch split (harness/fit.py picks device_batch_size
under $AUTORESEARCH_GPU_MEMORY_GB, which also calls torch.cuda.set_per_process_memory_fraction), so val_bpb
must agree within the same-seed spread (`cap:none` twice measures it). `fp16` forces processor.dtype float16
(GradScaler); `fp16eager` / `bf16eager` also turn compile off and attention to SDPA (the Volta/Turing path); `small:GB`
runs ground.json's `small` profile for --small-budget seconds under that cap. A job may carry diagnostic patches
(tests/bench/patched_train.py): `fp16+s16` starts the GradScaler at 2^16 (torch's default, the harness's before
hardware.grad_scale_start), `fp16+plain` runs the mlp, rope and loss as plain ops, `cap:none+fp32emb` keeps the
embeddings in fp32. Each run
appends its `---` summary and its batch line to <out>/caps.jsonl; logs go to <out>/logs/. Wheels in .whl/
(rustbpe, cudnn-frontend) are installed first where the machine has no network.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE, LEDGER = "/tmp/ar_cache", "/tmp/caps_ledger"


def ground(out: Path, steps: int, mode: str = "train", dtype: str = "auto", budget: float = 0,
           processor: dict | None = None) -> Path:
    g = json.loads((REPO / "ground.json").read_text())
    g["mode"] = mode
    g["data"].update(source="builtin", cache_dir=CACHE)
    if mode == "train":
        g["train"].update(max_steps=steps, time_budget_s=600)       # the steps end the run, not the clock
    else:
        g[mode].update(time_budget_s=budget)
    g["processor"].update(dtype=dtype, **(processor or {}))
    tag = f"{mode}_{dtype}" + ("_eager" if processor else "")
    g["ledger"] = {"results": f"{LEDGER}/{tag}/results.tsv", "sessions_dir": f"{LEDGER}/{tag}/s"}
    path = out / f"ground_{tag}.json"
    path.write_text(json.dumps(g, indent=2))
    return path


def run(cmd: list[str], env: dict, log: Path) -> tuple[int, float]:
    t0 = time.perf_counter()
    with open(log, "w") as f:
        rc = subprocess.run(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    return rc, time.perf_counter() - t0


def summary(log: Path) -> dict:
    text = log.read_text(errors="replace")
    out = {}
    if "\n---\n" in text:
        for line in text.split("\n---\n")[-1].splitlines():
            if m := re.match(r"^(\w+):\s+(.*)$", line):
                out[m.group(1)] = m.group(2).strip()
    batch = re.findall(r"^(device_batch_size \d+.*)$", text, re.M)
    split = re.findall(r"^batch: (.*)$", text, re.M)
    skipped = re.findall(r"^.*skipped.*$", text, re.M)
    return {**out, "fit": batch[-1] if batch else "", "split": split[-1] if split else "",
            "scaler": [s for s in skipped if "scal" in s][-1:] or ""}


def job(name: str, args, env: dict) -> dict | None:
    out = Path(args.out)
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    if name == "prepare":
        env = dict(env, AUTORESEARCH_GROUND=str(ground(out, args.steps)))
        subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv"],
                       stdout=open(out / "gpu.txt", "w"))
        rc, s = run([py, "prepare.py"], env, logs / "prepare.log")
        rc2, s2 = run([py, "prepare.py", "--check"], env, logs / "check.log")
        print(f"prepare rc {rc} in {s:.0f}s; --check rc {rc2} in {s2:.0f}s")
        print("\n".join((logs / "check.log").read_text().splitlines()[-3:]))
        return None
    if name == "probe":
        rc, s = run([py, "tests/bench/bench_fit.py", "--caps", "none,24,16,12,8"], env, logs / "probe.log")
        print((logs / "probe.log").read_text())
        return None
    name, *patches = name.split("+")      # fp16+s24: GradScaler from 2^24; +plain: no Triton mlp/rope/loss
    kind, _, cap = name.partition(":")
    gb = cap if kind in ("cap", "small") else args.fp16_cap
    eager = {"compile": False, "attention": "sdpa"}      # the path a Volta/Turing card takes
    path = (ground(out, args.steps, "small", budget=args.small_budget) if kind == "small"
            else ground(out, args.steps, dtype="float16" if kind.startswith("fp16") else "bfloat16"
                        if kind == "bf16eager" else "auto", processor=eager if kind.endswith("eager") else None))
    env = dict(env, AUTORESEARCH_GROUND=str(path))
    if gb and gb != "none":
        env["AUTORESEARCH_GPU_MEMORY_GB"] = gb
    patch = [a for p in patches for a in ({"plain": ["--plain"], "fp32emb": ["--fp32-embeddings"]}.get(p)
                                          or ["--init-scale", p[1:]])]
    name = "+".join([name, *patches])
    stem = f"{kind}{''.join('+' + p for p in patches)}_{gb}"
    n = len(list(logs.glob(f"{stem}_*.log")))
    log = logs / f"{stem}_{n}.log"
    cmd = [py, "tests/bench/patched_train.py", *patch, "--"] if patch else [py, "train.py"]
    rc, secs = run([*cmd, "--seed", "42", "--description", f"bench_caps {name}"], env, log)
    row = {"job": name, "cap_gb": gb, "rc": rc, "wall_s": round(secs, 1), **summary(log)}
    with open(out / "caps.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)
    return row


def table(out: Path) -> str:
    rows = [json.loads(line) for line in (out / "caps.jsonl").read_text().splitlines() if line.strip()]
    lines = ["| run | cap GB | device_batch_size (fit) | batch split | steps | val_bpb | tok/s | peak VRAM GB | wall s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        fit = re.sub(r"\s*\(forward/backward probe.*$", "", r.get("fit", ""))
        vram = f"{float(r['peak_vram_mb']) / 1024:.1f}" if r.get("peak_vram_mb") else ""
        split = r.get("split", "").split(" = ")[-1].replace(" accumulation steps", "")
        lines.append(f"| {r['job']} | {r['cap_gb']} | {fit} | {split} | {r.get('num_steps', '')} "
                     f"| {r.get('val_bpb', 'rc ' + str(r['rc']))} | {r.get('tokens_per_sec', '')} | {vram} "
                     f"| {r['wall_s']} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("jobs", nargs="*")
    ap.add_argument("--out", default="/tmp/caps")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--small-budget", type=float, default=120)
    ap.add_argument("--fp16-cap", default="none")
    ap.add_argument("--table", action="store_true")
    args = ap.parse_args()
    if args.table:
        print(table(Path(args.out)))
        return
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    wheels = sorted((REPO / ".whl").glob("*.whl"))
    if wheels and subprocess.run([sys.executable, "-c", "import rustbpe"], capture_output=True).returncode:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                        "--upgrade", "--target", "/tmp/site", *map(str, wheels)], check=True)
    if Path("/tmp/site").is_dir():
        env["PYTHONPATH"] = "/tmp/site" + (":" + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    os.environ.update(env)
    for name in args.jobs:
        job(name, args, env)


if __name__ == "__main__":
    main()
