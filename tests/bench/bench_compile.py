"""What the first step of a run compiles, part by part (not a test; for a CUDA GPU, runs on the CPU too).

    AUTORESEARCH_GROUND=<a prepared ground.json> python3 tests/bench/bench_compile.py [--plan 8,8,10]
        [--variants static,dynamic-model] [--tree DIR]

For each variant, one subprocess per depth in --plan, sharing one set of inductor/triton caches (the first
starts from empty ones: a fresh machine; a later depth is an agent's edit). Each times, with the GPU
synchronized: the model's first forward+backward (its compilation), the optimizer's first step (the fused
AdamW/Muon steps' compilation), the eval forward's first call (no_grad, reduction="none": another graph), and
the same calls once more (their steady cost, to subtract). A depth edit changes the width too (depth x
aspect_ratio), so every shape changes. Variant `static` is train.py's own compilation; `dynamic-model`
compiles the model with dynamic shapes (measured slower to compile and not reused: docs/PERFORMANCE.md).
--tree measures another checkout (e.g. the commit before a change), with the same caches layout.
"""

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def child(depth: int, variant: str, tree: Path) -> dict:
    import torch
    sys.path.insert(0, str(tree))
    import train
    from harness import config, dataloader, hardware, settings, tokenizer
    s = settings.current()
    m, _ = settings.effective_model(config.load_model(), s)
    m = dataclasses.replace(m, depth=depth)
    P = hardware.get_platform()
    tok = tokenizer.Tokenizer.from_directory()
    cfg = train.build_config(m, s.max_seq_len, tok.get_vocab_size(), P)
    device = torch.device(P["device"])
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    model = train.build_model(cfg, device, 1)
    opt = model.setup_optimizer(m, getattr(torch, P["ortho_dtype"]))
    opt.compile_steps()
    model = torch.compile(model, dynamic=variant == "dynamic-model")
    dl = dataloader.make_dataloader(tok, m.device_batch_size, s.max_seq_len, "train", device=device)
    x, y, _ = next(dl)
    ac = torch.amp.autocast(device.type, dtype=getattr(torch, P["dtype"]))

    def timed(fn) -> float:
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - t0

    def fwd_bwd():
        with ac:
            loss = model(x, y)
        loss.backward()

    def evaluate():
        with torch.no_grad(), ac:
            model(x, y, reduction="none")

    out = {"depth": depth, "variant": variant}
    out["fwd_bwd_first"] = timed(fwd_bwd)
    out["opt_first"] = timed(opt.step)
    model.zero_grad(set_to_none=True)
    fwd_bwd()
    out["fwd_bwd_steady"] = timed(fwd_bwd)
    out["opt_steady"] = timed(opt.step)
    model.zero_grad(set_to_none=True)
    model.eval()
    out["eval_first"] = timed(evaluate)
    out["eval_steady"] = timed(evaluate)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--plan", default="8,8,10", help="depths in order, one subprocess each")
    ap.add_argument("--variants", default="static")
    ap.add_argument("--tree", default=str(REPO), help="the checkout whose train.py and harness/ to measure")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        depth, variant = args.child.split(":")
        print("RESULT " + json.dumps(child(int(depth), variant, Path(args.tree))), flush=True)
        os._exit(0)                                # triton's bindings print leak lines at teardown
    print("| variant | depth (order) | fwd+bwd compile s | optimizer compile s | eval compile s | fwd+bwd ms | "
          "optimizer step ms |")
    print("|---|---|---|---|---|---|---|")
    for variant in args.variants.split(","):
        root = Path(tempfile.mkdtemp(prefix=f"compile_{variant}_"))
        env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(root / "inductor"), TRITON_CACHE_DIR=str(root / "triton"))
        for i, depth in enumerate(args.plan.split(",")):
            r = subprocess.run([sys.executable, __file__, "--child", f"{depth}:{variant}", "--tree", args.tree],
                               capture_output=True, text=True, env=env)
            line = next((ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if line is None:
                print(f"| {variant} | {depth} ({i + 1}) | error: {(r.stdout + r.stderr).strip()[-200:]} |")
                continue
            d = json.loads(line[7:])
            print(f"| {variant} | {depth} ({i + 1}) | {d['fwd_bwd_first'] - d['fwd_bwd_steady']:.1f} | "
                  f"{d['opt_first'] - d['opt_steady']:.1f} | {d['eval_first'] - d['eval_steady']:.1f} | "
                  f"{1000 * d['fwd_bwd_steady']:.1f} | {1000 * d['opt_steady']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
