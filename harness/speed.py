"""The host-speed probe: a fixed matmul timed before the budget starts, independent of the edit.

    uv run python -c "import torch; from harness.speed import host_speed; print(host_speed(torch.device('cpu')))"

A run's val_bpb under a time budget depends on how many steps the machine gave it; a host that is busier or
freer (other jobs, heat, a shared CPU) moves val_bpb without any edit. Every run records this probe (GFLOP/s of
one fixed shape), and harness/decide.py compares the candidate's runs only with the best's runs at comparable
speed. The probe is not part of the metric and costs a fraction of a second.
"""

from __future__ import annotations

import time

import torch

PROBE_N = {"cuda": 4096, "cpu": 256, "mps": 1024}     # square matmul size per device kind
PROBE_WINDOWS = 7                                      # timed windows; their median is the speed (a GPU's clocks
PROBE_S = 0.35                                         # ramp and a shared host stalls: one window is not a figure)


def host_speed(device: torch.device) -> float:
    """GFLOP/s of repeated n x n matmuls (bf16 on CUDA, fp32 elsewhere): the median of PROBE_WINDOWS windows over
    about PROBE_S seconds."""
    n = PROBE_N.get(device.type, 256)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    gen = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elif device.type == "mps":
            torch.mps.synchronize()

    for _ in range(4):                                 # warm-up: kernels chosen, clocks up
        a @ b
    sync()
    rates = []
    for _ in range(PROBE_WINDOWS):
        reps, t0 = 0, time.perf_counter()
        while True:
            for _ in range(4):
                a @ b
            reps += 4
            sync()
            elapsed = time.perf_counter() - t0
            if elapsed >= PROBE_S / PROBE_WINDOWS:
                break
        rates.append(2 * n ** 3 * reps / elapsed / 1e9)
    return sorted(rates)[len(rates) // 2]
