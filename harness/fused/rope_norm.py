"""Rotary embedding + QK-norm as two Triton row kernels: train.py's attention on compiled CUDA runs.

    uv run pytest tests/test_model.py -k rope        # Triton's CPU interpreter against float64 plain ops

y = rms_norm(rotate(x)) for q and k, rows of head_dim. Compiled plain ops keep the rotated x (a bf16
copy of q and of k) for the norm's backward; but the backward needs only y, which attention keeps
anyway, and the per-row 1/rms: dx = rotate^-1(r (dy - y mean(dy y))). So the forward writes y and r
and nothing else (one tensor less to write per q and k), and the backward reads dy, y and r.
"""

from __future__ import annotations

import torch

from harness.fused import tl, triton

if triton is not None:
    @triton.jit
    def _rows(x, cos, sin, rows, T, H, D: tl.constexpr, ROWS: tl.constexpr):
        """This program's rows of (B, T, H, D) x: (row ids, mask, element offsets, both halves of x and the
        row's cos and sin, in float32)."""
        half: tl.constexpr = D // 2
        r = tl.program_id(0) * ROWS + tl.arange(0, ROWS)[:, None]
        j = tl.arange(0, half)[None, :]
        m = r < rows
        at = r.to(tl.int64) * D + j
        t = (r // H) % T
        c = tl.load(cos + t * half + j, mask=m, other=0.0).to(tl.float32)
        s = tl.load(sin + t * half + j, mask=m, other=0.0).to(tl.float32)
        x1 = tl.load(x + at, mask=m, other=0.0).to(tl.float32)
        x2 = tl.load(x + at + half, mask=m, other=0.0).to(tl.float32)
        return r, m, at, x1, x2, c, s

    @triton.jit
    def _rope_norm_fwd_kernel(x, cos, sin, y, rstd, rows, T, H, eps, D: tl.constexpr, ROWS: tl.constexpr):
        half: tl.constexpr = D // 2
        r, m, at, x1, x2, c, s = _rows(x, cos, sin, rows, T, H, D, ROWS)
        o1 = x1 * c + x2 * s                       # upstream's rotation: (x1 cos + x2 sin, x2 cos - x1 sin)
        o2 = x2 * c - x1 * s
        rs = tl.rsqrt((tl.sum(o1 * o1, 1) + tl.sum(o2 * o2, 1)) / D + eps)
        tl.store(y + at, (o1 * rs[:, None]).to(y.dtype.element_ty), mask=m)
        tl.store(y + at + half, (o2 * rs[:, None]).to(y.dtype.element_ty), mask=m)
        tl.store(rstd + r, rs[:, None], mask=m)

    @triton.jit
    def _rope_norm_bwd_kernel(dy, y, rstd, cos, sin, dx, rows, T, H, D: tl.constexpr, ROWS: tl.constexpr):
        half: tl.constexpr = D // 2
        r, m, at, g1, g2, c, s = _rows(dy, cos, sin, rows, T, H, D, ROWS)
        y1 = tl.load(y + at, mask=m, other=0.0).to(tl.float32)
        y2 = tl.load(y + at + half, mask=m, other=0.0).to(tl.float32)
        rs = tl.load(rstd + r, mask=m, other=0.0)
        dot = (tl.sum(g1 * y1, 1) + tl.sum(g2 * y2, 1))[:, None] / D
        d1 = rs * (g1 - y1 * dot)                  # the norm's backward, from its output
        d2 = rs * (g2 - y2 * dot)
        tl.store(dx + at, (d1 * c - d2 * s).to(dx.dtype.element_ty), mask=m)      # the rotation's transpose
        tl.store(dx + at + half, (d1 * s + d2 * c).to(dx.dtype.element_ty), mask=m)


def _rope_launch(x: torch.Tensor):
    B, T, H, D = x.shape
    assert D % 2 == 0 and (D & (D - 1)) == 0, "head_dim a power of two"
    rows = B * T * H
    block = max(1, 4096 // D)                       # rows per program: 4096 elements, not tuned
    return rows, (triton.cdiv(rows, block),), dict(D=D, ROWS=block, num_warps=4)


def _rope_tables(cos: torch.Tensor, sin: torch.Tensor, T: int, half: int):
    cos, sin = cos.reshape(-1, half)[:T], sin.reshape(-1, half)[:T]
    return cos.contiguous(), sin.contiguous()


@torch.library.custom_op("autoresearch::rope_norm", mutates_args=())
def _rope_norm_op(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.contiguous()
    B, T, H, D = x.shape
    cos, sin = _rope_tables(cos, sin, T, D // 2)
    y = torch.empty_like(x)
    rstd = torch.empty(B, T, H, dtype=torch.float32, device=x.device)
    rows, grid, kw = _rope_launch(x)
    _rope_norm_fwd_kernel[grid](x, cos, sin, y, rstd, rows, T, H, torch.finfo(torch.float32).eps, **kw)
    return y, rstd


@_rope_norm_op.register_fake
def _(x, cos, sin):
    B, T, H, _ = x.shape
    return torch.empty_like(x, memory_format=torch.contiguous_format), x.new_empty(B, T, H, dtype=torch.float32)


@torch.library.custom_op("autoresearch::rope_norm_backward", mutates_args=())
def _rope_norm_backward_op(dy: torch.Tensor, y: torch.Tensor, rstd: torch.Tensor, cos: torch.Tensor,
                           sin: torch.Tensor) -> torch.Tensor:
    dy = dy.contiguous()
    B, T, H, D = y.shape
    cos, sin = _rope_tables(cos, sin, T, D // 2)
    dx = torch.empty_like(y)
    rows, grid, kw = _rope_launch(y)
    _rope_norm_bwd_kernel[grid](dy, y, rstd, cos, sin, dx, rows, T, H, **kw)
    return dx


@_rope_norm_backward_op.register_fake
def _(dy, y, rstd, cos, sin):
    return torch.empty_like(y, memory_format=torch.contiguous_format)


def _rope_norm_setup(ctx, inputs, output):
    ctx.save_for_backward(output[0], output[1], inputs[1], inputs[2])


def _rope_norm_grad(ctx, dy, _drstd):
    y, rstd, cos, sin = ctx.saved_tensors
    return _rope_norm_backward_op(dy, y, rstd, cos, sin), None, None


_rope_norm_op.register_autograd(_rope_norm_grad, setup_context=_rope_norm_setup)


def rope_norm(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """rms_norm(rotary(x)) over the last dimension, float32 inside, in x's dtype: x (B, T, H, D) with D a power
    of two, cos and sin holding (T, D/2) values (e.g. (1, T, 1, D/2)). Triton: CUDA, or the CPU interpreter."""
    return _rope_norm_op(x, cos, sin)[0]
