"""Where a run's overhead goes: train.py under cProfile, the functions that take its time (not a test).

    AUTORESEARCH_GROUND=<a prepared ground.json> python3 tests/bench/profile_overhead.py [--budget 20]
        [--variants cold,warm] [--out DIR]

Each variant runs train.py in a subprocess under cProfile with the default model.json: `cold` from empty
inductor/triton caches, `warm` again on the same caches. Prints the run's start-up/eval/overhead and the
functions with the most cumulative and the most own time (the .prof files land in --out for pstats or
snakeviz). cProfile slows Python-heavy work (the compiler) and loses some frames under torch.compile's frame
evaluation, so read it for what dominates, not for exact seconds: this is how the bytecode recompilation at
every start-up was found (`builtins.compile` under `importlib`'s `get_code`,
docs/records/2026-11-28_bytecode-cache-h200/).
"""

import argparse
import json
import os
import pstats
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

DRIVER = """
import cProfile, os, runpy, sys
def _exit(code):
    raise SystemExit(code)
os._exit = _exit
sys.argv = ["train.py", "--description", "profile overhead"]
sys.path.insert(0, {repo!r})
prof = cProfile.Profile()
prof.enable()
try:
    runpy.run_path({train!r}, run_name="__main__")
except SystemExit:
    pass
prof.disable()
prof.dump_stats({out!r})
"""


def top_functions(prof: Path, n: int) -> list[str]:
    """The n functions with the most cumulative time, then the n with the most own time: table rows."""
    stats = pstats.Stats(str(prof)).stats          # (file, line, func) -> (cc, nc, tt, ct, callers)
    where = lambda f, line, fn: f"{'/'.join(Path(f).parts[-3:])}:{line} {fn}"          # noqa: E731
    rows = []
    for col, label in ((3, "cumulative"), (2, "own")):
        for (f, line, fn), v in sorted(stats.items(), key=lambda kv: -kv[1][col])[:n]:
            rows.append(f"| {label} | {v[col]:.1f} | `{where(f, line, fn)}` |")
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", type=float, default=20)
    ap.add_argument("--variants", default="cold,warm")
    ap.add_argument("--top", type=int, default=25, help="functions listed per ordering")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="profile_overhead_"))
    g = json.loads(Path(os.environ.get("AUTORESEARCH_GROUND", REPO / "ground.json")).read_text())
    g["train"]["time_budget_s"] = g["test"]["time_budget_s"] = args.budget
    g["ledger"] = {"results": str(root / "results.tsv"), "sessions_dir": str(root / "sessions")}
    ground = root / "ground.json"
    ground.write_text(json.dumps(g))
    env = dict(os.environ, AUTORESEARCH_GROUND=str(ground), PYTHONUNBUFFERED="1",
               TORCHINDUCTOR_CACHE_DIR=str(root / "inductor"), TRITON_CACHE_DIR=str(root / "triton"))
    for name in args.variants.split(","):
        prof = out / f"overhead_{name}.prof"
        code = DRIVER.format(repo=str(REPO), train=str(REPO / "train.py"), out=str(prof))
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO)
        (out / f"overhead_{name}.log").write_text(r.stdout + r.stderr)
        summary = dict(re.findall(r"^(\w+):\s+(.+)$", r.stdout.split("\n---\n")[-1], re.M))
        if "run_id" not in summary or not prof.exists():
            print(f"{name}: no summary; see {out / f'overhead_{name}.log'}: {(r.stdout + r.stderr)[-300:]}")
            continue
        m = json.loads((root / "sessions" / f"{summary['run_id']}.json").read_text())["metrics"]
        print(f"\n{name}: start-up {m['startup_seconds']:.1f} s, eval {m['eval_seconds']:.1f} s, total - training "
              f"{m['total_seconds'] - m['training_seconds']:.1f} s (under cProfile)")
        print("| by | seconds | function |\n|---|---|---|")
        print("\n".join(top_functions(prof, args.top)))


if __name__ == "__main__":
    main()
