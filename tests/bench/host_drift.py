"""Host drift with real processes: a CPU hog during the best configuration's runs and not during a neutral edit's
(and the reverse), under a time budget, against the keep rule (not a test: about 8 minutes on 2 cores).

    uv run python tests/bench/host_drift.py [--budget 20] [--out /tmp/host_drift]

A private ground.json (test profile, `max_steps` 0 so that seconds end the runs, its own ledger under --out) and
a neutral edit: model.json's `extra` gains an unused key (another configuration, the same model). Two scenarios,
each in a fresh ledger:

- hog-on-best: the baseline under seeds 42 and 43 while HOGS busy-looping processes share the cores; then the
  neutral edit under seeds 42, 43, 44 on an idle host (its runs train more steps in the budget);
- hog-on-edit: the reverse.

Prints each run's status, steps, val_bpb, host-speed probe and the `!!`/`next:` lines, and whether any run was
kept (a keep of a neutral edit is a false keep). Exit code 1 when one was.
"""

import argparse
import json
import multiprocessing as mp
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def hog(stop_at: float) -> None:
    x = 0
    while time.time() < stop_at:
        x = (x * 1103515245 + 12345) % 2**31


def run(ground: Path, model: Path, seed: int, label: str, hogs: int, budget: float) -> dict:
    procs = [mp.Process(target=hog, args=(time.time() + 4 * budget + 120,), daemon=True) for _ in range(hogs)]
    for p in procs:
        p.start()
    env = dict(os.environ, AUTORESEARCH_GROUND=str(ground), AUTORESEARCH_MODEL=str(model), PYTHONUNBUFFERED="1")
    try:
        r = subprocess.run([sys.executable, str(REPO / "train.py"), "--seed", str(seed), "--description", label],
                           capture_output=True, text=True, env=env, cwd=REPO, timeout=4 * budget + 300)
    finally:
        for p in procs:
            p.terminate()
            p.join()
    found = dict(re.findall(r"^(val_bpb|num_steps|status|next):\s+(.*)$", r.stdout, re.M))
    speed = re.search(r"^host speed: ([\d.]+) GFLOP/s", r.stdout, re.M)
    out = {"label": label, "seed": seed, "hogs": hogs, "status": found.get("status"), "steps": found.get("num_steps"),
           "val_bpb": found.get("val_bpb"), "host_speed": float(speed.group(1)) if speed else None,
           "warnings": [ln for ln in r.stdout.splitlines() if ln.startswith("!!")], "next": found.get("next")}
    print(json.dumps(out), flush=True)
    return out


def scenario(name: str, out: Path, budget: float, hog_best: int, hog_edit: int) -> list[dict]:
    d = out / name
    d.mkdir(parents=True, exist_ok=True)
    g = json.loads((REPO / "ground.json").read_text())
    g["mode"] = "test"
    g["test"].update(time_budget_s=budget, max_steps=0)
    g["data"]["cache_dir"] = str(Path(os.path.expanduser(g["data"]["cache_dir"])))
    g["ledger"] = {"results": str(d / "results.tsv"), "sessions_dir": str(d / "sessions")}
    (d / "ground.json").write_text(json.dumps(g, indent=2))
    base = json.loads((REPO / "model.json").read_text())
    (d / "base.json").write_text(json.dumps(base, indent=2))
    (d / "edit.json").write_text(json.dumps(dict(base, extra={"unused_note": 1}), indent=2))
    runs = [run(d / "ground.json", d / "base.json", s, f"{name}: baseline", hog_best, budget) for s in (42, 43)]
    runs += [run(d / "ground.json", d / "edit.json", s, f"{name}: neutral edit", hog_edit, budget)
             for s in (42, 43, 44)]
    return runs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", type=float, default=20.0)
    ap.add_argument("--hogs", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--out", default="/tmp/host_drift")
    args = ap.parse_args()
    out = Path(args.out)
    runs = scenario("hog-on-best", out, args.budget, args.hogs, 0) + scenario("hog-on-edit", out, args.budget, 0,
                                                                               args.hogs)
    kept = [r for r in runs if r["status"] == "keep" and "neutral" in r["label"]]
    print(f"false keeps: {len(kept)} of {sum('neutral' in r['label'] for r in runs)} runs of a neutral edit")
    sys.exit(1 if kept else 0)


if __name__ == "__main__":
    main()
