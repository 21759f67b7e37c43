"""Early stop: a run whose train-loss curve is clearly worse than the best configuration's runs at the same point
of the budget stops there, recorded as `pruned` (never scored, never evidence for a keep).

    uv run pytest tests/test_decide.py -k prune

Every run stores its loss curve (CURVE_POINTS points of (progress, smoothed train loss)) in its index entry. At
start a run reads the curves of the best configuration's runs in its key; from PRUNE_FROM to PRUNE_UNTIL of the
budget (and past the warm-up, and after PRUNE_MIN_STEPS steps) it is stopped when its smoothed loss stays above
the best's mean at that point by more than PRUNE_Z of their spread and PRUNE_MIN_GAP of the loss, at
PRUNE_CHECKS consecutive steps. An edit that starts slow by design (a longer warm-up, a schedule that pays off
late) turns it off with `"prune": false` in model.json (program.md says when).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from harness.decide import is_scored, run_fingerprint, standing

CURVE_POINTS = 32               # points of a run's stored loss curve
# Conservative on purpose: mid-run gaps shrink by the end of the schedule, and an edit can start slower and end
# better. On the H100 (docs/records/2026-12-07_noise-model-h100/), the runs of one configuration under four seeds
# spread 5.6% at 38% of a 60 s budget, and the one run these constants stopped (15% above) ended 1.3% worse than
# the best's run of its seed.
PRUNE_FROM, PRUNE_UNTIL = 0.4, 0.7      # the share of the budget within which a run may be stopped
PRUNE_MIN_STEPS = 20            # never judged on fewer steps
PRUNE_MIN_CURVES = 2            # the best's runs with a curve needed to measure their spread
PRUNE_Z = 4.0                   # above the best's mean by this many of their standard deviations,
PRUNE_MIN_GAP = 0.10            # and by this share of the loss at least
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

    def bound(self, progress: float) -> tuple[float, float, float] | None:
        """(threshold, the best's mean, their spread) at `progress`, or None where it cannot judge."""
        values = [v for v in (at(c, progress) for c in self.curves) if v is not None]
        if len(values) < PRUNE_MIN_CURVES:
            return None
        mean = sum(values) / len(values)
        sd = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
        return mean + max(PRUNE_Z * sd, PRUNE_MIN_GAP * abs(mean)), mean, sd

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
            self.stopped = (f"stopped early at step {step} ({progress:.0%} of the budget): train loss {loss:.4f} "
                            f"above {b[0]:.4f}, the best configuration's {len(self.curves)} runs at that point "
                            f"{b[1]:.4f} (sd {b[2]:.4f}), for {PRUNE_CHECKS} steps; pruned, not judged")
