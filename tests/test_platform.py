"""PLATFORM from fake device properties (no GPU needed): every row of the README's table against its expected
dtype, scaler, attention, compile and kernels; overrides, fallbacks and their printed reasons.

    uv run pytest tests/test_platform.py
"""

import dataclasses
import os

import pytest
import torch

from harness import attention, config, hardware, settings

AUTO = config.ProcessorConfig(device="auto", dtype="auto", compile="auto", attention="auto", peak_flops="auto")


def hw(cc=None, name="", sms=0, clock=None, triton=True, os_name="Linux", fa3=None, mps=False, cudnn=None, gluon=False,
       fa4=None, cxx=True):
    h = {"cuda": cc is not None, "mps": mps, "os": os_name, "triton": triton, "gluon": gluon, "world_size": 1,
         "cxx": cxx}
    if cc is not None:
        h.update(name=name, capability=cc, sm_count=sms, clock_mhz=clock)
    if fa3 is not None:
        h["fa3"] = fa3
    if cudnn is not None:
        h["cudnn"] = cudnn
    if fa4 is not None:
        h["fa4"] = fa4
    return h


CUDNN_OK = (True, "cudnn-frontend 1.28.0 on cuDNN 91900")
FA4_OK = (True, "flash-attn-4 4.0.0b36")


def proc(**kw):
    return dataclasses.replace(AUTO, **kw)


ROWS = [
    # name, hw, expected (dtype, scaler, attention, compile, embedding_dtype, ortho_dtype, mlp)
    ("H100 with FA3", hw((9, 0), "NVIDIA H100 80GB HBM3", 132, 1980, fa3=(True, "FA3 loaded")),
     ("bfloat16", False, "fa3", True, "bfloat16", "bfloat16", "triton")),
    ("H100 offline", hw((9, 0), "NVIDIA H100 80GB HBM3", 132, 1980, fa3=(False, "not loadable offline")),
     ("bfloat16", False, "flex", True, "bfloat16", "bfloat16", "triton")),
    ("B200", hw((10, 0), "NVIDIA B200", 148, 1965, fa3=(False, "x")), ("bfloat16", False, "flex", True, "bfloat16",
                                                                       "bfloat16", "triton")),
    ("A100", hw((8, 0), "NVIDIA A100-SXM4-80GB", 108, 1410), ("bfloat16", False, "flex", True, "bfloat16", "bfloat16",
                                                              "plain")),
    ("RTX 4090", hw((8, 9), "NVIDIA GeForce RTX 4090", 128, 2520), ("bfloat16", False, "flex", True, "bfloat16",
                                                                    "bfloat16", "plain")),
    ("V100", hw((7, 0), "Tesla V100-SXM2-16GB", 80, 1530), ("float16", True, "sdpa", False, "float32", "float32",
                                                            "plain")),
    ("T4", hw((7, 5), "Tesla T4", 40, 1590), ("float16", True, "sdpa", False, "float32", "float32", "plain")),
    ("A100 no triton", hw((8, 0), "NVIDIA A100", 108, 1410, triton=False), ("bfloat16", False, "sdpa", False,
                                                                            "bfloat16", "bfloat16", "plain")),
    ("A100 on Windows", hw((8, 0), "NVIDIA A100", 108, 1410, os_name="Windows"), ("bfloat16", False, "sdpa", False,
                                                                                  "bfloat16", "bfloat16", "plain")),
    ("MPS", hw(mps=True, os_name="Darwin"), ("float32", False, "sdpa", False, "float32", "float32", "plain")),
    ("CPU", hw(), ("float32", False, "sdpa", False, "float32", "float32", "plain")),
    ("H100 offline, cudnn-frontend", hw((9, 0), "NVIDIA H100 80GB HBM3", 132, 1980, fa3=(False, "x"), cudnn=CUDNN_OK),
     ("bfloat16", False, "cudnn", True, "bfloat16", "bfloat16", "triton")),
    ("H100 with FA3 and cudnn-frontend", hw((9, 0), "NVIDIA H100", 132, 1980, fa3=(True, "FA3 loaded"), cudnn=CUDNN_OK),
     ("bfloat16", False, "fa3", True, "bfloat16", "bfloat16", "triton")),
    ("A100 with cudnn-frontend", hw((8, 0), "NVIDIA A100", 108, 1410, cudnn=CUDNN_OK),
     ("bfloat16", False, "flex", True, "bfloat16", "bfloat16", "plain")),
    ("H100 with FA4, FA3 and cudnn-frontend", hw((9, 0), "NVIDIA H100", 132, 1980, fa3=(True, "FA3 loaded"),
                                                 cudnn=CUDNN_OK, fa4=FA4_OK),
     ("bfloat16", False, "fa4", True, "bfloat16", "bfloat16", "triton")),
    ("B200 with FA4", hw((10, 0), "NVIDIA B200", 148, 1965, fa3=(False, "x"), fa4=FA4_OK),
     ("bfloat16", False, "fa4", True, "bfloat16", "bfloat16", "triton")),
    ("RTX 5090 with FA4 installed", hw((12, 0), "NVIDIA GeForce RTX 5090", 170, 2407, fa4=FA4_OK),
     ("bfloat16", False, "flex", True, "bfloat16", "bfloat16", "triton")),
    ("A100 with FA4 installed", hw((8, 0), "NVIDIA A100", 108, 1410, fa4=FA4_OK),
     ("bfloat16", False, "flex", True, "bfloat16", "bfloat16", "plain")),
    ("RTX 3090", hw((8, 6), "NVIDIA GeForce RTX 3090", 82, 1695), ("bfloat16", False, "flex", True, "bfloat16",
                                                                   "bfloat16", "plain")),
]


@pytest.mark.parametrize("name,h,expected", ROWS, ids=[r[0] for r in ROWS])
def test_platform_table(name, h, expected):
    p = hardware.resolve_platform(h, AUTO)
    got = (p["dtype"], p["use_grad_scaler"], p["attention"], p["compile"], p["embedding_dtype"], p["ortho_dtype"],
           p["mlp"])
    assert got == expected
    row_kernels = "triton" if p["compile"] else "plain"            # rope + loss kernels: compiled CUDA runs only
    assert (p["rope"], p["loss"]) == (row_kernels, row_kernels)
    assert set(p["reasons"]) >= {"device", "dtype", "use_grad_scaler", "embedding_dtype", "attention", "mlp", "rope",
                                 "loss",
                                 "compile", "peak_flops"}
    assert all(isinstance(v, str) and v for v in p["reasons"].values())


def test_device_names():
    assert hardware.resolve_platform(ROWS[0][1], AUTO)["device"] == "cuda"
    assert hardware.resolve_platform(hw(mps=True), AUTO)["device"] == "mps"
    assert hardware.resolve_platform(hw(), AUTO)["device"] == "cpu"


def test_offline_fa3_fallback_reason_is_printed():
    p = hardware.resolve_platform(ROWS[1][1], AUTO)
    assert p["reasons"]["attention"] == "CC 9.0 with triton (FA3 not loadable: not loadable offline)"
    p = hardware.resolve_platform(ROWS[1][1], proc(attention="fa3"))
    assert p["attention"] == "flex"
    assert p["reasons"]["attention"] == "fa3 requested but not loadable (not loadable offline); falling back to flex"


def test_cudnn_choice_and_fallbacks():
    """cuDNN is chosen on Hopper+ when cudnn-frontend loads (and FA3 does not); forcing it where it cannot
    run falls back with the reason; forcing it on an Ampere card where it loads is honoured."""
    h100 = hw((9, 0), "NVIDIA H100 80GB HBM3", 132, 1980, fa3=(False, "not loadable offline"), cudnn=CUDNN_OK)
    p = hardware.resolve_platform(h100, AUTO)
    assert p["reasons"]["attention"] == ("Hopper+: cudnn-frontend 1.28.0 on cuDNN 91900, windows on cuDNN's fused "
                                         "kernel (FA4: not probed; FA3 not loadable: not loadable offline)")
    missing = dict(h100, cudnn=(False, "cudnn-frontend not loadable (ModuleNotFoundError: No module named 'cudnn')"))
    assert hardware.resolve_platform(missing, AUTO)["attention"] == "flex"
    p = hardware.resolve_platform(missing, proc(attention="cudnn"))
    assert (p["attention"], p["reasons"]["attention"]) == ("flex", "cudnn requested but not usable (cudnn-frontend not "
                                                           "loadable (ModuleNotFoundError: No module named 'cudnn')); "
                                                           "falling back to flex")
    p = hardware.resolve_platform(h100, proc(attention="cudnn", dtype="float32"))
    assert (p["attention"], p["reasons"]["attention"]) == \
        ("flex", "cudnn requested but not usable (needs CUDA and bf16/fp16, have cuda float32); falling back to flex")
    p = hardware.resolve_platform(h100, proc(attention="cudnn", device="cpu"))
    assert p["attention"] == "sdpa" and p["reasons"]["attention"].endswith("have cpu float32); falling back to sdpa")
    p = hardware.resolve_platform(hw((8, 0), "NVIDIA A100", 108, 1410, cudnn=CUDNN_OK), proc(attention="cudnn"))
    assert (p["attention"], p["reasons"]["attention"]) == ("cudnn", "forced by ground.json (cudnn-frontend 1.28.0 on "
                                                                    "cuDNN 91900)")
    p = hardware.resolve_platform(dict(h100, cudnn=CUDNN_OK), proc(dtype="float16"))
    assert (p["attention"], p["use_grad_scaler"]) == ("cudnn", True)


def test_peak_flops_from_table():
    # 132 SMs x 1830 MHz x 4096
    assert hardware.resolve_platform(ROWS[0][1], AUTO)["peak_flops"] == pytest.approx(989.4e12, rel=1e-3)
    assert hardware.resolve_platform(ROWS[3][1], AUTO)["peak_flops"] == pytest.approx(311.9e12, rel=1e-3)
    assert hardware.resolve_platform(ROWS[5][1], AUTO)["peak_flops"] == pytest.approx(125.3e12, rel=1e-3)
    assert hardware.resolve_platform(ROWS[6][1], AUTO)["peak_flops"] == pytest.approx(65.1e12, rel=1e-3)
    # no spec clock for a 4090: the device's max clock is used
    assert hardware.resolve_platform(ROWS[4][1], AUTO)["peak_flops"] == pytest.approx(512 * 128 * 2520e6)
    # consumer cards: dense 16-bit tensor FLOPs with fp32 accumulation (NVIDIA's datasheets: 71, 165.2, 209.5)
    for card, tflops in (("RTX 3090", 71.2), ("RTX 4090", 165.2), ("RTX 5090 with FA4 installed", 209.5)):
        assert hardware.resolve_platform(next(r[1] for r in ROWS if r[0] == card),
                                         AUTO)["peak_flops"] / 1e12 == pytest.approx(tflops, abs=0.1), card
    h200 = hw((9, 0), "NVIDIA H200", 132, 1980, fa3=(False, "x"))
    assert hardware.resolve_platform(h200, AUTO)["peak_flops"] == pytest.approx(989.4e12, rel=1e-3)
    unknown = hw((6, 1), "GTX 1080", 20, 1700)
    p = hardware.resolve_platform(unknown, AUTO)
    assert p["peak_flops"] == 0.0 and "MFU reported as 0" in p["reasons"]["peak_flops"]
    assert hardware.resolve_platform(hw(), AUTO)["peak_flops"] == 0.0


def test_overrides_win():
    h = ROWS[1][1]
    p = hardware.resolve_platform(h, proc(dtype="float16", attention="sdpa", compile=False, peak_flops=5e14))
    assert (p["dtype"], p["use_grad_scaler"], p["embedding_dtype"], p["attention"], p["compile"], p["peak_flops"]) == \
        ("float16", True, "float32", "sdpa", False, 5e14)
    assert p["reasons"]["dtype"] == "forced by ground.json processor.dtype"
    p = hardware.resolve_platform(h, proc(device="cpu"))
    assert (p["device"], p["dtype"], p["attention"]) == ("cpu", "float32", "sdpa")
    # compile forced on but triton missing: falls back with a reason, never crashes
    p = hardware.resolve_platform(hw((8, 0), "NVIDIA A100", 108, 1410, triton=False), proc(compile=True,
                                                                                           attention="flex"))
    assert p["compile"] is False and p["reasons"]["compile"] == "requested but unavailable: triton missing"
    assert p["attention"] == "sdpa" and "falling back to sdpa" in p["reasons"]["attention"]
    # on the CPU compile is off by default and on when asked for (inductor's C++ backend), without the CUDA kernels
    p = hardware.resolve_platform(hw(), AUTO)
    assert p["compile"] is False and p["reasons"]["compile"].startswith("off: cpu (a new graph's compile costs")
    p = hardware.resolve_platform(hw(), proc(compile=True))
    assert (p["device"], p["compile"], p["reasons"]["compile"]) == ("cpu", True, "forced by ground.json (inductor's "
                                                                                 "C++ backend)")
    assert (p["attention"], p["mlp"], p["rope"], p["loss"]) == ("sdpa", "plain", "plain", "plain")
    p = hardware.resolve_platform(hw(cxx=False), proc(compile=True))     # inductor's CPU backend needs one
    assert p["compile"] is False and p["reasons"]["compile"] == ("requested but unavailable: cpu: no C++ compiler "
                                                                 "(g++, c++, clang++ or $CXX) for inductor")


def test_fused_mlp_follows_dtype_and_triton():
    """The fused MLP runs where its Triton matmuls do: CUDA CC >= 9.0, triton, a 16-bit dtype; fp16 forced keeps it."""
    h100 = ROWS[1][1]
    p = hardware.resolve_platform(h100, proc(dtype="float16"))
    assert p["mlp"] == "triton" and p["reasons"]["mlp"] == "CC 9.0 with triton: ReLU^2 in the matmul epilogues (TMA)"
    p = hardware.resolve_platform(hw((9, 0), "NVIDIA H100", 132, 1980, gluon=True), AUTO)
    assert (p["reasons"]["mlp"]
            == "CC 9.0 with triton: ReLU^2 in the matmul epilogues (TMA; backward matmul in Gluon (wgmma))")
    p = hardware.resolve_platform(hw((10, 0), "NVIDIA B200", 148, 1965, gluon=True), AUTO)     # wgmma is Hopper's alone
    assert p["mlp"] == "triton" and p["reasons"]["mlp"] == "CC 10.0 with triton: ReLU^2 in the matmul epilogues (TMA)"
    p = hardware.resolve_platform(h100, proc(dtype="float32"))
    assert p["mlp"] == "plain"
    assert (p["reasons"]["mlp"]
            == "plain ops: the fused MLP needs CUDA CC >= 9.0, triton and bf16/fp16 (here cuda CC 9.0, float32)")
    p = hardware.resolve_platform(hw((9, 0), "NVIDIA H100", 132, 1980, triton=False), AUTO)
    assert p["mlp"] == "plain" and p["reasons"]["mlp"].endswith("(here cuda CC 9.0, bfloat16)")
    assert hardware.resolve_platform(hw(), AUTO)["reasons"]["mlp"].endswith("(here cpu, float32)")


def test_missing_device_is_a_config_error():
    with pytest.raises(config.ConfigError) as e:
        hardware.resolve_platform(hw(), proc(device="cuda"))
    assert str(e.value) == "ground.json: key 'processor.device': \"cuda\" requested but torch sees no CUDA device"


def test_fa3_loader_never_raises_offline(monkeypatch):
    settings.reset()                                   # forgets loaded kernels; tests have no network
    mod, why = hardware.load_fa3((9, 0), timeout_s=0.1)
    assert mod is None and ("not loadable" in why or "not installed" in why)


def test_platform_lines_show_reasons():
    p = hardware.resolve_platform(ROWS[0][1], AUTO)
    lines = hardware.platform_lines(p)
    assert lines[0] == "platform: NVIDIA H100 80GB HBM3 (CC 9.0)"
    assert any(line.strip().startswith("attention        fa3  (Hopper+: FA3 loaded)") for line in lines)


def test_cudnn_shape_refusal_falls_back_with_reason():
    """train.py builds the cuDNN graphs before compiling; a shape cuDNN refuses moves the run to flex
    (or sdpa without compile) and says why, instead of crashing the experiment mid-step. The decision
    is returned (a changed copy of PLATFORM), never written into the cached one."""
    h100 = hw((9, 0), "NVIDIA H100 80GB HBM3", 132, 1980, fa3=(False, "x"), cudnn=CUDNN_OK)
    built = []
    p = hardware.resolve_platform(h100, AUTO)
    p["dtype"] = "float32"                        # the probe tensor is made on this CPU
    cpu = torch.device("cpu")
    def record(kind, q, w):
        built.append((kind, tuple(q.shape), w))
    assert attention.confirm_attention(p, (4, 2048, 4, 128), [1024, 1024, 1024, 2048], cpu, build=record) == (p, None)
    assert built == [("fwd", (4, 2048, 4, 128), 1024), ("bwd", (4, 2048, 4, 128), 1024)] and p["attention"] == "cudnn"

    def refuse(kind, q, w):
        raise RuntimeError("No valid execution plans built.")
    changed, line = attention.confirm_attention(p, (4, 2048, 4, 320), [1024, 2048], cpu, build=refuse)
    why = "cuDNN cannot build attention for B=4 T=2048 H=4 D=320 (RuntimeError: No valid execution plans built.)"
    assert line == f"attention: cudnn -> flex: {why}"
    assert (changed["attention"], changed["reasons"]["attention"]) == ("flex", f"{why}; falling back to flex")
    assert p["attention"] == "cudnn" and p["reasons"]["attention"].startswith("Hopper+: cudnn-frontend")   # untouched
    p2 = dict(hardware.resolve_platform(h100, proc(compile=False)), dtype="float32")
    assert attention.confirm_attention(p2, (4, 2048, 4, 320), [1024], cpu,
                                      build=refuse)[1].startswith("attention: cudnn -> sdpa: ")
    a100 = hardware.resolve_platform(ROWS[1][1], AUTO)
    assert attention.confirm_attention(a100, (4, 2048, 4, 320), [1024], cpu, build=refuse) == (a100, None)


def test_fa4_choice_fallbacks_and_refusal(monkeypatch):
    """FA4 is chosen on Hopper/Blackwell when flash-attn-4 imports, and says so; forced where it cannot run
    (not installed, Ampere, float32) it falls back with the reason; when its start-up run fails at the
    model's shape the run moves to cuDNN (whose graphs are then built), or to flex without cudnn-frontend."""
    h100 = hw((9, 0), "NVIDIA H100 80GB HBM3", 132, 1980, fa3=(False, "x"), cudnn=CUDNN_OK, fa4=FA4_OK)
    p = hardware.resolve_platform(h100, AUTO)
    assert (p["attention"], p["reasons"]["attention"]) == ("fa4", "CC 9.0: flash-attn-4 4.0.0b36 (faster than "
                                                                  "cuDNN, measured)")
    missing = dict(h100, fa4=(False, "flash-attn-4 not loadable (ModuleNotFoundError: No module named 'flash_attn')"))
    p = hardware.resolve_platform(missing, proc(attention="fa4"))
    assert (p["attention"], p["reasons"]["attention"]) == (
        "cudnn", "fa4 requested but not usable (flash-attn-4 not loadable (ModuleNotFoundError: No module named "
                 "'flash_attn')); falling back to cudnn")
    a100 = hw((8, 0), "NVIDIA A100", 108, 1410, fa4=FA4_OK)
    p = hardware.resolve_platform(a100, proc(attention="fa4"))
    assert (p["attention"], p["reasons"]["attention"]) == (
        "flex", "fa4 requested but not usable (needs CUDA CC 9.x or 10.x and bf16/fp16, have cuda bfloat16); "
                "falling back to flex")
    p = hardware.resolve_platform(h100, proc(attention="fa4", dtype="float32"))
    assert p["attention"] == "flex" and "have cuda float32" in p["reasons"]["attention"]
    assert hardware.resolve_platform(h100, proc(attention="fa4"))["reasons"]["attention"] == \
        "forced by ground.json (flash-attn-4 4.0.0b36)"

    p = dict(hardware.resolve_platform(h100, AUTO), dtype="float32")
    cpu, built, warmed = torch.device("cpu"), [], []
    def warm(shape, dtype, windows, device):
        warmed.append((shape, dtype, windows))
    assert attention.confirm_attention(p, (4, 2048, 4, 128), [1024, 2048], cpu, warm_fa4=warm) == (p, None)
    assert warmed == [((4, 2048, 4, 128), torch.float32, [1024, 2048])]

    def fail(shape, dtype, windows, device):
        raise RuntimeError("head_dim 320 not supported")
    def record(kind, q, w):
        built.append((kind, w))
    changed, line = attention.confirm_attention(p, (4, 2048, 4, 320), [1024, 2048], cpu, build=record, warm_fa4=fail,
                                               cudnn_loads=lambda: True)
    why = "FA4 cannot run attention for B=4 T=2048 H=4 D=320 (RuntimeError: head_dim 320 not supported)"
    assert (changed["attention"], line) == ("cudnn", f"attention: fa4 -> cudnn: {why}")
    assert changed["reasons"]["attention"] == f"{why}; falling back to cudnn" and p["attention"] == "fa4"
    assert built == [("fwd", 1024), ("bwd", 1024)]
    def refuse(kind, q, w):
        raise RuntimeError("No valid execution plans built.")
    changed, line = attention.confirm_attention(p, (4, 2048, 4, 320), [1024], cpu, build=refuse, warm_fa4=fail,
                                               cudnn_loads=lambda: True)
    assert changed["attention"] == "flex" and line.splitlines()[1].startswith("!! attention: cudnn -> flex: cuDNN ")
    changed, line = attention.confirm_attention(p, (4, 2048, 4, 320), [1024], cpu, warm_fa4=fail,
                                               cudnn_loads=lambda: False)
    assert (changed["attention"], line) == ("flex", f"attention: fa4 -> flex: {why}")

    def oom(shape, dtype, windows, device):         # no room is not a refusal: the run's memory is the problem
        raise torch.OutOfMemoryError("CUDA out of memory")
    with pytest.raises(torch.OutOfMemoryError):
        attention.confirm_attention(p, (4, 2048, 4, 128), [1024], cpu, warm_fa4=oom, cudnn_loads=lambda: True)
    # the eval graph's process: the training ran the kernels a moment before
    assert attention.confirm_attention(p, (4, 2048, 4, 128), [1024], cpu, warm_fa4=oom,
                                       second_process=True) == (p, None)


def test_bytecode_note_says_when_each_run_recompiles_a_module(tmp_path, monkeypatch):
    import types

    from harness.util import bytecode_note
    mod = types.SimpleNamespace(__name__="torch", __cached__=str(tmp_path / "__pycache__" / "x.cpython-311.pyc"))
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    note = bytecode_note(mod)
    assert note.startswith("note: torch's bytecode is not cached (PYTHONDONTWRITEBYTECODE is set): ")
    assert "`uv sync --compile-bytecode`" in note
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"")
    assert bytecode_note(mod) is None
    assert bytecode_note(types.SimpleNamespace(__name__="builtin")) is None      # no source, nothing to cache


def test_compile_caches_line_names_fa4s_cache_when_loaded(monkeypatch, tmp_path):
    """The start-up line says where every compiled artifact goes: inductor's and triton's caches, and FA4's kernels
    when flash-attn-4 was loaded (or that they are not cached)."""
    import sys
    import types
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/i")
    monkeypatch.setenv("TRITON_CACHE_DIR", "/t")
    monkeypatch.delitem(sys.modules, "flash_attn.cute.cache_utils", raising=False)
    s = settings.current()
    assert hardware.compile_caches(s) == ("compile caches: TORCHINDUCTOR_CACHE_DIR=/i (from the environment), "
                                          "TRITON_CACHE_DIR=/t (from the environment)")
    fake = types.SimpleNamespace(CUTE_DSL_CACHE_ENABLED=True, get_cache_path=lambda: tmp_path / "fa4")
    monkeypatch.setitem(sys.modules, "flash_attn.cute.cache_utils", fake)
    assert hardware.compile_caches(s).endswith(f"(from the environment), FA4 kernels {tmp_path / 'fa4'}")
    fake.CUTE_DSL_CACHE_ENABLED = False
    assert hardware.compile_caches(s).endswith(", FA4 kernels not cached (FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED=0 "
                                               "in the environment)")


def test_fa4_loader_keeps_its_kernels_in_the_harness_cache(tmp_path):
    """load_fa4 points FA4's persistent kernel cache into the harness's cache (read once, at import: so the loader
    sets it before the first import); without the package it says how to install it. Fresh interpreters: the
    loader and FA4's settings are per process."""
    import importlib.util
    import subprocess
    import sys
    from conftest import REPO
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLASH_ATTENTION_CUTE_DSL")}
    code = ("import sys; from pathlib import Path; {block}from harness.fused import fa4_attention as f; "
            "m, why = f.load_fa4(Path(sys.argv[1])); print(why); "
            "m is None or print(sys.modules['flash_attn.cute.cache_utils'].get_cache_path())")
    missing = subprocess.run([sys.executable, "-c", code.format(block="sys.modules['flash_attn'] = None; "),
                              str(tmp_path / "fa4")], capture_output=True, text=True, env=env, cwd=REPO)
    assert missing.stdout.startswith("flash-attn-4 not installed (uv sync --extra fa4; "), missing.stderr[-500:]
    if importlib.util.find_spec("flash_attn") is None:
        pytest.skip("flash-attn-4 not installed (the fa4 extra)")
    r = subprocess.run([sys.executable, "-c", code.format(block=""), str(tmp_path / "fa4")], capture_output=True,
                       text=True, env=env, cwd=REPO)
    lines = r.stdout.splitlines()
    assert len(lines) == 2 and lines[0].startswith("flash-attn-4 4."), r.stderr[-500:]
    assert lines[1].startswith(str(tmp_path / "fa4")) and (tmp_path / "fa4").is_dir()


def test_an_fp16_loss_scale_starts_at_the_tokens_a_step_averages_over():
    """The loss is a mean over the step's tokens: torch's 2^16 leaves a token's gradient 2^16/tokens of its size
    (1/8 at the default 524,288 tokens). The start is the next power of two of the tokens, never under 2^16."""
    from harness import hardware
    assert [hardware.grad_scale_start(t) for t in (8192, 65536, 65537, 524288, 600000)] == \
        [2.0 ** 16, 2.0 ** 16, 2.0 ** 17, 2.0 ** 19, 2.0 ** 20]
    scaler, line = hardware.make_grad_scaler("cpu", 524288)
    assert scaler.get_scale() == 2.0 ** 19 and scaler.get_growth_interval() == hardware.GRAD_SCALE_GROWTH == 200
    assert line == ("gradscaler: loss scale from 2^19 (524,288 tokens a step), doubled after 200 steps without "
                    "inf/nan, halved (the step skipped) on one")
