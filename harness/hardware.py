"""PLATFORM: device, dtype, attention backend, fused kernels, compile and peak FLOPs, decided once with reasons.

    uv run prepare.py --check        # prints every choice and why

resolve_platform is a pure function of the hardware facts and ground.json's `processor` overrides,
so the whole table (Volta to Blackwell, MPS, CPU) is tested without a GPU; probe_hardware gathers
the facts; get_platform() is this machine's PLATFORM, probed once.
"""

from __future__ import annotations

import os
import platform as _platform
import shutil
import subprocess
import sys

import torch

from harness import settings
from harness.config import ConfigError, ModelConfig, ProcessorConfig, fail
from harness.fused import fa4_attention
from harness.fused.cudnn_attention import load_cudnn_frontend
from harness.rocm import rocm_platform
from harness.settings import Settings, describe_changes
from harness.util import bytecode_note, reachable

# ---------------------------------------------------------------------------
# The decision: hardware facts + overrides -> PLATFORM (pure)
# ---------------------------------------------------------------------------

# Dense 16-bit tensor-core FLOPs per SM per clock (FMA counted as 2), by compute capability.
# Derived from vendor peak figures: H100 SXM 989.4 TFLOP/s = 132 SMs x 1830 MHz x 4096;
# A100 312 = 108 x 1410 x 2048; V100 125 = 80 x 1530 x 1024; T4 65 = 40 x 1590 x 1024;
# RTX 3090 71 = 82 x 1695 x 512 (fp32 accumulate); B200 ~2250 = 148 x ~1860 x 8192.
FLOPS_PER_SM_CLOCK = {(7, 0): 1024, (7, 2): 1024, (7, 5): 1024, (8, 0): 2048, (8, 6): 512, (8, 7): 512,
                      (8, 9): 512, (9, 0): 4096, (10, 0): 8192, (10, 3): 8192, (12, 0): 512, (12, 1): 512}
# The clocks vendors quote their peak figures at (boost clocks read off a device are higher).
SPEC_CLOCK_MHZ = {"H100 PCIe": 1620, "H100 NVL": 1785, "H100": 1830, "H200": 1830, "GH200": 1830,
                  "A100": 1410, "A800": 1410, "V100": 1530, "T4": 1590, "B200": 1860, "B100": 1860}
FA3_REPO = {9: "varunneal/flash-attention-3"}      # Hopper build; others use the community one
FA3_COMMUNITY_REPO = "kernels-community/flash-attn3"


def peak_flops_for(capability, sm_count: int, clock_mhz: float | None, name: str) -> tuple[float, str]:
    per_sm = FLOPS_PER_SM_CLOCK.get(tuple(capability)) if capability else None
    spec_clock = next((c for key, c in SPEC_CLOCK_MHZ.items() if key in name), None)
    clock = spec_clock or clock_mhz
    if per_sm is None or not clock or not sm_count:
        return 0.0, f"unknown for CC {capability} / {name!r} (MFU reported as 0; set processor.peak_flops)"
    src = "spec clock" if spec_clock else "max SM clock"
    flops = per_sm * sm_count * clock * 1e6
    return flops, f"{per_sm} FLOP/SM/clk x {sm_count} SMs x {clock:.0f} MHz ({src}) = {flops / 1e12:.1f} TFLOP/s"


def decide_device(hw: dict, proc: ProcessorConfig) -> tuple[str, str]:
    if proc.device != "auto":
        if proc.device == "cuda" and not hw["cuda"]:
            raise ConfigError("ground.json: key 'processor.device': \"cuda\" requested but torch sees no CUDA device")
        if proc.device == "mps" and not hw["mps"]:
            raise ConfigError("ground.json: key 'processor.device': \"mps\" requested but MPS is not available")
        return proc.device, "forced by ground.json processor.device"
    device = "cuda" if hw["cuda"] else "mps" if hw["mps"] else "cpu"
    return device, {"cuda": "CUDA GPU found", "mps": "Apple MPS found", "cpu": "no CUDA or MPS device"}[device]


def decide_dtype(device: str, cc: tuple | None, proc: ProcessorConfig) -> tuple[str, str]:
    """bf16 where the tensor cores have it (CC >= 8), fp16 + GradScaler on Volta/Turing, fp32 off CUDA."""
    if proc.dtype != "auto":
        return proc.dtype, "forced by ground.json processor.dtype"
    if device == "cuda":
        return ("bfloat16" if cc >= (8, 0) else "float16"), f"CC {cc[0]}.{cc[1]}: " + (
            "native bf16" if cc >= (8, 0) else "no bf16 tensor cores, fp16 with GradScaler")
    return "float32", f"{device}: fp32 (low-precision autocast is slow or incomplete there)"


def decide_compile(device: str, cc: tuple | None, hw: dict, proc: ProcessorConfig, triton_ok: bool) -> tuple[bool, str]:
    """On CUDA needs triton (inductor's GPU codegen); never on Windows; not on Volta/Turing by default; on the CPU
    when asked for (inductor's C++ backend: a new graph costs many seconds of start-up there); not on MPS."""
    asked = proc.compile in (True, "blocks")
    if proc.compile is False:
        return False, "disabled by ground.json processor.compile"
    if device == "cuda" and triton_ok and (asked or cc >= (8, 0)):
        return True, "forced by ground.json" if proc.compile is True else f"CUDA CC {cc[0]}.{cc[1]} with triton"
    if device == "cpu" and asked and hw["os"] != "Windows" and hw.get("cxx"):
        return True, "forced by ground.json (inductor's C++ backend)"
    if hw["os"] == "Windows":
        why = "Windows"
    elif device == "cuda":
        why = "triton missing" if not hw["triton"] else f"CC {cc[0]}.{cc[1]} (pre-Ampere)"
    elif device == "mps":
        why = "mps"
    elif asked:
        why = "cpu: no C++ compiler (g++, c++, clang++ or $CXX) for inductor"
    else:
        why = "cpu (a new graph's compile costs many seconds of start-up here; processor.compile true turns it on)"
    return False, ("requested but unavailable: " if asked else "off: ") + why


def decide_attention(device: str, cc: tuple | None, dtype: str, hw: dict, proc: ProcessorConfig,
                     triton_ok: bool) -> tuple[str, str]:
    """FA4 (flash-attn-4, Hopper/Blackwell) > FA3 (kernels) > cuDNN (cudnn-frontend, Hopper+) > FlexAttention
    (compiled, needs triton) > SDPA; a backend ground.json forces that cannot run falls back, saying why."""
    fa3_ok, fa3_why = hw.get("fa3") or (False, "not probed")
    cudnn_ok, cudnn_why = hw.get("cudnn") or (False, "not probed")
    cuda_16bit = device == "cuda" and dtype in ("bfloat16", "float16")   # what cuDNN attention and the fused MLP take
    cudnn_ok = cudnn_ok and cuda_16bit
    flex_ok = device == "cuda" and triton_ok and cc >= (8, 0)
    fa4_ok, fa4_why = hw.get("fa4") or (False, "not probed")
    fa4_arch = cuda_16bit and (cc or ())[:1] in ((9,), (10,))               # FA4's Hopper and Blackwell kernels
    fa4_ok = fa4_ok and fa4_arch
    if proc.attention == "auto":
        if fa4_ok:
            return "fa4", f"CC {cc[0]}.{cc[1]}: {fa4_why} (faster than cuDNN, measured)"
        if device == "cuda" and cc >= (9, 0) and fa3_ok:
            return "fa3", f"Hopper+: {fa3_why}"
        if cc and cc >= (9, 0) and cudnn_ok:
            return "cudnn", (f"Hopper+: {cudnn_why}, windows on cuDNN's fused kernel (FA4: {fa4_why}; FA3 not "
                             f"loadable: {fa3_why})")
        if flex_ok:
            return "flex", f"CC {cc[0]}.{cc[1]} with triton" + (f" (FA3 not loadable: {fa3_why})" if cc >= (9, 0)
                                                                 else "")
        return "sdpa", f"{device}" + (f" CC {cc[0]}.{cc[1]}" if cc else "") + ": SDPA (no flex/FA3 here)"
    if proc.attention == "fa4" and not fa4_ok:
        attention = "cudnn" if cudnn_ok and cc >= (9, 0) else "flex" if flex_ok else "sdpa"
        why = fa4_why if fa4_arch else f"needs CUDA CC 9.x or 10.x and bf16/fp16, have {device} {dtype}"
        return attention, f"fa4 requested but not usable ({why}); falling back to {attention}"
    if proc.attention == "fa3" and not (device == "cuda" and fa3_ok):
        attention = "flex" if flex_ok else "sdpa"
        return attention, f"fa3 requested but not loadable ({fa3_why}); falling back to {attention}"
    if proc.attention == "cudnn" and not cudnn_ok:
        attention = "flex" if flex_ok else "sdpa"
        why = cudnn_why if cuda_16bit else f"needs CUDA and bf16/fp16, have {device} {dtype}"
        return attention, f"cudnn requested but not usable ({why}); falling back to {attention}"
    if proc.attention == "flex" and device == "cuda" and not flex_ok:
        return "sdpa", "flex requested but needs triton and CC >= 8.0 on CUDA; falling back to sdpa"
    forced = {"fa4": fa4_why, "fa3": fa3_why, "cudnn": cudnn_why}
    return proc.attention, (f"forced by ground.json ({forced[proc.attention]})" if proc.attention in forced
                            else "forced by ground.json processor.attention")


def decide_mlp(device: str, cc: tuple | None, dtype: str, hw: dict, triton_ok: bool) -> tuple[str, str]:
    """ReLU^2 fused into the MLP's matmuls (Triton with TMA) on Hopper+; plain ops elsewhere."""
    if device == "cuda" and dtype in ("bfloat16", "float16") and cc >= (9, 0) and triton_ok:
        gluon_bwd = "; backward matmul in Gluon (wgmma)" if cc[0] == 9 and hw.get("gluon") else ""
        return "triton", f"CC {cc[0]}.{cc[1]} with triton: ReLU^2 in the matmul epilogues (TMA{gluon_bwd})"
    here = f"{device} CC {cc[0]}.{cc[1]}" if cc else device
    return "plain", f"plain ops: the fused MLP needs CUDA CC >= 9.0, triton and bf16/fp16 (here {here}, {dtype})"


def resolve_platform(hw: dict, proc: ProcessorConfig) -> dict:
    """Pure decision: hardware facts + ground.json processor overrides -> PLATFORM dict, one decide_* per choice,
    each with its reason.

    hw keys: cuda (bool), mps (bool), os, triton (bool), name, capability (tuple|None),
    sm_count, clock_mhz, fa4, fa3 and cudnn ((ok, reason) or None when not probed), gluon, world_size.
    """
    reasons = {}
    device, reasons["device"] = decide_device(hw, proc)
    if device == "cuda" and hw.get("hip"):            # AMD: its own rows, never the NVIDIA capability's
        return rocm_platform(hw, proc, hw.get("name", "AMD GPU"))
    cc = tuple(hw["capability"]) if device == "cuda" and hw.get("capability") else None
    name = hw.get("name", "cpu") if device == "cuda" else "Apple MPS" if device == "mps" else \
        _platform.processor() or "cpu"
    dtype, reasons["dtype"] = decide_dtype(device, cc, proc)
    use_scaler = dtype == "float16"
    reasons["use_grad_scaler"] = ("fp16 gradients underflow without loss scaling" if use_scaler
                                  else f"not needed for {dtype}")
    embedding_dtype = "bfloat16" if dtype == "bfloat16" else "float32"
    reasons["embedding_dtype"] = ("bf16 embeddings halve their memory traffic (upstream)" if dtype == "bfloat16" else
                                  "fp32 master weights (GradScaler cannot unscale fp16 grads)" if use_scaler
                                  else "fp32 run")
    ortho_dtype = "bfloat16" if device == "cuda" and cc >= (8, 0) and dtype != "float32" else "float32"
    reasons["ortho_dtype"] = "Muon orthogonalization in " + ("bf16 (native)" if ortho_dtype == "bfloat16"
                                                             else "fp32 (bf16 not native here)")
    triton_ok = hw["triton"] and hw["os"] != "Windows"
    compile_, reasons["compile"] = decide_compile(device, cc, hw, proc, triton_ok)
    attention, reasons["attention"] = decide_attention(device, cc, dtype, hw, proc, triton_ok)
    mlp, reasons["mlp"] = decide_mlp(device, cc, dtype, hw, triton_ok)
    # scope: the whole model in one graph (the fastest step), or each block on its own (one graph per kind of
    # block, reused across layers: a depth change compiles nothing new)
    scope = "blocks" if compile_ and proc.compile == "blocks" else "model"
    reasons["compile_scope"] = ("forced by ground.json processor.compile = \"blocks\"" if scope == "blocks"
                                else "the whole model in one graph" if compile_ else "no compile")
    # rotary + QK-norm and the softcapped loss as Triton row kernels: wherever the model is compiled
    # (which needs CUDA and triton); eager runs keep plain ops, whose fused log_softmax is lighter there
    row_kernels = "triton" if compile_ and device == "cuda" else "plain"
    for key, what in (("rope", "rotary + QK-norm"), ("loss", "softcapped cross-entropy")):
        reasons[key] = (f"{what} as Triton row kernels (compiled CUDA run)" if row_kernels == "triton"
                        else f"plain ops: the {what} kernels run in compiled CUDA runs only")
    if proc.peak_flops != "auto":
        peak, reasons["peak_flops"] = float(proc.peak_flops), "forced by ground.json processor.peak_flops"
    elif device == "cuda":
        peak, reasons["peak_flops"] = peak_flops_for(cc, hw.get("sm_count", 0), hw.get("clock_mhz"), name)
    else:
        peak, reasons["peak_flops"] = 0.0, f"{device}: no reference peak (MFU reported as 0)"
    return {
        "device": device, "device_name": name, "capability": list(cc) if cc else None,
        "dtype": dtype, "use_grad_scaler": use_scaler, "embedding_dtype": embedding_dtype,
        "ortho_dtype": ortho_dtype, "attention": attention, "mlp": mlp, "rope": row_kernels, "loss": row_kernels,
        "compile": compile_, "compile_scope": scope, "peak_flops": peak,
        "os": hw["os"], "world_size": hw.get("world_size", 1), "reasons": reasons,
    }

# ---------------------------------------------------------------------------
# The facts: this machine's device, packages and loadable attention kernels
# ---------------------------------------------------------------------------

def _importable(name: str) -> bool:
    import importlib.util
    return importlib.util.find_spec(name) is not None


def _nvidia_smi_max_clock() -> float | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=clocks.max.sm", "--format=csv,noheader,nounits", "-i", "0"],
                             capture_output=True, text=True, timeout=5)
        return float(out.stdout.strip().splitlines()[0])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


_FA3 = settings.cached()


def load_fa3(capability, timeout_s: float = 3.0):
    """Try to load FA3 through `kernels`. Returns (module|None, reason); loaded once. Never raises."""
    key = tuple(capability)
    if key in _FA3:
        return _FA3[key]
    if not _importable("kernels"):
        _FA3[key] = (None, "package kernels not installed")
        return _FA3[key]
    repo = FA3_REPO.get(key[0], FA3_COMMUNITY_REPO)
    if not reachable("https://huggingface.co", timeout_s):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")     # only a cached kernel can load now
    try:
        from kernels import get_kernel
        mod = get_kernel(repo).flash_attn_interface
        _FA3[key] = (mod, f"FA3 loaded from {repo}")
    except Exception as e:  # noqa: BLE001 - any failure to fetch/load a hub kernel means "not loadable"
        _FA3[key] = (None, f"{repo} not loadable offline/uncached ({type(e).__name__})")
    return _FA3[key]


def probe_hardware(proc: ProcessorConfig, probe_fa3: bool = True, probe_timeout_s: float = 3.0) -> dict:
    """Collect the facts resolve_platform decides from (impure: touches torch, nvidia-smi, network)."""
    mps = getattr(torch.backends, "mps", None)
    hw = {"cuda": torch.cuda.is_available(), "mps": bool(mps and mps.is_available()), "os": _platform.system(),
          "triton": _importable("triton"), "gluon": _importable("triton") and _importable("triton.experimental.gluon"),
          "world_size": int(os.environ.get("WORLD_SIZE", "1")),
          "cxx": any(shutil.which(c) for c in (os.environ.get("CXX") or "g++", "c++", "clang++"))}  # inductor's CPU
    if hw["cuda"] and proc.device in ("auto", "cuda"):
        p = torch.cuda.get_device_properties(0)
        hw.update(name=p.name, capability=(p.major, p.minor), sm_count=p.multi_processor_count,
                  clock_mhz=(getattr(p, "clock_rate", 0) / 1000) or _nvidia_smi_max_clock())
        if getattr(torch.version, "hip", None):        # ROCm: no NVIDIA kernels to probe (harness/rocm.py)
            hw.update(hip=torch.version.hip, gfx=getattr(p, "gcnArchName", ""))
            return hw
        if proc.attention in ("auto", "fa4") and (p.major in (9, 10) or proc.attention == "fa4"):
            mod, why = fa4_attention.load_fa4(settings.current().cache_dir / "compile" / "flash_attn_cute")
            hw["fa4"] = (mod is not None, why)
        if proc.attention == "auto" and hw.get("fa4", (False,))[0]:
            hw["fa3"] = (False, "not probed: FA4 loaded")          # no hub lookup for a backend FA4 outranks
        elif probe_fa3 and proc.attention in ("auto", "fa3") and (p.major >= 9 or proc.attention == "fa3"):
            mod, why = load_fa3((p.major, p.minor), probe_timeout_s)
            hw["fa3"] = (mod is not None, why)
        if proc.attention in ("auto", "cudnn", "fa4") and (p.major >= 9 or proc.attention == "cudnn"):
            mod, why = load_cudnn_frontend()
            hw["cudnn"] = (mod is not None, why)
    return hw


_PLATFORM = settings.cached()


def get_platform() -> dict:
    """PLATFORM for this machine and ground.json (probed once). A processor override that cannot work exits 2."""
    if "platform" not in _PLATFORM:
        s = settings.current()
        proc = s.ground.processor
        try:
            hw = probe_hardware(proc, probe_timeout_s=s.ground.data.probe_timeout_s)
            _PLATFORM["platform"] = resolve_platform(hw, proc)
        except ConfigError as e:
            fail(str(e))
    return _PLATFORM["platform"]


def compile_caches(s) -> str:
    """Point inductor's and triton's on-disk caches at <cache_dir>/compile (unless the environment names its own),
    so that compiled graphs and kernels outlive /tmp clean-ups and are shared by every run of this cache (FA4's,
    when loaded, were placed there by the probe). Returns the line to print."""
    root = s.cache_dir / "compile"
    chosen = []
    for var, sub in (("TORCHINDUCTOR_CACHE_DIR", "inductor"), ("TRITON_CACHE_DIR", "triton")):
        if var in os.environ:
            chosen.append(f"{var}={os.environ[var]} (from the environment)")
        else:
            os.environ[var] = str(root / sub)
            chosen.append(f"{var}={root / sub}")
    fa4_cache = sys.modules.get("flash_attn.cute.cache_utils")     # FA4 loaded: fa4_attention.load_fa4 set it
    if fa4_cache is not None:
        chosen.append(f"FA4 kernels {fa4_cache.get_cache_path()}" if fa4_cache.CUTE_DSL_CACHE_ENABLED
                      else "FA4 kernels not cached (FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED=0 in the environment)")
    return "compile caches: " + ", ".join(chosen)


def platform_lines(p: dict) -> list[str]:
    keys = ("device", "dtype", "use_grad_scaler", "embedding_dtype", "ortho_dtype", "attention", "mlp", "rope", "loss",
            "compile", "compile_scope", "peak_flops")
    lines = [f"platform: {p['device_name']} (CC {'.'.join(map(str, p['capability']))})" if p["capability"]
             else f"platform: {p['device_name']}"]
    for k in keys:
        v = f"{p[k] / 1e12:.1f} TFLOP/s" if k == "peak_flops" else p[k]
        lines.append(f"  {k:16s} {v}  ({p['reasons'][k]})")
    return lines


GRAD_SCALE_GROWTH = 200         # steps without inf/nan before the scale doubles (torch's 2000: more than a run has)


def grad_scale_start(tokens_per_step: int) -> float:
    """The loss scale an fp16 run starts at: the tokens a step's mean loss averages over (a power of two, at least
    torch's 2^16), so that a token's gradients start near their own size, not 2^16/tokens of it."""
    return float(max(2 ** 16, 1 << (max(tokens_per_step, 1) - 1).bit_length()))


def make_grad_scaler(device_type: str, tokens_per_step: int) -> tuple:
    """(the run's GradScaler, the line that says how it starts)."""
    start = grad_scale_start(tokens_per_step)
    line = (f"gradscaler: loss scale from 2^{int(start).bit_length() - 1} ({tokens_per_step:,} tokens a step), doubled "
            f"after {GRAD_SCALE_GROWTH} steps without inf/nan, halved (the step skipped) on one")
    return torch.amp.GradScaler(device_type, init_scale=start, growth_interval=GRAD_SCALE_GROWTH), line


def setup_lines(s: Settings, model: ModelConfig, changes: dict, platform: dict, world: int) -> list[str]:
    """What the run's set-up decided, each with its reason: processes, mode, caps, PLATFORM (printed at start)."""
    lines = []
    if world > 1:
        lines.append(f"distributed: {world} processes ({'nccl' if platform['device'] == 'cuda' else 'gloo'}), "
                     f"each {model.device_batch_size} rows per micro-step")
    lines.append(f"mode: {s.mode} ({s.mode_reason}); T={s.max_seq_len}, budget={s.time_budget_s:g}s, "
                 f"eval_tokens={s.eval_tokens:,}" + (f", max_steps={s.max_steps} (the steps, not the budget, end "
                                                     f"the run and its LR schedule)" if s.max_steps else ""))
    lines += [f"  {line}" for line in describe_changes(changes, s, world)]
    if platform["compile"] and s.excluded_steps == 0 and not s.max_steps:      # harness/clock.py counts from step 1
        lines.append("!! excluded_steps 0: step 0's compile counts in the budget, as many seconds as the compile cache "
                     "makes it (a configuration's first run pays more than its repeats)")
    return lines + platform_lines(platform) + [note for note in [bytecode_note(torch)] if note]
