"""Several processes (torchrun): data parallel, gradients averaged before the optimizer step.

    uv run torchrun --standalone --nproc_per_node=4 train.py
    uv run pytest tests/test_distributed.py           # 2 gloo processes against one, on the CPU

NCCL carries the gradients; a gloo group agrees on every step's time and loss on the host, so the
ranks share one clock, one LR schedule and one stop without a GPU sync. One process: every helper
is a no-op.
"""

from __future__ import annotations

import os

import torch


def setup_distributed(device_type: str, world: int):
    """(rank, world_size, local_rank, control group). One process: (0, 1, 0, None)."""
    if world == 1:
        return 0, 1, 0, None
    import torch.distributed as dist
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device_type == "cuda":
        torch.cuda.set_device(local)
    dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    control = dist.new_group(backend="gloo") if device_type == "cuda" else None
    return rank, world, local, control


def broadcast_parameters(model) -> None:
    """Every rank starts from rank 0's weights."""
    import torch.distributed as dist
    for t in list(model.parameters()) + list(model.buffers()):
        dist.broadcast(t.data, src=0)


def all_reduce_gradients(model, world: int) -> None:
    """Average the gradients over ranks: one flat all-reduce per dtype."""
    if world == 1:
        return
    import torch.distributed as dist
    groups = {}
    for p in model.parameters():
        if p.grad is not None:
            groups.setdefault(p.grad.dtype, []).append(p.grad)
    for grads in groups.values():
        flat = torch._utils._flatten_dense_tensors(grads)
        dist.all_reduce(flat)
        flat /= world
        for g, f in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads)):
            g.copy_(f)


def agree(values: list[float], world: int, group) -> list[float]:
    """Mean of a few host floats over ranks (identical on every rank afterwards)."""
    if world == 1:
        return values
    import torch.distributed as dist
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t, group=group)
    return [v / world for v in t.tolist()]


def shutdown(world: int) -> None:
    if world > 1:
        import torch.distributed as dist
        dist.destroy_process_group()
