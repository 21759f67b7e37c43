"""Attention: one call over several backends (FA4, cuDNN, FA3, FlexAttention, SDPA, a reference), chosen by PLATFORM.

    uv run pytest tests/test_model.py -k backend      # every backend against the reference, windows included

q, k, v are (B, T, H, D) with as many k, v heads as q heads; key j is visible to query i iff
0 <= i - j <= window. A window of T - 1 or more is full causal attention. Sliding windows never
build a dense T x T mask: FA4, cuDNN and FA3 take a band, flex a block mask, SDPA blocks of the window.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from harness.fused import cudnn_attention as cudnn_op, fa4_attention as fa4_op
from harness.fused.cudnn_attention import cudnn_attention, load_cudnn_frontend
from harness.fused.fa4_attention import fa4_attention
from harness.hardware import load_fa3

# e.g. {"BLOCK_M": 128}; None = PyTorch's defaults, the fastest found (tests/bench/bench_attention.py)
FLEX_KERNEL_OPTIONS = None


def attention(q, k, v, window: int, backend: str):
    """Causal attention over keys i - window <= j <= i with the named backend (PLATFORM's `attention`)."""
    return BACKENDS[backend](q, k, v, window)


# ---------------------------------------------------------------------------
# The reference and SDPA (every device)
# ---------------------------------------------------------------------------

def attention_reference(q, k, v, window):
    """Plain softmax attention with an explicit mask (tests only: O(T^2) memory)."""
    T = q.size(1)
    qf, kf, vf = (t.transpose(1, 2).float() for t in (q, k, v))
    scores = qf @ kf.transpose(-1, -2) / math.sqrt(q.size(-1))
    pos = torch.arange(T, device=q.device)
    diff = pos[:, None] - pos[None, :]
    scores = scores.masked_fill(~((diff >= 0) & (diff <= window)), float("-inf"))
    return (scores.softmax(-1) @ vf).transpose(1, 2).to(q.dtype)


def _sdpa_local(q, k, v, window):
    """Sliding window via SDPA on blocks of `window` queries against 2 x window keys:
    memory O(T x window), no dense T x T mask. q, k, v are (B, H, T, D). The blocks are folded
    into the head dimension: SDPA's fused kernels take 4-D inputs only (5-D runs the math path)."""
    B, H, T, D = q.shape
    C = window
    nb = -(-T // C)
    pad_end = nb * C - T
    qb = F.pad(q, (0, 0, 0, pad_end)).reshape(B, H * nb, C, D)
    kp = F.pad(k, (0, 0, C, pad_end))
    vp = F.pad(v, (0, 0, C, pad_end))
    kb = kp.unfold(2, 2 * C, C).transpose(-1, -2).reshape(B, H * nb, 2 * C, D)     # overlapping blocks: one copy
    vb = vp.unfold(2, 2 * C, C).transpose(-1, -2).reshape(B, H * nb, 2 * C, D)
    a = torch.arange(C, device=q.device)[:, None]
    j = torch.arange(2 * C, device=q.device)[None, :]
    band = (j >= a) & (j <= a + C)                     # 0 <= q - k <= window inside the block pair
    first = band & (j >= C)                            # block 0: the front padding is not a key
    mask = torch.stack([first] + [band] * (nb - 1)) if nb > 1 else first[None]
    out = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask.repeat(H, 1, 1)[None])
    return out.reshape(B, H, nb * C, D)[:, :, :T]          # CUDA fp32 SDPA may hand back a non-contiguous out


def attention_sdpa(q, k, v, window):
    T = q.size(1)
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    if window >= T - 1:
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    else:
        y = _sdpa_local(q, k, v, window)
    return y.transpose(1, 2)


def prefer_cudnn_sdpa(platform: dict) -> str:
    """Full-causal layers go through SDPA; on Hopper+ cuDNN's kernel is the fastest one there
    (docs/records/2026-11-28_fa4-adoption-h100/). Set once, for the whole process, before compilation;
    returns the line to print."""
    cc = platform["capability"]
    if platform["device"] != "cuda" or not cc or cc[0] < 9 or not torch.backends.cudnn.is_available():
        return "SDPA backend: PyTorch default order"
    from torch.nn.attention import SDPBackend, sdpa_kernel
    order = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    try:
        sdpa_kernel(order, set_priority=True).__enter__()     # held for the whole run
    except TypeError:                                          # torch without set_priority
        return "SDPA backend: PyTorch default order (no priority API in this torch)"
    return "SDPA backend: cuDNN first for full-context layers (Hopper+: fastest measured)"


# ---------------------------------------------------------------------------
# FlexAttention (CUDA with triton; eager on the CPU for tests)
# ---------------------------------------------------------------------------

@functools.cache
def _flex_fn(compiled: bool):
    from torch.nn.attention.flex_attention import flex_attention
    return torch.compile(flex_attention, dynamic=False) if compiled else flex_attention


@functools.cache
def flex_block_mask(T: int, window: int, device: str):
    """Block masks are built once per (sequence length, window, device) and reused."""
    from torch.nn.attention.flex_attention import create_block_mask

    def mask_mod(b, h, q_idx, kv_idx):
        return (q_idx >= kv_idx) & (q_idx - kv_idx <= window)
    return create_block_mask(mask_mod, B=None, H=None, Q_LEN=T, KV_LEN=T, device=device)


def attention_flex(q, k, v, window):
    T = q.size(1)
    if window >= T - 1:            # full causal layer: SDPA (cuDNN on Hopper) beats flex, see prefer_cudnn_sdpa
        return attention_sdpa(q, k, v, window)
    bm = flex_block_mask(T, window, str(q.device))
    y = _flex_fn(q.is_cuda)(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), block_mask=bm,
                            kernel_options=FLEX_KERNEL_OPTIONS)
    return y.transpose(1, 2)


# ---------------------------------------------------------------------------
# FA3 (Hopper, through `kernels` when loadable) and cuDNN (through cudnn-frontend)
# ---------------------------------------------------------------------------

def attention_fa3(q, k, v, window):
    fa3, why = load_fa3(torch.cuda.get_device_capability(q.device))
    assert fa3 is not None, f"fa3 selected but not loadable: {why}"
    out = fa3.flash_attn_func(q, k, v, causal=True, window_size=(window, 0))
    return out[0] if isinstance(out, tuple) else out


def attention_cudnn(q, k, v, window):
    """Windowed layers on cuDNN's fused kernel (harness.fused.cudnn_attention); full-causal layers through SDPA,
    which reaches the same kernel."""
    if window >= q.size(1) - 1:
        return attention_sdpa(q, k, v, window)
    return cudnn_attention(q, k, v, window)


BACKENDS = {"reference": attention_reference, "sdpa": attention_sdpa, "flex": attention_flex, "fa3": attention_fa3,
            "cudnn": attention_cudnn, "fa4": fa4_attention}


# ---------------------------------------------------------------------------
# The backend confirmed for the model's shapes, before compiling
# ---------------------------------------------------------------------------

def confirm_attention(platform: dict, shape: tuple, windows: list, device: torch.device,
                      build=cudnn_op.build_graph, warm_fa4=fa4_op.warm_kernels,
                      cudnn_loads=lambda: load_cudnn_frontend()[0] is not None,
                      second_process: bool = False) -> tuple[dict, str | None]:
    """Before compiling: build the cuDNN graphs, or run FA4's kernels once, for the shapes the model needs
    ((B, T, H, D) per micro-step, each sliding window). Returns (platform, line): when the backend cannot take
    this shape (head_dim, dtype, GPU), a copy of PLATFORM that falls back (FA4 to cuDNN, cuDNN to flex, or sdpa
    without compile) with the reason, and the line to print; else PLATFORM unchanged and None. `build`,
    `warm_fa4` and `cudnn_loads` are the seams tests use to play a refusing backend. Running out of memory and a
    CUDA error (the context is lost) are raised, not fallen back from. The eval graph's second process skips FA4's
    run: the training process ran the same kernels a moment before, and the GPU's memory is the training's."""
    backend = platform["attention"]
    if backend not in ("cudnn", "fa4"):
        return platform, None
    B, T, H, D = shape
    dtype = getattr(torch, platform["dtype"])
    if backend == "fa4" and second_process:
        return platform, None
    try:
        if backend == "fa4":
            warm_fa4(shape, dtype, windows, device)
        else:
            probe = torch.empty(1, dtype=dtype, device=device).expand(B, T, H, D)
            for window in sorted({w for w in windows if w < T - 1}):
                for kind in ("fwd", "bwd"):
                    build(kind, probe, window)
    except (torch.OutOfMemoryError, getattr(torch, "AcceleratorError", torch.OutOfMemoryError)):
        raise
    except Exception as e:  # noqa: BLE001 - any refusal means "use the next backend"
        cudnn_next = backend == "fa4" and cudnn_loads()
        fallback = "cudnn" if cudnn_next else "flex" if platform["compile"] else "sdpa"
        what = {"fa4": "FA4 cannot run", "cudnn": "cuDNN cannot build"}[backend]
        why = f"{what} attention for B={B} T={T} H={H} D={D} ({type(e).__name__}: {str(e)[:120]})"
        reasons = dict(platform["reasons"], attention=f"{why}; falling back to {fallback}")
        changed = dict(platform, attention=fallback, reasons=reasons)
        line = f"attention: {backend} -> {fallback}: {why}"
        if fallback == "cudnn":
            changed, more = confirm_attention(changed, shape, windows, device, build, warm_fa4, cudnn_loads,
                                              second_process)
            line += f"\n!! {more}" if more else ""
        return changed, line
    return platform, None
