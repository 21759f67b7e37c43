"""GPU checks (skipped without CUDA): attention backends against the reference in bf16,
the compiled optimizer steps against eager ones, a windowed flex layer without a dense mask.

    uv run pytest tests/test_gpu.py          # on a CUDA machine
    python3 tests/test_gpu.py                # same checks without pytest
"""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import train  # noqa: E402

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _qkv(B=4, T=512, H=4, D=128, dtype=torch.bfloat16, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    return [torch.randn(B, T, H, D, device="cuda", generator=g).to(dtype) for _ in range(3)]


@pytest.mark.parametrize("backend", ["sdpa", "flex"])
@pytest.mark.parametrize("window", [511, 256, 100])
def test_backends_match_reference_bf16(backend, window):
    q, k, v = _qkv(seed=window)
    ref = train.attention_reference(q.double(), k.double(), v.double(), window)
    out = train.ATTENTION[backend](q, k, v, window)
    rel = ((out.double() - ref).norm() / ref.norm()).item()
    assert rel < 1e-2, f"{backend} window {window}: {rel:.2e}"


def test_flex_gradients_match_reference():
    q, k, v = (t.float().requires_grad_() for t in _qkv(B=2, T=256, dtype=torch.float32))
    out = train.attention_flex(q, k, v, 64)
    out.square().sum().backward()
    grads = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    train.attention_reference(q, k, v, 64).square().sum().backward()
    for g, t in zip(grads, (q, k, v)):
        assert ((g - t.grad).norm() / t.grad.norm()).item() < 1e-2


def test_compiled_muon_matches_eager():
    torch.manual_seed(0)
    ws = [torch.nn.Parameter(torch.randn(256, 128, device="cuda")) for _ in range(2)]
    ws2 = [torch.nn.Parameter(w.detach().clone()) for w in ws]
    groups = lambda p: [dict(kind="muon", params=p, lr=0.02, momentum=0.95, ns_steps=5, beta2=0.95, weight_decay=0.1)]
    eager = train.MuonAdamW(groups(ws), ortho_dtype=torch.bfloat16)
    comp = train.MuonAdamW(groups(ws2), ortho_dtype=torch.bfloat16)
    comp.compile_steps()
    for _ in range(3):
        g = [torch.randn_like(w) for w in ws]
        for w, w2, gi in zip(ws, ws2, g):
            w.grad, w2.grad = gi.clone(), gi.clone()
        eager.step()
        comp.step()
    for w, w2 in zip(ws, ws2):
        assert ((w - w2).norm() / w.norm()).item() < 1e-2


if __name__ == "__main__":
    for backend in ("sdpa", "flex"):
        for window in (511, 256, 100):
            test_backends_match_reference_bf16(backend, window)
    test_flex_gradients_match_reference()
    test_compiled_muon_matches_eager()
    print("GPU checks: 8 passed, 0 failed")
