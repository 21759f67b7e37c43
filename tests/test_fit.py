"""harness/fit.py off the GPU: the batch sizes it tries, and the memory cap it refuses (the probe itself runs in
tests/test_gpu.py on a capped card).

    uv run pytest tests/test_fit.py
"""

import contextlib
import dataclasses

from harness import fit


def test_candidates_halve_and_keep_the_optimizer_step():
    assert fit.candidates(128, 524288, 2048, 1) == [128, 64, 32, 16, 8, 4, 2, 1]
    assert fit.candidates(128, 524288, 2048, 4) == [64, 32, 16, 8, 4, 2, 1]      # 128 x 2048 x 4 > the step
    assert fit.candidates(96, 8192 * 3, 256, 1) == [96, 48, 24, 12, 6, 3, 1]    # each divides 24,576 / 256 = 96
    assert all(524288 % (b * 2048) == 0 for b in fit.candidates(128, 524288, 2048, 1))


def test_the_fit_runs_real_forward_backwards_and_caches(tmp_path, monkeypatch, capsys):
    """The whole probe on the CPU: train.py's model (tiny) really runs forward and backward at each size, while the
    out-of-memory error is simulated (1 GB per row past the 24 GB cap): 16 rows fit, the choice is cached, a second
    process reads it, and a card busy with other work is probed but not cached."""
    import types

    import torch

    import train
    from harness.config import load_model
    from conftest import REPO
    props = types.SimpleNamespace(total_memory=80 * 2**30)
    fake = dict(get_device_properties=lambda d: props, set_per_process_memory_fraction=lambda f, d: None,
                empty_cache=lambda: None, reset_peak_memory_stats=lambda d=None: None,
                get_device_name=lambda d=None: "Fake GPU",
                mem_get_info=lambda d=None: (80 * 2**30, 80 * 2**30), memory_reserved=lambda d=None: 0)
    for name, f in fake.items():
        monkeypatch.setattr(torch.cuda, name, f)
    monkeypatch.setenv(fit.MEMORY_ENV, "24")
    real_fits = fit.fits

    def counting(model, rows, *a):
        real_forward = model.forward

        def forward(*x, **k):                  # past the cap, the allocation fails as CUDA's would
            if rows > 24:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
            return real_forward(*x, **k)
        model.forward = forward
        try:
            return real_fits(model, rows, *a)
        finally:
            del model.forward
    monkeypatch.setattr(fit, "fits", counting)
    m = load_model(REPO / "model.json")
    cfg = train.GPTConfig(sequence_len=32, vocab_size=256, n_layer=1, n_head=1, n_kv_head=1, n_embd=32)
    model = train.build_model(cfg, torch.device("cpu"))
    cpu = torch.device("cpu")
    b, line = fit.fit_batch(model, m, 32, 1, 256, cpu, contextlib.nullcontext(), tmp_path / "fit.json")
    assert (b, line) == (16, "device_batch_size 128 -> 16: 128, 64, 32 did not fit 24 GB ($AUTORESEARCH_GPU_MEMORY_GB)"
                             " of this card's 80.0 GB (forward/backward probe; cached)")
    assert all(p.grad is None for p in model.parameters())           # the probe leaves no gradients behind
    assert fit.fit_batch(model, m, 32, 1, 256, cpu, contextlib.nullcontext(), tmp_path / "fit.json",
                         probe=False)[0] == 16                        # the warm eval's second process: the cache
    # another attention backend (or dtype) holds other activations: not the cached choice (an H100 run forced to
    # SDPA took the cuDNN run's 128 rows from the cache and ran out of memory)
    other = train.build_model(dataclasses.replace(cfg, attention="sdpa" if cfg.attention != "sdpa" else "flex"), cpu)
    assert fit.fit_batch(other, m, 32, 1, 256, cpu, contextlib.nullcontext(), tmp_path / "fit.json",
                         probe=False)[0] == 128                       # not in the cache: the requested value
    assert fit.fit_batch(model, m, 32, 1, 256, cpu, torch.autocast("cpu", torch.bfloat16), tmp_path / "fit.json",
                         probe=False)[0] == 128
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda d=None: (20 * 2**30, 80 * 2**30))
    b2, line2 = fit.fit_batch(model, m, 32, 1, 256, cpu, contextlib.nullcontext(), tmp_path / "busy.json")
    assert b2 == 16 and line2.endswith("(forward/backward probe; not cached: other processes hold memory on this "
                                       "card)") and not (tmp_path / "busy.json").exists()


def test_expected_rate_of_a_card_tier():
    """--check's tok/s range: the MFU measured on an H100 where the card is one, a wide estimate elsewhere, both
    over the model's FLOPs per token (so a bigger model.json gets a lower range)."""
    from harness.cards import expected_rate, rate_line
    fpt = 2.4e8                                       # about the default model.json at T 2048
    low, high, how = expected_rate("NVIDIA H100 80GB HBM3", 989e12, fpt)
    assert (round(low), round(high)) == (round(989e12 * 0.43 / fpt), round(989e12 * 0.45 / fpt))
    assert 1.7e6 < low < high < 1.9e6 and "measured on an H100" in how and "run300-h100" in how
    low, high, how = expected_rate("NVIDIA GeForce RTX 4090", 165.2e12, fpt)
    assert (round(low), round(high)) == (round(165.2e12 * 0.25 / fpt), round(165.2e12 * 0.45 / fpt))
    assert how.startswith("an estimate, not measured on this card class: its peak 165.2 TFLOP/s")
    assert expected_rate("NVIDIA H200", 989e12, 2 * fpt)[1] == expected_rate("NVIDIA H200", 989e12, fpt)[1] / 2
    assert rate_line("cpu", 0.0, fpt).startswith("expected tok/s: no estimate")
    assert rate_line("NVIDIA H100 80GB HBM3", 989e12, fpt).startswith("expected tok/s: 1.77M-1.85M on this card")
