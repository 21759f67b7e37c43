"""Profile the default training step on the GPU: top CUDA kernels by time (not a test).

    AUTORESEARCH_GROUND=... python3 tests/bench/profile_step.py [--steps 6] [--attention flex]
"""

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import train  # noqa: E402
from harness import attention, config, dataloader, hardware, settings, tokenizer  # noqa: E402
from harness.fused import relu2_gluon, relu2_mlp  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--attention", default=None)
    ap.add_argument("--rows", type=int, default=40)
    ap.add_argument("--flex-options", default=None, help="JSON kernel_options for flex_attention")
    ap.add_argument("--coordinate-descent", action="store_true", help="inductor coordinate_descent_tuning")
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--plain-ce", action="store_true", help="loss in plain ops instead of the Triton kernels")
    ap.add_argument("--mlp", default=None, help="triton | plain (default: PLATFORM's choice)")
    ap.add_argument("--gluon", default=None, choices=("none", "bwd", "both"),
                    help="fused MLP on Hopper: Gluon kernels for none, the backward, or both matmuls (default: bwd)")
    ap.add_argument("--rope", default="triton", choices=("triton", "plain"),
                    help="rotary + QK-norm: the harness.fused.rope_norm kernels, or plain ops compiled by inductor")
    ap.add_argument("--gluon-config", default=None, help="BLOCK_M,BLOCK_N,BLOCK_K,buffers of the Gluon kernels")
    args = ap.parse_args()
    gluon_cfg = tuple(int(v) for v in args.gluon_config.split(",")) if args.gluon_config else relu2_gluon.GLUON_CONFIG
    gate = relu2_gluon.GluonGate(backward=args.gluon != "none", forward=args.gluon == "both",
                                 kernel=lambda a, b, aux=None: relu2_gluon.gluon_matmul(a, b, aux, gluon_cfg))
    relu2_mlp.kernel_choice(gate).__enter__()                     # held for the whole script
    if args.flex_options:
        import json
        attention.FLEX_KERNEL_OPTIONS = json.loads(args.flex_options)
    if args.coordinate_descent:
        import torch._inductor.config as icfg
        icfg.coordinate_descent_tuning = True
    s = settings.current()
    m, _ = settings.effective_model(config.load_model(), s)
    P = hardware.get_platform()
    tok = tokenizer.Tokenizer.from_directory()
    print(attention.prefer_cudnn_sdpa(P))
    cfg = train.build_config(m, s.max_seq_len, tok.get_vocab_size(), P)
    cfg.attention = args.attention or cfg.attention
    cfg.fused_mlp = cfg.fused_mlp if args.mlp is None else args.mlp == "triton"
    cfg.fused_rope = cfg.fused_rope and args.rope == "triton"
    cfg.fused_loss = cfg.fused_loss and not args.plain_ce          # --plain-ce: the plain lines (F.cross_entropy)
    with torch.device("meta"):
        model = train.GPT(cfg)
    model.to_empty(device="cuda")
    model.init_weights()
    opt = model.setup_optimizer(m, getattr(torch, P["ortho_dtype"]))
    model = torch.compile(model, dynamic=False)
    dl = dataloader.make_dataloader(tok, m.device_batch_size, s.max_seq_len, "train")
    accum = m.total_batch_size // (m.device_batch_size * s.max_seq_len)
    ac = torch.amp.autocast("cuda", dtype=torch.bfloat16)

    def step():
        for _ in range(accum):
            x, y, _ = next(dl)
            with ac:
                loss = model(x, y)
            (loss / accum).backward()
        opt.step()
        model.zero_grad(set_to_none=True)

    t0 = time.time()
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    print(f"warmup+compile: {time.time() - t0:.1f}s")
    t0 = time.time()
    for _ in range(args.steps):
        step()
    torch.cuda.synchronize()
    dt = (time.time() - t0) / args.steps
    print(f"step: {dt * 1000:.1f} ms  tok/s: {m.total_batch_size / dt:,.0f}  peak "
          f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB"
          f"  ({vars(args)})", flush=True)
    if args.no_profile:
        return
    from torch.profiler import ProfilerActivity, profile
    profiled = 2
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(profiled):
            step()
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=args.rows, max_name_column_width=70))
    print_categories(prof, steps=profiled, top=args.rows)
    print_gaps(prof, steps=profiled)


CATEGORIES = (("loss (triton)", ("_ce_fwd_kernel", "_ce_bwd_kernel")),
              ("mlp (triton/gluon)", ("_relu2_mm_kernel", "_relu2_mm_gluon_kernel")),
              ("rotary+norm (triton)", ("_rope_norm_",)),
              ("attention", ("attention", "fmha", "flash", "cudnn", "sdpa")),
              ("matmul", ("gemm", "nvjet", "cutlass", "xmma", "sm90", "matmul")),
              ("fused (triton)", ("triton",)))


def print_categories(prof, steps, top=25):
    """GPU kernel time per step by kind, and the `top` largest kernels."""
    kernels = []
    for e in prof.key_averages():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            us = getattr(e, "self_device_time_total", None) or e.self_cuda_time_total
            kernels.append((us / steps / 1000, e.count // steps, e.key))
    total = sum(ms for ms, _, _ in kernels)
    by = {}
    for ms, _, name in kernels:
        low = name.lower()
        cat = next((c for c, keys in CATEGORIES if any(k in low for k in keys)), "other")
        by[cat] = by.get(cat, 0.0) + ms
    print(f"GPU kernel time per step: {total:.1f} ms")
    for cat, ms in sorted(by.items(), key=lambda kv: -kv[1]):
        print(f"  {cat:20s} {ms:7.1f} ms  {100 * ms / total:5.1f}%")
    for ms, n, name in sorted(kernels, reverse=True)[:top]:
        print(f"  {ms:7.2f} ms  x{n:<4d} {name[:150]}")


def print_gaps(prof, steps, top=15):
    """Idle time on the GPU between device events (kernels, copies, memsets) and the largest gaps,
    named by the events on either side: where the GPU waits for the host or for a sync."""
    spans = sorted((e.time_range.start, e.time_range.end, e.name) for e in prof.events()
                   if e.device_type == torch.autograd.DeviceType.CUDA)
    gaps, end, prev = [], spans[0][1], spans[0][2]
    for start, stop, name in spans[1:]:
        if start > end:
            gaps.append((start - end, prev, name))
        if stop > end:
            end, prev = stop, name
    idle = sum(g for g, _, _ in gaps)
    busy = end - spans[0][0]
    print(f"GPU idle between device events: {idle / steps / 1000:.2f} ms per step over {len(gaps) / steps:.0f} gaps "
          f"({100 * idle / busy:.1f}% of {busy / steps / 1000:.1f} ms per step from first to last event)")
    small = sum(g for g, _, _ in gaps if g < 10)
    print(f"  gaps under 10 us: {small / steps / 1000:.2f} ms per step")
    for g, a, b in sorted(gaps, reverse=True)[:top]:
        print(f"  {g / 1000:7.3f} ms  after {a[:60]}  before {b[:60]}")


if __name__ == "__main__":
    main()
