"""The torch.library plumbing the attention kernels share: a forward op (output + softmax statistics), a backward
op, their fake shapes for compiled graphs, and the autograd rule that joins them.

    python3 tests/test_gpu.py        # each backend against the reference attention, outputs and gradients (CUDA)
"""

from __future__ import annotations

from typing import Callable

import torch


def attention_op(name: str, forward: Callable, backward: Callable, stats_shape: Callable) -> Callable:
    """Register `autoresearch::<name>` (forward(q, k, v, window) -> (out, stats)) and `<name>_backward`
    (backward(dout, q, k, v, out, stats, window) -> (dq, dk, dv)) on (B, T, H, D) tensors; stats_shape(B, H, T) is
    the float32 statistics' shape. Returns attention(q, k, v, window) -> out, differentiable in q, k and v."""
    fwd = torch.library.custom_op(f"autoresearch::{name}", forward, mutates_args=())
    bwd = torch.library.custom_op(f"autoresearch::{name}_backward", backward, mutates_args=())

    @fwd.register_fake
    def _(q, k, v, window):
        B, T, H, _ = q.shape
        return (torch.empty_like(q, memory_format=torch.contiguous_format),
                q.new_empty(stats_shape(B, H, T), dtype=torch.float32))

    @bwd.register_fake
    def _(dout, q, k, v, o, stats, window):
        return tuple(torch.empty_like(t, memory_format=torch.contiguous_format) for t in (q, k, v))

    def setup(ctx, inputs, output):
        q, k, v, window = inputs
        ctx.save_for_backward(q, k, v, *output)
        ctx.window = window

    def grad(ctx, dout, _dstats):
        q, k, v, o, stats = ctx.saved_tensors
        return (*bwd(dout, q, k, v, o, stats, ctx.window), None)

    fwd.register_autograd(grad, setup_context=setup)

    def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int) -> torch.Tensor:
        return fwd(q, k, v, window)[0]
    attention.__name__ = attention.__qualname__ = name
    attention.__doc__ = f"Causal attention over keys i - window <= j <= i, (B, T, H, D) in and out ({name} kernels)."
    return attention
