"""The eval's graph, compiled by a second process while the run trains.

The eval (harness/evaluate.py) calls the model under no_grad with reduction="none": a graph of its own,
which torch.compile would build at the first eval call, after training (6-7 s for a new model shape on an
H200). After step 0, train.py starts itself again with --compile-eval-only: that process sets up the same
model the same way, runs one eval batch through it and exits, leaving the compiled graph in the shared
inductor/triton caches, where the eval finds it. It does not train, record or touch the ledger; if it
fails or is not started, the eval compiles the graph itself, as before (the metric is the same either
way: the same graph, compiled once). A thread cannot do it: dynamo's FX-tracing flag is process-wide.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

import torch

from harness import settings
from harness.dataloader import make_dataloader
from harness.hardware import get_platform

FLAG = "--compile-eval-only"
GIB = 2**30
CONTEXT_BYTES = 2 * GIB        # the second process's CUDA context, cuDNN workspace and loader buffers
WAIT_S = 300                   # the most the eval waits for it (it takes ~10 s)


def start(model: torch.nn.Module, batch_size: int, seq_len: int, vocab_size: int, device: torch.device,
          world: int) -> subprocess.Popen | None:
    """Called after step 0, when the training's memory is reserved: start the second process if the GPU has room
    for it (the model, an eval batch's logits twice over, its context). Prints what it chose and why, on a line
    of its own after step 0's."""
    if world > 1:
        print("\neval graph: compiled after training (a second process is started for one-process runs only)")
        return None
    free, _ = torch.cuda.mem_get_info(device)
    need = (sum(p.numel() * p.element_size() for p in model.parameters())
            + 2 * batch_size * seq_len * vocab_size * 2 + CONTEXT_BYTES)
    if free < need:
        print(f"\neval graph: compiled after training (the GPU has {free / GIB:.1f} GiB free; a second process "
              f"compiling it now would need about {need / GIB:.1f})")
        return None
    log = tempfile.NamedTemporaryFile("w", prefix="eval_graph_", suffix=".log", delete=False)
    proc = subprocess.Popen([sys.executable, sys.argv[0], *sys.argv[1:], FLAG], stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, env=dict(os.environ, PYTHONUNBUFFERED="1"),
                            preexec_fn=_lower_priority if hasattr(os, "nice") else None)
    proc.log_path = log.name
    log.close()
    print(f"\neval graph: compiling in a second process while this one trains (pid {proc.pid}; the GPU has "
          f"{free / GIB:.1f} GiB free, it needs about {need / GIB:.1f})")
    return proc


def _lower_priority():
    os.nice(10)                # the training process keeps the CPU it needs to feed the GPU


def finish(proc: subprocess.Popen | None) -> None:
    """Before the eval: wait for the second process (the graph it writes is what the eval would compile), and say
    how it ended; its log is kept when it failed."""
    if proc is None:
        return
    t0 = time.time()
    try:
        code = proc.wait(timeout=WAIT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        print(f"eval graph: the second process was still running after {WAIT_S}s and was stopped "
              f"(log: {proc.log_path}); the eval compiles it")
        return
    waited = time.time() - t0
    if code != 0:
        print(f"eval graph: the second process failed (exit {code}, log: {proc.log_path}); the eval compiles it")
        return
    os.unlink(proc.log_path)
    print("eval graph: compiled by the second process" + (f" (waited {waited:.1f}s for it)" if waited > 0.1 else ""))


def compile_eval(model: torch.nn.Module, tokenizer, batch_size: int, autocast) -> None:
    """In the second process: one val batch through the model exactly as evaluate_bpb calls it."""
    s = settings.current()
    device = torch.device(get_platform()["device"])
    loader = make_dataloader(tokenizer, batch_size, s.max_seq_len, "val", device=device)
    x, y, _ = next(loader)
    model.eval()
    t0 = time.time()
    with torch.no_grad(), autocast:
        model(x, y, reduction="none")
    if device.type == "cuda":
        torch.cuda.synchronize()
    loader.close()
    print(f"eval graph compiled in {time.time() - t0:.1f}s")
