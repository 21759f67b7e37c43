"""Softcapped cross-entropy as two Triton row kernels: train.py's loss on compiled CUDA runs.

    uv run pytest tests/test_model.py -k softcap     # Triton's CPU interpreter against F.cross_entropy

loss_i = logsumexp_j(z_ij) - z_i,t with z = softcap * tanh(logits / softcap), in float32 from 16-bit
logits. |z| <= softcap, so the sum of exponentials needs no running max; the forward reads each row
once and keeps one float per row (the log-sum-exp); the backward reads the row again and writes the
gradient. On CUDA tanh is the hardware's tanh.approx (one special-function op instead of libdevice's
sequence: the plain-ops version is bound by those); the interpreter (TRITON_INTERPRET=1, CPU tests)
uses 2 sigmoid(2u) - 1.
"""

from __future__ import annotations

import torch

from harness.fused import tl, triton

if triton is not None:
    @triton.jit
    def _softcap_tanh(x, softcap, APPROX: tl.constexpr):
        u = x / softcap
        if APPROX:
            t = tl.inline_asm_elementwise("tanh.approx.f32 $0, $1;", "=f,f", [u], dtype=tl.float32, is_pure=True,
                                          pack=1)
        else:
            t = 2 * tl.sigmoid(2 * u) - 1
        return t

    @triton.jit
    def _ce_fwd_kernel(logits, targets, loss, lse_out, V, stride, softcap, BLOCK: tl.constexpr, APPROX: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK)
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        for start in range(0, V, BLOCK):
            m = start + cols < V
            x = tl.load(logits + row * stride + start + cols, mask=m, other=0.0).to(tl.float32)
            acc += tl.where(m, tl.exp(softcap * _softcap_tanh(x, softcap, APPROX)), 0.0)
        lse = tl.log(tl.sum(acc, axis=0))
        t = tl.load(targets + row)
        valid = t != -1
        xt = tl.load(logits + row * stride + tl.where(valid, t, 0)).to(tl.float32)
        zt = softcap * _softcap_tanh(xt, softcap, APPROX)
        tl.store(loss + row, tl.where(valid, lse - zt, 0.0))
        tl.store(lse_out + row, lse)

    @triton.jit
    def _ce_bwd_kernel(logits, targets, lse_in, dloss, grad, V, stride, softcap, BLOCK: tl.constexpr,
                       APPROX: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK)
        t = tl.load(targets + row)
        g = tl.where(t != -1, tl.load(dloss + row), 0.0)
        lse = tl.load(lse_in + row)
        for start in range(0, V, BLOCK):
            c = start + cols
            m = c < V
            x = tl.load(logits + row * stride + c, mask=m, other=0.0).to(tl.float32)
            th = _softcap_tanh(x, softcap, APPROX)
            dz = tl.exp(softcap * th - lse) - tl.where(c == t, 1.0, 0.0)
            tl.store(grad + row * V + c, (g * dz * (1 - th * th)).to(grad.dtype.element_ty), mask=m)


def _ce_launch(logits: torch.Tensor):
    rows, V = logits.shape
    block = min(4096, 1 << (V - 1).bit_length())
    approx = logits.is_cuda and not torch.version.hip          # tanh.approx is NVIDIA PTX: ROCm takes libdevice's
    return (rows,), dict(BLOCK=block, APPROX=approx, num_warps=8 if block >= 2048 else 4)


@torch.library.custom_op("autoresearch::softcap_ce", mutates_args=())
def _softcap_ce_op(logits: torch.Tensor, targets: torch.Tensor, softcap: float) -> tuple[torch.Tensor, torch.Tensor]:
    assert logits.stride(-1) == 1 and softcap <= 60, "row-major logits; exp(softcap) must fit float32"
    loss = torch.empty(logits.size(0), dtype=torch.float32, device=logits.device)
    lse = torch.empty_like(loss)
    grid, kw = _ce_launch(logits)
    _ce_fwd_kernel[grid](logits, targets, loss, lse, logits.size(1), logits.stride(0), softcap, **kw)
    return loss, lse


@_softcap_ce_op.register_fake
def _(logits, targets, softcap):
    return logits.new_empty(logits.size(0), dtype=torch.float32), logits.new_empty(logits.size(0), dtype=torch.float32)


@torch.library.custom_op("autoresearch::softcap_ce_backward", mutates_args=())
def _softcap_ce_backward_op(dloss: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor, lse: torch.Tensor,
                            softcap: float) -> torch.Tensor:
    grad = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
    grid, kw = _ce_launch(logits)
    _ce_bwd_kernel[grid](logits, targets, lse, dloss.contiguous(), grad, logits.size(1), logits.stride(0), softcap,
                         **kw)
    return grad


@_softcap_ce_backward_op.register_fake
def _(dloss, logits, targets, lse, softcap):
    return torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)


def _softcap_ce_setup(ctx, inputs, output):
    logits, targets, softcap = inputs
    ctx.save_for_backward(logits, targets, output[1])
    ctx.softcap = softcap


def _softcap_ce_grad(ctx, dloss, _dlse):
    logits, targets, lse = ctx.saved_tensors
    return _softcap_ce_backward_op(dloss, logits, targets, lse, ctx.softcap), None, None


_softcap_ce_op.register_autograd(_softcap_ce_grad, setup_context=_softcap_ce_setup)


def softcap_cross_entropy_rows(logits: torch.Tensor, targets: torch.Tensor, softcap: float) -> torch.Tensor:
    """Per-row cross-entropy of softcap * tanh(logits / softcap) ((N, V) 16-bit or float32 logits, (N,) targets;
    rows whose target is -1 give 0). Triton: CUDA, or the CPU interpreter."""
    return _softcap_ce_op(logits, targets, float(softcap))[0]


def softcap_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, softcap: float) -> torch.Tensor:
    """Mean cross-entropy of softcap * tanh(logits / softcap) over the targets that are not -1: the same value as
    F.cross_entropy(softcap * tanh(logits.float() / softcap), targets, ignore_index=-1), logits (..., V)."""
    flat, flat_targets = logits.view(-1, logits.size(-1)), targets.view(-1)
    return softcap_cross_entropy_rows(flat, flat_targets, softcap).sum() / (flat_targets != -1).sum()

