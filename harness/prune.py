"""Early stop: a run whose train-loss curve is clearly worse than the best configuration's runs at the same point
of the budget stops there, recorded as `pruned` (never scored, never evidence for a keep).

    uv run pytest tests/test_decide.py -k prune

Every run stores its loss curve (CURVE_POINTS points of (progress, smoothed train loss)) in its index entry. At
start a run reads the curves of the best configuration's runs in its key; from PRUNE_FROM to PRUNE_UNTIL of the
budget (and past the warm-up, and after PRUNE_MIN_STEPS steps) it is stopped when, at PRUNE_CHECKS consecutive
steps, its smoothed loss is both above the best's mean at that point by more than PRUNE_Z of their spread and
above the best's mean at (1 - PRUNE_LAG) of that point: the best had already reached this loss with PRUNE_LAG
less of the budget. The lag, not a share of the loss, is the measure because a gap in loss means little where the
curve is steep (early in a short GPU run, seeds' runs differ by several percent) and much where it is flat.
An edit that starts slow by design (a longer warm-up, a schedule that pays off late) turns it off with
`"prune": false` in model.json (program.md says when).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from harness.decide import is_scored, run_fingerprint, standing

CURVE_POINTS = 32               # points of a run's stored loss curve
# Sized on real curves (docs/records/2026-12-07_pruner-replay-cpu/): of the runs that ended better than the best,
# none was ever more than 13% behind it in the window (99 CPU runs), nor was the neutral edit that a gap of 2% of the
# loss stopped on an H100 in a 60 s run (docs/records/2026-12-07_noise-model-h100/); PRUNE_LAG sits 1.5x above both.
# The spread (PRUNE_Z) is a second condition where the best's own runs disagree.
PRUNE_FROM, PRUNE_UNTIL = 0.3, 0.7      # the share of the budget within which a run may be stopped
PRUNE_MIN_STEPS = 15            # never judged on fewer steps
PRUNE_MIN_CURVES = 2            # the best's runs with a curve needed to measure their spread
PRUNE_Z = 2.0                   # above the best's mean by this many of their standard deviations,
PRUNE_LAG = 0.20                # and above the best's mean at (1 - PRUNE_LAG) of this point of the budget
PRUNE_CHECKS = 3                # at this many consecutive steps


def thin_curve(curve: list[tuple[float, float]], points: int = CURVE_POINTS) -> list[list[float]]:
    """At most `points` (progress, loss) pairs, evenly spread over the run, the last one kept, rounded."""
    if len(curve) > points:
        step = (len(curve) - 1) / (points - 1)
        curve = [curve[round(i * step)] for i in range(points)]
    return [[round(p, 4), round(loss, 5)] for p, loss in curve]


def at(curve: list, progress: float) -> float | None:
    """The curve's loss at `progress`, linearly interpolated; None outside it."""
    for (p0, l0), (p1, l1) in zip(curve, curve[1:]):
        if p0 <= progress <= p1:
            return l0 if p1 == p0 else l0 + (l1 - l0) * (progress - p0) / (p1 - p0)
    return None


@dataclass
class Pruner:
    curves: list = field(default_factory=list)     # the best configuration's runs' curves
    warmup: float = 0.0
    reason: str = ""                                # why it is off, or what it compares with (printed at start)
    stopped: str = ""                               # why the run stopped early ("" while it runs)
    _over: int = 0

    @classmethod
    def for_run(cls, run, s, model) -> "Pruner":
        """The pruner of a starting run (harness.record.Run): the best configuration's curves in its key."""
        if not getattr(model, "prune", True):
            return cls(reason="early stop: off (model.json \"prune\": false)")
        judged = int(s.max_steps * PRUNE_UNTIL) - max(PRUNE_MIN_STEPS, -int(-PRUNE_FROM * s.max_steps)) + 1
        if s.max_steps and judged < PRUNE_CHECKS:      # no PRUNE_CHECKS steps in a row inside the window
            return cls(reason=f"early stop: off (max_steps {s.max_steps}: too few steps to judge a curve by, "
                              f"{PRUNE_CHECKS} in a row from step {PRUNE_MIN_STEPS} before {PRUNE_UNTIL:.0%} of them)")
        rows, index = run.store.read()
        st = standing(rows, index, run.key)
        if st.best is None:
            return cls(reason="early stop: off (no best configuration in this key yet)")
        if st.best.fingerprint == run.record["fingerprint"]:
            return cls(reason="early stop: off (this is the best configuration itself)")
        curves = [index[r["run_id"]]["curve"] for r in rows            # its confirm runs too: every seed it ran
                  if r["comparability_key"] == run.key and is_scored(r)
                  and run_fingerprint(r, index) == st.best.fingerprint
                  and isinstance(index.get(r["run_id"], {}).get("curve"), list)
                  and len(index[r["run_id"]]["curve"]) > 1]
        if len(curves) < PRUNE_MIN_CURVES:
            return cls(reason=f"early stop: off (the best configuration has {len(curves)} run(s) with a loss curve; "
                              f"{PRUNE_MIN_CURVES} are needed to measure their spread)")
        return cls(curves, model.warmup_ratio, f"early stop: on, against the {len(curves)} runs of the best "
                                               f"configuration between {PRUNE_FROM:.0%} and {PRUNE_UNTIL:.0%} of "
                                               f"the budget (model.json \"prune\": false turns it off)")

    def _mean_sd(self, progress: float) -> tuple[float, float] | None:
        values = [v for v in (at(c, progress) for c in self.curves) if v is not None]
        if len(values) < PRUNE_MIN_CURVES:
            return None
        mean = sum(values) / len(values)
        return mean, (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5

    def bound(self, progress: float) -> tuple[float, float, float, float] | None:
        """(threshold, the best's mean, their spread, their mean at (1 - PRUNE_LAG) of `progress`) at `progress`,
        or None where it cannot judge."""
        here, back = self._mean_sd(progress), self._mean_sd((1 - PRUNE_LAG) * progress)
        if here is None or back is None:
            return None
        (mean, sd), earlier = here, back[0]
        return max(mean + PRUNE_Z * sd, earlier), mean, sd, earlier

    def check(self, step: int, progress: float, loss: float) -> None:
        """After each step read: sets `stopped` once the loss has stayed above the bound PRUNE_CHECKS times."""
        if self.stopped or not self.curves:
            return
        judged = PRUNE_FROM <= progress <= PRUNE_UNTIL and progress >= self.warmup + 0.1 and step >= PRUNE_MIN_STEPS
        b = self.bound(progress) if judged else None
        if b is None or loss <= b[0]:
            self._over = 0
            return
        self._over += 1
        if self._over >= PRUNE_CHECKS:
            self.stopped = (f"stopped early at step {step} ({progress:.0%} of the budget): more than {PRUNE_LAG:.0%} "
                            f"behind the best configuration; train loss {loss:.4f} above {b[0]:.4f} for "
                            f"{PRUNE_CHECKS} steps (its {len(self.curves)} runs: {b[3]:.4f} at "
                            f"{(1 - PRUNE_LAG) * progress:.0%}, {b[1]:.4f} sd {b[2]:.4f} at {progress:.0%}); "
                            f"pruned, not judged")
