"""PLATFORM on AMD GPUs from fake ROCm properties (no GPU needed): torch.version.hip and the gfx architecture set the
row, never the capability a ROCm build reports (an MI300X says 9.4, which would read as an NVIDIA Hopper).

    uv run pytest tests/test_rocm.py
"""

import dataclasses

import pytest

from harness import hardware, rocm
from test_platform import AUTO, CUDNN_OK, FA4_OK, hw


def amd(name, gfx, cc=(9, 4), hip="6.4.43482", **kw):
    h = hw(cc, name, 304, 2100, fa3=(True, "loaded"), cudnn=CUDNN_OK, fa4=FA4_OK, gluon=True, **kw)
    h.update(hip=hip, gfx=gfx)               # the NVIDIA kernel probes are skipped on ROCm; here they lie, on purpose
    return h


ROWS = [  # name, gfx, expected (dtype, attention, compile, mlp, rope/loss, peak TFLOP/s, family)
    ("AMD Instinct MI300X", "gfx942:sramecc+:xnack-", ("bfloat16", "sdpa", True, "plain", "triton", 1307.4, "CDNA3")),
    ("AMD Instinct MI325X", "gfx942", ("bfloat16", "sdpa", True, "plain", "triton", 1307.4, "CDNA3")),
    ("AMD Instinct MI250X", "gfx90a:sramecc+:xnack-", ("bfloat16", "sdpa", True, "plain", "triton", 191.5, "CDNA2")),
    ("AMD Instinct MI210", "gfx90a", ("bfloat16", "sdpa", True, "plain", "triton", 181.0, "CDNA2")),
    ("AMD Radeon RX 7900 XTX", "gfx1100", ("bfloat16", "sdpa", True, "plain", "triton", 122.8, "RDNA3")),
    ("AMD Radeon RX 9070 XT", "gfx1201", ("bfloat16", "sdpa", True, "plain", "triton", 0.0, "RDNA4")),
    ("AMD Radeon VII", "gfx906", ("float32", "sdpa", True, "plain", "plain", 0.0, None)),
]


@pytest.mark.parametrize("name,gfx,expected", ROWS, ids=[r[0] for r in ROWS])
def test_rocm_rows(name, gfx, expected):
    p = hardware.resolve_platform(amd(name, gfx), AUTO)
    got = (p["dtype"], p["attention"], p["compile"], p["mlp"], p["rope"], round(p["peak_flops"] / 1e12, 1),
           p["rocm"]["family"])
    assert got == expected and p["rope"] == p["loss"] and p["device"] == "cuda" and p["capability"] is None
    assert not p["use_grad_scaler"] and p["reasons"]["attention"].startswith("ROCm 6.4.43482")
    assert "cudnn" not in (p["attention"], p["mlp"]) and "no cuDNN, FA3 or FA4 build for ROCm" in \
        p["reasons"]["attention"]
    assert all(isinstance(v, str) and v for v in p["reasons"].values())
    assert set(p) >= set(hardware.resolve_platform(hw((9, 0), "NVIDIA H100", 132, 1830), AUTO))    # the same keys


def test_the_same_capability_on_nvidia_is_hopper():
    """Without torch.version.hip the capability 9.4 reads as NVIDIA's: the row is the ROCm flag's, not the number's."""
    h = amd("AMD Instinct MI300X", "gfx942")
    del h["hip"]
    assert hardware.resolve_platform(h, AUTO)["attention"] == "fa4"


@pytest.mark.parametrize("asked, got, why", [
    ({"attention": "fa4"}, "sdpa", "fa4 requested but not built for ROCm; using sdpa"),
    ({"attention": "cudnn"}, "sdpa", "cudnn requested but not built for ROCm; using sdpa"),
    ({"attention": "flex"}, "flex", "forced by ground.json (FlexAttention, compiled by triton)"),
])
def test_rocm_overrides_fall_back_with_their_reason(asked, got, why):
    p = hardware.resolve_platform(amd("AMD Instinct MI300X", "gfx942"), dataclasses.replace(AUTO, **asked))
    assert (p["attention"], p["reasons"]["attention"]) == (got, why)


def test_rocm_without_triton_runs_eager_with_plain_kernels():
    p = hardware.resolve_platform(amd("AMD Instinct MI300X", "gfx942", triton=False), AUTO)
    assert (p["compile"], p["rope"], p["loss"], p["attention"]) == (False, "plain", "plain", "sdpa")
    assert p["reasons"]["compile"] == "off: triton missing (inductor's GPU code generation needs it)"
    forced = hardware.resolve_platform(amd("AMD Instinct MI300X", "gfx942"),
                                       dataclasses.replace(AUTO, peak_flops=1.0e15, compile=False))
    assert forced["peak_flops"] == 1.0e15 and forced["compile"] is False


def test_family_from_gcn_arch_name():
    assert [rocm.family(g) for g in ("gfx942:sramecc+:xnack-", "gfx90a", "gfx1100", "gfx1201", "gfx906", "")] == \
        ["CDNA3", "CDNA2", "RDNA3", "RDNA4", None, None]
