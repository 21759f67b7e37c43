"""The run as the harness sees it: the bridge between the runtime (config, PLATFORM, data, the metric) and the
bookkeeping (the record, the ledger, memory.md). train.py opens one, hands it its model, and ends with finish().

    uv run train.py                       # train.py: run = Session.open() ... run.finish(model)

What a Session owns, so that no edit of train.py's loop can break it:
- set-up: arguments (--description, --seed), settings, PLATFORM, processes, the tokenizer, the seed, the
  printed set-up lines, the run's record (started before training; crashes and signals recorded);
- prepare(model): parameters and FLOPs, the batch split, broadcast over processes, compile, and in the warm-eval
  second process (harness/warm_eval.py) the eval graph, after which that process exits;
- steps(): the budget's clock, the host-speed probe, the progress line, divergence, the early stop, the loss
  curve (sent with the claim: harness/liveclaim.py), and the second process started after step 0;
- finish(model): the fixed metric (harness/evaluate.py), the metrics from its own clock and loader, the record,
  the human's held-out score (harness/heldout.py), the `---` summary, and the exit (os._exit: no teardown).
A train.py that never calls steps(), lap() or finish() is recorded as a crash naming the missing call."""

from __future__ import annotations

import argparse
import atexit
import contextlib
import dataclasses
import gc
import math
import os
import sys
import time

import torch

from harness import hardware, heldout, settings, warm_eval
from harness.attention import attention, confirm_attention, prefer_cudnn_sdpa
from harness.clock import StepClock
from harness.config import ConfigError, fail, load_model
from harness.dataloader import make_dataloader, train_tokens
from harness.distributed import all_reduce_gradients, broadcast_parameters, setup_distributed, shutdown
from harness.evaluate import eval_rows, evaluate_bpb
from harness.fit import fit_batch
from harness.fused.relu2_mlp import relu2_mlp
from harness.fused.rope_norm import rope_norm
from harness.fused.softcap_loss import softcap_cross_entropy
from harness.hardware import compile_caches, get_platform, setup_lines
from harness.prune import Pruner, thin_curve
from harness.record import start_run
from harness.settings import effective_model
from harness.speed import host_speed
from harness.tokenizer import Tokenizer

# what train.py imports from here besides Session: one attention call over PLATFORM's backends, and the fused
# kernels PLATFORM may choose (each used next to the plain line it replaces)
__all__ = ["Session", "attention", "relu2_mlp", "rope_norm", "softcap_cross_entropy"]

MISSING_STEPS = "train.py never iterated run.steps(): the harness's clock did not run"
MISSING_LAP = "train.py's loop did not call run.lap(loss) in step {step}: the budget's clock cannot run"
MISSING_FINISH = "train.py ended without run.finish(model): no val_bpb"


class Session:
    """One run of train.py. Session.open() parses the arguments and starts the record."""

    @classmethod
    def open(cls, argv: list[str] | None = None) -> "Session":
        ap = argparse.ArgumentParser(description="Train the GPT for the time budget and record the run.")
        ap.add_argument("--description", help="what this run changes (default: the HEAD commit subject)")
        ap.add_argument("--seed", type=int, default=42, help="initialization and data order (default 42); another "
                        "seed of the same code measures the noise")
        return cls(ap.parse_args(argv))

    def __init__(self, args: argparse.Namespace):
        self.t_start = time.monotonic()
        self.seed = args.seed
        self.s = s = settings.current()
        world = int(os.environ.get("WORLD_SIZE", "1"))
        try:
            self.model_config, self.changes = effective_model(load_model(), s, world)
        except ConfigError as e:
            fail(str(e))
        self.platform = get_platform()
        self.seq_len, self.budget = s.max_seq_len, s.time_budget_s
        self.rank, self.world, local_rank, self.control = setup_distributed(self.platform["device"], world)
        if self.rank != 0:
            sys.stdout = open(os.devnull, "w")     # rank 0 prints and records; the others only compute
        self.tokenizer = Tokenizer.from_directory()
        self.vocab_size = self.tokenizer.get_vocab_size()
        kind = self.platform["device"]
        self.device = torch.device("cuda", local_rank) if kind == "cuda" else torch.device(kind)
        self.graph_only = warm_eval.second_process()   # harness/warm_eval.py's copy of this run: no record
        self.args = args
        self.run = self.model = self.clock = self.pruner = None
        self.curve: list[tuple[float, float]] = []
        self.skipped = 0
        self.loader_wait = 0.0
        self.step = 0
        self._lapped = True
        self._scaler = self._scale = self._eval_graph = self._exit_code = None
        m = self.model_config
        self.grad_accum = m.total_batch_size // (m.device_batch_size * self.seq_len * self.world)
        dtype = getattr(torch, self.platform["dtype"])
        self.autocast = (torch.amp.autocast(self.device.type, dtype=dtype) if dtype != torch.float32
                         else contextlib.nullcontext())
        self.ortho_dtype = getattr(torch, self.platform["ortho_dtype"])
        torch.manual_seed(self.seed)           # the only seed: initialization here, data order in the loader
        torch.set_float32_matmul_precision("high")

    # -- set-up ----------------------------------------------------------------------------------
    def confirm_attention(self, n_head: int, head_dim: int, windows: list) -> str:
        """The attention backend for the model's shapes (FA4 or cuDNN can refuse some: the next one then), after
        which the run's record starts and the set-up is printed. Returns the backend for the model's config."""
        m = self.model_config
        shape = (m.device_batch_size, self.seq_len, n_head, head_dim)
        self.platform, fallback = confirm_attention(self.platform, shape, windows, self.device,
                                                    second_process=self.graph_only)
        if self.rank == 0 and not self.graph_only:
            self.run = start_run(self.tokenizer, m, self.changes, self.args.description, {"world_size": self.world},
                                 self.platform, self.seed)
            atexit.register(self._at_exit)
        print("\n".join(setup_lines(self.s, m, self.changes, self.platform, self.world)
                        + [f"!! {fallback}"] * bool(fallback)))
        if self.platform["attention"] in ("cudnn", "flex", "sdpa"):
            print(f"  {prefer_cudnn_sdpa(self.platform)}")     # held for the whole run
        eval_rows(self.tokenizer, self.s, verbose=True)
        return self.platform["attention"]

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model as it trains: counted, the same on every process, compiled as PLATFORM says. In the warm-eval
        second process this compiles the eval's graph and ends the process."""
        if self.run is None and self.rank == 0 and not self.graph_only:
            self.confirm_attention(model.config.n_head, model.config.n_embd // model.config.n_head,
                                   list(getattr(model, "window_sizes", [])))
        self.num_params = sum(p.numel() for p in model.parameters())
        self.flops_per_token = model.estimate_flops() if hasattr(model, "estimate_flops") else 0
        if self.device.type == "cuda":          # the largest device_batch_size this card holds (harness/fit.py)
            try:
                b, line = fit_batch(model, self.model_config, self.seq_len, self.world, self.vocab_size, self.device,
                                    self.autocast, self.s.cache_dir / "batch_fit.json", probe=not self.graph_only)
            except ConfigError as e:
                fail(str(e))
            print(line)
            if self.run is not None:
                self.run.record["batch_fit"] = {"requested": self.model_config.device_batch_size, "effective": b}
            self.model_config = dataclasses.replace(self.model_config, device_batch_size=b)
            self.grad_accum = self.model_config.total_batch_size // (b * self.seq_len * self.world)
            torch.cuda.reset_peak_memory_stats(self.device)      # peak_vram_mb is the run's, not the probe's
        m = self.model_config
        print(f"parameters: {self.num_params:,}  FLOPs/token: {self.flops_per_token:.3e}")
        print(f"batch: {m.total_batch_size:,} tokens/step = {m.device_batch_size} x {self.seq_len} x "
              f"{self.grad_accum} accumulation steps" + (f" x {self.world} processes" if self.world > 1 else ""))
        if self.world > 1:
            broadcast_parameters(model)         # rank 0's initialization everywhere
        self.model = model
        P = self.platform
        if P["compile"]:
            print(compile_caches(self.s))
            if P["compile_scope"] == "blocks":  # one graph per kind of block, reused by every layer
                for block in model.transformer.h:
                    block.compile(dynamic=False)
            else:
                model = torch.compile(model, dynamic=False)
        if self.graph_only:
            warm_eval.compile_eval(model, model_config_of(model), P, self.tokenizer, m.device_batch_size,
                                   self.autocast)
            sys.stdout.flush()
            os._exit(0)
        self.compiled = model
        return model

    def grad_scaler(self):
        """A GradScaler where PLATFORM trains in fp16 (its skipped steps are counted), else None."""
        if self.platform["use_grad_scaler"] and self._scaler is None:
            self._scaler, line = hardware.make_grad_scaler(self.device.type, self.model_config.total_batch_size)
            self._scale = self._scaler.get_scale()          # so that a skip at the first step is counted too
            print(line)
        return self._scaler

    def train_loader(self, batch_size: int | None = None):
        """The train split's (x, y, epoch) batches for this process, in the seed's order, at the device_batch_size
        the card holds (a larger request is cut to it); the seconds spent waiting during counted steps measured."""
        if self.graph_only:                     # prepare() was skipped: the eval compiles its own graph
            os._exit(0)
        batch_size = min(batch_size or self.model_config.device_batch_size, self.model_config.device_batch_size)
        loader = make_dataloader(self.tokenizer, batch_size, self.seq_len, "train", device=self.device,
                                 rank=self.rank, world_size=self.world, seed=self.seed)
        while True:
            t = time.perf_counter()
            batch = next(loader)
            if self.clock is not None and self.step >= self.s.excluded_steps:
                self.loader_wait += time.perf_counter() - t
            yield batch

    def sync_gradients(self, model: torch.nn.Module) -> None:
        """The mean gradient over processes (nothing with one)."""
        all_reduce_gradients(model, self.world)

    # -- the loop --------------------------------------------------------------------------------
    @property
    def progress(self) -> float:
        """Fraction of the budget (or of max_steps) done: what the schedules read."""
        return self.clock.progress if self.clock is not None else 0.0

    def steps(self):
        """Step numbers from 0 until the budget or max_steps are spent or an early stop; each step ends in lap()."""
        if self.graph_only:                     # the warm eval's copy never trains, whatever train.py's loop does
            os._exit(0)
        if self.model is None:
            self._crash("train.py did not call run.prepare(model) before run.steps()")
        s = self.s
        if self.run is not None:
            self.run.record["host_speed"] = self.speed = host_speed(self.device)
            print(f"host speed: {self.speed:.1f} GFLOP/s on a fixed matmul (harness/speed.py), recorded beside the "
                  f"run for the keep rule")
            self.pruner = Pruner.for_run(self.run, s, self.model_config)
            if self.pruner.reason:
                print(self.pruner.reason)
        self.clock = StepClock(self.device, self.budget, s.excluded_steps, self.world, self.control,
                               max_steps=s.max_steps)
        self.clock.start()
        while True:
            self._lapped = False
            yield self.step
            if not self._lapped:
                self._crash(MISSING_LAP.format(step=self.step))
            if self.step == 0:
                gc.collect()
                gc.freeze()                     # ~500 ms GC pauses otherwise (upstream)
                gc.disable()
                self._eval_graph = warm_eval.start(self.compiled, model_config_of(self.model), self.platform,
                                                   self.model_config.device_batch_size, self.device, self.world)
            self.step += 1
            stop = self.pruner is not None and self.pruner.stopped
            if stop or self.clock.spent(self.step) or self.step == s.max_steps:
                break
        for lap in self.clock.drain():
            self._show(lap)
        print()
        gc.enable()

    def lap(self, loss: torch.Tensor, **info) -> None:
        """The step's train loss (a device tensor: read one step late on CUDA) and what its line shows."""
        if self.clock is None:
            self._crash("train.py called run.lap() outside run.steps()")
        self._lapped = True
        if self._scaler is not None:            # a scale that went down: the step was skipped (inf/nan grads)
            scale = self._scaler.get_scale()
            self.skipped += scale < self._scale
            self._scale = scale
        for lap in self.clock.lap(self.step, loss, progress=self.clock.progress, **info):
            self._show(lap)

    def _show(self, lap) -> None:
        """Fail fast on a diverged loss (a crash, with the reason); else the step's line, the curve, the pruner."""
        if not math.isfinite(lap.loss) or lap.loss > 100:
            self._crash(f"diverged: train loss {lap.loss} at step {lap.step}")
        m, peak = self.model_config, self.platform["peak_flops"] * self.world
        tok_s = m.total_batch_size / lap.seconds if lap.seconds > 0 else 0.0
        mfu = 100 * self.flops_per_token * tok_s / peak if peak else 0.0
        p = lap.info.get("progress", 0.0)
        self.curve.append((p, lap.smooth_loss))
        if self.pruner is not None:
            self.pruner.check(lap.step, p, lap.smooth_loss)
        if self.run is not None and self.run.live is not None:
            self.run.live.update(self.curve)    # other hosts' live views draw it (the shared ledger)
        extra = "".join(f" | {k}: {v:.2f}" if isinstance(v, float) else f" | {k}: {v}"
                        for k, v in lap.info.items() if k != "progress")
        print(f"\rstep {lap.step:05d} ({100 * p:.1f}%) | loss: {lap.smooth_loss:.6f}{extra} | "
              f"dt: {lap.seconds * 1000:.0f}ms | tok/sec: {int(tok_s):,} | mfu: {mfu:.1f}% | "
              f"remaining: {self.clock.remaining(lap.step)}    ", end="", flush=True)

    # -- the end -----------------------------------------------------------------------------------
    def finish(self, model: torch.nn.Module | None = None) -> None:
        """Score the model with the fixed metric, record the run, print the `---` summary, and end the process."""
        if self.clock is None:
            self._crash(MISSING_STEPS)
        model = model if model is not None else self.compiled
        total_time = self.clock.training_seconds
        if jump := self.clock.clock_jump():
            print(f"!! the wall clock moved {jump:+.0f} s against the monotonic clock during training (NTP, a "
                  f"migrated VM): the budget was measured on the monotonic clock; only timestamps are off")
        base = {"clock_jump_s": jump, "num_steps": self.step, "training_seconds": total_time,
                "curve": thin_curve(self.curve)}
        if self.pruner is not None and self.pruner.stopped:
            warm_eval.stop()
            shutdown(self.world)
            if self.run is not None:
                print(f"!! {self.pruner.stopped}")
                self.run.finish(base, status="pruned", error=self.pruner.stopped)
            self._exit(0)
        model.eval()
        t_eval = time.monotonic()
        warm_eval.finish(self._eval_graph)
        with self.autocast:
            val_bpb = evaluate_bpb(model, self.tokenizer, self.model_config.device_batch_size)
        eval_seconds = time.monotonic() - t_eval
        if not math.isfinite(val_bpb):
            self._crash(f"val_bpb is {val_bpb}")
        m, timed = self.model_config, self.step - self.s.excluded_steps
        tok_s = m.total_batch_size * timed / total_time if total_time > 0 else 0.0
        peak = self.platform["peak_flops"] * self.world
        metrics = dict(base, val_bpb=val_bpb, total_seconds=time.monotonic() - self.t_start,
                       startup_seconds=self.clock.started - self.t_start, eval_seconds=eval_seconds,
                       peak_vram_mb=(torch.cuda.max_memory_allocated() / 2**20 if self.device.type == "cuda" else 0.0),
                       mfu_percent=100 * self.flops_per_token * tok_s / peak if peak else 0.0,
                       total_tokens_M=self.step * m.total_batch_size / 1e6, num_params_M=self.num_params / 1e6,
                       depth=m.depth, skipped_steps=self.skipped, tokens_per_second=tok_s, world_size=self.world,
                       loader_wait_seconds=self.loader_wait, host_speed=getattr(self, "speed", None),
                       epochs=self.step * m.total_batch_size / train_tokens(self.tokenizer),
                       compiled_in_budget=self.clock.compiled_in_budget)
        shutdown(self.world)
        if self._scaler is not None:            # fp16: a skipped step trained nothing (the same steps, fewer updates)
            print(f"gradscaler: {self.skipped} of {self.step} steps skipped (inf/nan gradients at the loss scale; "
                  f"final scale {self._scaler.get_scale():g})")
        if self.run is not None:
            self.run.finish(metrics)
            try:                                # the human's extra, after the record: never the run's outcome
                heldout.score(self.run, model, self.tokenizer, m.device_batch_size, self.autocast)
            except Exception as e:  # noqa: BLE001 - an OOM, the database, matplotlib: said, and the summary follows
                print(f"!! heldout: not scored ({type(e).__name__}: {str(e)[:160]}); the run is recorded")
            self.run.print_summary(time.monotonic() - self.t_start)    # the `---` block agents grep
        self._exit(0)

    def _crash(self, reason: str):
        if self.run is not None:
            self.run.crash(reason, {"num_steps": self.step, "curve": thin_curve(self.curve),
                                    "training_seconds": self.clock.training_seconds if self.clock else None})
        else:
            print(f"CRASH: {reason}")
        self._exit(1)

    def _exit(self, code: int):
        self._exit_code = code
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

    def _at_exit(self) -> None:
        """At interpreter exit: a run train.py did not finish is recorded as a crash naming what was missing; then
        the process ends without teardown (the exit code of the record: 1 for a crash, 128+n for a signal)."""
        if self.run is None:
            return
        if self.run.recorded is None:
            error = sys.last_value if hasattr(sys, "last_value") else None
            self.run.crash(MISSING_FINISH if error is None else f"{type(error).__name__}: {error}")
        code = {"crash": 1, "interrupted": 130}.get(self.run.recorded.get("status"), 0)
        sys.stdout.flush(), sys.stderr.flush()
        os._exit(self._exit_code if self._exit_code is not None else code)


def model_config_of(model: torch.nn.Module):
    """The config object train.py's model carries (the eval graph's signature depends on it)."""
    inner = getattr(model, "_orig_mod", model)
    return getattr(inner, "config", None)
