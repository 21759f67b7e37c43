"""The fused MLP's backward matmul as a Hopper (wgmma) kernel in Gluon, checked against torch on first use.

    python3 tests/bench/bench_mlp.py --gluon 128,256,32,6      # configs, times and errors (CUDA, Hopper)

On Hopper the backward's matmul runs as a Gluon kernel (Triton's explicit-layout dialect). The Triton
kernel loads the stored activation only once the tile's products are done, and nothing overlaps that
wait. Here the bulk-copy engine fetches the activation tile into shared memory at the start of each
tile, while the tensor cores work, and the next tile's first operand loads overlap this tile's last
products and its epilogue. It is faster than the
Triton kernel at the default shape; as the forward (no activation in, relu^2 out) it was slower, so the
forward keeps the Triton kernel (docs/records/2026-11-26_step-kernels-h100-h200/; tests/bench/bench_mlp.py).
wgmma is Hopper's instruction: Blackwell and later keep the Triton kernels.

Gluon is Triton's experimental explicit-layout dialect and its names move between releases, so
every call goes through a GluonGate: its first call per kind is compared with torch on the first
rows, and a triton whose kernel fails or disagrees turns the gate off (one printed line); the
caller then uses the Triton kernel.
"""

from __future__ import annotations

import torch

from harness.fused import triton

try:
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma, warpgroup_mma,
                                                                  warpgroup_mma_wait)
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor as GluonDescriptor
    _tma_load = getattr(tma, "async_load", None) or tma.async_copy_global_to_shared      # names differ across
    _tma_store = getattr(tma, "async_store", None) or tma.async_copy_shared_to_global    # triton releases
    _cta_barrier = getattr(gl, "thread_barrier", None) or gl.barrier
except ImportError:                    # triton without Gluon (older, or none): the Triton kernel serves
    gluon = None

GLUON_CONFIG = (128, 256, 32, 6)     # BLOCK_M, BLOCK_N, BLOCK_K, operand buffers: 208 KB of shared memory
CHECK_ROWS = 128                      # rows compared with torch on a kind's first call
CHECK_TOLERANCE = 2e-2                # relative error; bf16 outputs measure ~10x less (tests/bench/bench_mlp.py)

if gluon is not None:
    @gluon.constexpr_function
    def _wgmma_layout(BM, BN, num_warps):
        """Warps stacked along M, 16 rows each (a warpgroup of 4 takes 64), each a full-width N instruction."""
        return gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1], instr_shape=[16, BN, 16])

    @gluon.jit
    def _g_tile(tile, tiles_m, per_group, GROUP_M: gl.constexpr, BM: gl.constexpr, BN: gl.constexpr):
        first_m = (tile // per_group) * GROUP_M
        group_m = min(tiles_m - first_m, GROUP_M)
        return (first_m + tile % group_m) * BM, ((tile % per_group) // group_m) * BN

    @gluon.jit
    def _g_load(p, a_desc, b_desc, om, on, k, bars, a_bufs, b_bufs, NUM_BUF: gl.constexpr, pred=True):
        """Operand load number p into buffer p % NUM_BUF (skipped, but counted, where pred is false)."""
        s = p % NUM_BUF
        mbarrier.expect(bars.index(s), a_desc.block_type.nbytes + b_desc.block_type.nbytes, pred=pred)
        _tma_load(a_desc, [om, k], bars.index(s), a_bufs.index(s), pred)
        _tma_load(b_desc, [k, on], bars.index(s), b_bufs.index(s), pred)
        return p + 1

    @gluon.jit
    def _g_mma(c, acc, use_acc, bars, a_bufs, b_bufs, NUM_BUF: gl.constexpr):
        """Product number c: once its operands are in and the previous product is done (which frees the
        buffer the next load writes), issue it asynchronously."""
        s = c % NUM_BUF
        mbarrier.wait(bars.index(s), (c // NUM_BUF) & 1)
        acc = warpgroup_mma_wait(0, deps=(acc,))
        acc = warpgroup_mma(a_bufs.index(s), b_bufs.index(s), acc, use_acc=use_acc, is_async=True)
        return c + 1, acc

    @gluon.jit
    def _relu2_mm_gluon_kernel(a_desc, b_desc, c_desc, aux_desc, M, N, K, GROUP_M: gl.constexpr,
                               NUM_BUF: gl.constexpr, BACKWARD: gl.constexpr, num_warps: gl.constexpr):
        BM: gl.constexpr = c_desc.block_type.shape[0]
        BN: gl.constexpr = c_desc.block_type.shape[1]
        BK: gl.constexpr = a_desc.block_type.shape[1]
        dtype: gl.constexpr = a_desc.dtype
        layout: gl.constexpr = _wgmma_layout(BM, BN, num_warps)
        a_bufs = gl.allocate_shared_memory(dtype, [NUM_BUF, BM, BK], a_desc.layout)
        b_bufs = gl.allocate_shared_memory(dtype, [NUM_BUF, BK, BN], b_desc.layout)
        cbuf = gl.allocate_shared_memory(dtype, [BM, BN], c_desc.layout)     # the aux tile in, the result out
        bars = gl.allocate_shared_memory(gl.int64, [NUM_BUF, 1], mbarrier.MBarrierLayout())
        aux_bar = gl.allocate_shared_memory(gl.int64, [1, 1], mbarrier.MBarrierLayout())
        for i in gl.static_range(NUM_BUF):
            mbarrier.init(bars.index(i), count=1)
        mbarrier.init(aux_bar.index(0), count=1)

        tiles_m = gl.cdiv(M, BM)
        per_group = GROUP_M * gl.cdiv(N, BN)
        pid = gl.program_id(0)
        nprog = gl.num_programs(0)
        num_tiles = gl.cdiv(tiles_m * gl.cdiv(N, BN) - pid, nprog)

        p = 0
        c = 0
        acc = gl.zeros((BM, BN), gl.float32, layout)
        tile = pid
        om, on = _g_tile(tile, tiles_m, per_group, GROUP_M, BM, BN)
        for ki in gl.static_range(NUM_BUF - 1):
            p = _g_load(p, a_desc, b_desc, om, on, ki * BK, bars, a_bufs, b_bufs, NUM_BUF)
        for t in range(num_tiles):
            c, acc = _g_mma(c, acc, False, bars, a_bufs, b_bufs, NUM_BUF)
            tma.store_wait(pendings=0)             # the previous result has left cbuf
            if BACKWARD:                           # this tile's activation, arriving during the products
                mbarrier.expect(aux_bar.index(0), aux_desc.block_type.nbytes)
                _tma_load(aux_desc, [om, on], aux_bar.index(0), cbuf)
            for k in range((NUM_BUF - 1) * BK, K, BK):
                p = _g_load(p, a_desc, b_desc, om, on, k, bars, a_bufs, b_bufs, NUM_BUF)
                c, acc = _g_mma(c, acc, True, bars, a_bufs, b_bufs, NUM_BUF)
            eom = om
            eon = on
            tile += nprog
            om, on = _g_tile(tile, tiles_m, per_group, GROUP_M, BM, BN)
            more = t + 1 < num_tiles
            for ki in gl.static_range(NUM_BUF - 2):  # the next tile's first loads overlap this tile's last products
                p = _g_load(p, a_desc, b_desc, om, on, ki * BK, bars, a_bufs, b_bufs, NUM_BUF, more)
                c, acc = _g_mma(c, acc, True, bars, a_bufs, b_bufs, NUM_BUF)
            p = _g_load(p, a_desc, b_desc, om, on, (NUM_BUF - 2) * BK, bars, a_bufs, b_bufs, NUM_BUF, more)
            acc = warpgroup_mma_wait(0, deps=(acc,))
            if BACKWARD:                           # dh = da * 2 relu(h), relu(h) = sqrt(a)
                mbarrier.wait(aux_bar.index(0), t & 1)
                out = (2 * acc * gl.sqrt(cbuf.load(layout).to(gl.float32))).to(dtype)
                _cta_barrier()                     # every thread has read its activations before cbuf is overwritten
            else:                                  # a = relu(h)^2
                out = gl.maximum(acc, 0.0)
                out = (out * out).to(dtype)
            cbuf.store(out)
            fence_async_shared()
            _tma_store(c_desc, [eom, eon], cbuf)
        tma.store_wait(pendings=0)


def gluon_matmul(a: torch.Tensor, b_kn: torch.Tensor, aux: torch.Tensor | None = None,
                 config: tuple = GLUON_CONFIG) -> torch.Tensor:
    """relu(a b)^2, or (a b) * 2 sqrt(aux) when aux is given; a (M, K), b_kn (K, N), row-major, 16-bit (unchecked)."""
    (M, K), N = a.shape, b_kn.size(1)
    bm, bn, bk, buffers = config
    c = torch.empty((M, N), dtype=a.dtype, device=a.device)
    gdt = gl.bfloat16 if a.dtype == torch.bfloat16 else gl.float16

    def desc(t, block):
        return GluonDescriptor.from_tensor(t, block, gl.NVMMASharedLayout.get_default_for(block, gdt))
    sms = torch.cuda.get_device_properties(a.device).multi_processor_count
    programs = min(sms, triton.cdiv(M, bm) * triton.cdiv(N, bn))
    _relu2_mm_gluon_kernel[(programs,)](desc(a, [bm, bk]), desc(b_kn, [bk, bn]), desc(c, [bm, bn]),
                                       desc(c if aux is None else aux, [bm, bn]), M, N, K, GROUP_M=8,
                                       NUM_BUF=buffers, BACKWARD=aux is not None, num_warps=8)
    return c


class GluonGate:
    """Whether the fused MLP's matmuls run in Gluon, and the first-use check that can turn them off.

    backward / forward: which matmuls may use Gluon (the forward's Triton kernel is faster at the
    default shape); kernel: the matmul to run (tests pass a stand-in)."""

    def __init__(self, backward: bool = True, forward: bool = False, kernel=gluon_matmul):
        self.backward, self.forward, self.kernel = backward, forward, kernel
        self.enabled = True               # False once a call failed or disagreed with torch
        self.checked: set = set()         # (forward?, dtype) kinds whose first call matched torch

    def usable(self, device: torch.device, backward: bool) -> bool:
        wanted = self.backward if backward else self.forward
        return (wanted and self.enabled and gluon is not None and device.type == "cuda"
                and torch.cuda.get_device_capability(device)[0] == 9)

    def __call__(self, a: torch.Tensor, b_kn: torch.Tensor, aux: torch.Tensor | None = None) -> torch.Tensor | None:
        """The kernel's result, checked on its first call per kind; None (and the gate off) when it fails."""
        kind = (aux is None, a.dtype)
        try:
            c = self.kernel(a, b_kn, aux)
            if kind not in self.checked:
                n = CHECK_ROWS
                h = a[:n].float() @ b_kn.float()
                ref = torch.relu(h).square() if aux is None else h * 2 * aux[:n].float().sqrt()
                err = ((c[:n].float() - ref).norm() / ref.norm()).item() if ref.any() else c[:n].float().norm().item()
                if not err < CHECK_TOLERANCE:           # NaN fails too
                    raise RuntimeError(f"relative error {err:.2e} against torch on the first rows")
                if ref.any():                           # an all-zero product (c_proj starts at zero) proves little
                    self.checked.add(kind)
            return c
        except Exception as e:  # noqa: BLE001 - any failure of the experimental dialect means "use the Triton kernel"
            self.enabled = False
            print(f"fused MLP: the Gluon kernel failed on triton {getattr(triton, '__version__', '?')} "
                  f"({type(e).__name__}: "
                  f"{str(e).splitlines()[0][:100] if str(e) else ''}); using the Triton kernels", flush=True)
            return None
