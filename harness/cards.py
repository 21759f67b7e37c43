"""What to expect of this card: the tokens/s range of its tier for this model, with how the range was found.

    uv run prepare.py --check        # prints it under the batch split the fit chose

A range is the card's peak FLOP/s (PLATFORM's table) times a model FLOPs utilization (MFU), over the model's
FLOPs per token. The MFU is the one measured on that card class with the default model.json in train mode where
a record has it; elsewhere a wide estimate, said to be one. Only the MFU travels between models: a deeper or
wider model.json gets the same utilization, so its range moves with its FLOPs per token.
"""

from __future__ import annotations

# (a substring of the device name, MFU low, MFU high, where it was measured)
MEASURED_MFU = (
    ("H200", 0.45, 0.46, "docs/records/2026-11-28_run300-h200-cudnn"),
    ("H100", 0.43, 0.45, "docs/records/2026-11-28_run300-h100-cudnn and 2026-12-07_heldout-fixed-steps-h100"),
)
# Consumer cards, older cards and small batches run below the H100's utilization: how far is not measured here.
ESTIMATED_MFU = (0.25, 0.45)


def expected_rate(device_name: str, peak_flops: float, flops_per_token: float) -> tuple[float, float, str]:
    """(low, high, how it was found) tokens per second of one process on this card."""
    if not (peak_flops > 0 and flops_per_token > 0):
        return 0.0, 0.0, "no estimate: this device has no reference peak FLOP/s (a run prints the tok/s it gets)"
    for name, low, high, source in MEASURED_MFU:
        if name in device_name:
            return (peak_flops * low / flops_per_token, peak_flops * high / flops_per_token,
                    f"MFU {low:.0%}-{high:.0%} measured on an {name} with the default model.json: {source}")
    low, high = ESTIMATED_MFU
    return (peak_flops * low / flops_per_token, peak_flops * high / flops_per_token,
            f"an estimate, not measured on this card class: its peak {peak_flops / 1e12:.1f} TFLOP/s x MFU "
            f"{low:.0%}-{high:.0%} (the H100 and H200 reach 43-46%; smaller and older cards less)")


def rate_line(device_name: str, peak_flops: float, flops_per_token: float) -> str:
    low, high, how = expected_rate(device_name, peak_flops, flops_per_token)
    if not high:
        return f"expected tok/s: {how}"
    return f"expected tok/s: {_short(low)}-{_short(high)} on this card ({how})"


def _short(rate: float) -> str:
    return f"{rate / 1e6:.2f}M" if rate >= 1e6 else f"{rate / 1e3:.0f}k"
