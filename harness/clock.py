"""The training clock: step times for the budget, read without a host sync inside a step.

    uv run pytest tests/test_train.py -k clock

The budget counts training steps only: the first `excluded_steps` (compilation, warm-up) are
timed and printed but not counted. On CUDA a step's time is read on the GPU's clock, between the
end events of consecutive steps, one step late: the host reads step n after queueing step n+1, so
the GPU never idles waiting for Python, and a host that runs late does not shift time from one
step to the next. Idle gaps on the GPU (a loader stall, a slow host) still count in full. Other
devices run a step to its end before the host goes on (MPS is synchronized), so each step is read
at once, on the host's clock.

A graph torch.compile compiles once counted steps have begun, after step 0 (a recompile: a guard that fails at a
later step), spends the budget's seconds on compiling, more of them on an empty compile cache than on a warm one;
the clock counts such graphs (`compiled_in_budget`), and harness/record.py records such a run as a crash, not as
its idea's result.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from harness.distributed import agree

LOSS_SMOOTHING = 0.9           # EMA of the printed train loss (debiased), as upstream
HARD_LIMIT_FACTOR = 2          # wall time from step 0 past which a run stops whatever the warm-up steps:
HARD_LIMIT_EXTRA_S = 120       # HARD_LIMIT_FACTOR x budget + HARD_LIMIT_EXTRA_S (compilation included)
CLOCK_JUMP_S = 5.0             # wall and monotonic time apart by more than this: the wall clock was stepped


def graphs_compiled() -> int:
    """Graphs torch.compile (dynamo) has compiled in this process so far."""
    from torch._dynamo.utils import counters
    return counters["stats"]["unique_graphs"]


@dataclass
class Lap:
    """One finished step: its time, its loss (mean over ranks), the smoothed loss, and what the loop attached."""
    step: int
    seconds: float
    loss: float
    smooth_loss: float
    info: dict = field(default_factory=dict)


class StepClock:
    def __init__(self, device: torch.device, budget_s: float, excluded_steps: int, world: int = 1, group=None,
                 max_steps: int = 0):
        self.device, self.budget_s, self.excluded_steps = device, budget_s, excluded_steps
        self.world, self.group, self.max_steps = world, group, max_steps
        self.steps_queued = 0                  # steps handed to lap() so far
        self.training_seconds = 0.0            # counted steps only: what the budget bounds
        self._pending = None                   # (step, end event, loss, info) of a step not read yet
        self._last_event = None
        self._t_last = self.started = time.monotonic()
        self._ema = 0.0
        self._graphs_before_counted = None     # graphs compiled before the first counted step after step 0
        self.compiled_in_budget = 0            # graphs compiled while counted steps ran (set by drain)
        self._elapsed = 0.0                    # wall time since step 0 at the last step read, agreed over ranks

    def start(self) -> None:
        """The clock starts now (call just before step 0). Every duration is read on the monotonic clock; the wall
        clock is read beside it only to notice a step of it (NTP, a VM migrated): clock_jump()."""
        self._t_last = self.started = time.monotonic()
        self._wall_started = time.time()

    def clock_jump(self) -> float:
        """Seconds by which the wall clock moved apart from the monotonic one since start() (0 within CLOCK_JUMP_S)."""
        if not hasattr(self, "_wall_started"):
            return 0.0
        apart = (time.time() - self._wall_started) - (time.monotonic() - self.started)
        return apart if abs(apart) > CLOCK_JUMP_S else 0.0

    @property
    def progress(self) -> float:
        """Fraction of the run done, in [0, 1]: what the LR schedule reads. The budget's seconds, or with a step
        count (ground.json max_steps) the steps': what ends the run ends its schedule."""
        if self.max_steps:
            return min(self.steps_queued / self.max_steps, 1.0)
        return min(self.training_seconds / self.budget_s, 1.0)

    def remaining(self, step: int) -> str:
        """What is left after step `step`, for its line: the budget's seconds, or with max_steps the steps."""
        if self.max_steps:
            return f"{max(0, self.max_steps - step - 1)} steps"
        return f"{max(0.0, self.budget_s - self.training_seconds):.0f}s"

    def spent(self, steps_done: int) -> bool:
        """True once the warm-up is over and the counted steps have used the budget (not with max_steps: there the
        steps end the run, so that a slow host trains the same steps), or, whatever the warm-up and the steps, once
        the wall time since step 0 passes the hard limit (printed: the budget bounds every run)."""
        if not self.max_steps and steps_done > self.excluded_steps and self.training_seconds >= self.budget_s:
            return True
        limit = HARD_LIMIT_FACTOR * self.budget_s + HARD_LIMIT_EXTRA_S
        elapsed = time.monotonic() - self.started if self.world == 1 else self._elapsed   # ranks: one verdict, one step
        if elapsed > limit:
            print(f"\n!! stopped at the hard limit of {limit:g} s of wall time ({HARD_LIMIT_FACTOR} x budget + "
                  f"{HARD_LIMIT_EXTRA_S} s) after {steps_done} steps, {self.training_seconds:.1f} s of them counted")
            return True
        return False

    def lap(self, step: int, loss: torch.Tensor, **info) -> list[Lap]:
        """Step `step` is queued (its loss a device tensor): returns the steps finished now, in order.
        Step 0 (compilation) is read at once, so its time is its own."""
        self.steps_queued = step + 1
        if step + 1 == max(self.excluded_steps, 1):     # the next step is counted, and step 0's compile is done
            self._graphs_before_counted = graphs_compiled()
        event = None
        if self.device.type == "cuda":
            event = torch.cuda.Event(enable_timing=True)
            event.record()
        laps = [self._read(*self._pending)] if self._pending is not None else []
        self._pending = None
        if event is None or step == 0:
            laps.append(self._read(step, event, loss, info))
        else:
            self._pending = (step, event, loss, info)
        return laps

    def drain(self) -> list[Lap]:
        """The last step, still unread (call after the loop, before anything else compiles)."""
        laps = [self._read(*self._pending)] if self._pending is not None else []
        self._pending = None
        if self._graphs_before_counted is not None:         # any rank's recompile (every rank drains)
            mine = max(0, graphs_compiled() - self._graphs_before_counted)
            self.compiled_in_budget = math.ceil(agree([float(mine)], self.world, self.group)[0])
        return laps

    def _read(self, step, event, loss, info) -> Lap:
        if event is not None:
            event.synchronize()
        elif self.device.type == "mps":
            torch.mps.synchronize()
        now = time.monotonic()
        if event is not None and self._last_event is not None:
            dt = self._last_event.elapsed_time(event) / 1000
        else:
            dt = now - self._t_last
        self._t_last, self._last_event = now, event
        dt, loss_f, self._elapsed = agree([dt, loss.item(), now - self.started], self.world, self.group)   # one clock
        if step >= self.excluded_steps:
            self.training_seconds += dt
        self._ema = LOSS_SMOOTHING * self._ema + (1 - LOSS_SMOOTHING) * loss_f
        return Lap(step, dt, loss_f, self._ema / (1 - LOSS_SMOOTHING ** (step + 1)), info)
