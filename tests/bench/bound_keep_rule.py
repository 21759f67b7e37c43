"""An upper bound on the true progress of any keep rule with at most a given share of false keeps (not a test).

    uv run python tests/bench/bound_keep_rule.py [--gains 0.25] [--neutral 0.25] [--false 0.05] [--runs 100]

The model is bench_keep_rule.py's: an edit's true effect delta is, in units of the seed noise sigma, a gain of
U(0.5, 3) with probability `gains`, 0 with probability `neutral`, else a loss of U(0.5, 3); each run of an edit
observes delta + N(0, 1). A rule runs an edit some number of times and keeps or discards it; a keep adds delta
to the true value, and is false when delta >= 0.

The bound gives the rule more than any real one has: the true value of the current configuration is known (no
baseline runs, no estimated bar, no winner's curse), as are sigma and the distribution of effects. For such a
rule, progress per run at a false-keep share <= q is at most

    rho(lambda) = max over policies of E[gain - lambda (false - q keeps)] / E[runs]      for every lambda >= 0

(weak duality: a rule that meets the share makes the bracket's second term <= 0). rho(lambda) is found by
dynamic programming over (runs so far, sum of observations) with Dinkelbach's bisection on the rate, and the
bound is its minimum over lambda, times the runs of a night. Rules that stop after at most MAX_RUNS runs of an
edit are covered; more runs per edit never pay in this model (see --max-runs).
"""

import argparse

import numpy as np

H = 0.02                                   # grid step of the observation sum, in sigma
S = np.arange(-40.0, 40.0 + H / 2, H)      # sum of an edit's observations
Z = np.arange(-6.0, 6.0 + H / 2, H)
PHI = np.exp(-Z ** 2 / 2)
PHI /= PHI.sum()                           # N(0, 1) on the grid


def effects(gains: float, neutral: float, k: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """delta on a grid (negative = better val_bpb) and its prior probabilities."""
    delta = np.concatenate([-np.linspace(0.5, 3.0, k), [0.0], np.linspace(0.5, 3.0, k)])
    prior = np.concatenate([np.full(k, gains / k), [neutral], np.full(k, (1 - gains - neutral) / k)])
    return delta, prior


def posterior(delta, prior, n: int) -> np.ndarray:
    """P(delta | n runs whose observations sum to S), one row per S."""
    logw = np.log(prior)[None, :] + S[:, None] * delta[None, :] - n * delta[None, :] ** 2 / 2
    w = np.exp(logw - logw.max(axis=1, keepdims=True))
    return w / w.sum(axis=1, keepdims=True)


def rate_value(delta, prior, lam: float, q: float, rho: float, max_runs: int) -> tuple[float, list]:
    """Expected reward of one edit minus rho per run, under the best policy; and that policy (0 discard,
    1 keep, 2 run again) per runs-so-far and observation sum."""
    value, policy = None, [None] * (max_runs + 1)
    for n in range(max_runs, 0, -1):
        post = posterior(delta, prior, n)
        keep = post @ (-delta) - lam * (post @ (delta >= 0).astype(float) - q)
        options = [np.zeros_like(S), keep]
        if n < max_runs:
            smooth = np.convolve(value, PHI[::-1], mode="same")         # E over the next observation's noise
            ahead = np.stack([np.interp(S + d, S, smooth) for d in delta], axis=1)
            options.append(-rho + (post * ahead).sum(axis=1))
        options = np.stack(options)
        policy[n], value = options.argmax(axis=0), options.max(axis=0)
    smooth = np.convolve(value, PHI[::-1], mode="same")
    return -rho + float(prior @ np.interp(delta, S, smooth)), policy


def best_rate(delta, prior, lam: float, q: float, max_runs: int) -> tuple[float, list]:
    lo, hi = 0.0, 3.0                      # the rate (Dinkelbach): the edit's net value is zero at the optimum
    for _ in range(30):
        mid = (lo + hi) / 2
        if rate_value(delta, prior, lam, q, mid, max_runs)[0] > 0:
            lo = mid
        else:
            hi = mid
    return lo, rate_value(delta, prior, lam, q, lo, max_runs)[1]


def simulate(delta, prior, policy, max_runs: int, edits: int = 200_000) -> dict:
    """The policy's own figures, by Monte Carlo: progress per run, false-keep share, runs per edit."""
    rng = np.random.default_rng(0)
    d = rng.choice(delta, size=edits, p=prior)
    total, runs = np.zeros(edits), np.zeros(edits)
    alive, kept = np.ones(edits, bool), np.zeros(edits, bool)
    for n in range(1, max_runs + 1):
        total = np.where(alive, total + d + rng.standard_normal(edits), total)
        runs += alive
        act = policy[n][np.clip(np.round((total - S[0]) / H).astype(int), 0, len(S) - 1)]
        kept |= alive & (act == 1)
        alive &= act == 2
    return {"per_run": float(-(d * kept).sum() / runs.sum()), "false": float((kept & (d >= 0)).sum() / kept.sum()),
            "runs_per_edit": float(runs.mean())}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gains", type=float, default=0.25)
    ap.add_argument("--neutral", type=float, default=0.25)
    ap.add_argument("--false", type=float, default=0.05, help="the largest share of false keeps allowed")
    ap.add_argument("--runs", type=int, default=100, help="runs per night")
    ap.add_argument("--max-runs", type=int, default=8, help="runs of one edit at most")
    args = ap.parse_args()
    delta, prior = effects(args.gains, args.neutral)
    print(f"edits: {args.gains:.0%} gains, {args.neutral:.0%} neutral, {1 - args.gains - args.neutral:.0%} losses "
          f"(0.5-3 sigma); false keeps <= {args.false:.0%}; the current configuration's true value known")
    print("| lambda | bound: progress per night (sigma) | its policy: per night | false keeps | runs per edit |")
    print("|---|---|---|---|---|")
    lo, hi, seen = 0.0, 24.0, {}

    def at(lam):                           # rho is convex in lambda: ternary search for its minimum
        if lam not in seen:
            rho, policy = best_rate(delta, prior, lam, args.false, args.max_runs)
            seen[lam] = rho
            sim = simulate(delta, prior, policy, args.max_runs)
            print(f"| {lam:.2f} | {rho * args.runs:.2f} | {sim['per_run'] * args.runs:.2f} | {sim['false']:.1%} | "
                  f"{sim['runs_per_edit']:.2f} |", flush=True)
        return seen[lam]

    for _ in range(8):
        a, b = lo + (hi - lo) / 3, hi - (hi - lo) / 3
        if at(a) < at(b):
            hi = b
        else:
            lo = a
    print(f"bound: no rule keeping at most {args.false:.0%} false reaches more than "
          f"{min(seen.values()) * args.runs:.2f} sigma of true progress in {args.runs} runs")


if __name__ == "__main__":
    main()
