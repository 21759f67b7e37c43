"""Attention backends at the default shapes on the GPU: fwd+bwd time per layer (not a test).

    python3 tests/bench_attention.py

Prints one line per variant: window, variant, ms per fwd+bwd, TFLOP/s (causal/windowed FLOPs).
"""

import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import prepare  # noqa: E402

B, H, T, D = 128, 4, 2048, 128
VARIANTS = {
    "flex default": {},
    "flex f128x128w8s2": {"fwd_BLOCK_M": 128, "fwd_BLOCK_N": 128, "fwd_num_warps": 8, "fwd_num_stages": 2},
    "flex f128x64w4s3": {"fwd_BLOCK_M": 128, "fwd_BLOCK_N": 64, "fwd_num_warps": 4, "fwd_num_stages": 3},
    "flex b64/128 w8s2": {"bwd_BLOCK_M1": 64, "bwd_BLOCK_N1": 128, "bwd_BLOCK_M2": 128, "bwd_BLOCK_N2": 64,
                          "bwd_num_warps": 8, "bwd_num_stages": 2},
    "flex b64/128 w4s3": {"bwd_BLOCK_M1": 64, "bwd_BLOCK_N1": 128, "bwd_BLOCK_M2": 128, "bwd_BLOCK_N2": 64,
                          "bwd_num_warps": 4, "bwd_num_stages": 3},
    "flex b32/128 w4s3": {"bwd_BLOCK_M1": 32, "bwd_BLOCK_N1": 128, "bwd_BLOCK_M2": 128, "bwd_BLOCK_N2": 32,
                          "bwd_num_warps": 4, "bwd_num_stages": 3},
}


def timed(fn, iters=10):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


def main():
    only = sys.argv[1:]
    torch.manual_seed(0)
    # the model's layout: (B, T, H, D) viewed as (B, H, T, D)
    leaves = [torch.randn(B, T, H, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3)]
    q, k, v = (t.transpose(1, 2) for t in leaves)
    g = torch.randn(B, T, H, D, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
    print(f"GPU {torch.cuda.get_device_name()} torch {torch.__version__}  shape B{B} H{H} T{T} D{D}")
    for window in (1024, 2048):
        pairs = sum(min(i + 1, window + 1) for i in range(T))
        flops = 4 * B * H * D * pairs * 3.5          # fwd (2 matmuls) + bwd (5 matmuls) = 3.5x fwd
        def mask_mod(b, h, qi, ki, w=window):
            return (qi >= ki) & (qi - ki <= w)
        bm = create_block_mask(mask_mod, None, None, T, T, device="cuda")
        for name, opts in VARIANTS.items():
            if only and name not in only:
                continue
            t0 = time.time()
            fn = torch.compile(lambda q, k, v, o=opts: flex_attention(q, k, v, block_mask=bm, kernel_options=o or None),
                               dynamic=False)
            try:
                ms = timed(lambda: fn(q, k, v).backward(g))
            except Exception as e:  # noqa: BLE001 - a config the kernel rejects is reported, not fatal
                print(f"w={window:5d} {name:22s} failed: {type(e).__name__}: {str(e)[:100]}")
                continue
            print(f"w={window:5d} {name:22s} {ms:7.2f} ms  {flops / ms / 1e9:6.0f} TFLOP/s  (compile {time.time() - t0:.0f}s)",
                  flush=True)
        if not only or "cudnn" in only:
            cudnn, why = prepare.load_cudnn_frontend()
            if cudnn is None:
                print(f"w={window:5d} cudnn-frontend          not loadable: {why}")
            else:
                fn = lambda: prepare.cudnn_attention(*leaves, window).backward(g.transpose(1, 2))
                print(f"w={window:5d} cudnn-frontend         {(ms := timed(fn)):7.2f} ms  {flops / ms / 1e9:6.0f} TFLOP/s"
                      f"  ({why})", flush=True)
        if window >= T - 1:
            for backend in ("FLASH_ATTENTION", "CUDNN_ATTENTION", "EFFICIENT_ATTENTION"):
                from torch.nn.attention import SDPBackend, sdpa_kernel
                try:
                    with sdpa_kernel(getattr(SDPBackend, backend)):
                        ms = timed(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True).backward(g))
                    print(f"w={window:5d} sdpa {backend:17s} {ms:7.2f} ms  {flops / ms / 1e9:6.0f} TFLOP/s", flush=True)
                except RuntimeError as e:
                    print(f"w={window:5d} sdpa {backend:17s} failed: {str(e)[:100]}")


if __name__ == "__main__":
    main()
