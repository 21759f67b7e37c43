"""The eval's graph, compiled by a second process while the run trains.

The eval (harness/evaluate.py) calls the model under no_grad with reduction="none": a graph of its own,
which torch.compile would build at the first eval call, after training (6-9 s for a new model shape on an
H200). After step 0, the Session (harness/session.py) calls start(): it runs the same command again with
AUTORESEARCH_EVAL_GRAPH_ONLY set: that process sets up the same model the same way, runs one val batch through it
as evaluate_bpb does and exits, leaving the compiled graph in the shared inductor/triton caches, where the eval
finds it. It never trains or records (its Session starts no record and exits in prepare(), at the latest at
run.steps()), it checks that it built the same model, and it exits if the training process goes away. If it
fails or is not started, the eval compiles the graph itself, as before: the metric is the same either way (the
same graph, compiled once).

Its cost to the run: on a new shape it autotunes kernels on the same GPU for a few seconds of counted
training (a fraction of a second of training lost on an H200:
docs/records/2026-11-28_new-shape-overhead-h200/). A thread cannot do its work:
dynamo's FX-tracing flag is process-wide.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
import tempfile
import threading
import time

import torch

from harness import settings
from harness.config import fail
from harness.dataloader import make_dataloader
from harness.fit import free_memory
from harness.hardware import get_platform

# Set, to the training process's pid, in the second process: read here only (second_process); the Session asks it
EVAL_GRAPH_ONLY = "AUTORESEARCH_EVAL_GRAPH_ONLY"
SIGNATURE = "AUTORESEARCH_EVAL_GRAPH_SIGNATURE"
GIB = 2**30
CONTEXT_BYTES = 2 * GIB        # the second process's CUDA context, cuDNN workspace and loader buffers
WAIT_S = 60                    # the most the eval waits for it: it takes 10-20 s after step 0
NICENESS = 10                  # it runs this much nicer: the training process keeps the CPU to feed the GPU
WATCH_S = 1.0                  # how often it checks that the training process is still there
_RUNNING: list[subprocess.Popen] = []     # started and not yet waited for: stop() ends them with the run


def signature(config, platform: dict, batch_size: int) -> str:
    """What the eval's graph depends on, as each process sees it: the model's config, the compile scope,
    the batch, and train.py's source."""
    h = hashlib.sha256(repr((config, platform["compile_scope"], platform["dtype"], batch_size)).encode())
    with contextlib.suppress(OSError):
        h.update(open(sys.argv[0], "rb").read())
    return h.hexdigest()[:16]


def start(model: torch.nn.Module, config, platform: dict, batch_size: int, device: torch.device,
          world: int) -> subprocess.Popen | None:
    """Called after step 0, when the training's memory is reserved: on a compiled CUDA run, start the second
    process if the GPU has room for it (the model, an eval batch's logits: twice the bf16 logits with a compiled
    model, measured 1x; ten times with the eager glue of compile_scope "blocks"; its context). Prints what it
    chose and why, on a line of its own after step 0's (nothing where there is no graph to compile)."""
    def no(why):
        print(f"\neval graph: compiled after training ({why})")
    if not platform["compile"] or device.type != "cuda":
        return None
    if world > 1:
        return no("a second process is started for one-process runs only")
    if not os.path.isfile(sys.argv[0]):
        return no(f"this process was not started from a script file ({sys.argv[0]!r})")
    flags = sys.orig_argv[1:len(sys.orig_argv) - len(sys.argv)]         # the interpreter's own options (-X, -O)
    if sys.orig_argv[len(flags) + 1:] != sys.argv:     # e.g. a `python -c` driver that ran the script
        return no(f"this process was not started as `python <script>` (it ran {sys.orig_argv[1:2]})")
    logits = batch_size * config.sequence_len * config.vocab_size
    need = (sum(p.numel() * p.element_size() for p in model.parameters()) + CONTEXT_BYTES
            + logits * (4 if platform["compile_scope"] == "model" else 20))
    free = free_memory(device)                 # a card capped by $AUTORESEARCH_GPU_MEMORY_GB counts as that size
    if free < need:
        return no(f"the GPU has {free / GIB:.1f} GiB free; a second process compiling it now would need about "
                  f"{need / GIB:.1f}")
    env = dict(os.environ, PYTHONUNBUFFERED="1", **{EVAL_GRAPH_ONLY: str(os.getpid()),
                                                   SIGNATURE: signature(config, platform, batch_size)})
    try:
        with tempfile.NamedTemporaryFile("w", prefix="eval_graph_", suffix=".log", delete=False) as log:
            proc = subprocess.Popen([sys.executable, *flags, *sys.argv], stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=env)
    except (OSError, subprocess.SubprocessError) as e:
        return no(f"could not start a second process: {e}")
    proc.log_path = log.name
    if hasattr(os, "setpriority"):           # from here, not in the child before exec: this process has threads
        with contextlib.suppress(OSError):   # it has exited already: finish() says how
            os.setpriority(os.PRIO_PROCESS, proc.pid, min(19, os.getpriority(os.PRIO_PROCESS, 0) + NICENESS))
    _RUNNING.append(proc)
    print(f"\neval graph: compiling in a second process while this one trains (pid {proc.pid}; the GPU has "
          f"{free / GIB:.1f} GiB free, it needs about {need / GIB:.1f})")
    return proc


def stop() -> None:
    """The run ends without an eval (crash, interrupt): stop the second process if it still runs."""
    while _RUNNING:
        proc = _RUNNING.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def finish(proc: subprocess.Popen | None) -> None:
    """Before the eval: wait for the second process (the graph it writes is what the eval would compile), and say
    how it ended; its log is kept when it failed."""
    if proc is None:
        return
    t0 = time.time()
    try:
        code = proc.wait(timeout=WAIT_S)
    except subprocess.TimeoutExpired:
        stop()
        print(f"eval graph: the second process was still running after {WAIT_S}s and was stopped "
              f"(log: {proc.log_path}); the eval compiles it")
        return
    finally:
        if proc in _RUNNING:
            _RUNNING.remove(proc)
    waited = time.time() - t0
    if code != 0:
        print(f"eval graph: the second process failed (exit {code}, log: {proc.log_path}); the eval compiles it")
        return
    with contextlib.suppress(OSError):
        os.unlink(proc.log_path)
    print("eval graph: compiled by the second process" + (f" (waited {waited:.1f}s for it)" if waited > 0.1 else ""))


def second_process() -> bool:
    """True in the process start() launched; from the first call on, it exits by itself if the training process
    goes away."""
    parent = os.environ.get(EVAL_GRAPH_ONLY)
    if parent and not any(t.name == "eval-graph-watch" for t in threading.enumerate()):
        threading.Thread(target=_watch, args=(int(parent),), name="eval-graph-watch", daemon=True).start()
    return bool(parent)


def _watch(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(WATCH_S)
    os._exit(3)


def compile_eval(model: torch.nn.Module, config, platform: dict, tokenizer, batch_size: int, autocast) -> None:
    """In the second process: one val batch through the model exactly as evaluate_bpb calls it, after checking
    that this process built the model the training process did."""
    if signature(config, platform, batch_size) != os.environ.get(SIGNATURE):
        fail("eval graph: this process set up another model than the training process (train.py, model.json or "
             "the platform changed since it started): nothing compiled")
    if not platform["compile"]:
        fail("eval graph: compile is off in this process: nothing to compile")
    s = settings.current()
    device = torch.device(get_platform()["device"])
    loader = make_dataloader(tokenizer, batch_size, s.max_seq_len, "val", device=device)
    x, y, _ = next(loader)
    model.eval()
    t0 = time.time()
    with torch.no_grad(), autocast:
        model(x, y, reduction="none")
    torch.cuda.synchronize()
    loader.close()
    print(f"eval graph compiled in {time.time() - t0:.1f}s (GPU memory reserved at most "
          f"{torch.cuda.max_memory_reserved() / GIB:.1f} GiB)")
