"""train.py and the kernels it calls, against references on the CPU: attention backends against plain softmax
attention, the Triton kernels (loss, rotary + QK-norm, fused MLP) in Triton's interpreter against float64 or
F.cross_entropy, the Gluon first-use check, AdamW against torch.optim.AdamW, Muon, fp16 safety, and the
fused-kernel flags decided in build_config.

    uv run pytest tests/test_model.py
"""

import dataclasses
import math

import pytest
import torch

import train
from harness import attention, config, hardware
from harness.fused import attention_op, relu2_gluon


def _qkv(B=2, T=48, H=2, D=16, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, T, H, D, generator=g, dtype=torch.float32).to(dtype) for _ in range(3)]


@pytest.mark.parametrize("backend", ["sdpa", "flex"])
@pytest.mark.parametrize("window", [47, 64, 24, 16, 7, 1])
def test_backend_matches_reference(backend, window):
    q, k, v = _qkv(seed=window)
    ref = attention.attention_reference(q, k, v, window)
    out = attention.BACKENDS[backend](q, k, v, window)
    assert out.shape == ref.shape
    rel = (out - ref).norm() / ref.norm()
    assert rel < 1e-5, f"{backend} window={window}: rel err {rel:.2e}"


def _ref_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    out = attention.attention_reference(q, k, v, window).contiguous()      # as the fake says
    return out, out.new_full((q.size(0), q.size(2), q.size(1)), float(window), dtype=torch.float32)


def _ref_backward(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor,
                  stats: torch.Tensor, window: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    assert int(stats.flatten()[0]) == window and torch.equal(o, attention.attention_reference(q, k, v, window))
    _, vjp = torch.func.vjp(lambda *t: attention.attention_reference(*t, window), q, k, v)
    return vjp(dout)


_ref_op = attention_op.attention_op("test_reference_attention", _ref_forward, _ref_backward, lambda B, H, T: (B, H, T))


@pytest.mark.parametrize("compiled", [False, True])
def test_attention_op_plumbing(compiled):
    """The custom-op wiring cuDNN's and FA4's kernels share (harness.fused.attention_op), around the reference: the
    backward op gets the forward's inputs, output, statistics and window, and the gradients are the reference's,
    eager and traced by torch.compile (the fake shapes; aot_eager: no code generated)."""
    q, k, v = (t.requires_grad_() for t in _qkv(T=40, seed=3))
    fn = torch.compile(_ref_op, fullgraph=True, backend="aot_eager") if compiled else _ref_op
    dout = torch.randn(2, 40, 2, 16, generator=torch.Generator().manual_seed(4))
    out = fn(q, k, v, 9)
    out.backward(dout)
    grads = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    ref = attention.attention_reference(q, k, v, 9)
    ref.backward(dout)
    assert (out - ref).abs().max().item() == 0.0
    for g, t in zip(grads, (q, k, v)):
        assert (g - t.grad).norm() / t.grad.norm() < 1e-6


CE_TRITON_SCRIPT = r"""
import json, torch
from harness.fused import relu2_mlp, rope_norm, softcap_loss
out = {}
for dtype, V in ((torch.float32, 50), (torch.bfloat16, 50), (torch.bfloat16, 5000)):
    g = torch.Generator().manual_seed(V)
    logits = (torch.randn(12, V, generator=g) * 20).to(dtype).requires_grad_()
    targets = torch.randint(0, V, (12,), generator=g)
    targets[[3, 7]] = -1
    targets[5] = V - 1
    rows = softcap_loss.softcap_cross_entropy_rows(logits, targets, 15)
    (rows.sum() * 2.5 / 10).backward()
    got = logits.grad.clone()
    logits.grad = None
    z = 15 * torch.tanh(logits.float() / 15)
    ref_rows = torch.nn.functional.cross_entropy(z, targets, ignore_index=-1, reduction="none")
    (ref_rows.sum() * 2.5 / 10).backward()
    ref = logits.grad.float()
    out[f"{dtype} V={V}"] = dict(loss=((rows - ref_rows).abs().max() / ref_rows.abs().max()).item(),
                                 grad=((got.float() - ref).norm() / ref.norm()).item(),
                                 ignored=[rows[3].item(), got[7].abs().max().item()], dtype=str(got.dtype))
print(json.dumps(out))
"""


def _interpreted(script: str) -> dict:
    """Run a script under Triton's CPU interpreter in a fresh process; its last stdout line is JSON."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                       cwd=Path(train.__file__).parent, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_triton_softcap_cross_entropy_matches_torch():
    """softcap_loss.softcap_cross_entropy_rows (the CUDA loss kernels) run in Triton's CPU interpreter: per-row
    losses and the logits gradient equal F.cross_entropy on float32 softcapped logits, for float32 and
    bf16, a vocabulary that is no power of two and one longer than a block (5000 > 4096); ignored rows
    give 0 loss and 0 gradient."""
    res = _interpreted(CE_TRITON_SCRIPT)
    assert set(res) == {"torch.float32 V=50", "torch.bfloat16 V=50", "torch.bfloat16 V=5000"}
    for name, e in res.items():
        tol = 1e-5 if "float32" in name else 1e-2
        assert e["loss"] < 1e-5 and e["grad"] < tol, (name, e)
        assert e["ignored"] == [0.0, 0.0] and e["dtype"] == name.split()[0], (name, e)


MLP_TRITON_SCRIPT = r"""
import json, torch
from harness.fused import relu2_mlp, rope_norm, softcap_loss
out = {}
for dtype in (torch.float32, torch.float16):       # the interpreter mis-reads bf16 through TMA descriptors
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 45, 40, generator=g).to(dtype).requires_grad_()      # 90 rows, d 40: partial M and K tiles
    w_fc = (torch.randn(160, 40, generator=g) / 40 ** 0.5).to(dtype).requires_grad_()
    w_proj = (torch.randn(40, 160, generator=g) / 160 ** 0.5).to(dtype).requires_grad_()
    dy = torch.randn(2, 45, 40, generator=g).to(dtype)
    y = relu2_mlp.relu2_mlp(x, w_fc, w_proj)
    got = [y, *torch.autograd.grad(y, (x, w_fc, w_proj), dy)]
    ins = [t.detach().double().requires_grad_() for t in (x, w_fc, w_proj)]
    ry = torch.relu(ins[0] @ ins[1].t()).square() @ ins[2].t()
    ref = [ry, *torch.autograd.grad(ry, ins, dy.double())]
    out[str(dtype)] = {n: [((a.double() - b).norm() / b.norm()).item(), list(a.shape), str(a.dtype)]
                       for n, a, b in zip(("y", "dx", "dw_fc", "dw_proj"), got, ref)}
print(json.dumps(out))
"""


def test_triton_fused_mlp_matches_plain_ops():
    """relu2_mlp.relu2_mlp (ReLU^2 in the epilogues of two Triton matmuls; the backward's derivative from the
    stored activation, 2 sqrt(a)) run in Triton's CPU interpreter: output and the three gradients equal
    float64 plain ops, with rows and the reduction width not multiples of the tiles."""
    res = _interpreted(MLP_TRITON_SCRIPT)
    assert set(res) == {"torch.float32", "torch.float16"}
    shapes = {"y": [2, 45, 40], "dx": [2, 45, 40], "dw_fc": [160, 40], "dw_proj": [40, 160]}
    for dtype, errs in res.items():
        for name, (rel, shape, got_dtype) in errs.items():
            assert shape == shapes[name] and got_dtype == dtype, (dtype, name, shape, got_dtype)
            assert rel < (1e-5 if dtype == "torch.float32" else 5e-3), (dtype, name, rel)


def test_gluon_kernel_checked_on_first_use(capsys):
    """The Gluon matmul (Hopper only) is checked against torch on its first call per kind; a triton whose Gluon
    kernel raises or disagrees turns its gate off, with one printed line, and the caller falls back (None)
    to the Triton kernel. The kernel is a stand-in passed to the gate (its seam), so this runs on the CPU."""
    g = torch.Generator().manual_seed(3)
    a, b, aux = torch.randn(300, 40, generator=g), torch.randn(40, 96, generator=g), torch.rand(300, 96, generator=g)
    def right(a, b, aux=None):
        return (a @ b) * 2 * aux.sqrt() if aux is not None else torch.relu(a @ b).square()
    gate = relu2_gluon.GluonGate(kernel=right)
    zero = torch.zeros_like(b)                          # the MLP's c_proj starts at zero: nothing to compare yet
    assert torch.equal(gate(a, zero, aux), torch.zeros(300, 96))
    assert gate.checked == set() and gate.enabled
    assert torch.equal(gate(a, b, aux), right(a, b, aux))
    assert torch.equal(gate(a, b), right(a, b))
    assert gate.checked == {(False, torch.float32), (True, torch.float32)} and gate.enabled
    assert capsys.readouterr().out == ""
    wrong = relu2_gluon.GluonGate(kernel=lambda a, b, aux=None: right(a, b, aux) * 1.1)
    assert wrong(a, b, aux) is None and wrong.enabled is False
    assert not wrong.usable(torch.device("cpu"), backward=True)
    out = capsys.readouterr().out
    assert (out.startswith("fused MLP: the Gluon kernel failed on triton") and "RuntimeError: relative error 1.00e-01"
            in out)
    assert out.strip().endswith("using the Triton kernels") and out.count("\n") == 1

    def broken(a, b, aux=None):
        raise AttributeError("module has no attribute 'async_copy_global_to_shared'")
    gate = relu2_gluon.GluonGate(kernel=broken)
    assert gate(a, b, aux) is None and gate.enabled is False
    assert "(AttributeError: module has no attribute 'async_copy_global_to_shared')" in capsys.readouterr().out


ROPE_TRITON_SCRIPT = r"""
import json, torch, train
from harness.fused import relu2_mlp, rope_norm, softcap_loss
out = {}
for dtype in (torch.float32, torch.float16):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 37, 2, 16, generator=g).to(dtype).requires_grad_()     # 222 rows: a partial block
    # a prefix of longer tables, like the model's
    cos, sin = (torch.randn(1, 50, 1, 8, generator=g)[:, :37].to(dtype) for _ in range(2))
    dy = torch.randn(3, 37, 2, 16, generator=g).to(dtype)
    y = rope_norm.rope_norm(x, cos, sin)
    dx, = torch.autograd.grad(y, x, dy)
    xd = x.detach().double().requires_grad_()
    ry = train.norm(train.apply_rotary_emb(xd, cos.double(), sin.double()))
    rdx, = torch.autograd.grad(ry, xd, dy.double())
    out[str(dtype)] = {"y": ((y.double() - ry).norm() / ry.norm()).item(),
                       "dx": ((dx.double() - rdx).norm() / rdx.norm()).item(),
                       "dtypes": [str(y.dtype), str(dx.dtype)], "shape": list(dx.shape)}
print(json.dumps(out))
"""


def test_triton_rope_norm_matches_plain_ops():
    """rope_norm.rope_norm (rotary + QK-norm as Triton row kernels, the backward from the normed output) run in
    Triton's CPU interpreter: output and input gradient equal train.apply_rotary_emb + train.norm in float64."""
    res = _interpreted(ROPE_TRITON_SCRIPT)
    assert set(res) == {"torch.float32", "torch.float16"}
    for dtype, e in res.items():
        assert e["dtypes"] == [dtype, dtype] and e["shape"] == [3, 37, 2, 16], (dtype, e)
        tol = 1e-6 if dtype == "torch.float32" else 2e-3
        assert e["y"] < tol and e["dx"] < tol, (dtype, e)


def test_rotary_matches_upstream_form():
    """The swap form of the rotary embedding is upstream's slice-and-cat arithmetic, bit for bit."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 16, 3, 8, generator=g)
    cos, sin = torch.randn(1, 16, 1, 4, generator=g), torch.randn(1, 16, 1, 4, generator=g)
    x1, x2 = x[..., :4], x[..., 4:]
    upstream = torch.cat([x1 * cos + x2 * sin, x1 * (-sin) + x2 * cos], 3)
    assert torch.equal(train.apply_rotary_emb(x, cos, sin), upstream)


def test_reference_respects_window():
    """Changing a key outside the window must not change the output; inside it must."""
    q, k, v = _qkv(B=1, T=32, H=1, D=8)
    base = attention.attention_reference(q, k, v, 4)
    v2 = v.clone()
    v2[0, 10] += 5.0
    out = attention.attention_reference(q, k, v2, 4)
    changed = (out - base).abs().amax(dim=(0, 2, 3)) > 1e-6
    assert changed.nonzero().flatten().tolist() == [10, 11, 12, 13, 14]


def test_sdpa_window_has_no_dense_mask(monkeypatch):
    """The windowed SDPA path must never build a T x T mask, and must call SDPA with 4-D inputs
    (its fused GPU kernels take nothing else; 5-D inputs run the math path, ~8 GB of scores per layer)."""
    shapes = []
    real = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kw):
        if attn_mask is not None:
            shapes.append((q.shape, k.shape, tuple(attn_mask.shape)))
        return real(q, k, v, attn_mask=attn_mask, **kw)
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    q, k, v = _qkv(B=1, T=256, H=2, D=8)
    attention.attention_sdpa(q, k, v, 32)
    assert shapes == [((1, 16, 32, 8), (1, 16, 64, 8), (1, 16, 32, 64))]      # 2 heads x 8 blocks


def test_sdpa_window_takes_a_non_contiguous_output(monkeypatch):
    """CUDA's fp32 SDPA hands back its output in another memory layout (an H100 run in fp32 failed in .view): the
    windowed path gives the same result when SDPA's output is not contiguous."""
    q, k, v = _qkv(B=1, T=256, H=2, D=8)
    want = attention.attention_sdpa(q, k, v, 32)
    real = torch.nn.functional.scaled_dot_product_attention

    def strided(*a, **kw):
        out = real(*a, **kw)
        return out.transpose(1, 2).contiguous().transpose(1, 2)         # the same values, heads not outermost
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", strided)
    got = attention.attention_sdpa(q, k, v, 32)
    assert torch.equal(got, want) and got.shape == (1, 256, 2, 8)


def _param(shape, dtype=torch.float32, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.Parameter(torch.randn(*shape, generator=g).to(dtype))


def test_adamw_path_matches_torch_adamw():
    p1, p2 = _param((7, 5)), _param((7, 5))
    ours = train.MuonAdamW([dict(kind="adamw", params=[p1], lr=0.01, betas=(0.8, 0.95), eps=1e-10, weight_decay=0.1)])
    ref = torch.optim.AdamW([p2], lr=0.01, betas=(0.8, 0.95), eps=1e-10, weight_decay=0.1)
    g = torch.Generator().manual_seed(3)
    for _ in range(10):
        grad = torch.randn(7, 5, generator=g)
        p1.grad, p2.grad = grad.clone(), grad.clone()
        ours.step()
        ref.step()
    assert torch.allclose(p1, p2, rtol=1e-5, atol=1e-6), (p1 - p2).abs().max()


def test_fp16_parameters_get_fp32_moments():
    p = _param((4, 6), dtype=torch.float16)
    m = _param((8, 8), dtype=torch.float16)
    opt = train.MuonAdamW([dict(kind="adamw", params=[p], lr=1e-3, betas=(0.8, 0.95), eps=1e-10, weight_decay=0.0),
                           dict(kind="muon", params=[m], lr=0.02, momentum=0.95, ns_steps=5, beta2=0.95,
                                weight_decay=0.0)],
                          ortho_dtype=torch.float32)
    p.grad = torch.full_like(p, 1e-4)
    m.grad = torch.randn(8, 8).half()
    before = p.detach().clone()
    opt.step()
    assert opt.state[p]["exp_avg"].dtype == torch.float32 and opt.state[p]["exp_avg_sq"].dtype == torch.float32
    assert opt.state[m]["momentum_buffer"].dtype == torch.float32
    assert p.dtype == torch.float16 and not torch.equal(p, before)     # a 1e-3 step on fp16 weights still lands


def test_muon_output_is_near_orthogonal():
    g = torch.randn(3, 64, 32, generator=torch.Generator().manual_seed(0))
    X = train.orthogonalize(g, 5, torch.float32)
    sv = torch.linalg.svdvals(X)
    # Polar Express maps singular values into a band around 1 (not exactly 1: 5 steps)
    assert sv.min() > 0.6 and sv.max() < 1.25, (sv.min(), sv.max())
    U, S, Vh = torch.linalg.svd(g, full_matrices=False)
    cos = torch.nn.functional.cosine_similarity(X.flatten(1), (U @ Vh).flatten(1))
    assert (cos > 0.95).all()


def test_muon_step_moves_matrices_and_decays_cautiously():
    w = _param((16, 16))
    opt = train.MuonAdamW([dict(kind="muon", params=[w], lr=0.05, momentum=0.95, ns_steps=5, beta2=0.95,
                                weight_decay=0.0)],
                          ortho_dtype=torch.float32)
    before = w.detach().clone()
    w.grad = torch.randn(16, 16)
    opt.step()
    delta = (w - before).detach()
    assert 0.01 < delta.norm() / before.norm() < 1.0
    assert opt.state[w]["second_momentum_buffer"].shape == (1, 16, 1)


def _tiny_model(attention="sdpa", T=32, **shape):
    cfg = train.GPTConfig(**{"sequence_len": T, "vocab_size": 64, "n_layer": 3, "n_head": 2, "n_kv_head": 2,
                             "n_embd": 32,
                             "window_pattern": "SL", "attention": attention, **shape})
    torch.manual_seed(0)
    m = train.GPT(cfg)
    m.init_weights()
    return m


def test_fused_kernels_decided_once_in_build_config():
    """Which fused kernels the model calls is decided when its config is built, from PLATFORM: on a compiled
    Hopper run the MLP (for widths of whole 16-byte rows), rotary + QK-norm (power-of-two heads) and the loss;
    on the CPU none. The modules read the flags; nothing is re-decided in forward()."""
    h100 = {"cuda": True, "mps": False, "os": "Linux", "triton": True, "gluon": True, "world_size": 1,
            "name": "NVIDIA H100 80GB HBM3", "capability": (9, 0), "sm_count": 132, "clock_mhz": 1980}
    auto = config.ProcessorConfig(device="auto", dtype="auto", compile="auto", attention="auto", peak_flops="auto")
    hopper = hardware.resolve_platform(h100, auto)
    cpu = hardware.resolve_platform({**h100, "cuda": False}, auto)
    m = config.load_model()
    c = train.build_config(m, 256, 512, hopper)
    assert (c.attention, c.fused_mlp, c.fused_rope, c.fused_loss) == ("flex", True, True, True)
    assert train.MLP(c).fused and train.CausalSelfAttention(c, 0).fused_rope
    odd = train.build_config(dataclasses.replace(m, depth=2, aspect_ratio=18, head_dim=36), 256, 512, hopper)
    assert odd.n_embd == 36 and (odd.fused_mlp, odd.fused_rope, odd.fused_loss) == (False, False, True)
    c = train.build_config(m, 256, 512, cpu)
    assert (c.attention, c.fused_mlp, c.fused_rope, c.fused_loss) == ("sdpa", False, False, False)


def test_gqa_runs_on_every_cpu_backend():
    """Fewer k, v heads than q heads (GQA): k and v are expanded to the query heads, so the windowed SDPA
    blocks and flex take them; both agree with the reference, and k, v get gradients of their own shape."""
    ref = _tiny_model("reference", n_layer=2, n_head=4, n_kv_head=2, n_embd=64)
    with torch.no_grad():
        for b in ref.transformer.h:                         # non-zero projections so attention matters
            b.attn.c_proj.weight.normal_(0, 0.1)
            b.mlp.c_proj.weight.normal_(0, 0.1)
    assert ref.window_sizes == [16, 32] and ref.transformer.h[0].attn.c_k.weight.shape == (32, 64)
    idx = torch.randint(0, 64, (2, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out_ref = ref(idx)
    for backend in ("flex", "sdpa"):
        for blk in ref.transformer.h:
            blk.attn.backend = backend
        with torch.no_grad():
            assert torch.allclose(ref(idx), out_ref, atol=1e-4), backend
    ref(idx, idx).backward()                                # through SDPA (flex has no CPU backward)
    g = ref.transformer.h[0].attn.c_v.weight.grad
    assert g.shape == (32, 64) and g.norm() > 0


def test_model_shapes_windows_and_value_embeddings():
    m = _tiny_model()
    assert m.window_sizes == [16, 32, 32]                   # S = half, last layer always full
    assert sorted(m.value_embeds.keys()) == ["0", "2"]      # alternating, last included
    idx = torch.randint(0, 64, (2, 32))
    loss = m(idx, idx)
    assert math.isfinite(loss.item()) and abs(loss.item() - math.log(64)) < 0.5   # near-uniform at init
    per_tok = m(idx, idx, reduction="none")
    assert per_tok.shape == (64,)
    logits = m(idx)
    assert logits.abs().max() <= 15.0                       # soft-capped


def test_backends_agree_inside_the_model():
    idx = torch.randint(0, 64, (2, 32), generator=torch.Generator().manual_seed(0))
    ref = _tiny_model("reference")
    with torch.no_grad():
        for b in ref.transformer.h:                         # non-zero projections so attention matters
            b.attn.c_proj.weight.normal_(0, 0.1)
        out_ref = ref(idx)
    for backend in ("sdpa", "flex"):
        m = _tiny_model(backend)
        m.load_state_dict(ref.state_dict())
        for blk in m.transformer.h:
            blk.attn.backend = backend
        with torch.no_grad():
            assert torch.allclose(m(idx), out_ref, atol=1e-4), backend


def test_flops_estimate_counts_windows():
    m = _tiny_model()
    nparams = sum(p.numel() for p in m.parameters())
    excl = m.transformer.wte.weight.numel() + sum(v.weight.numel() for v in m.value_embeds.values()) + 6
    assert m.estimate_flops() == 6 * (nparams - excl) + 12 * 2 * 16 * (16 + 32 + 32)


def test_schedules():
    cfg = type("M", (), dict(warmup_ratio=0.0, warmdown_ratio=0.5, final_lr_frac=0.0))
    assert train.lr_multiplier(0.2, cfg) == 1.0
    assert train.lr_multiplier(0.75, cfg) == pytest.approx(0.5)
    assert train.lr_multiplier(1.0, cfg) == 0.0
    assert train.muon_momentum(0) == pytest.approx(0.85) and train.muon_momentum(300) == pytest.approx(0.95)
