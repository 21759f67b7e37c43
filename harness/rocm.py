"""PLATFORM on AMD GPUs (ROCm): read from torch.version.hip and the gfx architecture, never from the capability.

    uv run prepare.py --check        # prints each choice with its reason, as on NVIDIA

A ROCm build of torch presents an AMD GPU as a CUDA device, and its "capability" is not NVIDIA's (an MI300X reports
9.4): the NVIDIA rows would pick Hopper's cuDNN attention, FA4 and TMA/Gluon kernels, none of which exist there,
and a peak FLOP/s that makes MFU wrong. Here: bf16 on the matrix cores of CDNA (MI100 on) and RDNA3/4; attention
through SDPA (PyTorch's own ROCm kernels) or FlexAttention when asked for and compiled; no cuDNN, FA3 or FA4 (no
ROCm builds here); the fused MLP's Hopper kernels never; the Triton row kernels (rotary + QK-norm, the loss) where
the model is compiled, since Triton generates AMD code; compile where triton is present; peak FLOP/s from the
vendor's datasheet figure of each card (dense bf16/fp16 matrix throughput, one GCD for the dual-die MI250/MI250X,
which ROCm shows as two devices).
"""

from __future__ import annotations

from harness.config import ProcessorConfig

# gfx architecture prefix -> family; bf16 matrix instructions on every family listed
FAMILIES = {"gfx908": "CDNA1", "gfx90a": "CDNA2", "gfx940": "CDNA3", "gfx941": "CDNA3", "gfx942": "CDNA3",
            "gfx950": "CDNA4", "gfx1100": "RDNA3", "gfx1101": "RDNA3", "gfx1102": "RDNA3", "gfx1200": "RDNA4",
            "gfx1201": "RDNA4"}
# dense bf16/fp16 matrix FLOP/s per device from AMD's datasheets (MI250/MI250X: per GCD, half the package figure)
PEAK_FLOPS = {"MI355X": 2516.6e12, "MI350X": 2306.9e12, "MI325X": 1307.4e12, "MI300X": 1307.4e12,
              "MI300A": 980.6e12, "MI250X": 191.5e12, "MI250": 181.0e12, "MI210": 181.0e12, "MI100": 92.3e12,
              "RX 7900 XTX": 122.8e12, "RX 7900 XT": 103.0e12}


def family(gfx: str) -> str | None:
    """CDNA2, RDNA3, ... from a gcnArchName such as 'gfx942:sramecc+:xnack-' (None when not listed)."""
    return FAMILIES.get((gfx or "").split(":")[0])


def rocm_platform(hw: dict, proc: ProcessorConfig, name: str) -> dict:
    """The PLATFORM dict (the keys hardware.resolve_platform returns) for an AMD GPU under ROCm."""
    gfx, hip = (hw.get("gfx") or "").split(":")[0], hw["hip"]
    fam = family(gfx)
    where = f"ROCm {hip}, {gfx or 'unknown gfx'}" + (f" ({fam})" if fam else "")
    reasons = {"device": "CUDA API on ROCm (torch.version.hip)"}
    if proc.dtype != "auto":
        dtype, reasons["dtype"] = proc.dtype, "forced by ground.json processor.dtype"
    elif fam:
        dtype, reasons["dtype"] = "bfloat16", f"{where}: bf16 on the matrix cores"
    else:
        dtype, reasons["dtype"] = "float32", f"{where}: an architecture this table does not list: fp32 (set dtype)"
    triton_ok = hw["triton"] and hw["os"] != "Windows"
    compile_ = proc.compile is not False and triton_ok
    reasons["compile"] = ("disabled by ground.json processor.compile" if proc.compile is False else
                          f"{where} with triton (inductor's ROCm code generation)" if compile_ else
                          "off: triton missing (inductor's GPU code generation needs it)")
    if proc.attention == "flex" and compile_:
        attention, reasons["attention"] = "flex", "forced by ground.json (FlexAttention, compiled by triton)"
    elif proc.attention in ("auto", "sdpa"):
        attention, reasons["attention"] = "sdpa", (f"{where}: SDPA (PyTorch's ROCm attention kernels; no cuDNN, FA3 "
                                                   f"or FA4 build for ROCm here)")
    else:
        attention, reasons["attention"] = "sdpa", f"{proc.attention} requested but not built for ROCm; using sdpa"
    reasons["mlp"] = "plain ops: the fused MLP's TMA/Gluon kernels are NVIDIA Hopper's"
    row = "triton" if compile_ and dtype != "float32" else "plain"
    for key, what in (("rope", "rotary + QK-norm"), ("loss", "softcapped cross-entropy")):
        reasons[key] = (f"{what} as Triton row kernels (Triton generates AMD code)" if row == "triton"
                        else f"plain ops: the {what} kernels run in compiled runs only")
    reasons["use_grad_scaler"] = "fp16 gradients underflow without loss scaling" if dtype == "float16" else \
        f"not needed for {dtype}"
    reasons["embedding_dtype"] = "bf16 embeddings (upstream)" if dtype == "bfloat16" else "fp32"
    reasons["ortho_dtype"] = "Muon orthogonalization in " + ("bf16" if dtype == "bfloat16" else "fp32")
    reasons["compile_scope"] = "the whole model in one graph" if compile_ else "no compile"
    if proc.peak_flops != "auto":
        peak, reasons["peak_flops"] = float(proc.peak_flops), "forced by ground.json processor.peak_flops"
    else:
        key = next((k for k in PEAK_FLOPS if k in name), None)
        peak = PEAK_FLOPS.get(key, 0.0)
        reasons["peak_flops"] = (f"{key}: {peak / 1e12:.1f} TFLOP/s dense bf16 (AMD datasheet)" if key else
                                 f"unknown for {name!r} (MFU reported as 0; set processor.peak_flops)")
    return {"device": "cuda", "device_name": name, "capability": None, "dtype": dtype,
            "use_grad_scaler": dtype == "float16", "embedding_dtype": "bfloat16" if dtype == "bfloat16" else "float32",
            "ortho_dtype": "bfloat16" if dtype == "bfloat16" else "float32", "attention": attention, "mlp": "plain",
            "rope": row, "loss": row, "compile": compile_, "compile_scope": "model", "peak_flops": peak, "os": hw["os"],
            "world_size": hw.get("world_size", 1), "reasons": reasons, "rocm": {"hip": hip, "gfx": gfx,
                                                                               "family": fam}}
