"""The keep rule against upstream's greedy one, on a synthetic objective with seed noise (not a test).

    uv run python tests/bench/bench_keep_rule.py --all-mixes     # the four mixes, the measured noise model
    uv run python tests/bench/bench_keep_rule.py [--nights 200] [--runs 100] [--gains 0.25] [--neutral 0.25]
        [--family]      # a grid of rules of the same shape (family_rule) instead: about 2 minutes for 100 nights
        [--shared-seed-effect RHO]    # the share of the noise that is the seed's own (default 0.75, measured)

Each simulated night an agent makes edits to a configuration whose true val_bpb starts at 0. An
edit's true effect, in units of the seed noise sigma: by default with probability 0.25 a gain of
U(0.5, 3) sigma, 0.25 neutral, 0.5 a loss of U(0.5, 3) sigma. A run observes true value + its seed's
effect (N(0, RHO sigma^2), drawn once a night per seed and shared by every configuration run under that
seed: what tests/bench/noise_model.py measures as the correlation of seed effects) + N(0, (1 - RHO) sigma^2).
Every run costs one of the night's runs, confirmations and the baseline's second seed included.

- greedy (upstream): one run per edit, always seed 42; kept when it scores below the best kept score.
- previous rule: this project's rule before pairing (97.5% t margin, three seeds, confirm whatever beats the mean).
- this rule: harness/decide.py itself, as train.py meets it: the baseline under two seeds, then each edit
  run under the seeds decide.next_seed gives and re-run while its status is `confirm`.

Prints, per rule: edits tried, keeps, false keeps (a kept edit whose true effect is not a gain)
as a share of keeps, the true value reached at the end of a night (mean over nights, in sigma),
and the share of runs spent on the baseline's seeds and on confirmations.
"""

import argparse
import json
import itertools
import random
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from harness import decide  # noqa: E402

SIGMA = 1.0
RULE = {"judge": decide.judge}           # the rule ours_night runs (main swaps in others)


MIX = {"gain": 0.25, "neutral": 0.25}    # the rest are losses; set by --gains / --neutral
MIXES = ((0.25, 0.25), (0.10, 0.40), (0.40, 0.20), (0.25, 0.50))     # gains, neutral (--all-mixes)
PRUNE = {"on": True}                     # early stops simulated where the edits carry stop fractions (--curves)
SHARED = {"rho": 0.0}                    # share of the noise variance that is the seed's own, common to every
                                         # configuration run under that seed (--shared-seed-effect)


def noise(rng: random.Random, seeds: dict, seed: int) -> float:
    """A run's noise: the seed's effect (drawn once a night, shared by every configuration) plus its own."""
    rho = SHARED["rho"]
    if rho == 0:
        return rng.gauss(0.0, SIGMA)          # independent runs (the default; the same draws as before the option)
    if seed not in seeds:
        seeds[seed] = rng.gauss(0.0, SIGMA)
    return rho ** 0.5 * seeds[seed] + (1 - rho) ** 0.5 * rng.gauss(0.0, SIGMA)


MEASURED = {"edits": []}                # (effect in sigma, the pruner's stop fractions of its runs): --curves


def measured_edits(path: str) -> tuple[list, float]:
    """The real edits of a pruner-replay campaign (tests/bench/replay_pruner.py --run: each edit's completed runs
    under three seeds): each edit's effect in units of the seed sigma (its mean val_bpb minus the baseline's, over
    the pooled within-edit standard deviation) and, per run, the share of the budget after which the real
    harness.prune.Pruner stops it against the baseline's curves (None: it runs to completion). The night then draws
    its edits from these (with replacement): the learning curves and the effect sizes are the measured ones."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import replay_pruner as rp
    d = json.loads(Path(path).read_text())
    n, runs = d["max_steps"], [r for r in d["runs"] if r.get("val_bpb") is not None]
    by: dict = {}
    for r in runs:
        by.setdefault(r["name"], []).append(r)
    full = {k: v for k, v in by.items() if len(v) >= 3}
    within = [(r["val_bpb"] - statistics.mean(x["val_bpb"] for x in v)) ** 2 for v in full.values() for r in v]
    sigma = (sum(within) / sum(len(v) - 1 for v in full.values())) ** 0.5
    base = statistics.mean(r["val_bpb"] for r in full["baseline"])
    curves = rp.baseline_curves(full["baseline"], n)
    edits = []
    for name, rs in full.items():
        if name == "baseline":
            continue
        stops = [rp.replay_run(r, curves, (r.get("model") or {}).get("warmup_ratio", 0.0), n) for r in rs]
        edits.append(((statistics.mean(r["val_bpb"] for r in rs) - base) / sigma,
                      [None if st is None else (st + 1) / n for st in stops]))
    return edits, sigma


def draw_edit(rng: random.Random) -> tuple[float, list]:
    """(true effect in sigma, the stop fractions of its runs: empty where early stops are not simulated)."""
    if MEASURED["edits"]:
        return rng.choice(MEASURED["edits"])
    return edit_effect(rng), []


def edit_effect(rng: random.Random) -> float:
    u = rng.random()
    if u < MIX["gain"]:
        return -rng.uniform(0.5, 3.0) * SIGMA
    if u < MIX["gain"] + MIX["neutral"]:
        return 0.0
    return rng.uniform(0.5, 3.0) * SIGMA


def greedy_night(rng: random.Random, runs: int) -> dict:
    seeds = {}
    true, best_seen = 0.0, noise(rng, seeds, 42)          # upstream: seed 42 always
    keeps = false = edits = 0
    for _ in range(runs - 1):
        effect = draw_edit(rng)[0]
        edits += 1
        seen = true + effect + noise(rng, seeds, 42)
        if seen < best_seen:
            best_seen, true = seen, true + effect
            keeps += 1
            false += effect >= 0
    return {"edits": edits, "keeps": keeps, "false": false, "true": true, "extra_runs": 0, "runs": runs}


def ours_night(rng: random.Random, runs: int) -> dict:
    rows, index = [], {}
    used = 0

    def run(fp: str, seed: int, value: float) -> str:
        nonlocal used
        d = RULE["judge"](rows, index, "k", fp, seed, value)
        rid = f"r{len(rows)}"
        rows.append({"run_id": rid, "comparability_key": "k", "status": d.status, "val_bpb": value,
                     "line": len(rows) + 2, "commit": fp})
        index[rid] = {"fingerprint": fp, "seed": seed, "decision": d.numbers()}
        used += 1
        return d.status

    def pruned(fp: str, seed: int, share: float) -> str:
        """A run the early stop ended after `share` of its budget: recorded, never scored, it costs that share."""
        nonlocal used, saved
        rid = f"r{len(rows)}"
        rows.append({"run_id": rid, "comparability_key": "k", "status": "pruned", "val_bpb": None,
                     "line": len(rows) + 2, "commit": fp})
        index[rid] = {"fingerprint": fp, "seed": seed}
        used += share
        saved += 1 - share
        return "pruned"

    true, saved = 0.0, 0.0
    seeds = {}
    run("c0", 42, true + noise(rng, seeds, 42))
    run("c0", 43, true + noise(rng, seeds, 43))
    keeps = false = edits = confirmations = 0

    def one(fp: str, seed: int, effect: float, stops: list) -> str:
        stop = rng.choice(stops) if stops else None          # drawn with or without early stops: the same nights
        if stop is not None and PRUNE["on"]:
            return pruned(fp, seed, stop)
        return run(fp, seed, true + effect + noise(rng, seeds, seed))

    while used < runs:
        effect, stops = draw_edit(rng)
        edits += 1
        fp = f"c{edits}"
        seed = decide.next_seed(rows, index, "k", fp)
        status = one(fp, seed, effect, stops)
        while status == "confirm" and used < runs:
            seed = decide.next_seed(rows, index, "k", fp)
            confirmations += 1
            status = one(fp, seed, effect, stops)
        if status == "keep":
            true += effect
            keeps += 1
            false += effect >= 0
    return {"edits": edits, "keeps": keeps, "false": false, "true": true, "extra_runs": 1 + confirmations,
            "runs": used, "saved": saved}


T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
         12: 2.179, 15: 2.131, 20: 2.086, 25: 2.060, 30: 2.042}       # one-sided 97.5% Student t, by dof


def t_quantile(dof: int) -> float:
    if dof < 1:
        return float("inf")
    return 1.96 if dof > 30 else T_975[max(d for d in T_975 if d <= dof)]


def family_rule(z_keep: float, z_confirm: float, min_runs: int, max_runs: int):
    """The rule before this one (session 9 to 16), with its constants as parameters: keep when the mean gain over
    the best exceeds z_keep x t(dof)/1.96 x the standard error and n >= min_runs; confirm above z_confirm x the
    standard error while n < max_runs; else discard. family_rule(1.96, 0, 3, 4) is that rule ("today's")."""
    def status(rows, index, key, fingerprint, seed, val_bpb):
        st = decide.standing(rows, index, key)
        if not st.configs:
            return "baseline"
        mine = st.configs.get(fingerprint)
        if mine is not None and (seed in mine.seeds or mine.accepted):
            return "rerun" if seed in mine.seeds else "repeat"
        values = (mine.values if mine else []) + [val_bpb]
        n = len(values)
        new = {"run_id": "\0new", "comparability_key": key, "status": "discard", "val_bpb": val_bpb, "line": 1e9}
        floor = decide.standing(rows + [new], {**index, "\0new": {"fingerprint": fingerprint, "seed": seed}}, key)
        gain = st.best.mean - sum(values) / n
        if floor.sigma is None:
            return "confirm" if gain > 0 and n < max_runs else "discard"
        se = floor.sigma * (1 / n + 1 / len(st.best.values)) ** 0.5
        if n >= min_runs and gain > z_keep * t_quantile(floor.dof) / 1.96 * se:
            return "keep"
        return "confirm" if gain > z_confirm * se and n < max_runs else "discard"
    return lambda *a: decide.Decision(status(*a))


EB_MIN_EDITS = 10               # first runs of configurations needed before the prior is used


def posterior(index: dict, d: decide.Decision) -> tuple[float, float, float] | None:
    """(posterior mean of the candidate's effect, B, se^2) under the prior of the ledger's first runs; None with
    fewer than EB_MIN_EDITS of them."""
    obs = [(e["decision"]["diff"], (e["decision"]["se_factor"] * e["decision"]["sigma"]) ** 2) for e in index.values()
           if (e.get("decision") or {}).get("n") == 1 and e["decision"].get("diff") is not None
           and e["decision"].get("se_factor") and e["decision"].get("sigma")]
    if len(obs) < EB_MIN_EDITS:
        return None
    diffs = [x for x, _ in obs]
    mu = statistics.mean(diffs)
    tau2 = max(statistics.variance(diffs) - statistics.mean(v for _, v in obs), 0.0)
    se2 = (d.se_factor * d.sigma) ** 2
    shrink = tau2 / (tau2 + se2)
    return mu + shrink * (d.diff - mu), shrink, se2


def eb_judge(rows, index, key, fingerprint, seed, val_bpb):
    """decide.judge with an effect-size prior learned from this ledger (empirical Bayes), a candidate lever: each
    configuration's first run against the best (its decision's diff d and standard error se) is one draw of
    d = theta + e; their mean mu and tau^2 = var(d) - mean(se^2) (method of moments) give the prior N(mu, tau^2).
    While a configuration has fewer runs than a keep needs, its confirm test reads the posterior: another seed
    when -(mu + B (d - mu)) > CONFIRM_Z x sqrt(B) se, B = tau^2 / (tau^2 + se^2). The keep test is unchanged."""
    d = decide.judge(rows, index, key, fingerprint, seed, val_bpb)
    if d.status not in ("confirm", "discard") or d.diff is None or not d.se_factor or d.n >= decide.MIN_RUNS_TO_KEEP:
        return d
    found = posterior(index, d)
    if found is None:
        return d
    post, shrink, se2 = found
    d.status = "confirm" if -post > decide.CONFIRM_Z * (shrink * se2) ** 0.5 and shrink > 0 else "discard"
    return d


def eb_keep_judge(rows, index, key, fingerprint, seed, val_bpb):
    """decide.judge with the same prior used the other way (a second candidate lever): a configuration on its second
    seed is kept when the posterior gain passes the keep margin on the posterior standard error."""
    d = decide.judge(rows, index, key, fingerprint, seed, val_bpb)
    if d.status != "confirm" or d.n != 2 or d.diff is None or not d.se_factor:
        return d
    found = posterior(index, d)
    if found is None:
        return d
    post, shrink, se2 = found
    if -post > decide.KEEP_Z / 1.96 * decide.t_quantile(d.dof) * (shrink * se2) ** 0.5 and not d.control:
        d.status = "keep"
    return d


def summarize(name: str, nights: list[dict]) -> str:
    keeps = sum(n["keeps"] for n in nights)
    false = sum(n["false"] for n in nights)
    runs = sum(n["runs"] for n in nights)
    saved = sum(n.get("saved", 0.0) for n in nights)
    if MEASURED["edits"]:
        name += f" | {100 * saved / runs:.1f}%"            # the share of the night's runs early stops gave back
    return (f"| {name} | {statistics.mean(n['edits'] for n in nights):.1f} | "
            f"{statistics.mean(n['keeps'] for n in nights):.1f} | "
            f"{100 * false / max(keeps, 1):.1f}% | {statistics.mean(n['true'] for n in nights):+.2f} sigma | "
            f"{100 * sum(n['extra_runs'] for n in nights) / runs:.1f}% |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--nights", type=int, default=200)
    ap.add_argument("--runs", type=int, default=100, help="runs per night")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--gains", type=float, default=0.25, help="share of edits that are real gains")
    ap.add_argument("--neutral", type=float, default=0.25, help="share of edits with no effect (the rest are losses)")
    ap.add_argument("--family", action="store_true", help="search the rule family of family_rule() instead")
    ap.add_argument("--shared-seed-effect", type=float, default=0.75,
                    help="share of the noise variance common to all configurations under one seed (0: independent; "
                         "default: the CPU's measured 0.75, the lower of the two measurements)")
    ap.add_argument("--all-mixes", action="store_true", help="the four mixes of docs/ instead of --gains/--neutral")
    ap.add_argument("--eb", action="store_true", help="add this rule with the empirical-Bayes prior (eb_judge)")
    ap.add_argument("--skip-previous", action="store_true", help="leave out the previous rule (faster)")
    ap.add_argument("--curves", help="a replay_pruner.py --run JSON: draw the night's edits from its real edits, with "
                                     "their learning curves' early stops (measured_edits)")
    args = ap.parse_args()
    MIX.update(gain=args.gains, neutral=args.neutral)
    SHARED.update(rho=args.shared_seed_effect)
    if args.family:
        print("| z_keep | z_confirm | seeds to keep / at most | true value at dawn | false keeps | keeps / night |")
        print("|---|---|---|---|---|---|")
        for zk, zc, lo, hi in itertools.product((1.5, 1.96, 2.5, 3.0), (-0.5, 0.0, 0.5, 1.0), (1, 2, 3), (2, 3, 4)):
            if lo > hi:
                continue
            RULE["judge"] = family_rule(zk, zc, lo, hi)
            rng = random.Random(args.seed)
            nights = [ours_night(rng, args.runs) for _ in range(args.nights)]
            keeps = sum(n["keeps"] for n in nights)
            print(f"| {zk} | {zc} | {lo} / {hi} | {statistics.mean(n['true'] for n in nights):+.2f} sigma | "
                  f"{100 * sum(n['false'] for n in nights) / max(keeps, 1):.1f}% | {keeps / args.nights:.1f} |",
                  flush=True)
        return
    if args.curves:
        return curves_main(args)
    mixes = MIXES if args.all_mixes else ((args.gains, args.neutral),)
    print(f"{args.nights} nights x {args.runs} runs; edit effects: gains and losses of 0.5-3 sigma; seed effect shared "
          f"by configurations: {args.shared_seed_effect:.0%} of the variance (measured: 0.75 CPU, 0.93 H100, "
          f"docs/records/2026-12-07_noise-model-*); early stops (harness/prune.py) are not simulated")
    print("| edits: gains / neutral / losses | rule | edits tried / night | keeps / night | false keeps (share of "
          "keeps) | true value at dawn | runs on seeds and confirmations |")
    print("|---|---|---|---|---|---|---|")
    for gains, neutral in mixes:
        MIX.update(gain=gains, neutral=neutral)
        label = f"{gains:.0%} / {neutral:.0%} / {1 - gains - neutral:.0%}"
        rng_g = random.Random(args.seed)
        greedy = [greedy_night(rng_g, args.runs) for _ in range(args.nights)]
        print(f"| {label} " + summarize("greedy (upstream)", greedy))
        rules = [("previous rule (97.5% t margin, 3 seeds)", family_rule(1.96, 0.0, 3, 4))] * (not args.skip_previous)
        rules += [("this rule (harness/decide.py)", decide.judge)]
        rules += [("this rule + empirical-Bayes prior on the confirm test", eb_judge),
                  ("this rule + empirical-Bayes prior: a keep on two seeds", eb_keep_judge)] * args.eb
        for name, rule in rules:
            RULE["judge"] = rule
            rng = random.Random(args.seed)
            print(f"| {label} " + summarize(name, [ours_night(rng, args.runs) for _ in range(args.nights)]), flush=True)


def curves_main(args) -> None:
    """The night on measured edits (--curves): greedy, this rule without early stops, this rule with them."""
    MEASURED["edits"], sigma = measured_edits(args.curves)
    effects = sorted(e for e, _ in MEASURED["edits"])
    stopped = [st for _, stops in MEASURED["edits"] for st in stops if st is not None]
    print(f"{args.nights} nights x {args.runs} runs; {len(effects)} measured edits ({args.curves}), effects in units of "
          f"the seed sigma {sigma:.6f}: min {effects[0]:+.1f}, median {statistics.median(effects):+.1f}, max "
          f"{effects[-1]:+.1f}; {sum(e < 0 for e in effects)} better than the baseline; {len(stopped)} of "
          f"{3 * len(effects)} runs stopped early in the replay; seed effect shared: {args.shared_seed_effect:.0%}")
    print("| rule | runs early stops gave back | edits tried / night | keeps / night | false keeps (share of keeps) | "
          "true value at dawn | runs on seeds and confirmations |")
    print("|---|---|---|---|---|---|---|")
    print(summarize("greedy (upstream)", [greedy_night(random.Random(args.seed), args.runs)
                                          for _ in range(args.nights)]))
    for on in (False, True):
        PRUNE["on"] = on
        RULE["judge"] = decide.judge
        rng = random.Random(args.seed)
        print(summarize(f"this rule, early stops {'on' if on else 'off'}",
                        [ours_night(rng, args.runs) for _ in range(args.nights)]), flush=True)


if __name__ == "__main__":
    main()
