"""The ReLU^2 MLP with its activation fused into two persistent TMA Triton matmuls: train.py's MLP on Hopper+.

    uv run pytest tests/test_model.py -k fused_mlp          # Triton's CPU interpreter against float64
    python3 tests/bench/bench_mlp.py                         # kernels against cuBLAS (CUDA)

y = relu(x W1^T)^2 W2^T. The plain version writes the pre-activation h, reads it back, writes a =
relu(h)^2 and keeps h for the backward, which writes da = dy W2, reads da and h and writes dh: four
passes over an (N, 4d) tensor that do no arithmetic. Here the forward matmul squares in its epilogue
and writes only a; the backward matmul dy W2 multiplies by the derivative 2 relu(h) = 2 sqrt(a) in
its epilogue, so h is never stored. The other three matmuls stay on cuBLAS. The kernel is a
persistent TMA matmul (one program per SM walking the output tiles in grouped order); the
epilogue works on two half tiles to stay within shared memory. Triton: CUDA with TMA (CC >= 9.0),
or the CPU interpreter (tests).
On Hopper the backward's matmul runs in Gluon where the gate allows (harness.fused.relu2_gluon).
"""

from __future__ import annotations

import contextlib

import torch

from harness.fused import tl, triton
from harness.fused.relu2_gluon import GluonGate

if triton is not None:
    @triton.jit
    def _relu2_epilogue(part, aux_desc, c_desc, om, on, BACKWARD: tl.constexpr):
        if BACKWARD:           # dh = da * 2 relu(h), relu(h) = sqrt(a)
            part = 2 * part * tl.sqrt(aux_desc.load([om, on]).to(tl.float32))
        else:                  # a = relu(h)^2
            part = tl.maximum(part, 0.0)
            part = part * part
        c_desc.store([om, on], part.to(c_desc.dtype))

    @triton.jit
    def _relu2_mm_kernel(a_desc, b_desc, c_desc, aux_desc, M, N, K, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                         BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr, PROGRAMS: tl.constexpr, BACKWARD: tl.constexpr):
        tiles_m, tiles_n, tiles_k = tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N), tl.cdiv(K, BLOCK_K)
        per_group = GROUP_M * tiles_n
        half: tl.constexpr = BLOCK_N // 2
        for tile in tl.range(tl.program_id(0), tiles_m * tiles_n, PROGRAMS, flatten=True):
            first_m = (tile // per_group) * GROUP_M
            group_m = min(tiles_m - first_m, GROUP_M)
            om = (first_m + tile % group_m) * BLOCK_M
            on = ((tile % per_group) // group_m) * BLOCK_N
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for kt in range(tiles_k):
                acc = tl.dot(a_desc.load([om, kt * BLOCK_K]), b_desc.load([on, kt * BLOCK_K]).T, acc)
            left, right = tl.split(tl.permute(tl.reshape(acc, (BLOCK_M, 2, half)), (0, 2, 1)))
            _relu2_epilogue(left, aux_desc, c_desc, om, on, BACKWARD)
            _relu2_epilogue(right, aux_desc, c_desc, om, on + half, BACKWARD)


def matmul_config(device: torch.device) -> tuple:
    """(BLOCK_M, BLOCK_N, BLOCK_K, stages forward, stages backward, warps), by the device's shared memory."""
    if device.type != "cuda":
        return (32, 32, 16, 1, 1, 4)
    smem = torch.cuda.get_device_properties(device).shared_memory_per_block_optin
    return (128, 256, 64, 4, 3, 8) if smem >= 220 * 1024 else (64, 128, 64, 3, 2, 4)


def relu2_matmul(a: torch.Tensor, b: torch.Tensor, aux: torch.Tensor | None = None,
                 config: tuple | None = None) -> torch.Tensor:
    """relu(a b^T)^2, or (a b^T) * 2 sqrt(aux) when aux is given; a (M, K), b (N, K), row-major."""
    from triton.tools.tensor_descriptor import TensorDescriptor
    (M, K), N = a.shape, b.size(0)
    bm, bn, bk, stages_fwd, stages_bwd, warps = config or matmul_config(a.device)
    c = torch.empty((M, N), dtype=a.dtype, device=a.device)
    sms = torch.cuda.get_device_properties(a.device).multi_processor_count if a.is_cuda else 4
    programs = min(sms, triton.cdiv(M, bm) * triton.cdiv(N, bn))
    descs = (TensorDescriptor.from_tensor(a, [bm, bk]), TensorDescriptor.from_tensor(b, [bn, bk]),
             TensorDescriptor.from_tensor(c, [bm, bn // 2]), TensorDescriptor.from_tensor(c if aux is None else aux,
                                                                                          [bm, bn // 2]))
    _relu2_mm_kernel[(programs,)](*descs, M, N, K, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=8, PROGRAMS=programs,
                                  BACKWARD=aux is not None, num_stages=stages_bwd if aux is not None else stages_fwd,
                                  num_warps=warps)
    return c


# ---------------------------------------------------------------------------
# Which kernels serve: set once per process, swapped by tests and benches through kernel_choice()
# ---------------------------------------------------------------------------

_KERNELS = {"gluon": GluonGate(), "triton_config": None}


@contextlib.contextmanager
def kernel_choice(gluon: GluonGate | None, triton_config: tuple | None = None):
    """Run the fused MLP with another Gluon gate (None: the Triton kernels only) and Triton tile config
    (None: chosen by shared memory, matmul_config) inside the with-block."""
    previous = dict(_KERNELS)
    _KERNELS.update(gluon=gluon, triton_config=triton_config)
    try:
        yield
    finally:
        _KERNELS.update(previous)


# ---------------------------------------------------------------------------
# The custom op: forward, backward, autograd
# ---------------------------------------------------------------------------

@torch.library.custom_op("autoresearch::relu2_mlp", mutates_args=())
def _relu2_mlp_op(x: torch.Tensor, w_fc: torch.Tensor, w_proj: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x2 = x.reshape(-1, x.size(-1)).contiguous()
    gate = _KERNELS["gluon"]
    a = gate(x2, w_fc.t().contiguous()) if gate and gate.usable(x.device, backward=False) else None
    a = relu2_matmul(x2, w_fc.contiguous(), config=_KERNELS["triton_config"]) if a is None else a
    return (a @ w_proj.t()).view(*x.shape[:-1], w_proj.size(0)), a


@_relu2_mlp_op.register_fake
def _(x, w_fc, w_proj):
    rows = x.numel() // x.size(-1)
    return x.new_empty(*x.shape[:-1], w_proj.size(0)), x.new_empty(rows, w_fc.size(0))


@torch.library.custom_op("autoresearch::relu2_mlp_backward", mutates_args=())
def _relu2_mlp_backward_op(dy: torch.Tensor, x: torch.Tensor, w_fc: torch.Tensor, w_proj: torch.Tensor,
                           a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x2, dy2 = x.reshape(-1, x.size(-1)), dy.reshape(-1, dy.size(-1)).contiguous()
    gate = _KERNELS["gluon"]
    dh = gate(dy2, w_proj.contiguous(), aux=a) if gate and gate.usable(dy.device, backward=True) else None
    dh = relu2_matmul(dy2, w_proj.t().contiguous(), aux=a, config=_KERNELS["triton_config"]) if dh is None else dh
    return (dh @ w_fc).view(x.shape), dh.t() @ x2, dy2.t() @ a


@_relu2_mlp_backward_op.register_fake
def _(dy, x, w_fc, w_proj, a):
    return torch.empty_like(x), torch.empty_like(w_fc), torch.empty_like(w_proj)


def _relu2_mlp_setup(ctx, inputs, output):
    x, w_fc, w_proj = inputs
    ctx.save_for_backward(x, w_fc, w_proj, output[1])


def _relu2_mlp_grad(ctx, dy, _da):
    return _relu2_mlp_backward_op(dy, *ctx.saved_tensors)


_relu2_mlp_op.register_autograd(_relu2_mlp_grad, setup_context=_relu2_mlp_setup)


def relu2_mlp(x: torch.Tensor, w_fc: torch.Tensor, w_proj: torch.Tensor) -> torch.Tensor:
    """relu(x w_fc^T)^2 w_proj^T for (..., d) x, (4d, d) w_fc, (d, 4d) w_proj; the inner width and d multiples
    of 8 (TMA strides). Under autocast the three are cast to its dtype, as nn.Linear's would be; otherwise they
    must share one 16-bit dtype. Triton with TMA: CUDA CC >= 9.0, or the CPU interpreter."""
    if torch.is_autocast_enabled(x.device.type):
        dt = torch.get_autocast_dtype(x.device.type)
        x, w_fc, w_proj = x.to(dt), w_fc.to(dt), w_proj.to(dt)
    return _relu2_mlp_op(x, w_fc, w_proj)[0]
