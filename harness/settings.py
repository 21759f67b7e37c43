"""Settings: the effective constants of one run (mode, sequence length, budget, eval size, caps).

    uv run prepare.py --check        # prints the mode, its reason and every cap applied

ground.json has the profiles `train`, `test` and (optional) `small`; the mode picks one. `current()` is the run's
settings, loaded once; `cached()` gives the other modules a cache that `reset()` empties with them.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

from harness.config import ConfigError, GroundConfig, ModelConfig, fail, ground_path, load_ground

# ---------------------------------------------------------------------------
# Mode and run settings
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Settings:
    mode: str                 # train | test | small
    mode_reason: str
    max_seq_len: int
    time_budget_s: float
    eval_tokens: int
    excluded_steps: int
    model_caps: dict
    ground: GroundConfig
    cache_dir: Path
    ground_dir: Path
    max_steps: int = 0        # optimizer steps (0 = none): they end the run, not the budget (its hard limit stays)

    def path(self, p: str) -> Path:
        """A ground.json path: ~ expanded, relative paths taken from ground.json's folder."""
        q = Path(os.path.expanduser(p))
        return q if q.is_absolute() else self.ground_dir / q


def resolve_mode(requested: str, cuda_available: bool) -> tuple[str, str]:
    if requested != "auto":
        return requested, f"ground.json mode = {requested}"
    if cuda_available:
        return "train", "auto: a CUDA GPU is present"
    return "test", "auto: no CUDA GPU, so the smoke profile (set mode \"train\" in ground.json for the real constants)"


def make_settings(ground: GroundConfig, cuda_available: bool, ground_dir: Path) -> Settings:
    mode, reason = resolve_mode(ground.mode, cuda_available)
    prof = getattr(ground, mode)
    cache = Path(os.path.expanduser(ground.data.cache_dir))
    cache = cache if cache.is_absolute() else ground_dir / cache
    return Settings(mode, reason, prof.max_seq_len, prof.time_budget_s, prof.eval_tokens,
                    prof.excluded_steps, dict(prof.model_caps), ground, cache, ground_dir, prof.max_steps)


def effective_model(model: ModelConfig, settings: Settings, world_size: int = 1) -> tuple[ModelConfig, dict]:
    """Apply the profile's model caps (value = min(model.json, cap)); return the changes made.
    With several processes (torchrun) every one runs device_batch_size rows per micro-step."""
    changes = {}
    for key, cap in settings.model_caps.items():
        value = getattr(model, key)
        if value > cap:
            changes[key] = (value, cap)
    model = dataclasses.replace(model, **{k: v[1] for k, v in changes.items()})
    if world_size > 1:
        # Split the same total batch over more processes: fewer rows per micro-step, the same
        # optimizer steps (micro-batching does not change what is trained). Printed as a change.
        b = model.device_batch_size
        while b > 1 and model.total_batch_size % (b * settings.max_seq_len * world_size) != 0:
            b //= 2
        if b != model.device_batch_size and model.total_batch_size % (b * settings.max_seq_len * world_size) == 0:
            changes["device_batch_size"] = (changes.get("device_batch_size", (model.device_batch_size,))[0], b)
            model = dataclasses.replace(model, device_batch_size=b)
    tokens_per_pass = model.device_batch_size * settings.max_seq_len * world_size
    if model.total_batch_size % tokens_per_pass != 0:
        ws = (" x world_size", f" x {world_size}") if world_size > 1 else ("", "")
        raise ConfigError(
            f"model.json: key 'total_batch_size': expected a multiple of device_batch_size x max_seq_len{ws[0]} = "
            f"{model.device_batch_size} x {settings.max_seq_len}{ws[1]} = {tokens_per_pass}, got "
            f"{model.total_batch_size}")
    return model, changes


def describe_changes(changes: dict, settings: Settings, world_size: int = 1) -> list[str]:
    """One line per model.json value effective_model changed, saying why: the mode's caps, the split
    over processes, or both (a capped device_batch_size can be halved again for torchrun)."""
    lines = []
    for k, (old, new) in changes.items():
        capped = k in settings.model_caps and settings.model_caps[k] < old
        split = k == "device_batch_size" and new < min(old, settings.model_caps.get(k, old))
        why = " + ".join(w for w, on in ((f"{settings.mode} mode caps", capped),
                                         (f"{world_size} processes split", split)) if on)
        lines.append(f"{why} model.json {k}: {old} -> {new}")
    return lines


# ---------------------------------------------------------------------------
# The run's settings, and the caches derived from them
# ---------------------------------------------------------------------------

_CURRENT: dict = {}            # "settings" -> Settings
_DERIVED: list[dict] = [_CURRENT]


def cached() -> dict:
    """A cache for values derived from the settings (PLATFORM, eval rows, loaded kernels): emptied by reset()."""
    d: dict = {}
    _DERIVED.append(d)
    return d


def reset() -> None:
    """Forget the settings and everything derived from them (tests switch ground.json between cases)."""
    for d in _DERIVED:
        d.clear()


def current() -> Settings:
    """The run's settings from ground.json (loaded once). Bad ground.json exits 2 here."""
    if "settings" not in _CURRENT:
        try:
            ground = load_ground()
        except ConfigError as e:
            fail(str(e))
        import torch                       # here, not at the top: prepare.py --help and config errors need none
        _CURRENT["settings"] = make_settings(ground, torch.cuda.is_available(), ground_path().resolve().parent)
    return _CURRENT["settings"]
