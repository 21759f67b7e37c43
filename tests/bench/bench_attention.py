"""Attention backends at the default shapes on the GPU: fwd+bwd time per layer (not a test).

    python3 tests/bench/bench_attention.py [variant ...]       # e.g. cudnn, fa4, "cudnn plans", "flex default"

Prints one line per variant: window, variant, ms per fwd+bwd, TFLOP/s (causal/windowed FLOPs). `fa4` is
flash-attn-4 (the CuTe DSL kernels, package flash-attn-4 with nvidia-cutlass-dsl), when importable; its line adds
the largest difference of its output from cuDNN's, the harness's backend on Hopper.
"""

import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from harness.fused import cudnn_attention

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
            print(f"w={window:5d} {name:22s} {ms:7.2f} ms  {flops / ms / 1e9:6.0f} TFLOP/s  (compile "
                  f"{time.time() - t0:.0f}s)",
                  flush=True)
        if not only or "cudnn" in only:
            cudnn, why = cudnn_attention.load_cudnn_frontend()
            if cudnn is None:
                print(f"w={window:5d} cudnn-frontend          not loadable: {why}")
            else:
                ms = timed(lambda: cudnn_attention.cudnn_attention(*leaves, window).backward(g.transpose(1, 2)))
                print(f"w={window:5d} cudnn-frontend         {ms:7.2f} ms  {flops / ms / 1e9:6.0f} TFLOP/s  ({why})",
                      flush=True)
        if not only or "fa4" in only:
            fa4(leaves, g.transpose(1, 2), window, flops)
        if "cudnn plans" in only:
            cudnn_plans(leaves, g.transpose(1, 2).contiguous(), window)
        if window >= T - 1:
            for backend in ("FLASH_ATTENTION", "CUDNN_ATTENTION", "EFFICIENT_ATTENTION"):
                from torch.nn.attention import SDPBackend, sdpa_kernel
                try:
                    with sdpa_kernel(getattr(SDPBackend, backend)):
                        ms = timed(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True).backward(g))
                    print(f"w={window:5d} sdpa {backend:17s} {ms:7.2f} ms  {flops / ms / 1e9:6.0f} TFLOP/s", flush=True)
                except RuntimeError as e:
                    print(f"w={window:5d} sdpa {backend:17s} failed: {str(e)[:100]}")


def fa4(leaves, dout, window, flops):
    """flash-attn-4 on the model's (B, T, H, D) layout, the window as (left, right) = (window, 0)."""
    try:
        from flash_attn.cute import flash_attn_func
    except Exception as e:  # noqa: BLE001 - not installed (or its CuTe DSL not loadable) is a printed line
        print(f"w={window:5d} flash-attn-4           not loadable: {type(e).__name__}: {str(e)[:100]}")
        return
    size = (window, 0) if window < T - 1 else (None, None)
    t0 = time.time()
    try:
        diff = float("nan")
        if cudnn_attention.load_cudnn_frontend()[0] is not None:
            with torch.no_grad():
                out = flash_attn_func(*leaves, causal=True, window_size=size)[0].float()
                ref = cudnn_attention.cudnn_attention(*leaves, window).float()
            diff = ((out - ref).abs().max() / ref.abs().max()).item()
        ms = timed(lambda: flash_attn_func(*leaves, causal=True, window_size=size)[0].backward(dout))
    except Exception as e:  # noqa: BLE001 - a shape or GPU it rejects is reported, not fatal
        print(f"w={window:5d} flash-attn-4           failed: {type(e).__name__}: {str(e)[:100]}")
        return
    print(f"w={window:5d} flash-attn-4           {ms:7.2f} ms  {flops / ms / 1e9:6.0f} TFLOP/s  (max rel diff from "
          f"cuDNN {diff:.1e}; first call {time.time() - t0:.0f}s)", flush=True)


def cudnn_plans(leaves, dout, window):
    """Every execution plan cuDNN offers for the forward and the backward graph (the harness uses the heuristic's
    first): time per plan, and the largest difference of its outputs from the heuristic plan's."""
    cudnn = cudnn_attention.load_cudnn_frontend()[0]
    q, k, v = (t.detach() for t in leaves)
    o = torch.empty_like(q)
    stats = torch.empty(B, H, T, 1, dtype=torch.float32, device="cuda")
    grads = [torch.empty_like(q) for _ in range(3)]
    tensors = {"fwd": dict(q=q, k=k, v=v, o=o, stats=stats),
               "bwd": dict(q=q, k=k, v=v, o=o, dO=dout, stats=stats, dq=grads[0], dk=grads[1], dv=grads[2])}
    outs = {"fwd": [o, stats], "bwd": grads}
    handle = cudnn_attention.cudnn_handle(q.device)
    cudnn.set_stream(handle=handle, stream=torch.cuda.current_stream().cuda_stream)
    for kind in ("fwd", "bwd"):
        graph, names = cudnn_attention.build_graph(kind, q, window)
        pack = {names[n]: t for n, t in tensors[kind].items()}
        try:
            graph.build_plans(cudnn.build_plan_policy.ALL)
        except Exception as e:  # noqa: BLE001
            print(f"w={window:5d} cudnn {kind} plans: build_plans(ALL) failed: {type(e).__name__}: {str(e)[:100]}")
        count = graph.get_execution_plan_count()
        ref = None
        for i in range(count):
            try:
                ws = torch.empty(max(graph.get_workspace_size_plan_at_index(i), 1), dtype=torch.uint8, device="cuda")
                def run(i=i, ws=ws):
                    graph.execute_plan_at_index(pack, ws, index=i, handle=handle)
                run()
                got = [t.float().clone() for t in outs[kind]]
                ms = timed(run, iters=20)
            except Exception as e:  # noqa: BLE001 - a plan that does not build or run is reported
                print(f"w={window:5d} cudnn {kind} plan {i}: failed: {type(e).__name__}: {str(e)[:100]}")
                continue
            ref = ref or got
            diff = max(((a - b).abs().max() / b.abs().max()).item() for a, b in zip(got, ref))
            name = ""
            try:
                name = graph.get_plan_name_at_index(i)
            except Exception:  # noqa: BLE001 - older frontends have no plan names
                pass
            print(f"w={window:5d} cudnn {kind} plan {i}: {ms:6.3f} ms  ws {ws.numel() >> 20} MB  max rel diff "
                  f"{diff:.1e}  {name}",
                  flush=True)


if __name__ == "__main__":
    main()
