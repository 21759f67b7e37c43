"""The noise model the keep rule faces, measured with real train.py runs (not a test).

    uv run python tests/bench/noise_model.py [--seeds 42,43,44,45] [--repeats 2] [--variant matrix_lr=0.05]
        [--out /tmp/noise] [--json noise.json]
    uv run python tests/bench/noise_model.py --plan A42,B42,A43 --json part1.json     # some runs only
    uv run python tests/bench/noise_model.py --merge part1.json part2.json              # figures from saved runs

Runs the configuration of model.json (A) and a variant of it (B: one model.json key changed) under the same
seeds, interleaved in time (A42, B42, A43, B43, ...), then A under the first seed again (`--repeats` runs in
all). Uses the ground.json of AUTORESEARCH_GROUND (default: the repository's) with its ledger moved under --out,
so the project's ledger is untouched. Prints, with n:

- seed-to-seed sigma: the standard deviation of A (and of B) over the seeds;
- same-seed sigma: the standard deviation of A's repeats under one seed (the non-determinism a seed leaves);
- the correlation of seed effects between A and B: corr over seeds of (A_s - mean A, B_s - mean B), which is
  what paired comparisons gain (paired variance = 2 sigma^2 (1 - rho) instead of 2 sigma^2);
- the paired and unpaired standard deviations of B - A.
Feed rho into tests/bench/bench_keep_rule.py --shared-seed-effect.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run(ground: Path, model: Path, seed: int, label: str, log_dir: Path) -> dict:
    env = dict(os.environ, AUTORESEARCH_GROUND=str(ground), AUTORESEARCH_MODEL=str(model), PYTHONUNBUFFERED="1")
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, str(REPO / "train.py"), "--seed", str(seed), "--description",
                        f"noise model {label} seed {seed}"], capture_output=True, text=True, env=env, cwd=REPO)
    (log_dir / f"{label}_{seed}_{int(t0)}.log").write_text(r.stdout + r.stderr)
    found = dict(re.findall(r"^(val_bpb|num_steps|training_seconds|tokens_per_sec|status):\s+(\S+)$", r.stdout,
                            re.M))
    if r.returncode != 0 or "val_bpb" not in found:
        raise SystemExit(f"{label} seed {seed}: train.py failed (exit {r.returncode}); log in {log_dir}")
    out = {"config": label, "seed": seed, "val_bpb": float(found["val_bpb"]), "steps": int(found["num_steps"]),
           "tok_s": float(found["tokens_per_sec"]), "wall_s": round(time.monotonic() - t0, 1),
           "status": found.get("status"), "heldout_note": next((x for x in r.stdout.splitlines()
                                                                if x.startswith("heldout:")), None)}
    print(json.dumps(out), flush=True)
    return out


def sd(xs: list[float]) -> float:
    return statistics.stdev(xs) if len(xs) > 1 else float("nan")


def private_ground(out: Path) -> dict:
    """AUTORESEARCH_GROUND's ground.json (default: the repository's) with its ledger moved under `out` (a file
    ledger of its own) and its data paths made absolute, so that the data stays where it is."""
    src = Path(os.environ.get("AUTORESEARCH_GROUND", REPO / "ground.json"))
    g = json.loads(src.read_text())
    for k in ("cache_dir", "local_dir"):      # paths relative to the original ground.json
        v = g["data"].get(k)
        if v and not v.startswith(("~", "/")):
            g["data"][k] = str((src.parent / v).resolve())
    g["ledger"] = dict(g.get("ledger", {}), results=str(out / "results.tsv"), sessions_dir=str(out / "sessions"),
                       backend="file")
    return g


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default="42,43,44,45")
    ap.add_argument("--repeats", type=int, default=2, help="runs of A under the first seed, the first included")
    ap.add_argument("--variant", default="matrix_lr=0.05", help="B: model.json with KEY=VALUE (JSON value)")
    ap.add_argument("--out", default="/tmp/noise_model")
    ap.add_argument("--json", help="write the runs and the figures here")
    ap.add_argument("--plan", help="the runs to make, in order (e.g. A42,B42,A43): instead of --seeds/--repeats")
    ap.add_argument("--merge", nargs="+", help="no runs: the figures of the runs saved in these --json files")
    args = ap.parse_args()
    if args.merge:
        runs = [r for f in args.merge for r in json.loads(Path(f).read_text())["runs"]]
        report(runs, args.json)
        return
    out = Path(args.out)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    g = private_ground(out)
    ground = out / "ground.json"
    ground.write_text(json.dumps(g, indent=2))
    model_src = Path(os.environ.get("AUTORESEARCH_MODEL", REPO / "model.json"))
    a_model = json.loads(model_src.read_text())
    key, value = args.variant.split("=", 1)
    b_model = dict(a_model, **{key: json.loads(value)})
    (out / "model_a.json").write_text(json.dumps(a_model, indent=2))
    (out / "model_b.json").write_text(json.dumps(b_model, indent=2))
    seeds = [int(s) for s in args.seeds.split(",")]
    plan = ([(p[0], int(p[1:])) for p in args.plan.split(",")] if args.plan else
            [(c, s) for s in seeds for c in "AB"] + [("A", seeds[0])] * (args.repeats - 1))
    runs = [run(ground, out / f"model_{c.lower()}.json", s, c, out / "logs") for c, s in plan]
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": runs}, indent=2))
    if not args.plan:
        report(runs, args.json)


def report(runs: list[dict], json_path: str | None) -> None:
    """Print (and save) the figures of A's and B's runs: seeds are those both ran."""
    seeds = sorted({r["seed"] for r in runs if r["config"] == "A"} & {r["seed"] for r in runs if r["config"] == "B"})
    first = min((r["seed"] for r in runs if r["config"] == "A"),
                key=lambda s: -sum(r["config"] == "A" and r["seed"] == s for r in runs))   # the repeated seed
    a = {}
    for r in runs:
        if r["config"] == "A":
            a.setdefault(r["seed"], r["val_bpb"])           # the first run of each seed
    b = {r["seed"]: r["val_bpb"] for r in runs if r["config"] == "B"}
    same = [r["val_bpb"] for r in runs if r["config"] == "A" and r["seed"] == first]
    av, bv = [a[s] for s in seeds], [b[s] for s in seeds]
    ma, mb = statistics.mean(av), statistics.mean(bv)
    cov = sum((x - ma) * (y - mb) for x, y in zip(av, bv)) / (len(seeds) - 1)
    rho = cov / (sd(av) * sd(bv)) if sd(av) > 0 and sd(bv) > 0 else float("nan")
    diffs = [y - x for x, y in zip(av, bv)]
    pooled = ((sd(av) ** 2 + sd(bv) ** 2) / 2) ** 0.5
    figures = {"seeds": seeds, "sigma_seed_A": sd(av), "sigma_seed_B": sd(bv), "sigma_seed_pooled": pooled,
               "same_seed_runs": same, "sigma_same_seed": sd(same), "rho_seed_effect": rho,
               "mean_A": ma, "mean_B": mb, "paired_sd_of_B_minus_A": sd(diffs),
               "unpaired_sd_of_B_minus_A": pooled * 2 ** 0.5,
               "steps": sorted({r["steps"] for r in runs})}
    print("| figure | value | n |")
    print("|---|---|---|")
    print(f"| seed-to-seed sigma (A, B, pooled) | {sd(av):.6f}, {sd(bv):.6f}, {pooled:.6f} | {len(seeds)} seeds each |")
    print(f"| same-seed sigma (A, seed {first}) | {sd(same):.6f} | {len(same)} runs |")
    print(f"| correlation of seed effects, A vs B | {rho:.3f} | {len(seeds)} seeds |")
    print(f"| B - A: mean, paired sd, unpaired sd | {mb - ma:+.6f}, {sd(diffs):.6f}, {pooled * 2 ** 0.5:.6f} | "
          f"{len(seeds)} pairs |")
    print(f"| steps per run | {', '.join(map(str, figures['steps']))} | {len(runs)} runs |")
    if json_path:
        Path(json_path).write_text(json.dumps({"runs": runs, "figures": figures}, indent=2))


if __name__ == "__main__":
    main()
