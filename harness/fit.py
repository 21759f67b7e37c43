"""The largest device_batch_size that fits this card, found by a real forward/backward before the budget starts.

    AUTORESEARCH_GPU_MEMORY_GB=24 uv run train.py     # also: leave the rest of a shared card to other work

The default model.json asks for 128 rows of 2,048 tokens per micro-step (about 37 GB on an H100): on a 24 GB or
16 GB card that is an out-of-memory crash at the first step. Before the budget, the model (not yet compiled) runs
one forward/backward at model.json's device_batch_size, then at half of it, and so on, until one runs within the
memory this process may use. total_batch_size never changes: gradient accumulation makes up the difference, so the
optimizer steps are the same. The eager probe needs at least the memory the compiled model does (inductor frees
activations eager keeps), so a size that fits here fits in training, and the choice errs small. model.json's value
stays an upper bound. The choice is cached per model configuration, card and memory limit (<cache>/batch_fit.json):
later runs skip the probe. An out-of-memory error later in a run is still a crash with its reason.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import torch

from harness.config import REPO_DIR, ConfigError
from harness.util import atomic_write_text

MEMORY_ENV = "AUTORESEARCH_GPU_MEMORY_GB"
BUSY_BYTES = 2 * 2**30          # held by other processes beyond this: the card is shared now (a CUDA context: <1 GB)


def memory_limit(device: torch.device) -> tuple[float, str]:
    """(bytes this process may use, why): the card's total, or AUTORESEARCH_GPU_MEMORY_GB (applied to torch)."""
    if device.type == "cuda" and device.index is None:     # "cuda": the current card (the fraction needs an index)
        device = torch.device("cuda", torch.cuda.current_device())
    total = torch.cuda.get_device_properties(device).total_memory
    asked = os.environ.get(MEMORY_ENV, "").strip()
    if not asked:
        return total, f"{total / 2**30:.1f} GB on this card"
    try:
        gb = float(asked)
        if not 0 < gb * 2**30 <= total:
            raise ValueError
    except ValueError:
        raise ConfigError(f"${MEMORY_ENV}: expected a number of GB between 0 and this card's "
                          f"{total / 2**30:.1f}, got {asked[:40]!r}") from None
    torch.cuda.set_per_process_memory_fraction(gb * 2**30 / total, device)
    return gb * 2**30, f"{gb:g} GB (${MEMORY_ENV}) of this card's {total / 2**30:.1f} GB"


def free_memory(device: torch.device) -> int:
    """Bytes another process could use: the card's free memory, and under $AUTORESEARCH_GPU_MEMORY_GB no more than
    the cap leaves beside this process (the smaller card it stands for has no more)."""
    free, total = torch.cuda.mem_get_info(device)
    asked = os.environ.get(MEMORY_ENV, "").strip()
    cap = memory_limit(device)[0] if asked else total
    return int(max(0, min(free, cap - torch.cuda.memory_reserved(device))))


def held_by_others(device: torch.device) -> int:
    """Bytes of this card that other processes hold (besides this process's own allocator)."""
    free, total = torch.cuda.mem_get_info(device)
    return max(0, total - free - torch.cuda.memory_reserved(device))


def candidates(requested: int, total_batch: int, seq_len: int, world: int) -> list[int]:
    """model.json's value, then halves of it, each dividing total_batch_size over seq_len x processes."""
    out, b = [], requested
    while b >= 1:
        if total_batch % (b * seq_len * world) == 0:
            out.append(b)
        b //= 2
    return out


def fits(model: torch.nn.Module, rows: int, seq_len: int, vocab: int, device: torch.device, autocast) -> bool:
    """One forward/backward of `rows` random rows without running out of memory. The eager model needs at least
    what the compiled one will (inductor frees activations eager keeps), which pays for the optimizer's state."""
    torch.cuda.empty_cache()
    x = torch.randint(0, vocab, (rows, seq_len + 1), device=device)
    try:
        with autocast:                         # contiguous: the loss views its targets flat
            loss = model(x[:, :-1].contiguous(), x[:, 1:].contiguous())
        loss.backward()
        ok = True
    except torch.cuda.OutOfMemoryError:
        ok = False
    finally:
        model.zero_grad(set_to_none=True)
        loss = x = None
        torch.cuda.empty_cache()
    return ok


def fit_batch(model, m, seq_len: int, world: int, vocab: int, device, autocast, cache: os.PathLike,
              probe: bool = True) -> tuple[int, str]:
    """(device_batch_size to train with, the line that says why) for ModelConfig `m` and this train.py. `probe`
    False (the warm-eval second process): the cached choice, else the requested value. With several processes the
    smallest choice of any is taken by all."""
    requested, total_batch = m.device_batch_size, m.total_batch_size
    limit, where = memory_limit(device)
    kernels = f"{getattr(getattr(model, '_orig_mod', model), 'config', None)!r}|{getattr(autocast, 'fast_dtype', '')}"
    code = hashlib.sha256(json.dumps(dataclasses.asdict(m), sort_keys=True, default=str).encode()   # what sets the
                          + (REPO_DIR / "train.py").read_bytes() + kernels.encode()).hexdigest()[:16]  # activations
    cache_key = f"{code}|{torch.cuda.get_device_name(device)}|{int(limit) >> 20}MB|T{seq_len}|world{world}"
    try:
        known = json.loads(open(cache).read())
    except (OSError, ValueError):
        known = {}
    cached = known.get(cache_key) if isinstance(known, dict) else None
    if not probe:
        return (cached if isinstance(cached, int) else requested), "device_batch_size: as the first process chose"
    b, tried = cached if isinstance(cached, int) else 0, []
    if not b:
        for b in candidates(requested, total_batch, seq_len, world):
            if fits(model, b, seq_len, vocab, device, autocast):
                break
            tried.append(b)
        else:
            b = 0                               # nothing fits: said below, on every process at once
    if world > 1:                              # every process splits the batch the same way, or all stop together
        import torch.distributed as dist
        agreed = torch.tensor([b], device=device)
        dist.all_reduce(agreed, op=dist.ReduceOp.MIN)
        b = int(agreed.item())
    if not b:
        raise torch.cuda.OutOfMemoryError(f"not even 1 row of {seq_len} tokens fits in {where}: make the model "
                                          f"smaller (depth, aspect_ratio)")
    line = f"device_batch_size {requested}" + (f" -> {b}" if b != requested else "")
    if isinstance(cached, int):
        return b, f"{line}: fits {where} (cached probe)"
    shared = held_by_others(device) > BUSY_BYTES
    if isinstance(known, dict) and not shared:  # a busy card's answer is today's, not the card's
        known[cache_key] = b
        atomic_write_text(Path(cache), json.dumps(known, indent=1, sort_keys=True))
    why = (f"{', '.join(map(str, tried))} did not fit" if tried else "fits") + f" {where}"
    return b, f"{line}: {why} (forward/backward probe; " + ("not cached: other processes hold memory on this card)"
                                                            if shared else "cached)")
