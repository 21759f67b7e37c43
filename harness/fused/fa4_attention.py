"""Causal attention with a sliding window on flash-attn-4 (FlashAttention 4, written in NVIDIA's CuTe DSL).

    uv sync --extra fa4              # Hopper (CC 9.x) and Blackwell (CC 10.x); PLATFORM prefers it there
    python3 tests/test_gpu.py        # against the reference attention, outputs and gradients (CUDA)

FA4 compiles each kernel the first time it meets a configuration (dtype, head_dim, causal or windowed, tiles;
on Hopper at these shapes not the batch, length, heads or window size), a few seconds each; with the
persistent cache on (set by load_fa4) a later run loads them from disk. The kernels are called through a torch.library
custom op, like cuDNN's, so a compiled graph that calls them stays in inductor's on-disk cache.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch

from harness.fused.attention_op import attention_op

_FA4: dict = {}            # "module" -> (module|None, reason)


def load_fa4(cache_dir: Path | None = None):
    """Import flash-attn-4's kernels, with their on-disk cache in `cache_dir` unless the environment names one
    (read once, at import). (module|None, reason); never raises."""
    if "module" not in _FA4:
        if cache_dir is not None and "FLASH_ATTENTION_CUTE_DSL_CACHE_DIR" not in os.environ:
            os.environ["FLASH_ATTENTION_CUTE_DSL_CACHE_DIR"] = str(cache_dir)
        os.environ.setdefault("FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED", "1")
        # the CuTe DSL warns, at each kernel compile, that FA4's own aux_data argument is not a JIT argument
        warnings.filterwarnings("ignore", message="Argument aux_data .* cannot be converted to a JitArgument")
        try:
            from importlib.metadata import PackageNotFoundError, version

            from flash_attn.cute import interface
            try:
                release = version("flash-attn-4")
            except PackageNotFoundError:            # flash_attn.cute from another distribution (a source build)
                release = "(version unknown)"
            _FA4["module"] = (interface, f"flash-attn-4 {release}")
        except ModuleNotFoundError as e:
            _FA4["module"] = (None, f"flash-attn-4 not installed (uv sync --extra fa4; {e})")
        except Exception as e:  # noqa: BLE001 - missing package or library means "not loadable"
            _FA4["module"] = (None, f"flash-attn-4 not loadable ({type(e).__name__}: {str(e)[:80]})")
    return _FA4["module"]


def _kernels():
    """FA4's interface module; a backend forced where it does not load says why."""
    module, why = load_fa4()
    if module is None:
        raise RuntimeError(f"attention fa4: {why}")
    return module


def _window(window: int, T: int) -> tuple[int | None, int | None]:
    """FA4's (left, right) window: keys i - left <= j <= i; (None, None) for a full causal layer."""
    return (None, None) if window >= T - 1 else (window, 0)


def _forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    left, right = _window(window, q.size(1))
    out, lse, *_ = _kernels()._flash_attn_fwd(q.contiguous(), k.contiguous(), v.contiguous(), causal=True,
                                                 window_size_left=left, window_size_right=right, return_lse=True)
    return out, lse


def _backward(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor,
              lse: torch.Tensor, window: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    left, right = _window(window, q.size(1))
    q, k, v, dout = (t.contiguous() for t in (q, k, v, dout))
    dq, dk, dv, *_ = _kernels()._flash_attn_bwd(q, k, v, o, dout, lse, causal=True, window_size_left=left,
                                                   window_size_right=right)
    return dq, dk, dv


# causal attention over keys i - window <= j <= i, (B, T, H, D) in and out, bf16/fp16 on Hopper/Blackwell
fa4_attention = attention_op("fa4_attention", _forward, _backward, lambda B, H, T: (B, H, T))


def warm_kernels(shape: tuple, dtype: torch.dtype, windows: list, device: torch.device) -> None:
    """Run forward and backward once per kind of layer at the model's (B, T, H, D): FA4 compiles (or loads) the
    kernels these shapes pick, before training starts; raises what FA4 raises when it cannot run them."""
    B, T, H, D = shape
    q, k, v = (torch.randn(B, T, H, D, dtype=dtype, device=device, requires_grad=True) for _ in range(3))
    for window in sorted({min(w, T - 1) for w in windows}):
        fa4_attention(q, k, v, window).sum().backward()
    torch.cuda.synchronize(device)
    del q, k, v
    torch.cuda.empty_cache()              # its ~2 GiB go back to the GPU (the eval graph's process checks room)
