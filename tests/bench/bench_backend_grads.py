"""Does an attention backend change what the model learns? Loss and gradients of the default model (not a test).

    AUTORESEARCH_GROUND=<a prepared ground.json> python3 tests/bench/bench_backend_grads.py [cudnn fa4 ...]

Builds train.py's model once (this machine's PLATFORM, uncompiled, one fixed batch of random tokens), then for
each backend named computes the loss and every gradient twice. Prints, for each pair, the loss difference and
the gradients' relative difference (all parameters together, and the worst single one): a backend whose
difference from another is no larger than its difference from itself changes nothing the run would measure.
"""

import copy
import itertools
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import train  # noqa: E402
from harness import settings  # noqa: E402
from harness.config import load_model  # noqa: E402
from harness.hardware import get_platform  # noqa: E402


def loss_and_grads(model, backend, x, y, dtype):
    for block in model.transformer.h:
        block.attn.backend = backend
    model.zero_grad(set_to_none=True)
    with torch.amp.autocast("cuda", dtype=dtype):
        loss = model(x, y)
    loss.backward()
    return loss.item(), {n: p.grad.double().clone() for n, p in model.named_parameters() if p.grad is not None}


def main():
    backends = sys.argv[1:] or ["cudnn", "fa4"]
    s, P = settings.current(), get_platform()
    m = settings.effective_model(load_model(), s, 1)[0]
    B, T = 16, s.max_seq_len
    config = train.build_config(m, T, 8192, P)
    torch.manual_seed(0)
    model = train.build_model(config, torch.device("cuda"), 1)
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randint(0, config.vocab_size, (B, T + 1), device="cuda", generator=g)
    dtype = getattr(torch, P["dtype"])
    runs = {}
    for backend in backends:
        for i in (1, 2):
            inputs, targets = x[:, :-1].contiguous(), x[:, 1:].contiguous()
            runs[f"{backend}#{i}"] = loss_and_grads(copy.deepcopy(model), backend, inputs, targets, dtype)
    print(f"model depth {m.depth}, batch {B} x {T}, {P['dtype']}; loss and gradients, pair by pair")
    for (a, (la, ga)), (b, (lb, gb)) in itertools.combinations(runs.items(), 2):
        diff = sum((ga[n] - gb[n]).square().sum() for n in ga).sqrt() / sum(ga[n].square().sum() for n in ga).sqrt()
        worst = max((((ga[n] - gb[n]).norm() / ga[n].norm().clamp_min(1e-30)).item(), n) for n in ga)
        print(f"{a:>8} vs {b:<8} loss {la:.6f} vs {lb:.6f} (diff {lb - la:+.2e})  grads rel diff {diff.item():.2e}"
              f"  worst {worst[0]:.2e} ({worst[1]})")


if __name__ == "__main__":
    main()
