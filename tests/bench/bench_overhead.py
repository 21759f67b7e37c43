"""Per-run overhead for the edits an agent makes (not a test; prints one table).

    AUTORESEARCH_GROUND=<a prepared ground.json> python3 tests/bench/bench_overhead.py [--budget 30]
        [--variants cold,warm,lr,depth,code] [--scopes model,blocks] [--excluded 10,2]

Each variant runs train.py as a subprocess with its own model.json (or train.py) edit, in the order given,
sharing one set of compile caches per scope: `cold` starts from empty caches (a fresh machine), `warm` re-runs
the same files, `lr` changes matrix_lr, `depth` goes 8 -> 10 (a new graph), `code` changes the MLP's activation
in a copy of the tree. For each: start-up (to step 0), the first step (compilation), the other steps the budget
does not count (ground.json's excluded_steps: they train at full speed), evaluation, the rest (recording, the
clock's drain), total minus training (their sum), and experiments per hour at a 300 s budget = 3600 / (300 +
overhead). `--scopes` compares compiling the whole model with compiling each block (ground.json
processor.compile = "blocks"); `--excluded` compares numbers of warm-up steps outside the budget (ground.json
excluded_steps; default: the ground's own). Each scope and count has its own caches: list `cold` first.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
from harness.util import bytecode_note  # noqa: E402


def run(tree: Path, ground: Path, model: dict, env: dict, name: str, out: Path) -> dict:
    mp = ground.with_name(f"model_{name}.json")
    mp.write_text(json.dumps(model))
    e = dict(os.environ, AUTORESEARCH_GROUND=str(ground), AUTORESEARCH_MODEL=str(mp), PYTHONUNBUFFERED="1", **env)
    r = subprocess.run([sys.executable, str(tree / "train.py"), "--description", f"overhead {name}"],
                       capture_output=True, text=True, env=e, cwd=tree)
    (out / f"overhead_{name}.log").write_text(r.stdout + r.stderr)
    summary = dict(re.findall(r"^(\w+):\s+(.+)$", r.stdout.split("\n---\n")[-1], re.M))
    if r.returncode != 0 or "run_id" not in summary:
        return {"name": name, "error": (r.stdout + r.stderr).strip().splitlines()[-1][:160]}
    g = json.loads(ground.read_text())
    rec = json.loads((Path(g["ledger"]["sessions_dir"]) / f"{summary['run_id']}.json").read_text())
    m = rec["metrics"]
    steps = [float(x) / 1000 for x in re.findall(r"dt: (\d+)ms", r.stdout)]
    excluded = rec["ground"][rec["mode"]]["excluded_steps"]
    overhead = m["total_seconds"] - m["training_seconds"]
    parts = {"startup_s": m["startup_seconds"], "first_step_s": steps[0] if steps else 0.0,
             "warmup_s": sum(steps[1:excluded]), "eval_s": m["eval_seconds"]}
    return {"name": name, "excluded": excluded, **parts, "rest_s": overhead - sum(parts.values()),
            "overhead_s": overhead, "tok_s": m["tokens_per_second"], "per_hour_300s": 3600 / (300 + overhead)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", type=float, default=30)
    ap.add_argument("--variants", default="cold,warm,lr,depth,code")
    ap.add_argument("--scopes", default="model")
    ap.add_argument("--excluded", default="", help="comma-separated excluded_steps counts")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    args = ap.parse_args()
    import torch
    note = bytecode_note(torch)
    if note:             # the figures would include recompiling torch's sources at every start-up
        print(note.replace("each run", "each run below"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="overhead_"))
    base = json.loads((REPO / "model.json").read_text())
    print("| scope | excluded steps | variant | start-up s | first step s | warm-up steps s | eval s | rest s | "
          "total - training s | tok/s | runs/hour at 300 s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    g0 = json.loads(Path(os.environ.get("AUTORESEARCH_GROUND", REPO / "ground.json")).read_text())
    counts = [int(n) for n in args.excluded.split(",")] if args.excluded else [None]
    for scope, count in [(scope, n) for scope in args.scopes.split(",") for n in counts]:
        g = json.loads(json.dumps(g0))
        g["train"]["time_budget_s"] = g["test"]["time_budget_s"] = args.budget     # whichever profile the mode picks
        if count is not None:
            g["train"]["excluded_steps"] = g["test"]["excluded_steps"] = count
        g["processor"]["compile"] = "blocks" if scope == "blocks" else g["processor"]["compile"]
        here = root / f"{scope}_{count}"
        g["ledger"] = {"results": str(here / "results.tsv"), "sessions_dir": str(here / "sessions")}
        ground = here / "ground.json"
        ground.parent.mkdir(parents=True)
        ground.write_text(json.dumps(g))
        caches = {"TORCHINDUCTOR_CACHE_DIR": str(here / "inductor"), "TRITON_CACHE_DIR": str(here / "triton"),
                  "FLASH_ATTENTION_CUTE_DSL_CACHE_DIR": str(here / "flash_attn_cute")}
        edited = here / "tree"
        shutil.copytree(REPO, edited, ignore=shutil.ignore_patterns(".git", ".venv", "__pycache__", ".device", ".whl",
                                                                        ".fa4a", ".fa4b"))
        src = (edited / "train.py").read_text()
        src = src.replace("        if self.fused:\n", "        if False:\n", 1)
        (edited / "train.py").write_text(src.replace("F.relu(self.c_fc(x)).square()", "F.gelu(self.c_fc(x))", 1))
        plan = {"cold": (REPO, base), "warm": (REPO, base), "lr": (REPO, dict(base, matrix_lr=0.05)),
                "depth": (REPO, dict(base, depth=base["depth"] + 2)), "code": (edited, base)}
        for name in args.variants.split(","):
            tree, model = plan[name]
            r = run(tree, ground, model, caches, f"{scope}_{count}_{name}", out)
            if "error" in r:
                label = "ground's" if count is None else count
                print(f"| {scope} | {label} | {name} | error: {r['error']} |", flush=True)
                continue
            print(f"| {scope} | {r['excluded']} | {name} | {r['startup_s']:.1f} | {r['first_step_s']:.1f} | "
                  f"{r['warmup_s']:.1f} | "
                  f"{r['eval_s']:.1f} | {r['rest_s']:.1f} | {r['overhead_s']:.1f} | {r['tok_s'] / 1e6:.3f}M | "
                  f"{r['per_hour_300s']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
