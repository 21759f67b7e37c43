"""What the first step of a run compiles, part by part (not a test; for a CUDA GPU, runs on the CPU too).

    AUTORESEARCH_GROUND=<a prepared ground.json> python3 tests/bench/bench_compile.py [--plan 8,8,10]
        [--variants static,dynamic-model] [--breakdown] [--tree DIR]

For each variant, one subprocess per depth in --plan, sharing one set of inductor/triton caches (the first
starts from empty ones: a fresh machine; a later depth is an agent's edit). Each times, with the GPU
synchronized: the model's first forward+backward (its compilation), the optimizer's first step, the eval
forward's first call (no_grad, reduction="none": another graph), and the same calls once more (their steady
cost, to subtract). A depth edit changes the width too (depth x aspect_ratio), so every shape changes.
Variants: `static` is train.py's own compilation; `dynamic-model` compiles the model with dynamic shapes
(measured slower to compile and not reused: docs/records/2026-11-28_first-step-compile-h100/);
`compiled-opt` compiles the AdamW/Muon
steps (train.py runs them uncompiled); `no-pw-autotune` turns inductor's pointwise autotuning off and
`no-patterns` its pattern-matcher passes, `no-loop-order` its loop re-ordering after fusion, `lean` both;
`warm-pool` starts inductor's compile workers before the model is
built; `blocks` is processor.compile = "blocks" and `regions` a candidate to replace it (compile_regions);
`nested` compiles the whole model with each Block.forward a nested compile region (torch's hierarchical
compilation: one graph, each kind of block traced and compiled once, then stamped out for every layer);
`bg-eval` compiles the eval's graph in a thread while training steps run (fails: dynamo's FX tracing
flag is process-wide). Also printed: a whole step's steady ms (fwd+bwd+optimizer, no sync between them), one
eval batch's steady ms, the training's peak memory and the eval forward's peak above the memory at rest.
--breakdown adds where the first forward+backward's seconds went (dynamo's compile_times: tracing, AOT
autograd, inductor's lowering, fusion, code generation, kernel compiles, autotuning).
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


def compile_regions(train, model) -> None:
    """Variant `regions`, a candidate for processor.compile = "blocks": the stem, each layer with its residual mix
    and value embedding (one graph per kind of layer, reused by every layer of that kind) and the head compiled
    apart, so that only the loop over layers runs eagerly; train.py's blocks scope leaves the mix, the value
    embeddings, the norms, lm_head and the loss eager (12.5% of the step,
    docs/records/2026-11-27_overhead-block-compile-h200/)."""
    import torch
    import torch.nn.functional as F

    def layer(self, x, x0, resid_lambda, x0_lambda, idx, ve_weight, cos_sin, window):
        x = resid_lambda * x + x0_lambda * x0
        ve = F.embedding(idx, ve_weight) if ve_weight is not None else None
        x = x + self.attn(train.norm(x), ve, cos_sin, window)
        return x + self.mlp(train.norm(x))

    def head(x, targets, reduction):           # GPT.forward's tail
        logits, softcap = model.lm_head(train.norm(x)), 15
        if model.config.fused_loss and targets is not None and reduction == "mean":
            return train.softcap_cross_entropy(logits, targets, softcap)
        logits = softcap * torch.tanh(logits.float() / softcap)
        if targets is None:
            return logits
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1,
                               reduction=reduction)

    stem = torch.compile(lambda idx: train.norm(model.transformer.wte(idx)), dynamic=False)
    head = torch.compile(head, dynamic=False)

    def forward(self, idx, targets=None, reduction="mean"):
        cos_sin = self.cos[:, :idx.size(1)], self.sin[:, :idx.size(1)]
        x = x0 = stem(idx)
        for i, block in enumerate(self.transformer.h):
            ve = self.value_embeds[str(i)].weight if str(i) in self.value_embeds else None
            x = block(x, x0, self.resid_lambdas[i], self.x0_lambdas[i], idx, ve, cos_sin, self.window_sizes[i])
        return head(x, targets, reduction)

    train.Block.forward, train.GPT.forward = layer, forward
    for block in model.transformer.h:
        block.compile(dynamic=False)


def child(depth: int, variant: str, tree: Path) -> dict:
    import torch
    if variant == "warm-pool":
        from torch._inductor.async_compile import maybe_warm_pool
        maybe_warm_pool()
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
    import torch._inductor.config as inductor_config
    if variant == "no-pw-autotune":     # one heuristic config per pointwise kernel, no benchmarking at compile
        inductor_config.triton.autotune_pointwise = False
    if variant in ("no-patterns", "lean"):        # inductor's pattern-matcher passes (joint and post-grad graphs) off
        inductor_config.pattern_matcher = False
    if variant in ("no-loop-order", "lean"):      # no second pass re-ordering loops after fusion
        inductor_config.loop_ordering_after_fusion = False
    if variant == "compiled-opt":       # as train.py did before 2026-11-28: one graph per parameter shape
        train.adamw_step = torch.compile(train.adamw_step, dynamic=False, fullgraph=True)
        train.muon_step = torch.compile(train.muon_step, dynamic=False, fullgraph=True)
    if variant == "blocks":             # train.py's processor.compile = "blocks"
        for block in model.transformer.h:
            block.compile(dynamic=False)
    elif variant == "regions":
        compile_regions(train, model)
    elif variant == "nested":
        train.Block.forward = torch.compiler.nested_compile_region(train.Block.forward)
        model = torch.compile(model, dynamic=False)
    else:
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
    from torch._dynamo.utils import compilation_time_metrics
    out["breakdown"] = {k: sum(v) for k, v in compilation_time_metrics.items() if sum(v) >= 0.2}
    out["opt_first"] = timed(opt.step)
    model.zero_grad(set_to_none=True)
    fwd_bwd()
    out["fwd_bwd_steady"] = timed(fwd_bwd)
    out["opt_steady"] = timed(opt.step)
    model.zero_grad(set_to_none=True)

    def steps(n=5):
        for _ in range(n):
            fwd_bwd()
            opt.step()
            model.zero_grad(set_to_none=True)
    out["step_steady"] = timed(steps) / 5                 # whole steps, no sync between the parts
    if device.type == "cuda":
        out["train_peak_gb"] = torch.cuda.max_memory_allocated() / 2**30
        torch.cuda.reset_peak_memory_stats()
        rest = torch.cuda.memory_allocated()
    if variant == "bg-eval":             # compile the eval's graph in a thread while training steps go on
        import threading
        errors = []

        def warm():
            try:
                with torch.no_grad(), torch.amp.autocast(device.type, dtype=getattr(torch, P["dtype"])):
                    model(x, y, reduction="none")
            except BaseException as e:  # noqa: BLE001 — reported in the table
                errors.append(repr(e)[:100])

        def synced_steps_while(alive):
            n, t0 = 0, time.perf_counter()
            while alive() or n == 0:
                fwd_bwd()
                opt.step()
                model.zero_grad(set_to_none=True)
                sync()
                n += 1
            return n, (time.perf_counter() - t0) / n
        th = threading.Thread(target=warm, daemon=True)
        th.start()
        out["bg_steps"], out["bg_step"] = synced_steps_while(th.is_alive)
        th.join()
        end = time.perf_counter() + out["bg_steps"] * out["bg_step"] / 2
        out["fg_steps"], out["fg_step"] = synced_steps_while(lambda: time.perf_counter() < end)
        out["bg_errors"] = errors
    model.eval()
    out["eval_first"] = timed(evaluate)
    out["eval_steady"] = timed(evaluate)
    if device.type == "cuda":
        out["eval_extra_gb"] = (torch.cuda.max_memory_allocated() - rest) / 2**30
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--plan", default="8,8,10", help="depths in order, one subprocess each")
    ap.add_argument("--variants", default="static")
    ap.add_argument("--tree", default=str(REPO), help="the checkout whose train.py and harness/ to measure")
    ap.add_argument("--breakdown", action="store_true", help="the first forward+backward's compile phases")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        depth, variant = args.child.split(":")
        print("RESULT " + json.dumps(child(int(depth), variant, Path(args.tree))), flush=True)
        os._exit(0)                                # triton's bindings print leak lines at teardown
    print("| variant | depth (order) | fwd+bwd compile s | optimizer compile s | eval compile s | fwd+bwd ms | "
          "optimizer step ms | whole step ms | eval batch ms | training peak GiB | eval above rest GiB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
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
                  f"{1000 * d['fwd_bwd_steady']:.1f} | {1000 * d['opt_steady']:.1f} | "
                  f"{1000 * d['step_steady']:.1f} | {1000 * d['eval_steady']:.1f} | {d.get('train_peak_gb', 0):.1f} | "
                  f"{d.get('eval_extra_gb', 0):.1f} |",
                  flush=True)
            if "bg_steps" in d:
                print(f"|   | eval compiled in a thread: {d['bg_steps']} steps at {1000 * d['bg_step']:.1f} ms "
                      f"while it compiled, {1000 * d['fg_step']:.1f} ms after (synced each step); "
                      f"errors {d['bg_errors']} |")
            if args.breakdown:
                phases = sorted(d["breakdown"].items(), key=lambda kv: -kv[1])
                print("|   | compile phases s: " + ", ".join(f"{k} {v:.1f}" for k, v in phases) + " |", flush=True)


if __name__ == "__main__":
    main()
