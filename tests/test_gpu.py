"""GPU checks (skipped without CUDA): attention backends against the reference in bf16 (cuDNN
through cudnn-frontend and FA4 where they load: outputs, gradients, compiled), the loss kernels, the fused
ReLU^2 MLP (CC >= 9.0: bf16/fp16 against float64, and inside a compiled model), the optimizer's
uncompiled steps on CUDA against the same steps on the CPU.

    uv run pytest tests/test_gpu.py          # on a CUDA machine
    python3 tests/test_gpu.py                # same checks without pytest
"""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import train  # noqa: E402
from harness import attention  # noqa: E402
from harness.fused import cudnn_attention, fa4_attention, relu2_gluon, relu2_mlp, rope_norm, softcap_loss  # noqa: E402

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _qkv(B=4, T=512, H=4, D=128, dtype=torch.bfloat16, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    return [torch.randn(B, T, H, D, device="cuda", generator=g).to(dtype) for _ in range(3)]


def _need(backend):
    if backend == "cudnn" and cudnn_attention.load_cudnn_frontend()[0] is None:
        pytest.skip(cudnn_attention.load_cudnn_frontend()[1])
    if backend == "fa4":
        if torch.cuda.get_device_capability()[0] not in (9, 10):
            pytest.skip("FA4 runs on CC 9.x and 10.x")
        if fa4_attention.load_fa4()[0] is None:
            pytest.skip(fa4_attention.load_fa4()[1])


@pytest.mark.parametrize("backend", ["sdpa", "flex", "cudnn", "fa4"])
@pytest.mark.parametrize("window", [511, 256, 100, 7])
def test_backends_match_reference_bf16(backend, window):
    _need(backend)
    q, k, v = _qkv(seed=window)
    ref = attention.attention_reference(q.double(), k.double(), v.double(), window)
    out = attention.BACKENDS[backend](q, k, v, window)
    rel = ((out.double() - ref).norm() / ref.norm()).item()
    assert rel < 1e-2, f"{backend} window {window}: {rel:.2e}"


def test_flex_gradients_match_reference():
    q, k, v = (t.float().requires_grad_() for t in _qkv(B=2, T=256, dtype=torch.float32))
    out = attention.attention_flex(q, k, v, 64)
    out.square().sum().backward()
    grads = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    attention.attention_reference(q, k, v, 64).square().sum().backward()
    for g, t in zip(grads, (q, k, v)):
        assert ((g - t.grad).norm() / t.grad.norm()).item() < 1e-2


def _grads(fn, q, k, v, g):
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    out = fn(q, k, v)
    out.backward(g)
    return out.double(), [t.grad.double() for t in (q, k, v)]


@pytest.mark.parametrize("backend", ["cudnn", "fa4"])
@pytest.mark.parametrize("window", [255, 100, 7])
def test_fused_gradients_match_reference(backend, window):
    """bf16 cuDNN / FA4 forward and backward (eager, then compiled) against the float64 reference; a band
    one key too wide or too narrow would move window 7's output by ~10%."""
    _need(backend)
    backend_fn = attention.BACKENDS[backend]
    q, k, v = _qkv(B=2, T=256, seed=window + 1)
    g = torch.randn_like(q)
    ref, ref_grads = _grads(lambda *t: attention.attention_reference(*t, window), q.double(), k.double(), v.double(),
                            g.double())
    for name, fn in (("eager", backend_fn), ("compiled", torch.compile(backend_fn, fullgraph=True))):
        out, grads = _grads(lambda *t: fn(*t, window), q, k, v, g)
        errs = [((a - b).norm() / b.norm()).item() for a, b in zip([out, *grads], [ref, *ref_grads])]
        assert max(errs) < 2e-2, f"{backend} {name} window {window}: out/dq/dk/dv rel errors {errs}"


def test_cudnn_refusal_falls_back():
    """The start-up check builds real cuDNN graphs: the default shape passes, a head_dim cuDNN cannot
    take (1024) moves the platform to flex with the reason."""
    _need("cudnn")
    ok = {"attention": "cudnn", "dtype": "bfloat16", "compile": True, "reasons": {}}
    assert attention.confirm_attention(ok, (8, 2048, 4, 128), [1024, 2048], torch.device("cuda")) == (ok, None)
    bad = {"attention": "cudnn", "dtype": "bfloat16", "compile": True, "reasons": {}}
    changed, line = attention.confirm_attention(bad, (2, 256, 1, 1024), [64, 256], torch.device("cuda"))
    assert line.startswith("attention: cudnn -> flex: cuDNN cannot build attention for B=2 T=256 H=1 D=1024 (")
    assert changed["attention"] == "flex" and bad["attention"] == "cudnn"


def test_fa4_start_up_check_runs_the_kernels():
    """FA4's start-up check runs its kernels at the model's shape (both kinds of layer): it passes and leaves
    the kernels compiled, so the first training step finds them."""
    _need("fa4")
    ok = {"attention": "fa4", "dtype": "bfloat16", "compile": True, "reasons": {}}
    assert attention.confirm_attention(ok, (2, 2048, 4, 128), [1024, 2048], torch.device("cuda")) == (ok, None)


def test_triton_cross_entropy_matches_torch():
    """The CUDA loss kernels (hardware tanh.approx) against F.cross_entropy on float32 softcapped logits,
    at the model's vocabulary, bf16 logits, ignored targets included."""
    g = torch.Generator(device="cuda").manual_seed(0)
    logits = (torch.randn(4096, 8192, device="cuda", generator=g) * 8).bfloat16().requires_grad_()
    targets = torch.randint(0, 8192, (4096,), device="cuda", generator=g)
    targets[::7] = -1
    rows = softcap_loss.softcap_cross_entropy_rows(logits, targets, 15)
    loss = rows.sum() / (targets != -1).sum()
    loss.backward()
    got = logits.grad.float()
    logits.grad = None
    ref = torch.nn.functional.cross_entropy(15 * torch.tanh(logits.float() / 15), targets, ignore_index=-1)
    ref.backward()
    assert abs(loss.item() - ref.item()) < 1e-4 * ref.item(), (loss.item(), ref.item())
    assert rows[::7].abs().max().item() == 0.0 and got[::7].abs().max().item() == 0.0
    assert ((got - logits.grad.float()).norm() / logits.grad.float().norm()).item() < 2e-2


def _need_fused_mlp():
    if torch.cuda.get_device_capability() < (9, 0):
        pytest.skip("the fused MLP needs CC >= 9.0 (TMA)")


@pytest.mark.parametrize("kernel", ["triton", "gluon"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows,d", [(3000, 512), (1000, 384), (700, 40)])
def test_fused_mlp_matches_reference(kernel, dtype, rows, d):
    """relu2_mlp (Triton or, on Hopper, Gluon matmuls, activation in the epilogues) against float64 plain ops:
    output and the three gradients; rows, the reduction width and the inner width (4d = 1536, 160) not
    multiples of the tiles, d = 40 narrower than the prefetch depth of the Gluon kernel."""
    _need_fused_mlp()
    gate = relu2_gluon.GluonGate(forward=True) if kernel == "gluon" else None
    if gate and not gate.usable(torch.device("cuda"), backward=True):
        pytest.skip("the Gluon kernels need Hopper (wgmma) and triton with Gluon")
    g = torch.Generator(device="cuda").manual_seed(rows)
    x = torch.randn(rows, d, device="cuda", generator=g).to(dtype).requires_grad_()
    w_fc = (torch.randn(4 * d, d, device="cuda", generator=g) / d ** 0.5).to(dtype).requires_grad_()
    w_proj = (torch.randn(d, 4 * d, device="cuda", generator=g) / (4 * d) ** 0.5).to(dtype).requires_grad_()
    dy = torch.randn(rows, d, device="cuda", generator=g).to(dtype)
    with relu2_mlp.kernel_choice(gate):
        y = relu2_mlp.relu2_mlp(x, w_fc, w_proj)
        got = [y, *torch.autograd.grad(y, (x, w_fc, w_proj), dy)]
    assert gate is None or (gate.enabled and len(gate.checked) == 2), "the Gluon kernels did not run"
    ref_in = [t.detach().double().requires_grad_() for t in (x, w_fc, w_proj)]
    ref_y = torch.relu(ref_in[0] @ ref_in[1].t()).square() @ ref_in[2].t()
    ref = [ref_y, *torch.autograd.grad(ref_y, ref_in, dy.double())]
    for name, a, b in zip(("y", "dx", "dw_fc", "dw_proj"), got, ref):
        assert a.dtype == dtype and a.shape == b.shape
        rel = ((a.double() - b).norm() / b.norm()).item()
        assert rel < 1e-2, f"{name} {dtype} rows {rows} d {d}: {rel:.2e}"


def test_fused_mlp_in_compiled_model():
    """A compiled model with the fused MLP gives the plain model's loss and gradients under bf16 autocast."""
    _need_fused_mlp()
    losses, grads = [], []
    for mlp in ("plain", "triton"):
        torch.manual_seed(0)
        cfg = train.GPTConfig(sequence_len=256, vocab_size=512, n_layer=2, n_head=2, n_kv_head=2, n_embd=256,
                              window_pattern="SL", attention="sdpa", fused_mlp=mlp == "triton")
        model = train.GPT(cfg).cuda()
        model.init_weights()
        for mod in model.modules():                      # init_weights zeroes c_proj; give the MLP a gradient path
            if isinstance(mod, train.MLP):
                torch.nn.init.normal_(mod.c_proj.weight, std=0.02)
        assert all(b.mlp.fused == (mlp == "triton") for b in model.transformer.h)
        compiled = torch.compile(model, dynamic=False)
        idx = torch.randint(0, 512, (4, 256), device="cuda", generator=torch.Generator(device="cuda").manual_seed(1))
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = compiled(idx, idx.roll(-1, 1))
        loss.backward()
        losses.append(loss.item())
        grads.append(torch.cat([b.mlp.c_fc.weight.grad.flatten() for b in model.transformer.h]))
    assert abs(losses[0] - losses[1]) < 2e-3 * losses[0], losses
    assert ((grads[0] - grads[1]).norm() / grads[0].norm()).item() < 3e-2


@pytest.mark.parametrize("shape", [(4, 512, 4, 128), (2, 100, 3, 64)])
def test_rope_norm_matches_reference(shape):
    """rope_norm.rope_norm on bf16 against apply_rotary_emb + norm in float64: output and input gradient."""
    g = torch.Generator(device="cuda").manual_seed(shape[1])
    x = torch.randn(*shape, device="cuda", generator=g).to(torch.bfloat16).requires_grad_()
    cos, sin = (torch.randn(1, 4 * shape[1], 1, shape[3] // 2, device="cuda", generator=g)[:, :shape[1]]
                .to(torch.bfloat16)
                for _ in range(2))
    dy = torch.randn(*shape, device="cuda", generator=g).to(torch.bfloat16)
    y = rope_norm.rope_norm(x, cos, sin)
    dx, = torch.autograd.grad(y, x, dy)
    xd = x.detach().double().requires_grad_()
    ref = train.norm(train.apply_rotary_emb(xd, cos.double(), sin.double()))
    rdx, = torch.autograd.grad(ref, xd, dy.double())
    assert y.dtype == dx.dtype == torch.bfloat16
    assert ((y.double() - ref).norm() / ref.norm()).item() < 1e-2
    assert ((dx.double() - rdx).norm() / rdx.norm()).item() < 1e-2


def test_compiled_model_same_with_rope_kernels():
    """A compiled model gives the same loss and gradients with the rope_norm kernels as with plain ops."""
    losses, grads = [], []
    for fused in (False, True):
        torch.manual_seed(0)
        cfg = train.GPTConfig(sequence_len=256, vocab_size=512, n_layer=2, n_head=2, n_kv_head=2, n_embd=256,
                              window_pattern="SL", attention="sdpa", fused_rope=fused)
        model = train.GPT(cfg).cuda()
        model.init_weights()
        for mod in model.modules():
            if isinstance(mod, train.CausalSelfAttention):
                torch.nn.init.normal_(mod.c_proj.weight, std=0.02)      # init_weights zeroes it: give q, k a gradient
        compiled = torch.compile(model, dynamic=False)
        idx = torch.randint(0, 512, (4, 256), device="cuda", generator=torch.Generator(device="cuda").manual_seed(1))
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = compiled(idx, idx.roll(-1, 1))
        loss.backward()
        losses.append(loss.item())
        grads.append(torch.cat([b.attn.c_q.weight.grad.flatten() for b in model.transformer.h]))
    assert abs(losses[0] - losses[1]) < 2e-3 * losses[0], losses
    assert grads[0].norm() > 0 and ((grads[0] - grads[1]).norm() / grads[0].norm()).item() < 3e-2


def test_optimizer_steps_on_cuda_match_the_cpu():
    """MuonAdamW's steps run uncompiled: on CUDA (0-d CPU scalars into CUDA kernels, bf16 moments for a bf16
    parameter) three steps land where the same steps land on the CPU (fp32 orthogonalization on both: bf16's
    rounding would differ between the devices' matmuls)."""
    g = torch.Generator().manual_seed(0)
    init = [torch.randn(256, 128, generator=g), torch.randn(256, 128, generator=g),
            (0.01 * torch.randn(64, 32, generator=g)).bfloat16(), torch.randn(8, generator=g)]
    grads = [[torch.randn(w.shape, generator=g).to(w.dtype) for w in init] for _ in range(3)]
    out = {}
    for device in ("cpu", "cuda"):
        ws = [torch.nn.Parameter(w.clone().to(device)) for w in init]
        opt = train.MuonAdamW([
            dict(kind="muon", params=ws[:2], lr=0.02, momentum=0.95, ns_steps=5, beta2=0.95, weight_decay=0.1),
            dict(kind="adamw", params=ws[2:3], lr=0.01, betas=(0.8, 0.95), eps=1e-10, weight_decay=0.0),
            dict(kind="adamw", params=ws[3:], lr=0.5, betas=(0.96, 0.95), eps=1e-10, weight_decay=0.0)],
            ortho_dtype=torch.float32)
        for step in grads:
            for w, gr in zip(ws, step):
                w.grad = gr.to(device)
            opt.step()
        out[device] = [w.detach().float().cpu() for w in ws]
    errors = [((a - b).norm() / (a - w.float()).norm()).item() for a, b, w in zip(out["cpu"], out["cuda"], init)]
    assert max(errors[:2]) < 1e-2 and errors[2] < 2e-2 and errors[3] < 1e-5, errors


def test_the_batch_fit_halves_until_a_capped_card_holds_it(tmp_path, monkeypatch):
    """harness/fit.py on a 12 GB cap of this card: a model whose 64-row forward/backward needs more is trained at
    fewer rows (total_batch_size unchanged), and the choice is cached for the next run."""
    import dataclasses as dc
    from harness import fit
    from harness.config import load_model
    monkeypatch.setenv(fit.MEMORY_ENV, "12")
    m = dc.replace(load_model(Path(__file__).resolve().parents[1] / "model.json"), device_batch_size=64)
    model = train.build_model(train.GPTConfig(n_layer=m.depth), torch.device("cuda"))
    autocast = torch.autocast("cuda", dtype=torch.bfloat16)
    b, line = fit.fit_batch(model, m, 2048, 1, 8192, torch.device("cuda"), autocast, tmp_path / "fit.json")
    assert b < 64 and m.total_batch_size % (b * 2048) == 0 and "did not fit 12 GB" in line, line
    again, line2 = fit.fit_batch(model, m, 2048, 1, 8192, torch.device("cuda"), autocast, tmp_path / "fit.json")
    assert again == b and "(cached probe)" in line2
    torch.cuda.set_per_process_memory_fraction(1.0)


if __name__ == "__main__":
    n = 0
    for backend in ("sdpa", "flex", "cudnn", "fa4"):
        try:
            _need(backend)
        except pytest.skip.Exception as e:
            print(f"{backend} checks skipped: {e}")
            continue
        for window in (511, 256, 100, 7):
            test_backends_match_reference_bf16(backend, window)
            n += 1
        if backend in ("cudnn", "fa4"):
            for window in (255, 100, 7):
                test_fused_gradients_match_reference(backend, window)
                n += 1
            (test_cudnn_refusal_falls_back if backend == "cudnn" else test_fa4_start_up_check_runs_the_kernels)()
            n += 1
    test_flex_gradients_match_reference()
    test_triton_cross_entropy_matches_torch()
    test_optimizer_steps_on_cuda_match_the_cpu()
    for shape in ((4, 512, 4, 128), (2, 100, 3, 64)):
        test_rope_norm_matches_reference(shape)
    test_compiled_model_same_with_rope_kernels()
    n += 6
    if torch.cuda.get_device_capability() >= (9, 0):
        for kernel in ("triton", "gluon"):
            for dtype in (torch.bfloat16, torch.float16):
                for rows, d in ((3000, 512), (1000, 384), (700, 40)):
                    try:
                        test_fused_mlp_matches_reference(kernel, dtype, rows, d)
                    except pytest.skip.Exception as e:
                        print(f"fused MLP {kernel} skipped: {e}")
                        continue
                    n += 1
        test_fused_mlp_in_compiled_model()
        n += 1
    print(f"GPU checks: {n} passed, 0 failed")
