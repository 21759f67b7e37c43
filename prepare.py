"""The fixed harness: configs, PLATFORM, data, tokenizer, dataloader, the metric, the ledger.

Run it once before training (downloads or builds the data, trains the tokenizer):

    uv run prepare.py                      # data + tokenizer, source from ground.json
    uv run prepare.py --source builtin     # the offline corpus, no network needed
    uv run prepare.py --check              # validate ground.json + model.json, print mode and PLATFORM
    uv run prepare.py --memory             # regenerate sessions/memory.md from the ledger
    uv run prepare.py --record-crash sessions/<run_id>.log   # record a run that was killed outright

This file is owned by the user and read-only for the agent. train.py imports it:
`from prepare import MAX_SEQ_LEN, TIME_BUDGET, Tokenizer, make_dataloader, evaluate_bpb`
works as in upstream karpathy/autoresearch, with the same meanings.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import dataclasses
import datetime as _dt
import hashlib
import json
import math
import os
import pickle
import platform as _platform
import queue
import random
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

# ---------------------------------------------------------------------------
# Constants (upstream defaults; the live values come from ground.json)
# ---------------------------------------------------------------------------

REPO_DIR = Path(__file__).resolve().parent


def ground_path() -> Path:
    """ground.json beside this file, unless AUTORESEARCH_GROUND names another (tests, shared setups)."""
    return Path(os.environ.get("AUTORESEARCH_GROUND", REPO_DIR / "ground.json"))


def model_path() -> Path:
    return Path(os.environ.get("AUTORESEARCH_MODEL", REPO_DIR / "model.json"))


HARNESS_VERSION = 1
DOWNLOAD_ATTEMPTS = 5               # per shard, exponential backoff between tries
DOWNLOAD_BACKOFF_S = 2.0            # first wait; doubles each retry
DOWNLOAD_TIMEOUT_S = (10.0, 60.0)   # (connect, read) per request
BUILTIN_TRAIN_SHARDS = 4
BUILTIN_VAL_PERCENT = 8             # of stdlib files, pinned by a hash of the relative path
BUILTIN_DOC_TARGET_CHARS = 2000     # documents of a few KB: a 2048-token row holds ~7 KB of code
BUILTIN_DOC_MAX_CHARS = 4000        # past this a long block is split at method level
LOADER_BUFFER_DOCS = 1000           # best-fit candidates (upstream's buffer_size)
LOADER_PREFETCH_BATCHES = 3         # packed batches kept ready by the background thread


# ---------------------------------------------------------------------------
# Errors: one type, one line, exit code 2
# ---------------------------------------------------------------------------

class ConfigError(Exception):
    """Bad input (config, data, ledger). The message is one line naming the file and key."""


def fail(message: str) -> None:
    """Print one error line and exit 2. Used at the CLI/import boundary only."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)


# ---------------------------------------------------------------------------
# Config schema: frozen dataclasses, every field carries its check
# ---------------------------------------------------------------------------

_REQUIRED = object()      # marks a config key without a default


@dataclass(frozen=True)
class Spec:
    kind: str                      # int | num | str | bool | choice | pair | object | auto_*
    expect: str                    # what a good value looks like, for the error line
    check: Any = None              # extra predicate on the typed value
    choices: tuple = ()
    default: Any = _REQUIRED


def _f(kind, expect, check=None, choices=(), default=_REQUIRED):
    return field(metadata={"spec": Spec(kind, expect, check, tuple(choices), default)})


def _is_pow2(v: int) -> bool:
    return v > 0 and (v & (v - 1)) == 0


@dataclass(frozen=True)
class DataConfig:
    source: str = _f("choice", "one of auto, climbmix, local, builtin", choices=("auto", "climbmix", "local", "builtin"))
    cache_dir: str = _f("str", "a folder path", check=lambda v: v.strip() != "")
    climbmix_url: str = _f("str", "an http(s) URL", check=lambda v: v.startswith(("http://", "https://")))
    num_train_shards: int = _f("int", "an integer >= 1", check=lambda v: v >= 1)
    val_shard: int = _f("int", "an integer >= 0", check=lambda v: v >= 0)
    download_workers: int = _f("int", "an integer between 1 and 64", check=lambda v: 1 <= v <= 64)
    probe_timeout_s: float = _f("num", "a positive number of seconds", check=lambda v: v > 0)
    local_dir: str = _f("str", "a folder path (or \"\" when not using source local)")


@dataclass(frozen=True)
class TokenizerConfig:
    vocab_size: int = _f("int", "an integer between 256 and 65536", check=lambda v: 256 <= v <= 65536)
    split_pattern: str = _f("str", "a non-empty regex", check=lambda v: v != "")
    num_reserved_tokens: int = _f("int", "an integer between 1 and 64", check=lambda v: 1 <= v <= 64)
    bos_token: str = _f("str", "one of the reserved tokens <|reserved_N|>", check=lambda v: re.fullmatch(r"<\|reserved_\d+\|>", v) is not None)
    max_train_chars: int = _f("int", "a positive integer", check=lambda v: v > 0)
    doc_cap_chars: int = _f("int", "a positive integer", check=lambda v: v > 0)


@dataclass(frozen=True)
class ProfileConfig:
    max_seq_len: int = _f("int", "a power of two between 16 and 65536", check=lambda v: _is_pow2(v) and 16 <= v <= 65536)
    time_budget_s: float = _f("num", "a positive number of seconds", check=lambda v: v > 0)
    eval_tokens: int = _f("int", "a positive integer", check=lambda v: v > 0)
    excluded_steps: int = _f("int", "an integer >= 0", check=lambda v: v >= 0)
    max_steps: int = _f("int", "an integer >= 0 (0 = no cap)", check=lambda v: v >= 0, default=0)
    model_caps: dict = _f("object", "an object of model.json integer keys -> caps", default={})


@dataclass(frozen=True)
class ProcessorConfig:
    device: str = _f("choice", "one of auto, cuda, cpu, mps", choices=("auto", "cuda", "cpu", "mps"))
    dtype: str = _f("choice", "one of auto, bfloat16, float16, float32", choices=("auto", "bfloat16", "float16", "float32"))
    compile: Any = _f("auto_bool", "\"auto\", true or false")
    attention: str = _f("choice", "one of auto, fa3, cudnn, flex, sdpa", choices=("auto", "fa3", "cudnn", "flex", "sdpa"))
    peak_flops: Any = _f("auto_num", "\"auto\" or a positive number of FLOP/s")


@dataclass(frozen=True)
class LedgerConfig:
    results: str = _f("str", "a file path", check=lambda v: v.strip() != "")
    sessions_dir: str = _f("str", "a folder path", check=lambda v: v.strip() != "")


@dataclass(frozen=True)
class GroundConfig:
    mode: str = _f("choice", "one of auto, train, test", choices=("auto", "train", "test"))
    data: DataConfig = None
    tokenizer: TokenizerConfig = None
    train: ProfileConfig = None
    test: ProfileConfig = None
    processor: ProcessorConfig = None
    ledger: LedgerConfig = None


@dataclass(frozen=True)
class ModelConfig:
    depth: int = _f("int", "an integer between 1 and 256", check=lambda v: 1 <= v <= 256)
    aspect_ratio: int = _f("int", "a positive integer", check=lambda v: v >= 1)
    head_dim: int = _f("int", "an even integer between 8 and 512", check=lambda v: 8 <= v <= 512 and v % 2 == 0)
    window_pattern: str = _f("str", "a non-empty string of S and L", check=lambda v: re.fullmatch(r"[SL]+", v) is not None)
    total_batch_size: int = _f("int", "a power of two (tokens per optimizer step)", check=_is_pow2)
    device_batch_size: int = _f("int", "a power of two (rows per forward pass)", check=_is_pow2)
    embedding_lr: float = _f("num", "a non-negative number", check=lambda v: v >= 0)
    unembedding_lr: float = _f("num", "a non-negative number", check=lambda v: v >= 0)
    matrix_lr: float = _f("num", "a non-negative number", check=lambda v: v >= 0)
    scalar_lr: float = _f("num", "a non-negative number", check=lambda v: v >= 0)
    weight_decay: float = _f("num", "a non-negative number", check=lambda v: v >= 0)
    adam_betas: tuple = _f("pair", "a list of two numbers in [0, 1)", check=lambda v: all(0 <= b < 1 for b in v))
    warmup_ratio: float = _f("num", "a number in [0, 1]", check=lambda v: 0 <= v <= 1)
    warmdown_ratio: float = _f("num", "a number in [0, 1]", check=lambda v: 0 <= v <= 1)
    final_lr_frac: float = _f("num", "a number in [0, 1]", check=lambda v: 0 <= v <= 1)
    extra: dict = _f("object", "an object of agent-defined scalars (read by train.py)", default={})


MODEL_INT_KEYS = ("depth", "aspect_ratio", "head_dim", "total_batch_size", "device_batch_size")


def _typed(spec: Spec, value: Any):
    """Return the value converted to the spec's type, or None when the type is wrong."""
    is_num = isinstance(value, (int, float)) and not isinstance(value, bool)
    if spec.kind == "int":
        return value if isinstance(value, int) and not isinstance(value, bool) else None
    if spec.kind == "num":
        return float(value) if is_num and math.isfinite(value) else None
    if spec.kind in ("str", "choice"):
        return value if isinstance(value, str) else None
    if spec.kind == "auto_bool":
        return value if value == "auto" or isinstance(value, bool) else None
    if spec.kind == "auto_num":
        return value if value == "auto" or (is_num and value > 0) else None
    if spec.kind == "pair":
        ok = isinstance(value, list) and len(value) == 2 and all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in value)
        return tuple(float(b) for b in value) if ok else None
    if spec.kind == "object":
        return dict(value) if isinstance(value, dict) else None
    raise AssertionError(f"unknown spec kind {spec.kind}")


def _build(cls, raw: Any, fname: str, prefix: str = ""):
    """Validate `raw` against dataclass `cls` and build the frozen object (raises ConfigError)."""
    where = prefix.rstrip(".") or "(top level)"
    if not isinstance(raw, dict):
        raise ConfigError(f"{fname}: key '{where}': expected an object, got {json.dumps(raw)}")
    names = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in names:
            raise ConfigError(f"{fname}: unknown key '{prefix}{key}' (expected one of: {', '.join(names)})")
    values = {}
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        if f.name in _NESTED.get(cls.__name__, {}):
            sub = _NESTED[cls.__name__][f.name]
            if f.name not in raw:
                raise ConfigError(f"{fname}: missing key '{key}' (an object)")
            values[f.name] = _build(sub, raw[f.name], fname, key + ".")
            continue
        spec: Spec = f.metadata["spec"]
        if f.name not in raw:
            if spec.default is not _REQUIRED:
                values[f.name] = spec.default
                continue
            raise ConfigError(f"{fname}: missing key '{key}' ({spec.expect})")
        value = _typed(spec, raw[f.name])
        bad = value is None
        if not bad and spec.kind == "choice":
            bad = value not in spec.choices
        if not bad and spec.check is not None:
            bad = not spec.check(value)
        if bad:
            raise ConfigError(f"{fname}: key '{key}': expected {spec.expect}, got {json.dumps(raw[f.name])}")
        values[f.name] = value
    return cls(**values)


_NESTED = {
    "GroundConfig": {"data": DataConfig, "tokenizer": TokenizerConfig, "train": ProfileConfig,
                     "test": ProfileConfig, "processor": ProcessorConfig, "ledger": LedgerConfig},
}


def _read_json(path: Path) -> Any:
    fname = path.name
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{fname}: file not found at {path}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{fname}: not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None


def load_ground(path: Path | None = None) -> GroundConfig:
    path = Path(path or ground_path())
    cfg = _build(GroundConfig, _read_json(path), path.name)
    for name in ("train", "test"):
        for key, cap in getattr(cfg, name).model_caps.items():
            if key not in MODEL_INT_KEYS:
                raise ConfigError(f"{path.name}: key '{name}.model_caps.{key}': expected one of {', '.join(MODEL_INT_KEYS)}")
            if not (isinstance(cap, int) and not isinstance(cap, bool) and cap >= 1):
                raise ConfigError(f"{path.name}: key '{name}.model_caps.{key}': expected a positive integer, got {json.dumps(cap)}")
    bos_index = int(re.fullmatch(r"<\|reserved_(\d+)\|>", cfg.tokenizer.bos_token).group(1))
    if bos_index >= cfg.tokenizer.num_reserved_tokens:
        raise ConfigError(f"{path.name}: key 'tokenizer.bos_token': expected one of <|reserved_0|>..<|reserved_{cfg.tokenizer.num_reserved_tokens - 1}|>, got {json.dumps(cfg.tokenizer.bos_token)}")
    if cfg.data.source == "local" and not cfg.data.local_dir:
        raise ConfigError(f"{path.name}: key 'data.local_dir': expected a folder path when data.source is local, got \"\"")
    return cfg


def load_model(path: Path | None = None) -> ModelConfig:
    path = Path(path or model_path())
    cfg = _build(ModelConfig, _read_json(path), path.name)
    for key, value in cfg.extra.items():
        if not isinstance(value, (int, float, str, bool)) and value is not None:
            raise ConfigError(f"{path.name}: key 'extra.{key}': expected a number, string, bool or null, got {json.dumps(value)}")
    return cfg


# ---------------------------------------------------------------------------
# Mode and run settings: the effective constants of one run
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Settings:
    mode: str                 # train | test
    mode_reason: str
    max_seq_len: int
    time_budget_s: float
    eval_tokens: int
    excluded_steps: int
    model_caps: dict
    ground: GroundConfig
    cache_dir: Path
    ground_dir: Path
    max_steps: int = 0        # optimizer steps cap (0 = none): stop at the budget or the cap, whichever first

    def path(self, p: str) -> Path:
        """A ground.json path: ~ expanded, relative paths taken from ground.json's folder."""
        q = Path(os.path.expanduser(p))
        return q if q.is_absolute() else self.ground_dir / q


def resolve_mode(requested: str, cuda_available: bool) -> tuple[str, str]:
    if requested != "auto":
        return requested, f"ground.json mode = {requested}"
    if cuda_available:
        return "train", "auto: a CUDA GPU is present"
    return "test", "auto: no CUDA GPU, so the smoke profile (set mode \"train\" in ground.json for the real constants)"


def make_settings(ground: GroundConfig, cuda_available: bool, ground_dir: Path) -> Settings:
    mode, reason = resolve_mode(ground.mode, cuda_available)
    prof = ground.train if mode == "train" else ground.test
    cache = Path(os.path.expanduser(ground.data.cache_dir))
    cache = cache if cache.is_absolute() else ground_dir / cache
    return Settings(mode, reason, prof.max_seq_len, prof.time_budget_s, prof.eval_tokens,
                    prof.excluded_steps, dict(prof.model_caps), ground, cache, ground_dir, prof.max_steps)


def effective_model(model: ModelConfig, settings: Settings, world_size: int = 1) -> tuple[ModelConfig, dict]:
    """Apply the profile's model caps (value = min(model.json, cap)); return the changes made.
    With several processes (torchrun) every one runs device_batch_size rows per micro-step."""
    changes = {}
    for key, cap in settings.model_caps.items():
        value = getattr(model, key)
        if value > cap:
            changes[key] = (value, cap)
    model = dataclasses.replace(model, **{k: v[1] for k, v in changes.items()})
    if world_size > 1:
        # Split the same total batch over more processes: fewer rows per micro-step, the same
        # optimizer steps (micro-batching does not change what is trained). Printed as a change.
        b = model.device_batch_size
        while b > 1 and model.total_batch_size % (b * settings.max_seq_len * world_size) != 0:
            b //= 2
        if b != model.device_batch_size and model.total_batch_size % (b * settings.max_seq_len * world_size) == 0:
            changes["device_batch_size"] = (changes.get("device_batch_size", (model.device_batch_size,))[0], b)
            model = dataclasses.replace(model, device_batch_size=b)
    tokens_per_pass = model.device_batch_size * settings.max_seq_len * world_size
    if model.total_batch_size % tokens_per_pass != 0:
        ws = (" x world_size", f" x {world_size}") if world_size > 1 else ("", "")
        raise ConfigError(
            f"model.json: key 'total_batch_size': expected a multiple of device_batch_size x max_seq_len{ws[0]} = "
            f"{model.device_batch_size} x {settings.max_seq_len}{ws[1]} = {tokens_per_pass}, got {model.total_batch_size}")
    return model, changes


def describe_changes(changes: dict, settings: Settings, world_size: int = 1) -> list[str]:
    """One line per model.json value effective_model changed, saying why: the mode's caps, the split
    over processes, or both (a capped device_batch_size can be halved again for torchrun)."""
    lines = []
    for k, (old, new) in changes.items():
        capped = k in settings.model_caps and settings.model_caps[k] < old
        split = k == "device_batch_size" and new < min(old, settings.model_caps.get(k, old))
        why = " + ".join(w for w, on in ((f"{settings.mode} mode caps", capped),
                                         (f"{world_size} processes split", split)) if on)
        lines.append(f"{why} model.json {k}: {old} -> {new}")
    return lines


_SETTINGS: Settings | None = None


def reset_caches() -> None:
    """Forget the cached settings/PLATFORM/eval rows (tests switch ground.json between cases)."""
    global _SETTINGS, _PLATFORM
    _SETTINGS, _PLATFORM = None, None
    _EVAL_ROWS.clear()


def settings() -> Settings:
    """The run's settings from ground.json (cached). Bad ground.json exits 2 here."""
    global _SETTINGS
    if _SETTINGS is None:
        try:
            ground = load_ground()
        except ConfigError as e:
            fail(str(e))
        _SETTINGS = make_settings(ground, torch.cuda.is_available(), ground_path().resolve().parent)
    return _SETTINGS


# ---------------------------------------------------------------------------
# PLATFORM: device, dtype, attention, compile, peak FLOPs — decided once, with reasons
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


def resolve_platform(hw: dict, proc: ProcessorConfig) -> dict:
    """Pure decision: hardware facts + ground.json processor overrides -> PLATFORM dict.

    hw keys: cuda (bool), mps (bool), os, triton (bool), name, capability (tuple|None),
    sm_count, clock_mhz, fa3 and cudnn ((ok, reason) or None when not probed), world_size.
    """
    reasons = {}
    if proc.device != "auto":
        device = proc.device
        if device == "cuda" and not hw["cuda"]:
            raise ConfigError("ground.json: key 'processor.device': \"cuda\" requested but torch sees no CUDA device")
        if device == "mps" and not hw["mps"]:
            raise ConfigError("ground.json: key 'processor.device': \"mps\" requested but MPS is not available")
        reasons["device"] = "forced by ground.json processor.device"
    else:
        device = "cuda" if hw["cuda"] else "mps" if hw["mps"] else "cpu"
        reasons["device"] = {"cuda": "CUDA GPU found", "mps": "Apple MPS found", "cpu": "no CUDA or MPS device"}[device]
    cc = tuple(hw["capability"]) if device == "cuda" and hw.get("capability") else None
    name = hw.get("name", "cpu") if device == "cuda" else ("Apple MPS" if device == "mps" else _platform.processor() or "cpu")

    # dtype: bf16 where the tensor cores have it (CC >= 8), fp16 + GradScaler on Volta/Turing
    if proc.dtype != "auto":
        dtype = proc.dtype
        reasons["dtype"] = "forced by ground.json processor.dtype"
    elif device == "cuda":
        dtype = "bfloat16" if cc >= (8, 0) else "float16"
        reasons["dtype"] = f"CC {cc[0]}.{cc[1]}: " + ("native bf16" if cc >= (8, 0) else "no bf16 tensor cores, fp16 with GradScaler")
    else:
        dtype = "float32"
        reasons["dtype"] = f"{device}: fp32 (low-precision autocast is slow or incomplete there)"
    use_scaler = dtype == "float16"
    reasons["use_grad_scaler"] = "fp16 gradients underflow without loss scaling" if use_scaler else f"not needed for {dtype}"
    embedding_dtype = "bfloat16" if dtype == "bfloat16" else "float32"
    reasons["embedding_dtype"] = ("bf16 embeddings halve their memory traffic (upstream)" if embedding_dtype == "bfloat16"
                                  else "fp32 master weights (GradScaler cannot unscale fp16 grads)" if use_scaler else "fp32 run")
    ortho_dtype = "bfloat16" if device == "cuda" and cc >= (8, 0) and dtype != "float32" else "float32"
    reasons["ortho_dtype"] = "Muon orthogonalization in " + ("bf16 (native)" if ortho_dtype == "bfloat16" else "fp32 (bf16 not native here)")

    triton_ok = hw["triton"] and hw["os"] != "Windows"
    # compile: needs triton (inductor's GPU codegen); never on Windows; not on Volta/Turing, CPU or MPS by default
    if proc.compile is False:
        compile_ = False
        reasons["compile"] = "disabled by ground.json processor.compile"
    elif device == "cuda" and triton_ok and (proc.compile is True or cc >= (8, 0)):
        compile_ = True
        reasons["compile"] = "forced by ground.json" if proc.compile is True else f"CUDA CC {cc[0]}.{cc[1]} with triton"
    else:
        compile_ = False
        why = "Windows" if hw["os"] == "Windows" else "triton missing" if device == "cuda" and not hw["triton"] else \
              f"CC {cc[0]}.{cc[1]} (pre-Ampere)" if device == "cuda" else f"{device} (eager is faster for small runs)"
        reasons["compile"] = ("requested but unavailable: " if proc.compile is True else "off: ") + why

    # attention: FA3 (kernels) > cuDNN (cudnn-frontend, Hopper+) > FlexAttention (compiled, needs triton) > SDPA
    fa3_ok, fa3_why = hw.get("fa3") or (False, "not probed")
    cudnn_ok, cudnn_why = hw.get("cudnn") or (False, "not probed")
    cuda_16bit = device == "cuda" and dtype in ("bfloat16", "float16")      # what cuDNN attention and the fused MLP take
    cudnn_ok = cudnn_ok and cuda_16bit
    flex_ok = device == "cuda" and triton_ok and cc >= (8, 0)
    if proc.attention == "auto":
        if device == "cuda" and cc >= (9, 0) and fa3_ok:
            attention, reasons["attention"] = "fa3", f"Hopper+: {fa3_why}"
        elif cc and cc >= (9, 0) and cudnn_ok:
            attention = "cudnn"
            reasons["attention"] = f"Hopper+: {cudnn_why}, windows on cuDNN's fused kernel (FA3 not loadable: {fa3_why})"
        elif flex_ok:
            attention = "flex"
            reasons["attention"] = f"CC {cc[0]}.{cc[1]} with triton" + (f" (FA3 not loadable: {fa3_why})" if cc >= (9, 0) else "")
        else:
            attention = "sdpa"
            reasons["attention"] = f"{device}" + (f" CC {cc[0]}.{cc[1]}" if cc else "") + ": SDPA (no flex/FA3 here)"
    elif proc.attention == "fa3" and not (device == "cuda" and fa3_ok):
        attention = "flex" if flex_ok else "sdpa"
        reasons["attention"] = f"fa3 requested but not loadable ({fa3_why}); falling back to {attention}"
    elif proc.attention == "cudnn" and not cudnn_ok:
        attention = "flex" if flex_ok else "sdpa"
        why = cudnn_why if cuda_16bit else f"needs CUDA and bf16/fp16, have {device} {dtype}"
        reasons["attention"] = f"cudnn requested but not usable ({why}); falling back to {attention}"
    elif proc.attention == "flex" and device == "cuda" and not flex_ok:
        attention = "sdpa"
        reasons["attention"] = "flex requested but needs triton and CC >= 8.0 on CUDA; falling back to sdpa"
    else:
        attention = proc.attention
        reasons["attention"] = f"forced by ground.json ({fa3_why})" if attention == "fa3" else \
            f"forced by ground.json ({cudnn_why})" if attention == "cudnn" else "forced by ground.json processor.attention"

    # mlp: ReLU^2 fused into the MLP's matmuls (Triton with TMA) on Hopper+; plain ops elsewhere
    if cuda_16bit and cc >= (9, 0) and triton_ok:
        gluon_bwd = "; backward matmul in Gluon (wgmma)" if cc[0] == 9 and hw.get("gluon") else ""
        mlp, reasons["mlp"] = "triton", f"CC {cc[0]}.{cc[1]} with triton: ReLU^2 in the matmul epilogues (TMA{gluon_bwd})"
    else:
        here = f"{device} CC {cc[0]}.{cc[1]}" if cc else device
        mlp, reasons["mlp"] = "plain", f"plain ops: the fused MLP needs CUDA CC >= 9.0, triton and bf16/fp16 (here {here}, {dtype})"

    if proc.peak_flops != "auto":
        peak, reasons["peak_flops"] = float(proc.peak_flops), "forced by ground.json processor.peak_flops"
    elif device == "cuda":
        peak, reasons["peak_flops"] = peak_flops_for(cc, hw.get("sm_count", 0), hw.get("clock_mhz"), name)
    else:
        peak, reasons["peak_flops"] = 0.0, f"{device}: no reference peak (MFU reported as 0)"

    return {
        "device": device, "device_name": name, "capability": list(cc) if cc else None,
        "dtype": dtype, "use_grad_scaler": use_scaler, "embedding_dtype": embedding_dtype,
        "ortho_dtype": ortho_dtype, "attention": attention, "mlp": mlp, "compile": compile_, "peak_flops": peak,
        "os": hw["os"], "world_size": hw.get("world_size", 1), "reasons": reasons,
    }


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


_FA3 = {}


def load_fa3(capability, timeout_s: float = 3.0):
    """Try to load FA3 through `kernels`. Returns (module|None, reason). Never raises."""
    key = tuple(capability)
    if key in _FA3:
        return _FA3[key]
    if not _importable("kernels"):
        _FA3[key] = (None, "package kernels not installed")
        return _FA3[key]
    repo = FA3_REPO.get(key[0], FA3_COMMUNITY_REPO)
    if not _reachable("https://huggingface.co", timeout_s):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")     # only a cached kernel can load now
    try:
        from kernels import get_kernel
        mod = get_kernel(repo).flash_attn_interface
        _FA3[key] = (mod, f"FA3 loaded from {repo}")
    except Exception as e:  # noqa: BLE001 - any failure to fetch/load a hub kernel means "not loadable"
        _FA3[key] = (None, f"{repo} not loadable offline/uncached ({type(e).__name__})")
    return _FA3[key]


# ---------------------------------------------------------------------------
# cuDNN attention through NVIDIA's cudnn-frontend: sliding windows at cuDNN speed
# ---------------------------------------------------------------------------
# PyTorch's SDPA reaches cuDNN's fused attention only for full-causal masks; the
# frontend's graph API also takes a diagonal band, so the windowed ('S') layers run on
# the same kernel (H200, B128 H4 T2048 D128: see tests/bench_attention.py).

_CUDNN: dict = {}          # "module" -> (module|None, reason); (kind, shapes, window, device) -> built graph


def load_cudnn_frontend():
    """Import cudnn-frontend and check it can talk to the cuDNN torch loaded. (module|None, reason)."""
    if "module" not in _CUDNN:
        try:
            import cudnn
            torch.backends.cudnn.version()          # loads torch's libcudnn first, so the frontend finds it
            backend = cudnn.backend_version()
            _CUDNN["module"] = (cudnn, f"cudnn-frontend {cudnn.__version__} on cuDNN {backend}")
            # whether this cuDNN takes the model's shapes and windows is checked by building the
            # graphs before compiling (confirm_cudnn_attention), not guessed from version numbers
        except Exception as e:  # noqa: BLE001 - missing package or library means "not loadable"
            _CUDNN["module"] = (None, f"cudnn-frontend not loadable ({type(e).__name__}: {str(e)[:80]})")
    return _CUDNN["module"]


def _cudnn_graph(kind: str, q: torch.Tensor, window: int):
    """Build (once per shape) the cuDNN graph for attention 'fwd' or 'bwd' on (B, T, H, D) tensors."""
    B, T, H, D = q.shape
    key = (kind, B, T, H, D, window, q.dtype, q.device.index)
    if key in _CUDNN:
        return _CUDNN[key]
    cudnn = load_cudnn_frontend()[0]
    io = {torch.bfloat16: cudnn.data_type.BFLOAT16, torch.float16: cudnn.data_type.HALF}[q.dtype]
    graph = cudnn.pygraph(io_data_type=io, intermediate_data_type=cudnn.data_type.FLOAT,
                          compute_data_type=cudnn.data_type.FLOAT, handle=_cudnn_handle(q.device))
    dims, strides = [B, H, T, D], [T * H * D, D, H * D, 1]        # (B, T, H, D) memory seen as (B, H, T, D)
    stat_dims, stat_strides = [B, H, T, 1], [H * T, T, 1, 1]
    inputs = {n: graph.tensor(name=n, dim=dims, stride=strides, data_type=io) for n in ("q", "k", "v")}
    # keys j <= i and, for a window w, i - j <= w (FlexAttention / FA3 window_size=(w, 0) semantics)
    band = {"diagonal_alignment": cudnn.diagonal_alignment.TOP_LEFT, "diagonal_band_right_bound": 0}
    if window < T - 1:
        band["diagonal_band_left_bound"] = window + 1
    if kind == "fwd":
        o, stats = graph.sdpa(name="attn", **inputs, generate_stats=True, attn_scale=D ** -0.5, **band)
        o.set_output(True).set_dim(dims).set_stride(strides)
        stats.set_output(True).set_dim(stat_dims).set_stride(stat_strides).set_data_type(cudnn.data_type.FLOAT)
        outputs = {"o": o, "stats": stats}
    else:
        inputs["o"] = graph.tensor(name="o", dim=dims, stride=strides, data_type=io)
        inputs["dO"] = graph.tensor(name="dO", dim=dims, stride=strides, data_type=io)
        inputs["stats"] = graph.tensor(name="stats", dim=stat_dims, stride=stat_strides, data_type=cudnn.data_type.FLOAT)
        dq, dk, dv = graph.sdpa_backward(name="attn_bwd", **inputs, attn_scale=D ** -0.5, **band)
        for t in (dq, dk, dv):
            t.set_output(True).set_dim(dims).set_stride(strides)
        outputs = {"dq": dq, "dk": dk, "dv": dv}
    graph.validate()
    graph.build_operation_graph()
    graph.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
    graph.check_support()
    graph.build_plans()
    _CUDNN[key] = (graph, {**inputs, **outputs})
    return _CUDNN[key]


def confirm_cudnn_attention(platform: dict, shape: tuple, windows: list, device: torch.device) -> str | None:
    """Before compiling: build the cuDNN graphs the model needs ((B, T, H, D) per micro-step, each
    sliding window). If cuDNN cannot take this shape (head_dim, dtype, GPU), the run falls back to
    FlexAttention (or SDPA without compile) — PLATFORM and its reason are updated, and the line to
    print is returned. None when the platform did not choose cuDNN or the graphs built."""
    if platform["attention"] != "cudnn":
        return None
    B, T, H, D = shape
    probe = torch.empty(1, dtype=getattr(torch, platform["dtype"]), device=device).expand(B, T, H, D)
    try:
        for window in sorted({w for w in windows if w < T - 1}):
            for kind in ("fwd", "bwd"):
                _cudnn_graph(kind, probe, window)
    except Exception as e:  # noqa: BLE001 - any cuDNN refusal means "use the next backend"
        fallback = "flex" if platform["compile"] else "sdpa"
        why = f"cuDNN cannot build attention for B={B} T={T} H={H} D={D} ({type(e).__name__}: {str(e)[:120]})"
        platform["attention"] = fallback
        platform["reasons"]["attention"] = f"{why}; falling back to {fallback}"
        return f"attention: cudnn -> {fallback}: {why}"
    return None


def _cudnn_handle(device: torch.device):
    key = ("handle", device.index)
    if key not in _CUDNN:
        with torch.cuda.device(device):
            _CUDNN[key] = load_cudnn_frontend()[0].create_handle()
    return _CUDNN[key]


def _cudnn_execute(kind: str, window: int, **tensors: torch.Tensor) -> None:
    graph, names = _cudnn_graph(kind, tensors["q"], window)
    device = tensors["q"].device
    cudnn = load_cudnn_frontend()[0]
    handle = _cudnn_handle(device)
    cudnn.set_stream(handle=handle, stream=torch.cuda.current_stream(device).cuda_stream)
    workspace = torch.empty(max(graph.get_workspace_size(), 1), dtype=torch.uint8, device=device)
    graph.execute({names[n]: t for n, t in tensors.items()}, workspace, handle=handle)


@torch.library.custom_op("autoresearch::cudnn_attention", mutates_args=())
def _cudnn_attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    B, T, H, _ = q.shape
    o, stats = torch.empty_like(q), torch.empty(B, H, T, 1, dtype=torch.float32, device=q.device)
    _cudnn_execute("fwd", window, q=q, k=k, v=v, o=o, stats=stats)
    return o, stats


@_cudnn_attention_op.register_fake
def _(q, k, v, window):
    B, T, H, _ = q.shape
    return torch.empty_like(q, memory_format=torch.contiguous_format), q.new_empty(B, H, T, 1, dtype=torch.float32)


@torch.library.custom_op("autoresearch::cudnn_attention_backward", mutates_args=())
def _cudnn_attention_backward_op(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor,
                                 stats: torch.Tensor, window: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    q, k, v, o, dout = (t.contiguous() for t in (q, k, v, o, dout))
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    _cudnn_execute("bwd", window, q=q, k=k, v=v, o=o, dO=dout, stats=stats.contiguous(), dq=dq, dk=dk, dv=dv)
    return dq, dk, dv


@_cudnn_attention_backward_op.register_fake
def _(dout, q, k, v, o, stats, window):
    return tuple(torch.empty_like(t, memory_format=torch.contiguous_format) for t in (q, k, v))


def _cudnn_attention_setup(ctx, inputs, output):
    q, k, v, window = inputs
    ctx.save_for_backward(q, k, v, *output)
    ctx.window = window


def _cudnn_attention_grad(ctx, dout, _dstats):
    q, k, v, o, stats = ctx.saved_tensors
    return (*_cudnn_attention_backward_op(dout, q, k, v, o, stats, ctx.window), None)


_cudnn_attention_op.register_autograd(_cudnn_attention_grad, setup_context=_cudnn_attention_setup)


def cudnn_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int) -> torch.Tensor:
    """Causal attention over keys i - window <= j <= i, (B, T, H, D) in and out, bf16/fp16 on CUDA."""
    return _cudnn_attention_op(q, k, v, window)[0]


# ---------------------------------------------------------------------------
# Softcapped cross-entropy as two Triton row kernels (train.py's loss on CUDA)
# ---------------------------------------------------------------------------
# loss_i = logsumexp_j(z_ij) - z_i,t with z = softcap * tanh(logits / softcap), in float32 from 16-bit
# logits. |z| <= softcap, so the sum of exponentials needs no running max; the forward reads each row
# once and keeps one float per row (the log-sum-exp); the backward reads the row again and writes the
# gradient. On CUDA tanh is the hardware's tanh.approx (one special-function op instead of libdevice's
# sequence: the plain-ops version is bound by those); the interpreter (TRITON_INTERPRET=1, CPU tests)
# uses 2 sigmoid(2u) - 1.

try:                                   # not on macOS / Windows wheels: the loss falls back to plain ops
    import triton
    import triton.language as tl
except ImportError:
    triton = None

if triton is not None:
    @triton.jit
    def _softcap_tanh(x, softcap, APPROX: tl.constexpr):
        u = x / softcap
        if APPROX:
            t = tl.inline_asm_elementwise("tanh.approx.f32 $0, $1;", "=f,f", [u], dtype=tl.float32, is_pure=True, pack=1)
        else:
            t = 2 * tl.sigmoid(2 * u) - 1
        return t

    @triton.jit
    def _ce_fwd_kernel(logits, targets, loss, lse_out, V, stride, softcap, BLOCK: tl.constexpr, APPROX: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK)
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        for start in range(0, V, BLOCK):
            m = start + cols < V
            x = tl.load(logits + row * stride + start + cols, mask=m, other=0.0).to(tl.float32)
            acc += tl.where(m, tl.exp(softcap * _softcap_tanh(x, softcap, APPROX)), 0.0)
        lse = tl.log(tl.sum(acc, axis=0))
        t = tl.load(targets + row)
        valid = t != -1
        xt = tl.load(logits + row * stride + tl.where(valid, t, 0)).to(tl.float32)
        zt = softcap * _softcap_tanh(xt, softcap, APPROX)
        tl.store(loss + row, tl.where(valid, lse - zt, 0.0))
        tl.store(lse_out + row, lse)

    @triton.jit
    def _ce_bwd_kernel(logits, targets, lse_in, dloss, grad, V, stride, softcap, BLOCK: tl.constexpr, APPROX: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK)
        t = tl.load(targets + row)
        g = tl.where(t != -1, tl.load(dloss + row), 0.0)
        lse = tl.load(lse_in + row)
        for start in range(0, V, BLOCK):
            c = start + cols
            m = c < V
            x = tl.load(logits + row * stride + c, mask=m, other=0.0).to(tl.float32)
            th = _softcap_tanh(x, softcap, APPROX)
            dz = tl.exp(softcap * th - lse) - tl.where(c == t, 1.0, 0.0)
            tl.store(grad + row * V + c, (g * dz * (1 - th * th)).to(grad.dtype.element_ty), mask=m)


def _ce_launch(logits: torch.Tensor):
    rows, V = logits.shape
    block = min(4096, 1 << (V - 1).bit_length())
    return (rows,), dict(BLOCK=block, APPROX=logits.is_cuda, num_warps=8 if block >= 2048 else 4)


@torch.library.custom_op("autoresearch::softcap_ce", mutates_args=())
def _softcap_ce_op(logits: torch.Tensor, targets: torch.Tensor, softcap: float) -> tuple[torch.Tensor, torch.Tensor]:
    assert logits.stride(-1) == 1 and softcap <= 60, "row-major logits; exp(softcap) must fit float32"
    loss = torch.empty(logits.size(0), dtype=torch.float32, device=logits.device)
    lse = torch.empty_like(loss)
    grid, kw = _ce_launch(logits)
    _ce_fwd_kernel[grid](logits, targets, loss, lse, logits.size(1), logits.stride(0), softcap, **kw)
    return loss, lse


@_softcap_ce_op.register_fake
def _(logits, targets, softcap):
    return logits.new_empty(logits.size(0), dtype=torch.float32), logits.new_empty(logits.size(0), dtype=torch.float32)


@torch.library.custom_op("autoresearch::softcap_ce_backward", mutates_args=())
def _softcap_ce_backward_op(dloss: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor, lse: torch.Tensor,
                            softcap: float) -> torch.Tensor:
    grad = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
    grid, kw = _ce_launch(logits)
    _ce_bwd_kernel[grid](logits, targets, lse, dloss.contiguous(), grad, logits.size(1), logits.stride(0), softcap, **kw)
    return grad


@_softcap_ce_backward_op.register_fake
def _(dloss, logits, targets, lse, softcap):
    return torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)


def _softcap_ce_setup(ctx, inputs, output):
    logits, targets, softcap = inputs
    ctx.save_for_backward(logits, targets, output[1])
    ctx.softcap = softcap


def _softcap_ce_grad(ctx, dloss, _dlse):
    logits, targets, lse = ctx.saved_tensors
    return _softcap_ce_backward_op(dloss, logits, targets, lse, ctx.softcap), None, None


_softcap_ce_op.register_autograd(_softcap_ce_grad, setup_context=_softcap_ce_setup)


def softcap_cross_entropy_rows(logits: torch.Tensor, targets: torch.Tensor, softcap: float) -> torch.Tensor:
    """Per-row cross-entropy of softcap * tanh(logits / softcap) ((N, V) 16-bit or float32 logits, (N,) targets;
    rows whose target is -1 give 0). Triton: CUDA, or the CPU interpreter."""
    return _softcap_ce_op(logits, targets, float(softcap))[0]


# ---------------------------------------------------------------------------
# Rotary embedding + QK-norm as two Triton row kernels (train.py's attention on CUDA)
# ---------------------------------------------------------------------------
# y = rms_norm(rotate(x)) for q and k, rows of head_dim. Compiled plain ops keep the rotated x (a bf16
# copy of q and of k) for the norm's backward; but the backward needs only y, which attention keeps
# anyway, and the per-row 1/rms: dx = rotate^-1(r (dy - y mean(dy y))). So the forward writes y and r
# and nothing else (one tensor less to write per q and k), and the backward reads dy, y and r.

if triton is not None:
    @triton.jit
    def _rope_norm_fwd_kernel(x, cos, sin, y, rstd, rows, T, H, eps, D: tl.constexpr, ROWS: tl.constexpr):
        half: tl.constexpr = D // 2
        r = tl.program_id(0) * ROWS + tl.arange(0, ROWS)[:, None]
        j = tl.arange(0, half)[None, :]
        m = r < rows
        at = r.to(tl.int64) * D + j
        t = (r // H) % T
        c = tl.load(cos + t * half + j, mask=m, other=0.0).to(tl.float32)
        s = tl.load(sin + t * half + j, mask=m, other=0.0).to(tl.float32)
        x1 = tl.load(x + at, mask=m, other=0.0).to(tl.float32)
        x2 = tl.load(x + at + half, mask=m, other=0.0).to(tl.float32)
        o1 = x1 * c + x2 * s                       # upstream's rotation: (x1 cos + x2 sin, x2 cos - x1 sin)
        o2 = x2 * c - x1 * s
        rs = tl.rsqrt((tl.sum(o1 * o1, 1) + tl.sum(o2 * o2, 1)) / D + eps)
        tl.store(y + at, (o1 * rs[:, None]).to(y.dtype.element_ty), mask=m)
        tl.store(y + at + half, (o2 * rs[:, None]).to(y.dtype.element_ty), mask=m)
        tl.store(rstd + r, rs[:, None], mask=m)

    @triton.jit
    def _rope_norm_bwd_kernel(dy, y, rstd, cos, sin, dx, rows, T, H, D: tl.constexpr, ROWS: tl.constexpr):
        half: tl.constexpr = D // 2
        r = tl.program_id(0) * ROWS + tl.arange(0, ROWS)[:, None]
        j = tl.arange(0, half)[None, :]
        m = r < rows
        at = r.to(tl.int64) * D + j
        t = (r // H) % T
        g1 = tl.load(dy + at, mask=m, other=0.0).to(tl.float32)
        g2 = tl.load(dy + at + half, mask=m, other=0.0).to(tl.float32)
        y1 = tl.load(y + at, mask=m, other=0.0).to(tl.float32)
        y2 = tl.load(y + at + half, mask=m, other=0.0).to(tl.float32)
        rs = tl.load(rstd + r, mask=m, other=0.0)
        dot = (tl.sum(g1 * y1, 1) + tl.sum(g2 * y2, 1))[:, None] / D
        d1 = rs * (g1 - y1 * dot)                  # the norm's backward, from its output
        d2 = rs * (g2 - y2 * dot)
        c = tl.load(cos + t * half + j, mask=m, other=0.0).to(tl.float32)
        s = tl.load(sin + t * half + j, mask=m, other=0.0).to(tl.float32)
        tl.store(dx + at, (d1 * c - d2 * s).to(dx.dtype.element_ty), mask=m)      # the rotation's transpose
        tl.store(dx + at + half, (d1 * s + d2 * c).to(dx.dtype.element_ty), mask=m)


def _rope_launch(x: torch.Tensor):
    B, T, H, D = x.shape
    assert D % 2 == 0 and (D & (D - 1)) == 0, "head_dim a power of two"
    rows = B * T * H
    block = max(1, 4096 // D)                       # rows per program: 4096 elements (not tuned)
    return rows, (triton.cdiv(rows, block),), dict(D=D, ROWS=block, num_warps=4)


def _rope_tables(cos: torch.Tensor, sin: torch.Tensor, T: int, half: int):
    cos, sin = cos.reshape(-1, half)[:T], sin.reshape(-1, half)[:T]
    return cos.contiguous(), sin.contiguous()


@torch.library.custom_op("autoresearch::rope_norm", mutates_args=())
def _rope_norm_op(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.contiguous()
    B, T, H, D = x.shape
    cos, sin = _rope_tables(cos, sin, T, D // 2)
    y = torch.empty_like(x)
    rstd = torch.empty(B, T, H, dtype=torch.float32, device=x.device)
    rows, grid, kw = _rope_launch(x)
    _rope_norm_fwd_kernel[grid](x, cos, sin, y, rstd, rows, T, H, torch.finfo(torch.float32).eps, **kw)
    return y, rstd


@_rope_norm_op.register_fake
def _(x, cos, sin):
    B, T, H, _ = x.shape
    return torch.empty_like(x, memory_format=torch.contiguous_format), x.new_empty(B, T, H, dtype=torch.float32)


@torch.library.custom_op("autoresearch::rope_norm_backward", mutates_args=())
def _rope_norm_backward_op(dy: torch.Tensor, y: torch.Tensor, rstd: torch.Tensor, cos: torch.Tensor,
                           sin: torch.Tensor) -> torch.Tensor:
    dy = dy.contiguous()
    B, T, H, D = y.shape
    cos, sin = _rope_tables(cos, sin, T, D // 2)
    dx = torch.empty_like(y)
    rows, grid, kw = _rope_launch(y)
    _rope_norm_bwd_kernel[grid](dy, y, rstd, cos, sin, dx, rows, T, H, **kw)
    return dx


@_rope_norm_backward_op.register_fake
def _(dy, y, rstd, cos, sin):
    return torch.empty_like(y, memory_format=torch.contiguous_format)


def _rope_norm_setup(ctx, inputs, output):
    ctx.save_for_backward(output[0], output[1], inputs[1], inputs[2])


def _rope_norm_grad(ctx, dy, _drstd):
    y, rstd, cos, sin = ctx.saved_tensors
    return _rope_norm_backward_op(dy, y, rstd, cos, sin), None, None


_rope_norm_op.register_autograd(_rope_norm_grad, setup_context=_rope_norm_setup)


def rope_norm(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """rms_norm(rotary(x)) over the last dimension, float32 inside, in x's dtype: x (B, T, H, D) with D a power
    of two, cos and sin holding (T, D/2) values (e.g. (1, T, 1, D/2)). Triton: CUDA, or the CPU interpreter."""
    return _rope_norm_op(x, cos, sin)[0]


# ---------------------------------------------------------------------------
# The ReLU^2 MLP with its activation fused into two Triton matmuls (train.py's MLP on Hopper+)
# ---------------------------------------------------------------------------
# y = relu(x W1^T)^2 W2^T. The plain version writes the pre-activation h, reads it back, writes a =
# relu(h)^2 and keeps h for the backward, which writes da = dy W2, reads da and h and writes dh: four
# passes over an (N, 4d) tensor that do no arithmetic. Here the forward matmul squares in its epilogue
# and writes only a; the backward matmul dy W2 multiplies by the derivative 2 relu(h) = 2 sqrt(a) in
# its epilogue, so h is never stored. The other three matmuls stay on cuBLAS. The kernel is a
# persistent TMA matmul (one program per SM walking the output tiles in grouped order); the
# epilogue works on two half tiles to stay within shared memory. Triton: CUDA with TMA (CC >= 9.0),
# or the CPU interpreter (tests).

RELU2_MM_CONFIG = None   # (BLOCK_M, BLOCK_N, BLOCK_K, stages forward, stages backward, warps); None: by shared memory

if triton is not None:
    @triton.jit
    def _relu2_epilogue(part, aux_desc, c_desc, om, on, BACKWARD: tl.constexpr):
        if BACKWARD:           # dh = da * 2 relu(h), relu(h) = sqrt(a)
            part = 2 * part * tl.sqrt(aux_desc.load([om, on]).to(tl.float32))
        else:                  # a = relu(h)^2
            part = tl.maximum(part, 0.0)
            part = part * part
        c_desc.store([om, on], part.to(c_desc.dtype))

    @triton.jit
    def _relu2_mm_kernel(a_desc, b_desc, c_desc, aux_desc, M, N, K, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                         BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr, PROGRAMS: tl.constexpr, BACKWARD: tl.constexpr):
        tiles_m, tiles_n, tiles_k = tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N), tl.cdiv(K, BLOCK_K)
        per_group = GROUP_M * tiles_n
        half: tl.constexpr = BLOCK_N // 2
        for tile in tl.range(tl.program_id(0), tiles_m * tiles_n, PROGRAMS, flatten=True):
            first_m = (tile // per_group) * GROUP_M
            group_m = min(tiles_m - first_m, GROUP_M)
            om = (first_m + tile % group_m) * BLOCK_M
            on = ((tile % per_group) // group_m) * BLOCK_N
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for kt in range(tiles_k):
                acc = tl.dot(a_desc.load([om, kt * BLOCK_K]), b_desc.load([on, kt * BLOCK_K]).T, acc)
            left, right = tl.split(tl.permute(tl.reshape(acc, (BLOCK_M, 2, half)), (0, 2, 1)))
            _relu2_epilogue(left, aux_desc, c_desc, om, on, BACKWARD)
            _relu2_epilogue(right, aux_desc, c_desc, om, on + half, BACKWARD)


def _relu2_mm_config(device: torch.device) -> tuple:
    if RELU2_MM_CONFIG is not None:
        return RELU2_MM_CONFIG
    if device.type != "cuda":
        return (32, 32, 16, 1, 1, 4)
    smem = torch.cuda.get_device_properties(device).shared_memory_per_block_optin
    return (128, 256, 64, 4, 3, 8) if smem >= 220 * 1024 else (64, 128, 64, 3, 2, 4)


def _relu2_mm(a: torch.Tensor, b: torch.Tensor, aux: torch.Tensor | None = None) -> torch.Tensor:
    """relu(a b^T)^2, or (a b^T) * 2 sqrt(aux) when aux is given; a (M, K), b (N, K), row-major."""
    from triton.tools.tensor_descriptor import TensorDescriptor
    (M, K), N = a.shape, b.size(0)
    bm, bn, bk, stages_fwd, stages_bwd, warps = _relu2_mm_config(a.device)
    c = torch.empty((M, N), dtype=a.dtype, device=a.device)
    sms = torch.cuda.get_device_properties(a.device).multi_processor_count if a.is_cuda else 4
    programs = min(sms, triton.cdiv(M, bm) * triton.cdiv(N, bn))
    descs = (TensorDescriptor.from_tensor(a, [bm, bk]), TensorDescriptor.from_tensor(b, [bn, bk]),
             TensorDescriptor.from_tensor(c, [bm, bn // 2]), TensorDescriptor.from_tensor(c if aux is None else aux, [bm, bn // 2]))
    _relu2_mm_kernel[(programs,)](*descs, M, N, K, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=8, PROGRAMS=programs,
                                  BACKWARD=aux is not None, num_stages=stages_bwd if aux is not None else stages_fwd,
                                  num_warps=warps)
    return c


# On Hopper the backward's matmul runs as a Gluon kernel (Triton's explicit-layout dialect). The Triton
# kernel loads the stored activation only once the tile's products are done, and nothing overlaps that
# wait. Here the bulk-copy engine fetches the activation tile into shared memory at the start of each
# tile, while the tensor cores work, and the next tile's first operand loads overlap this tile's last
# products and its epilogue. H100, default shape: 1.20 ms against 1.32 ms for the Triton kernel (the
# bare matmul takes 0.82 ms, but this one also moves 2.1 GB of activations in and out), about 2 ms a
# step (tests/bench_mlp.py, tests/profile_step.py --gluon). The same kernel as the forward (no
# activation in, relu^2 out) was slower than the Triton one (0.91 vs 0.86 ms), so the forward keeps it.
# wgmma is Hopper's instruction: Blackwell and later keep the Triton kernels.

try:
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma, warpgroup_mma,
                                                                  warpgroup_mma_wait)
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor as GluonDescriptor
    _tma_load = getattr(tma, "async_load", None) or tma.async_copy_global_to_shared      # names differ across
    _tma_store = getattr(tma, "async_store", None) or tma.async_copy_shared_to_global    # triton releases
    _cta_barrier = getattr(gl, "thread_barrier", None) or gl.barrier
except ImportError:                    # triton without Gluon (older, or none): the Triton kernel serves
    gluon = None

RELU2_GLUON = True        # False: the Triton kernel on Hopper too (tests/bench_mlp.py compares them)
RELU2_GLUON_FORWARD = False    # the forward too: slower than the Triton kernel on the H100 (0.91 vs 0.86 ms, tests/bench_mlp.py)
RELU2_GLUON_CONFIG = (128, 256, 32, 6)     # BLOCK_M, BLOCK_N, BLOCK_K, operand buffers: 208 KB of shared memory

if gluon is not None:
    @gluon.constexpr_function
    def _wgmma_layout(BM, BN, num_warps):
        """Warps stacked along M, 16 rows each (a warpgroup of 4 takes 64), each a full-width N instruction."""
        return gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1], instr_shape=[16, BN, 16])

    @gluon.jit
    def _g_tile(tile, tiles_m, per_group, GROUP_M: gl.constexpr, BM: gl.constexpr, BN: gl.constexpr):
        first_m = (tile // per_group) * GROUP_M
        group_m = min(tiles_m - first_m, GROUP_M)
        return (first_m + tile % group_m) * BM, ((tile % per_group) // group_m) * BN

    @gluon.jit
    def _g_load(p, a_desc, b_desc, om, on, k, bars, a_bufs, b_bufs, NUM_BUF: gl.constexpr, pred=True):
        """Operand load number p into buffer p % NUM_BUF (skipped, but counted, where pred is false)."""
        s = p % NUM_BUF
        mbarrier.expect(bars.index(s), a_desc.block_type.nbytes + b_desc.block_type.nbytes, pred=pred)
        _tma_load(a_desc, [om, k], bars.index(s), a_bufs.index(s), pred)
        _tma_load(b_desc, [k, on], bars.index(s), b_bufs.index(s), pred)
        return p + 1

    @gluon.jit
    def _g_mma(c, acc, use_acc, bars, a_bufs, b_bufs, NUM_BUF: gl.constexpr):
        """Product number c: once its operands are in and the previous product is done (which frees the
        buffer the next load writes), issue it asynchronously."""
        s = c % NUM_BUF
        mbarrier.wait(bars.index(s), (c // NUM_BUF) & 1)
        acc = warpgroup_mma_wait(0, deps=(acc,))
        acc = warpgroup_mma(a_bufs.index(s), b_bufs.index(s), acc, use_acc=use_acc, is_async=True)
        return c + 1, acc

    @gluon.jit
    def _relu2_mm_gluon_kernel(a_desc, b_desc, c_desc, aux_desc, M, N, K, GROUP_M: gl.constexpr,
                               NUM_BUF: gl.constexpr, BACKWARD: gl.constexpr, num_warps: gl.constexpr):
        BM: gl.constexpr = c_desc.block_type.shape[0]
        BN: gl.constexpr = c_desc.block_type.shape[1]
        BK: gl.constexpr = a_desc.block_type.shape[1]
        dtype: gl.constexpr = a_desc.dtype
        layout: gl.constexpr = _wgmma_layout(BM, BN, num_warps)
        a_bufs = gl.allocate_shared_memory(dtype, [NUM_BUF, BM, BK], a_desc.layout)
        b_bufs = gl.allocate_shared_memory(dtype, [NUM_BUF, BK, BN], b_desc.layout)
        cbuf = gl.allocate_shared_memory(dtype, [BM, BN], c_desc.layout)     # the aux tile in, the result out
        bars = gl.allocate_shared_memory(gl.int64, [NUM_BUF, 1], mbarrier.MBarrierLayout())
        aux_bar = gl.allocate_shared_memory(gl.int64, [1, 1], mbarrier.MBarrierLayout())
        for i in gl.static_range(NUM_BUF):
            mbarrier.init(bars.index(i), count=1)
        mbarrier.init(aux_bar.index(0), count=1)

        tiles_m = gl.cdiv(M, BM)
        per_group = GROUP_M * gl.cdiv(N, BN)
        pid = gl.program_id(0)
        nprog = gl.num_programs(0)
        num_tiles = gl.cdiv(tiles_m * gl.cdiv(N, BN) - pid, nprog)

        p = 0
        c = 0
        acc = gl.zeros((BM, BN), gl.float32, layout)
        tile = pid
        om, on = _g_tile(tile, tiles_m, per_group, GROUP_M, BM, BN)
        for ki in gl.static_range(NUM_BUF - 1):
            p = _g_load(p, a_desc, b_desc, om, on, ki * BK, bars, a_bufs, b_bufs, NUM_BUF)
        for t in range(num_tiles):
            c, acc = _g_mma(c, acc, False, bars, a_bufs, b_bufs, NUM_BUF)
            tma.store_wait(pendings=0)             # the previous result has left cbuf
            if BACKWARD:                           # this tile's activation, arriving during the products
                mbarrier.expect(aux_bar.index(0), aux_desc.block_type.nbytes)
                _tma_load(aux_desc, [om, on], aux_bar.index(0), cbuf)
            for k in range((NUM_BUF - 1) * BK, K, BK):
                p = _g_load(p, a_desc, b_desc, om, on, k, bars, a_bufs, b_bufs, NUM_BUF)
                c, acc = _g_mma(c, acc, True, bars, a_bufs, b_bufs, NUM_BUF)
            eom = om
            eon = on
            tile += nprog
            om, on = _g_tile(tile, tiles_m, per_group, GROUP_M, BM, BN)
            more = t + 1 < num_tiles
            for ki in gl.static_range(NUM_BUF - 2):  # the next tile's first loads overlap this tile's last products
                p = _g_load(p, a_desc, b_desc, om, on, ki * BK, bars, a_bufs, b_bufs, NUM_BUF, more)
                c, acc = _g_mma(c, acc, True, bars, a_bufs, b_bufs, NUM_BUF)
            p = _g_load(p, a_desc, b_desc, om, on, (NUM_BUF - 2) * BK, bars, a_bufs, b_bufs, NUM_BUF, more)
            acc = warpgroup_mma_wait(0, deps=(acc,))
            if BACKWARD:                           # dh = da * 2 relu(h), relu(h) = sqrt(a)
                mbarrier.wait(aux_bar.index(0), t & 1)
                out = (2 * acc * gl.sqrt(cbuf.load(layout).to(gl.float32))).to(dtype)
                _cta_barrier()                     # every thread has read its activations before cbuf is overwritten
            else:                                  # a = relu(h)^2
                out = gl.maximum(acc, 0.0)
                out = (out * out).to(dtype)
            cbuf.store(out)
            fence_async_shared()
            _tma_store(c_desc, [eom, eon], cbuf)
        tma.store_wait(pendings=0)


_GLUON_CHECKED: set = set()     # (forward?, dtype) pairs whose first call matched torch on this triton


def _relu2_gluon_ok(device: torch.device) -> bool:
    return (RELU2_GLUON and gluon is not None and device.type == "cuda"
            and torch.cuda.get_device_capability(device)[0] == 9)


def _relu2_mm_hopper(a: torch.Tensor, b_kn: torch.Tensor, aux: torch.Tensor | None = None) -> torch.Tensor | None:
    """_relu2_mm_gluon, checked on its first call per kind against torch on the first 128 rows: Gluon's API moves
    between triton releases, so a version whose kernel fails or disagrees turns the Gluon kernels off for the
    process (printed once) and the caller falls back to the Triton kernel (returns None)."""
    global RELU2_GLUON
    kind = (aux is None, a.dtype)
    try:
        c = _relu2_mm_gluon(a, b_kn, aux)
        if kind not in _GLUON_CHECKED:
            h = a[:128].float() @ b_kn.float()
            ref = torch.relu(h).square() if aux is None else h * 2 * aux[:128].float().sqrt()
            err = ((c[:128].float() - ref).norm() / ref.norm()).item() if ref.any() else c[:128].float().norm().item()
            if not err < 2e-2:                      # bf16 outputs measure ~2e-3 (tests/bench_mlp.py); NaN fails too
                raise RuntimeError(f"relative error {err:.2e} against torch on the first rows")
            if ref.any():                           # an all-zero product (c_proj starts at zero) proves little: check again
                _GLUON_CHECKED.add(kind)
        return c
    except Exception as e:  # noqa: BLE001 - any failure of the experimental dialect means "use the Triton kernel"
        RELU2_GLUON = False
        print(f"fused MLP: the Gluon kernel failed on triton {getattr(triton, '__version__', '?')} ({type(e).__name__}: "
              f"{str(e).splitlines()[0][:100] if str(e) else ''}); using the Triton kernels", flush=True)
        return None


def _relu2_mm_gluon(a: torch.Tensor, b_kn: torch.Tensor, aux: torch.Tensor | None = None) -> torch.Tensor:
    """relu(a b)^2, or (a b) * 2 sqrt(aux) when aux is given; a (M, K), b_kn (K, N), row-major, 16-bit."""
    (M, K), N = a.shape, b_kn.size(1)
    bm, bn, bk, buffers = RELU2_GLUON_CONFIG
    c = torch.empty((M, N), dtype=a.dtype, device=a.device)
    gdt = gl.bfloat16 if a.dtype == torch.bfloat16 else gl.float16

    def desc(t, block):
        return GluonDescriptor.from_tensor(t, block, gl.NVMMASharedLayout.get_default_for(block, gdt))
    programs = min(torch.cuda.get_device_properties(a.device).multi_processor_count, triton.cdiv(M, bm) * triton.cdiv(N, bn))
    _relu2_mm_gluon_kernel[(programs,)](desc(a, [bm, bk]), desc(b_kn, [bk, bn]), desc(c, [bm, bn]),
                                       desc(c if aux is None else aux, [bm, bn]), M, N, K, GROUP_M=8,
                                       NUM_BUF=buffers, BACKWARD=aux is not None, num_warps=8)
    return c


@torch.library.custom_op("autoresearch::relu2_mlp", mutates_args=())
def _relu2_mlp_op(x: torch.Tensor, w_fc: torch.Tensor, w_proj: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x2 = x.reshape(-1, x.size(-1)).contiguous()
    a = _relu2_mm_hopper(x2, w_fc.t().contiguous()) if RELU2_GLUON_FORWARD and _relu2_gluon_ok(x.device) else None
    a = _relu2_mm(x2, w_fc.contiguous()) if a is None else a
    return (a @ w_proj.t()).view(*x.shape[:-1], w_proj.size(0)), a


@_relu2_mlp_op.register_fake
def _(x, w_fc, w_proj):
    rows = x.numel() // x.size(-1)
    return x.new_empty(*x.shape[:-1], w_proj.size(0)), x.new_empty(rows, w_fc.size(0))


@torch.library.custom_op("autoresearch::relu2_mlp_backward", mutates_args=())
def _relu2_mlp_backward_op(dy: torch.Tensor, x: torch.Tensor, w_fc: torch.Tensor, w_proj: torch.Tensor,
                           a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x2, dy2 = x.reshape(-1, x.size(-1)), dy.reshape(-1, dy.size(-1)).contiguous()
    dh = _relu2_mm_hopper(dy2, w_proj.contiguous(), aux=a) if _relu2_gluon_ok(dy.device) else None
    dh = _relu2_mm(dy2, w_proj.t().contiguous(), aux=a) if dh is None else dh
    return (dh @ w_fc).view(x.shape), dh.t() @ x2, dy2.t() @ a


@_relu2_mlp_backward_op.register_fake
def _(dy, x, w_fc, w_proj, a):
    return torch.empty_like(x), torch.empty_like(w_fc), torch.empty_like(w_proj)


def _relu2_mlp_setup(ctx, inputs, output):
    x, w_fc, w_proj = inputs
    ctx.save_for_backward(x, w_fc, w_proj, output[1])


def _relu2_mlp_grad(ctx, dy, _da):
    return _relu2_mlp_backward_op(dy, *ctx.saved_tensors)


_relu2_mlp_op.register_autograd(_relu2_mlp_grad, setup_context=_relu2_mlp_setup)


def relu2_mlp(x: torch.Tensor, w_fc: torch.Tensor, w_proj: torch.Tensor) -> torch.Tensor:
    """relu(x w_fc^T)^2 w_proj^T for (..., d) x, (4d, d) w_fc, (d, 4d) w_proj, all one 16-bit dtype; the inner
    width and d multiples of 8 (TMA strides). Triton with TMA: CUDA CC >= 9.0, or the CPU interpreter."""
    return _relu2_mlp_op(x, w_fc, w_proj)[0]


def probe_hardware(proc: ProcessorConfig, probe_fa3: bool = True) -> dict:
    """Collect the facts resolve_platform decides from (impure: touches torch, nvidia-smi, network)."""
    hw = {"cuda": torch.cuda.is_available(), "mps": bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()),
          "os": _platform.system(), "triton": _importable("triton"),
          "gluon": _importable("triton") and _importable("triton.experimental.gluon"), "world_size": int(os.environ.get("WORLD_SIZE", "1"))}
    if hw["cuda"] and proc.device in ("auto", "cuda"):
        p = torch.cuda.get_device_properties(0)
        hw.update(name=p.name, capability=(p.major, p.minor), sm_count=p.multi_processor_count,
                  clock_mhz=(getattr(p, "clock_rate", 0) / 1000) or _nvidia_smi_max_clock())
        if probe_fa3 and proc.attention in ("auto", "fa3") and (p.major >= 9 or proc.attention == "fa3"):
            mod, why = load_fa3((p.major, p.minor), settings().ground.data.probe_timeout_s if _SETTINGS else 3.0)
            hw["fa3"] = (mod is not None, why)
        if proc.attention in ("auto", "cudnn") and (p.major >= 9 or proc.attention == "cudnn"):
            mod, why = load_cudnn_frontend()
            hw["cudnn"] = (mod is not None, why)
    return hw


_PLATFORM: dict | None = None


def get_platform() -> dict:
    global _PLATFORM
    if _PLATFORM is None:
        proc = settings().ground.processor
        try:
            _PLATFORM = resolve_platform(probe_hardware(proc), proc)
        except ConfigError as e:
            fail(str(e))
    return _PLATFORM


def platform_lines(p: dict) -> list[str]:
    keys = ("device", "dtype", "use_grad_scaler", "embedding_dtype", "ortho_dtype", "attention", "mlp", "compile", "peak_flops")
    lines = [f"platform: {p['device_name']} (CC {'.'.join(map(str, p['capability']))})" if p["capability"] else f"platform: {p['device_name']}"]
    for k in keys:
        v = f"{p[k] / 1e12:.1f} TFLOP/s" if k == "peak_flops" else p[k]
        lines.append(f"  {k:16s} {v}  ({p['reasons'][k]})")
    return lines


# ---------------------------------------------------------------------------
# Data sources: climbmix (download), local (user folder), builtin (stdlib, offline)
# ---------------------------------------------------------------------------

def _reachable(url: str, timeout_s: float) -> bool:
    """Short probe so that a flaky network cannot hang the choice of data source."""
    import requests
    try:
        r = requests.head(url, timeout=timeout_s, allow_redirects=True)
        return r.status_code < 400      # a 403/404 means the shard is not there: not a usable source
    except requests.RequestException:
        return False


def data_dir(s: Settings) -> Path:
    return s.cache_dir / "data"


def manifest_path(s: Settings) -> Path:
    return data_dir(s) / "manifest.json"


@contextlib.contextmanager
def _atomic_path(path: Path):
    """Yield a temporary sibling of `path` to write; it replaces `path` only if the write finished.
    The suffix is kept last so that writers that add one (np.save) write exactly there."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.tmp{os.getpid()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    with _atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _atomic_write_text(path: Path, text: str) -> None:
    _atomic_write_bytes(path, text.encode("utf-8"))


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def shard_name(index: int) -> str:
    return f"shard_{index:05d}.parquet"


def _valid_parquet(path: Path) -> bool:
    try:
        return "text" in pq.ParquetFile(path).schema_arrow.names
    except (pa.ArrowException, OSError):
        return False


def download_shard(base_url: str, index: int, out_dir: Path, attempts: int = DOWNLOAD_ATTEMPTS,
                   backoff_s: float = DOWNLOAD_BACKOFF_S) -> Path:
    """Download one shard to .tmp, check its length and parquet footer, then rename. Resumable:
    a finished shard is never fetched again. Raises RuntimeError after `attempts` failures."""
    import requests
    dest = out_dir / shard_name(index)
    if dest.exists():
        return dest
    url = f"{base_url.rstrip('/')}/{shard_name(index)}"
    tmp = dest.with_name(dest.name + ".tmp")
    last = ""
    for attempt in range(attempts):
        if attempt:
            time.sleep(backoff_s * 2 ** (attempt - 1))
        try:
            with requests.get(url, stream=True, timeout=DOWNLOAD_TIMEOUT_S) as r:
                r.raise_for_status()
                expected = int(r.headers.get("Content-Length", -1))
                got = 0
                with open(tmp, "wb") as f:
                    for chunk in r.iter_content(1 << 20):
                        f.write(chunk)
                        got += len(chunk)
            if expected >= 0 and got != expected:
                last = f"truncated: {got} of {expected} bytes"
            elif not _valid_parquet(tmp):
                last = "not a readable parquet file with a text column"
            else:
                os.replace(tmp, dest)
                return dest
        except (requests.RequestException, OSError) as e:
            last = f"{type(e).__name__}: {e}"
        tmp.unlink(missing_ok=True)
    raise RuntimeError(f"download of {url} failed after {attempts} attempts: {last}")


def download_climbmix(s: Settings, num_shards: int, workers: int, backoff_s: float = DOWNLOAD_BACKOFF_S) -> dict:
    d = s.ground.data
    out = data_dir(s) / "climbmix"
    out.mkdir(parents=True, exist_ok=True)
    indices = [i for i in range(num_shards) if i != d.val_shard] + [d.val_shard]
    done, total_bytes, t0 = 0, 0, time.time()
    errors = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(download_shard, d.climbmix_url, i, out, DOWNLOAD_ATTEMPTS, backoff_s): i for i in indices}
        for fut in as_completed(futures):
            try:
                path = fut.result()
                done += 1
                total_bytes += path.stat().st_size
                print(f"\rdownload: {done}/{len(indices)} shards, {total_bytes / 1e6:.1f} MB, {time.time() - t0:.0f}s   ",
                      end="", flush=True)
            except RuntimeError as e:
                errors.append(str(e))
    print()
    if errors:
        raise RuntimeError(f"{len(errors)} shard(s) failed; first: {errors[0]}")
    return {"train": [str(out / shard_name(i)) for i in indices[:-1]], "val": str(out / shard_name(d.val_shard))}


def local_files(s: Settings) -> dict:
    d = s.path(s.ground.data.local_dir)
    if not d.is_dir():
        raise ConfigError(f"ground.json: key 'data.local_dir': expected an existing folder, got {json.dumps(str(d))}")
    files = sorted(p for p in d.iterdir() if p.suffix in (".parquet", ".txt", ".jsonl"))
    if len(files) < 2:
        raise ConfigError(f"ground.json: key 'data.local_dir': expected at least 2 .parquet/.txt/.jsonl files "
                          f"(the last by name is the pinned val file), found {len(files)} in {d}")
    return {"train": [str(p) for p in files[:-1]], "val": str(files[-1])}


_TOPLEVEL = re.compile(r"^(?:async def |def |class |@)")
_METHOD = re.compile(r"^ {4}(?:async def |def |@)")


def split_source(text: str, target: int = BUILTIN_DOC_TARGET_CHARS, max_chars: int = BUILTIN_DOC_MAX_CHARS) -> list[str]:
    """Split one Python source file into documents of a few KB at top-level definitions.
    A block longer than max_chars is split further at method definitions; consecutive pieces
    are merged while they stay under target. Decorators stay with their def; nothing is lost."""
    lines = text.splitlines(keepends=True)

    def cut(ls, pattern):
        pieces, cur = [], []
        for i, line in enumerate(ls):
            prev_decorator = i > 0 and ls[i - 1].lstrip().startswith("@")
            if cur and pattern.match(line) and not prev_decorator:
                pieces.append(cur)
                cur = []
            cur.append(line)
        return pieces + ([cur] if cur else [])

    pieces = []
    for block in cut(lines, _TOPLEVEL):
        if sum(map(len, block)) > max_chars:
            pieces.extend("".join(p) for p in cut(block, _METHOD))
        else:
            pieces.append("".join(block))
    docs, cur = [], ""
    for piece in pieces:
        if cur and len(cur) + len(piece) > target:
            docs.append(cur)
            cur = ""
        cur += piece
    if cur:
        docs.append(cur)
    return [d for d in docs if d.strip()] if any(d.strip() for d in docs) else []


def build_builtin(s: Settings) -> dict:
    """The offline corpus: the running interpreter's standard library, split into documents,
    shuffled deterministically into train shards and a pinned val shard."""
    import sysconfig
    root = Path(sysconfig.get_paths()["stdlib"])
    out = data_dir(s) / "builtin"
    train_docs, val_docs = [], []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if "site-packages" in rel or "dist-packages" in rel:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        is_val = int(hashlib.sha1(rel.encode()).hexdigest(), 16) % 100 < BUILTIN_VAL_PERCENT
        docs = split_source(text)
        (val_docs if is_val else train_docs).extend(docs)
    # exact duplicates (the stdlib repeats boilerplate across files) would leak val into train
    val_docs = list(dict.fromkeys(val_docs))
    seen = set(val_docs)
    train_docs = [d for d in dict.fromkeys(train_docs) if d not in seen]
    random.Random(1337).shuffle(train_docs)
    out.mkdir(parents=True, exist_ok=True)
    train_paths = []
    n = BUILTIN_TRAIN_SHARDS
    for i in range(n):
        p = out / shard_name(i)
        _write_text_parquet(p, train_docs[i::n])
        train_paths.append(str(p))
    vp = out / "shard_val.parquet"
    _write_text_parquet(vp, val_docs)
    print(f"builtin: {len(train_docs):,} train + {len(val_docs):,} val documents from {root} (Python {_platform.python_version()})")
    return {"train": train_paths, "val": str(vp), "stdlib": str(root), "python": _platform.python_version()}


def _write_text_parquet(path: Path, docs: list[str]) -> None:
    with _atomic_path(path) as tmp:
        pq.write_table(pa.table({"text": docs}), tmp, row_group_size=1024)


def read_documents(path: str | Path) -> list[str]:
    """Documents of one data file: parquet `text` column, one per .jsonl line (`text`), one per .txt file."""
    path = Path(path)
    if path.suffix == ".parquet":
        try:
            table = pq.read_table(path, columns=["text"])
        except (pa.ArrowException, KeyError) as e:
            raise ConfigError(f"{path}: expected a parquet file with a 'text' column ({type(e).__name__})") from None
        return [t for t in table.column("text").to_pylist() if t]
    if path.suffix == ".jsonl":
        docs = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    docs.append(json.loads(line)["text"])
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise ConfigError(f"{path}: line {n}: expected a JSON object with a 'text' key") from None
        return docs
    return [path.read_text(encoding="utf-8", errors="replace")]


def prepare_data(s: Settings, source: str | None = None, num_shards: int | None = None,
                 workers: int | None = None) -> dict:
    """Resolve the source (auto: climbmix if reachable, else builtin), materialize files, write the manifest."""
    d = s.ground.data
    source = source or d.source
    reason = f"ground.json data.source = {source}" if source == d.source else f"--source {source}"
    if source == "auto":
        url = f"{d.climbmix_url.rstrip('/')}/{shard_name(d.val_shard)}"
        if _reachable(url, d.probe_timeout_s):
            source, reason = "climbmix", "auto: ClimbMix reachable"
        else:
            source, reason = "builtin", f"auto: ClimbMix not reachable within {d.probe_timeout_s:g}s"
            print("!" * 78)
            print("!! NOTICE: ClimbMix is not reachable; using the BUILTIN offline corpus (Python stdlib).")
            print("!! val_bpb on it is only comparable with other runs on the builtin corpus.")
            print("!" * 78)
    print(f"data: source = {source} ({reason})")
    if source == "climbmix":
        files = download_climbmix(s, num_shards or d.num_train_shards, workers or d.download_workers)
    elif source == "local":
        files = local_files(s)
    else:
        files = build_builtin(s)
    base = data_dir(s).resolve()

    def rel(p):    # paths inside the cache are stored relative to it, so the cache can move
        p = Path(p).resolve()
        return p.relative_to(base).as_posix() if p.is_relative_to(base) else str(p)
    files = dict(files, train=[rel(p) for p in files["train"]], val=rel(files["val"]))
    manifest = {"source": source, "reason": reason, "train": files["train"], "val": files["val"],
                "val_sha256": _file_sha256(data_dir(s) / files["val"]),
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    manifest.update({k: v for k, v in files.items() if k not in ("train", "val")})
    _atomic_write_text(manifest_path(s), json.dumps(manifest, indent=2))
    return _resolve_manifest(s, manifest)


def _resolve_manifest(s: Settings, m: dict) -> dict:
    m = dict(m)
    m["train"] = [str(data_dir(s) / f) for f in m["train"]]     # absolute paths stay absolute
    m["val"] = str(data_dir(s) / m["val"])
    return m


def load_manifest(s: Settings | None = None) -> dict:
    s = s or settings()
    p = manifest_path(s)
    if not p.exists():
        raise ConfigError(f"{p}: no prepared data (run prepare.py first)")
    m = _resolve_manifest(s, json.loads(p.read_text()))
    want = s.ground.data.source
    if want != "auto" and m["source"] != want:
        raise ConfigError(f"ground.json: key 'data.source': is {want!r} but the cache holds {m['source']!r} data (run prepare.py again)")
    return m


# ---------------------------------------------------------------------------
# Tokenizer: rustbpe training -> tiktoken encoding + token_bytes
# ---------------------------------------------------------------------------

def tokenizer_dir(s: Settings) -> Path:
    return s.cache_dir / "tokenizer"


def tokenizer_config_fingerprint(t: TokenizerConfig, manifest: dict) -> str:
    blob = json.dumps({"cfg": dataclasses.asdict(t), "source": manifest["source"],
                       "train": [Path(p).name for p in manifest["train"]], "v": HARNESS_VERSION}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _training_text(manifest: dict, t: TokenizerConfig) -> Iterator[str]:
    total = 0
    for path in manifest["train"]:
        for doc in read_documents(path):
            doc = doc[: t.doc_cap_chars]
            total += len(doc)
            yield doc
            if total >= t.max_train_chars:
                return


def train_tokenizer(s: Settings, manifest: dict, force: bool = False) -> Path:
    """Train (or reuse) the BPE tokenizer. Retrained only when its config or training data change."""
    import rustbpe
    import tiktoken
    t = s.ground.tokenizer
    out = tokenizer_dir(s)
    fp = tokenizer_config_fingerprint(t, manifest)
    meta_path = out / "meta.json"
    if not force and meta_path.exists() and json.loads(meta_path.read_text()).get("config_fingerprint") == fp:
        print(f"tokenizer: reusing {out} (config unchanged, fingerprint {fp})")
        return out
    t0 = time.time()
    specials = [f"<|reserved_{i}|>" for i in range(t.num_reserved_tokens)]
    tok = rustbpe.Tokenizer()
    tok.train_from_iterator(_training_text(manifest, t), t.vocab_size - len(specials), pattern=t.split_pattern)
    ranks = {bytes(k): v for k, v in tok.get_mergeable_ranks()}
    offset = len(ranks)
    enc = tiktoken.Encoding(name="rustbpe", pat_str=tok.get_pattern(), mergeable_ranks=ranks,
                            special_tokens={name: offset + i for i, name in enumerate(specials)})
    sample = "def f(x):\n    return x ** 2  # héllo wörld 🚀\n"
    if enc.decode(enc.encode_ordinary(sample)) != sample:
        raise RuntimeError("tokenizer round-trip check failed")
    token_bytes = torch.tensor([0 if i >= offset else len(enc.decode_single_token_bytes(i)) for i in range(enc.n_vocab)],
                               dtype=torch.int32)
    _atomic_write_bytes(out / "tokenizer.pkl", pickle.dumps(enc))
    with _atomic_path(out / "token_bytes.pt") as tmp:
        torch.save(token_bytes, tmp)
    _atomic_write_text(meta_path, json.dumps({"config_fingerprint": fp, "vocab_size": enc.n_vocab,
                                              "sha256": _file_sha256(out / "tokenizer.pkl")}, indent=2))
    print(f"tokenizer: trained vocab {enc.n_vocab} in {time.time() - t0:.1f}s -> {out}")
    return out


class Tokenizer:
    """Upstream-compatible wrapper around the tiktoken Encoding."""

    def __init__(self, enc, bos_token: str = "<|reserved_0|>"):
        self.enc = enc
        self.bos_token_id = enc.encode_single_token(bos_token)
        self._fingerprint = None

    @classmethod
    def from_directory(cls, tokenizer_dir_: str | Path | None = None):
        s = settings()
        d = Path(tokenizer_dir_) if tokenizer_dir_ else tokenizer_dir(s)
        p = d / "tokenizer.pkl"
        if not p.exists():
            fail(f"{p}: no tokenizer (run prepare.py first)")
        with open(p, "rb") as f:
            return cls(pickle.load(f), s.ground.tokenizer.bos_token)

    def get_vocab_size(self) -> int:
        return self.enc.n_vocab

    def get_bos_token_id(self) -> int:
        return self.bos_token_id

    def encode(self, text, prepend=None, num_threads: int = 8):
        pre = None if prepend is None else (prepend if isinstance(prepend, int) else self.enc.encode_single_token(prepend))
        if isinstance(text, str):
            ids = self.enc.encode_ordinary(text)
            return ([pre] + ids) if pre is not None else ids
        ids = self.enc.encode_ordinary_batch(text, num_threads=num_threads)
        return [([pre] + r) if pre is not None else r for r in ids]

    def decode(self, ids) -> str:
        return self.enc.decode(ids)

    def fingerprint(self) -> str:
        """Hash of the encoding; names the token cache and enters the comparability key."""
        if self._fingerprint is None:
            self._fingerprint = hashlib.sha256(pickle.dumps(self.enc)).hexdigest()[:16]
        return self._fingerprint


def get_token_bytes(device="cpu") -> torch.Tensor:
    p = tokenizer_dir(settings()) / "token_bytes.pt"
    if not p.exists():
        fail(f"{p}: no token_bytes (run prepare.py first)")
    return torch.load(p, map_location=device)


# ---------------------------------------------------------------------------
# Token cache: each data file tokenized once (uint16/uint32 tokens + document offsets)
# ---------------------------------------------------------------------------

def token_cache_paths(s: Settings, tokenizer: Tokenizer, path: str) -> tuple[Path, Path]:
    d = s.cache_dir / "tokens" / tokenizer.fingerprint()
    p = Path(path)
    ident = f"{p.parent.name}/{p.name}/{p.stat().st_size}"    # stable when the cache folder moves
    stem = hashlib.sha1(ident.encode()).hexdigest()[:10] + "_" + p.stem
    return d / f"{stem}.tokens.npy", d / f"{stem}.offsets.npy"


def tokenize_file(s: Settings, tokenizer: Tokenizer, path: str) -> tuple[np.ndarray, np.ndarray]:
    """Return (tokens, offsets) for one data file, each document prefixed by BOS; cached on disk."""
    tok_p, off_p = token_cache_paths(s, tokenizer, path)
    if not (tok_p.exists() and off_p.exists()):
        docs = read_documents(path)
        ids = tokenizer.encode(docs, prepend=tokenizer.get_bos_token_id(), num_threads=os.cpu_count() or 4)
        lens = np.fromiter((len(r) for r in ids), dtype=np.int64, count=len(ids))
        offsets = np.zeros(len(ids) + 1, dtype=np.int64)
        np.cumsum(lens, out=offsets[1:])
        dtype = np.uint16 if tokenizer.get_vocab_size() <= 65536 else np.uint32
        tokens = np.fromiter((t for r in ids for t in r), dtype=dtype, count=int(offsets[-1]))
        for p, arr in ((tok_p, tokens), (off_p, offsets)):
            with _atomic_path(p) as tmp:
                np.save(tmp, arr)
    return np.load(tok_p, mmap_mode="r"), np.load(off_p)


# ---------------------------------------------------------------------------
# Dataloader: BOS-aligned best-fit packing, 100% utilization, prefetched off the critical path
# ---------------------------------------------------------------------------

class BestFitPacker:
    """Fills rows of `capacity` tokens from a document stream. Each row starts at a document
    start (BOS); the largest buffered document that fits goes next; when none fits, the
    shortest is cropped to fill the row (its remainder is dropped, as upstream). A finite
    stream raises EOFError once the buffer cannot fill a row."""

    def __init__(self, docs: Iterator[tuple[np.ndarray, int]], capacity: int, buffer_size: int = LOADER_BUFFER_DOCS):
        self.docs, self.capacity, self.buffer_size = docs, capacity, buffer_size
        self.lens: list[int] = []     # ascending
        self.buf: list[np.ndarray] = []
        self.epoch = 1
        self.exhausted = False

    def _fill(self):
        while not self.exhausted and len(self.lens) < self.buffer_size:
            try:
                doc, self.epoch = next(self.docs)
            except StopIteration:
                self.exhausted = True
                break
            i = bisect.bisect_right(self.lens, len(doc))
            self.lens.insert(i, len(doc))
            self.buf.insert(i, doc)

    def fill_row(self, row: np.ndarray) -> None:
        pos, cap = 0, self.capacity
        lens, buf = self.lens, self.buf
        while pos < cap:
            self._fill()
            if not lens:
                raise EOFError("document stream exhausted")
            remaining = cap - pos
            i = bisect.bisect_right(lens, remaining) - 1
            if i >= 0:
                n = lens.pop(i)
                row[pos:pos + n] = buf.pop(i)
                pos += n
            else:
                lens.pop(0)
                row[pos:cap] = buf.pop(0)[:remaining]
                pos = cap


def _document_stream(s: Settings, tokenizer: Tokenizer, files: list[str], loop: bool) -> Iterator[tuple[np.ndarray, int]]:
    epoch = 1
    while True:
        for path in files:
            tokens, offsets = tokenize_file(s, tokenizer, path)
            for j in range(len(offsets) - 1):
                yield tokens[offsets[j]:offsets[j + 1]], epoch
        if not loop:
            return
        epoch += 1


def _pin_ok(device: torch.device) -> bool:
    return device.type == "cuda"


def make_dataloader(tokenizer: Tokenizer, B: int, T: int, split: str, buffer_size: int = LOADER_BUFFER_DOCS,
                    device: str | torch.device | None = None, rank: int = 0, world_size: int = 1,
                    prefetch: int = LOADER_PREFETCH_BATCHES):
    """Yield (inputs, targets, epoch) forever: int64 tensors of shape (B, T) on the run's device.
    Rows are packed by a background thread into pinned buffers; the copy to the GPU is async.

    With world_size > 1 (torchrun) every rank packs the same global batch of B x world_size
    rows and keeps rows [rank x B, (rank + 1) x B): the ranks together see exactly the rows a
    single process with world_size x the gradient accumulation would see, in the same order."""
    assert split in ("train", "val"), f"split must be 'train' or 'val', got {split!r}"
    s = settings()
    try:
        m = load_manifest(s)
    except ConfigError as e:
        fail(str(e))
    files = m["train"] if split == "train" else [m["val"]]
    device = torch.device(device or get_platform()["device"])
    # train loops over its files (epoch counts the passes); val is one pass, never repeated
    packer = BestFitPacker(_document_stream(s, tokenizer, files, split == "train"), T + 1, buffer_size)
    lo = rank * B
    scratch = np.empty(T + 1, dtype=np.int32)         # other ranks' rows: packed, then dropped
    bos = tokenizer.get_bos_token_id()
    nbuf = prefetch + 2
    pinned = [torch.empty((B, T + 1), dtype=torch.int32, pin_memory=_pin_ok(device)) for _ in range(nbuf)]
    free: queue.Queue = queue.Queue()
    ready: queue.Queue = queue.Queue(maxsize=prefetch)
    for i in range(nbuf):
        free.put((i, None))
    stop = threading.Event()

    def produce():
        while not stop.is_set():
            i, ev = free.get()
            if ev is not None:
                ev.synchronize()          # the async copy out of this buffer has finished
            rows = pinned[i].numpy()
            g, filled = 0, 0
            try:
                for g in range(B * world_size):
                    if lo <= g < lo + B:
                        packer.fill_row(rows[g - lo])
                        filled = g - lo + 1
                    else:
                        packer.fill_row(scratch)
            except EOFError:            # val data ran out: BOS rows score 0 bytes, so they count for nothing
                rows[filled:] = bos
                ready.put((i, packer.epoch) if g else (None, None))
                if g:
                    ready.put((None, None))
                return
            except Exception as e:  # noqa: BLE001 - handed to the consumer, which re-raises it
                ready.put((None, e))
                return
            ready.put((i, packer.epoch))

    worker = threading.Thread(target=produce, name=f"loader-{split}", daemon=True)
    worker.start()
    try:
        while True:
            i, epoch = ready.get()
            if i is None:
                if epoch is None:
                    return
                raise epoch
            buf = pinned[i]
            if device.type == "cuda":
                gpu = buf.to(device, non_blocking=True)
                ev = torch.cuda.Event()
                ev.record()
                free.put((i, ev))
                gpu = gpu.long()
            else:
                gpu = buf.to(device=device, dtype=torch.long, copy=True)
                free.put((i, None))
            yield gpu[:, :-1].contiguous(), gpu[:, 1:].contiguous(), epoch
    finally:
        stop.set()


# ---------------------------------------------------------------------------
# Evaluation: bits per byte — the fixed metric, do not change
# ---------------------------------------------------------------------------

def val_rows_available(s: Settings, tokenizer: Tokenizer, manifest: dict) -> int:
    """How many packed val rows of MAX_SEQ_LEN + 1 tokens the val file fills before it would wrap."""
    tok_p, _ = token_cache_paths(s, tokenizer, manifest["val"])
    limit = s.eval_tokens // s.max_seq_len
    memo = tok_p.with_name(tok_p.name.replace(".tokens.npy", f".rows_T{s.max_seq_len}_max{limit}.json"))
    if memo.exists():
        return json.loads(memo.read_text())["rows"]
    packer = BestFitPacker(_document_stream(s, tokenizer, [manifest["val"]], False), s.max_seq_len + 1)
    row = np.empty(s.max_seq_len + 1, dtype=np.int32)
    rows = 0
    try:
        while rows < limit:
            packer.fill_row(row)
            rows += 1
    except EOFError:
        pass
    _atomic_write_text(memo, json.dumps({"rows": rows}))
    return rows


_EVAL_ROWS: dict = {}


def eval_rows(tokenizer: Tokenizer, s: Settings | None = None, verbose: bool = False) -> tuple[int, str]:
    """Rows the metric scores: eval_tokens // MAX_SEQ_LEN, capped (loudly) at what the val file holds."""
    s = s or settings()
    key = (id(s), tokenizer.fingerprint())
    if key not in _EVAL_ROWS:
        wanted = max(1, s.eval_tokens // s.max_seq_len)
        try:
            have = val_rows_available(s, tokenizer, load_manifest(s))
        except ConfigError as e:
            fail(str(e))
        if have < wanted:
            note = (f"eval: the val file holds only {have} rows of {s.max_seq_len} tokens; scoring {have * s.max_seq_len:,} "
                    f"tokens instead of eval_tokens = {s.eval_tokens:,} (recorded in the comparability key)")
        else:
            note = f"eval: {wanted} rows x {s.max_seq_len} = {wanted * s.max_seq_len:,} tokens"
        _EVAL_ROWS[key] = (max(1, min(have, wanted)), note)
    if verbose:
        print(("!! " if "only" in _EVAL_ROWS[key][1] else "") + _EVAL_ROWS[key][1])
    return _EVAL_ROWS[key]


@torch.no_grad()
def evaluate_bpb(model, tokenizer: Tokenizer, batch_size: int) -> float:
    """Bits per byte on the pinned val data: summed next-token loss (nats) over the first
    eval_tokens // MAX_SEQ_LEN packed val rows, divided by ln 2 x the UTF-8 bytes of the
    targets. Special tokens (0 bytes) are excluded from both sums. Independent of batch_size
    and of the number of processes: the same rows are scored whatever the batch (the last
    batch is masked, not reshaped); under torchrun each rank scores its share of every global
    batch and the two sums are all-reduced."""
    import torch.distributed as dist
    s = settings()
    T = s.max_seq_len
    rows, _ = eval_rows(tokenizer, s)
    distributed = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    device = torch.device(get_platform()["device"])
    token_bytes = get_token_bytes(device=device)
    loader = make_dataloader(tokenizer, batch_size, T, "val", device=device, rank=rank, world_size=world)
    total = torch.zeros(2, dtype=torch.float64, device=device)     # nats, bytes
    row_ids = torch.arange(batch_size, device=device)[:, None]
    done = 0                                                         # global rows before this batch
    while done < rows:
        x, y, _ = next(loader)
        loss = model(x, y, reduction="none").view(batch_size, T).float()
        nbytes = token_bytes[y]
        nbytes = torch.where(done + rank * batch_size + row_ids < rows, nbytes, 0)
        total[0] += (loss * (nbytes > 0)).sum(dtype=torch.float64)
        total[1] += nbytes.sum(dtype=torch.float64)
        done += batch_size * world
    loader.close()
    if distributed:
        dist.all_reduce(total)
    return (total[0] / (math.log(2) * total[1])).item()


# ---------------------------------------------------------------------------
# Upstream-compatible module constants (resolved lazily from ground.json)
# ---------------------------------------------------------------------------

def __getattr__(name: str):
    if name == "MAX_SEQ_LEN":
        return settings().max_seq_len
    if name == "TIME_BUDGET":
        return settings().time_budget_s
    if name == "EVAL_TOKENS":
        return settings().eval_tokens
    if name == "VOCAB_SIZE":
        return settings().ground.tokenizer.vocab_size
    if name == "CACHE_DIR":
        return str(settings().cache_dir)
    if name == "PLATFORM":
        return get_platform()
    raise AttributeError(f"module 'prepare' has no attribute {name!r}")


# ---------------------------------------------------------------------------
# Ledger: results.tsv (append-only, under a file lock) and one strict parser
# ---------------------------------------------------------------------------

LEDGER_COLUMNS = ("run_id", "commit", "val_bpb", "memory_gb", "status", "description", "peak_vram_mb", "mfu_percent",
                  "training_seconds", "total_tokens_M", "num_params_M", "num_steps", "mode", "comparability_key", "timestamp")
STATUSES = ("baseline", "keep", "discard", "crash", "interrupted")
_FLOAT_COLS = ("val_bpb", "memory_gb", "peak_vram_mb", "mfu_percent", "training_seconds", "total_tokens_M", "num_params_M")
_REQUIRED_COLS = ("commit", "val_bpb", "status", "description")
LEGACY_KEY = "legacy"          # comparability key given to rows from upstream/fork ledgers that have none


def ledger_paths(s: Settings | None = None) -> tuple[Path, Path]:
    s = s or settings()
    return s.path(s.ground.ledger.results), s.path(s.ground.ledger.sessions_dir)


def _lock(results: Path):
    from filelock import FileLock
    results.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(results) + ".lock", timeout=120)


def clean_text(text: str, limit: int = 200) -> str:
    """One line, no tabs: safe inside a TSV cell and a markdown table."""
    return re.sub(r"[\t\r\n|]+", " ", str(text)).strip()[:limit]


def read_ledger(path: Path, warn=None) -> list[dict]:
    """Parse a ledger: ours (15 columns), upstream's 5-column or the fork's 9-column one, by header.
    Typed rows; crash rows get val_bpb None (upstream's 0.000000 included). A corrupt line is
    warned about and skipped, never rewritten."""
    warn = warn or (lambda m: print(f"warning: {m}", file=sys.stderr))
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8", errors="replace").split("\n")
    header = lines[0].rstrip("\r").split("\t")
    missing = [c for c in _REQUIRED_COLS if c not in header]
    if missing:
        raise ConfigError(f"{path.name}: header line: expected a ledger header with columns {', '.join(_REQUIRED_COLS)}; missing {', '.join(missing)}")
    rows = []
    for n, line in enumerate(lines[1:], 2):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        cells = line.split("\t")
        if len(cells) != len(header):
            warn(f"{path.name}:{n}: skipped: {len(cells)} fields, expected {len(header)}")
            continue
        raw = dict(zip(header, cells))
        row = {c: None for c in LEDGER_COLUMNS}
        try:
            for c in header:
                if c not in row:
                    continue
                v = raw[c]
                if c in _FLOAT_COLS:
                    row[c] = float(v) if v not in ("", "nan") else None
                elif c == "num_steps":
                    row[c] = int(float(v)) if v else None
                else:
                    row[c] = v
        except ValueError:
            warn(f"{path.name}:{n}: skipped: {c} = {raw[c]!r} is not a number")
            continue
        if row["status"] not in STATUSES:
            warn(f"{path.name}:{n}: skipped: unknown status {row['status']!r}")
            continue
        if row["status"] in ("crash", "interrupted") or (row["val_bpb"] is not None and not math.isfinite(row["val_bpb"])):
            row["val_bpb"] = None        # upstream wrote 0.000000 for crashes: never a best result
        row["run_id"] = row["run_id"] or f"line{n}-{row['commit']}"
        row["comparability_key"] = row["comparability_key"] or LEGACY_KEY
        row["line"] = n
        rows.append(row)
    return rows


def _fmt(v, digits=6) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def ledger_line(row: dict) -> str:
    digits = {"val_bpb": 6, "memory_gb": 1, "peak_vram_mb": 1, "mfu_percent": 2, "training_seconds": 1,
              "total_tokens_M": 1, "num_params_M": 1}
    return "\t".join(clean_text(_fmt(row.get(c), digits.get(c, 6)), 300) for c in LEDGER_COLUMNS) + "\n"


def decide_status(rows: list[dict], key: str, val_bpb: float | None) -> str:
    if val_bpb is None or not math.isfinite(val_bpb):
        return "crash"
    best = [r["val_bpb"] for r in rows if r["comparability_key"] == key and r["status"] in ("baseline", "keep")
            and r["val_bpb"] is not None]
    if not best:
        return "baseline"
    return "keep" if val_bpb < min(best) else "discard"


def append_record(results: Path, sessions: Path, row: dict, index_entry: dict, status: str | None = None) -> dict:
    """Under the ledger lock: decide the status (unless given), append the row and its index
    entry, regenerate memory.md. Returns the row as written."""
    with _lock(results):
        rows = read_ledger(results, warn=lambda m: None)
        row = dict(row)
        row["status"] = status or decide_status(rows, row["comparability_key"], row.get("val_bpb"))
        if row["status"] in ("crash", "interrupted"):
            row["val_bpb"] = None
        new = not results.exists() or results.stat().st_size == 0
        with open(results, "a", encoding="utf-8") as f:
            if new:
                f.write("\t".join(LEDGER_COLUMNS) + "\n")
            f.write(ledger_line(row))
            f.flush()
            os.fsync(f.fileno())
        sessions.mkdir(parents=True, exist_ok=True)
        with open(sessions / "index.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(dict(index_entry, run_id=row["run_id"]), sort_keys=True) + "\n")
        write_memory(results, sessions)
    return row


# ---------------------------------------------------------------------------
# Memory: sessions/memory.md, a bounded digest regenerated from the whole ledger
# ---------------------------------------------------------------------------

MEMORY_MAX_BYTES = 8192        # generated part; the agent's ## Notes are kept verbatim on top
MEMORY_TOP = 5
MEMORY_RECENT = 8
MEMORY_VALUES_PER_KEY = 6
NOTES_HEADER = "## Notes"


def read_index(sessions: Path) -> dict:
    out = {}
    p = sessions / "index.jsonl"
    if p.exists():
        for line in p.read_text(encoding="utf-8").splitlines():
            try:
                e = json.loads(line)
                out[e["run_id"]] = e
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
    return out


def _flat(model: dict) -> dict:
    flat = {}
    for k, v in (model or {}).items():
        if isinstance(v, dict):
            flat.update({f"{k}.{kk}": vv for kk, vv in v.items()})
        else:
            flat[k] = v
    return flat


def _v(v) -> str:
    return json.dumps(v) if not isinstance(v, str) else v


def _bpb(v) -> str:
    return "—" if v is None else f"{v:.6f}"


def render_memory(rows: list[dict], index: dict, notes: str) -> str:
    """Deterministic digest of the ledger (same inputs -> same bytes)."""
    out = ["# memory.md — generated from results.tsv after every run; edit only the Notes section at the end", ""]
    if not rows:
        out += ["No runs recorded yet. Start with a baseline run: `uv run train.py`.", ""]
        return "\n".join(out) + "\n" + (notes or f"{NOTES_HEADER}\n\n")
    key = rows[-1]["comparability_key"]
    cur = [r for r in rows if r["comparability_key"] == key]
    others = {}
    for r in rows:
        if r["comparability_key"] != key:
            others[r["comparability_key"]] = others.get(r["comparability_key"], 0) + 1
    counts = {st: sum(r["status"] == st for r in cur) for st in STATUSES}
    scored = [r for r in cur if r["val_bpb"] is not None and r["status"] in ("baseline", "keep", "discard")]
    kept = [r for r in cur if r["status"] in ("baseline", "keep") and r["val_bpb"] is not None]
    best = min(kept, key=lambda r: (r["val_bpb"], r["line"])) if kept else None
    since = 0
    for r in reversed(cur):
        if r["status"] in ("baseline", "keep"):
            break
        since += 1
    out += ["## Summary",
            f"- comparability key: `{key}` — {len(cur)} runs: " + ", ".join(f"{counts[s]} {s}" for s in STATUSES)]
    if others:
        out.append("- other keys (not compared): " + ", ".join(f"`{k}` ({n})" for k, n in sorted(others.items())[:6]))
    if best:
        out.append(f"- best: val_bpb {best['val_bpb']:.6f} — {best['run_id']} ({best['commit']}) — {clean_text(best['description'], 80)}")
    out.append(f"- runs since last improvement: {since}")
    places = {}
    for r in cur:
        e = index.get(r["run_id"], {})
        if e.get("branch") or e.get("worktree"):
            where = f"{e.get('branch') or '?'} @ {e.get('worktree') or '?'}"
            places[where] = places.get(where, 0) + 1
    several = len(places) > 1
    if several:                                            # several agents share this ledger
        out.append("- runs by branch @ worktree: " + ", ".join(f"{w} ({n})" for w, n in sorted(places.items())[:6]))
    out.append("")

    best_model = _flat(index.get(best["run_id"], {}).get("model")) if best else {}
    if best_model:
        out += ["## Best configuration", "`" + ", ".join(f"{k}={_v(best_model[k])}" for k in sorted(best_model)) + "`", ""]

    last = cur[-1]
    last_entry = index.get(last["run_id"], {})
    out += ["## Last run vs best",
            f"- last: {last['run_id']} — {last['status']} — val_bpb {_bpb(last['val_bpb'])} — {clean_text(last['description'], 80)}"]
    if last["status"] in ("crash", "interrupted") and last_entry.get("error"):
        out.append(f"- reason: {clean_text(last_entry['error'], 160)}")
    if best and best_model and last is not best:
        lm = _flat(last_entry.get("model"))
        diff = [f"{k}: {_v(best_model.get(k))} -> {_v(lm.get(k))}" for k in sorted(set(lm) | set(best_model))
                if lm.get(k) != best_model.get(k)]
        out.append("- model.json vs best: " + ("; ".join(diff) if diff else "identical (the change was in train.py)" if lm else "unknown"))
    fp = last_entry.get("fingerprint")
    if fp:
        same = [r for r in cur[:-1] if index.get(r["run_id"], {}).get("fingerprint") == fp]
        if same:
            out.append(f"- WARNING: this exact config (model.json + train.py fingerprint {fp}) was already run "
                       f"{len(same)} time(s): " + ", ".join(f"{r['run_id']} ({_bpb(r['val_bpb'])})" for r in same[-3:]))
    out.append("")

    if scored:
        out += ["## Top runs", "| # | val_bpb | status | run_id | description |", "|---|---|---|---|---|"]
        for i, r in enumerate(sorted(scored, key=lambda r: (r["val_bpb"], r["line"]))[:MEMORY_TOP], 1):
            out.append(f"| {i} | {r['val_bpb']:.6f} | {r['status']} | {r['run_id']} | {clean_text(r['description'], 60)} |")
        out.append("")

    out += ["## Recent runs", "| run_id | status | val_bpb | vs best | description / reason |", "|---|---|---|---|---|"]
    for r in cur[-MEMORY_RECENT:]:
        delta = f"{r['val_bpb'] - best['val_bpb']:+.4f}" if best and r["val_bpb"] is not None else ""
        text = clean_text(r["description"], 50)
        if several:
            text = f"[{index.get(r['run_id'], {}).get('branch') or '?'}] " + text
        err = index.get(r["run_id"], {}).get("error")
        if r["status"] in ("crash", "interrupted") and err:
            text += " — " + clean_text(err, 70)
        out.append(f"| {r['run_id']} | {r['status']} | {_bpb(r['val_bpb'])} | {delta} | {text} |")
    out.append("")

    groups = {}
    for r in scored:
        f = index.get(r["run_id"], {}).get("fingerprint")
        if f:
            groups.setdefault(f, []).append(r["val_bpb"])
    repeats = {f: v for f, v in groups.items() if len(v) > 1}
    if repeats:
        out += ["## Noise (same config run more than once)"]
        for f, v in sorted(repeats.items(), key=lambda kv: -len(kv[1]))[:4]:
            out.append(f"- {f}: {len(v)} runs, val_bpb {min(v):.6f}..{max(v):.6f} (spread {max(v) - min(v):.6f})")
        out.append("")

    tried = {}
    for r in cur:
        m = _flat(index.get(r["run_id"], {}).get("model"))
        for k, val in m.items():
            slot = tried.setdefault(k, {}).setdefault(_v(val), [None, 0, 0])
            slot[1] += 1
            if r["val_bpb"] is not None and r["status"] != "interrupted":
                slot[0] = r["val_bpb"] if slot[0] is None else min(slot[0], r["val_bpb"])
            if r["status"] == "crash":
                slot[2] += 1
    varied = {k: v for k, v in tried.items() if len(v) > 1}
    if varied:
        out += ["## Hyperparameters tried (value -> best val_bpb, runs; dead ends are values never best)",
                "| key | values |", "|---|---|"]
        for k in sorted(varied):
            items = sorted(varied[k].items(), key=lambda kv: (kv[1][0] is None, kv[1][0] or 0.0, kv[0]))
            cells = [f"{val} -> {_bpb(b)} ({n}{', ' + str(c) + ' crash' if c else ''})" for val, (b, n, c) in items[:MEMORY_VALUES_PER_KEY]]
            if len(items) > MEMORY_VALUES_PER_KEY:
                cells.append(f"+{len(items) - MEMORY_VALUES_PER_KEY} more")
            out.append(f"| {k} | {'; '.join(cells)} |")
        out.append("")

    text = "\n".join(out)
    while len(text.encode()) > MEMORY_MAX_BYTES:        # bounded whatever the ledger holds
        out = out[:-2] + [out[-1]] if len(out) > 3 else out[:1]
        text = "\n".join(out + ["(truncated to stay under 8 KB)", ""])
    return text + "\n" + (notes or f"{NOTES_HEADER}\n\n(Agent: keep your hypotheses, lessons and plans here; this section is preserved.)\n")


def read_notes(memory: Path) -> str:
    if not memory.exists():
        return ""
    text = memory.read_text(encoding="utf-8")
    i = text.find("\n" + NOTES_HEADER)
    if text.startswith(NOTES_HEADER):
        return text
    return text[i + 1:] if i >= 0 else ""


def write_memory(results: Path, sessions: Path) -> Path:
    """Regenerate sessions/memory.md atomically (call under the ledger lock)."""
    memory = sessions / "memory.md"
    text = render_memory(read_ledger(results), read_index(sessions), read_notes(memory))
    _atomic_write_text(memory, text)
    return memory


def regenerate_memory(s: Settings | None = None) -> Path:
    results, sessions = ledger_paths(s)
    with _lock(results):
        return write_memory(results, sessions)


# ---------------------------------------------------------------------------
# Run records: train.py calls start_run() once; every outcome is recorded
# ---------------------------------------------------------------------------

def _git(*args: str) -> str:
    try:
        out = subprocess.run(["git", *args], cwd=REPO_DIR, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def git_info() -> dict:
    return {"commit": _git("rev-parse", "--short=7", "HEAD") or "nocommit",
            "subject": _git("log", "-1", "--format=%s"),
            "dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
            "branch": _git("rev-parse", "--abbrev-ref", "HEAD"),
            "worktree": str(REPO_DIR)}


def config_fingerprint(train_py: Path | None = None) -> str:
    h = hashlib.sha256()
    for p in (model_path(), train_py or REPO_DIR / "train.py"):
        h.update(p.read_bytes() if p.exists() else b"")
    return h.hexdigest()[:12]


def comparability_key(s: Settings, tokenizer: Tokenizer, manifest: dict) -> str:
    rows, _ = eval_rows(tokenizer, s)
    blob = json.dumps({"source": manifest["source"], "val": manifest["val_sha256"], "tok": tokenizer.fingerprint(),
                       "T": s.max_seq_len, "eval": rows * s.max_seq_len, "budget": s.time_budget_s, "mode": s.mode,
                       "world": get_platform()["world_size"], "max_steps": s.max_steps,
                       "caps": s.model_caps if s.mode == "test" else {}}, sort_keys=True)
    return f"{manifest['source']}-{s.mode}-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"


def library_versions() -> dict:
    import importlib.metadata as md
    out = {"python": _platform.python_version(), "torch": torch.__version__}
    for name in ("numpy", "tiktoken", "rustbpe", "pyarrow", "kernels", "triton"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


class _Tee:
    def __init__(self, stream, log):
        self.stream, self.log = stream, log

    def write(self, data):
        # log first, flushed: whatever the console showed is in the log, even after SIGKILL
        self.log.write(data)
        self.log.flush()
        self.stream.write(data)
        return len(data)

    def flush(self):
        self.stream.flush()
        self.log.flush()

    def __getattr__(self, name):
        return getattr(self.stream, name)


class Run:
    """One experiment's record. Created by start_run(); finish() or crash() records it once."""

    def __init__(self, s: Settings, tokenizer: Tokenizer, model: ModelConfig, model_changes: dict,
                 description: str | None, extra: dict | None = None):
        self.s = s
        self.git = git_info()
        stamp = _dt.datetime.now(_dt.timezone.utc)
        self.run_id = f"{stamp:%Y%m%dT%H%M%SZ}-{self.git['commit']}-{os.urandom(2).hex()}"
        self.timestamp = stamp.isoformat(timespec="seconds")
        self.description = clean_text(description or self.git["subject"] or "(no description)", 200)
        self.manifest = load_manifest(s)
        self.key = comparability_key(s, tokenizer, self.manifest)
        self.results, self.sessions = ledger_paths(s)
        self.model = dataclasses.asdict(model)
        self.model["adam_betas"] = list(self.model["adam_betas"])
        self.record = {
            "run_id": self.run_id, "status": "running", "timestamp": self.timestamp, "description": self.description,
            "git": self.git, "comparability_key": self.key, "mode": s.mode, "mode_reason": s.mode_reason,
            "fingerprint": config_fingerprint(), "model": self.model,
            "model_changes_by_mode": {k: list(v) for k, v in model_changes.items()},
            "ground": dataclasses.asdict(s.ground), "platform": get_platform(), "versions": library_versions(),
            "data": {k: self.manifest[k] for k in ("source", "val", "val_sha256")},
            "tokenizer": tokenizer.fingerprint(), "eval_tokens": eval_rows(tokenizer, s)[0] * s.max_seq_len,
            "argv": sys.argv, **(extra or {}),
        }
        self.recorded = None
        self.log_path = self.sessions / f"{self.run_id}.log"
        self.json_path = self.sessions / f"{self.run_id}.json"

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> "Run":
        import signal
        self.sessions.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "a", encoding="utf-8", buffering=1)
        self._orig = (sys.stdout, sys.stderr)
        sys.stdout, sys.stderr = _Tee(sys.stdout, self._log), _Tee(sys.stderr, self._log)
        print(f"run_start: {json.dumps({'run_id': self.run_id, 'comparability_key': self.key, 'commit': self.git['commit']})}")
        self._write_json()
        self._prev_hook = sys.excepthook
        sys.excepthook = self._excepthook
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._on_signal)
        return self

    def _write_json(self):
        _atomic_write_text(self.json_path, json.dumps(self.record, indent=2, default=str))

    def _excepthook(self, etype, value, tb):
        if self.recorded is None and not issubclass(etype, (SystemExit,)):
            lines = str(value).strip().splitlines()
            self.crash(f"{etype.__name__}: {lines[-1] if lines else ''}".strip().rstrip(":"))
        self._prev_hook(etype, value, tb)

    def _on_signal(self, signum, frame):
        import signal
        name = signal.Signals(signum).name
        print(f"\n{name} received: recording the run as interrupted")
        self.finish({}, status="interrupted", error=f"{name} received")
        raise SystemExit(128 + signum)

    def _row(self, metrics: dict) -> dict:
        vram = metrics.get("peak_vram_mb")
        return {"run_id": self.run_id, "commit": self.git["commit"], "val_bpb": metrics.get("val_bpb"),
                "memory_gb": None if vram is None else vram / 1024, "description": self.description,
                "peak_vram_mb": vram, "mfu_percent": metrics.get("mfu_percent"),
                "training_seconds": metrics.get("training_seconds"), "total_tokens_M": metrics.get("total_tokens_M"),
                "num_params_M": metrics.get("num_params_M"), "num_steps": metrics.get("num_steps"), "mode": self.s.mode,
                "comparability_key": self.key, "timestamp": self.timestamp}

    def finish(self, metrics: dict, status: str | None = None, error: str | None = None) -> dict:
        """Record the outcome once: status decided against the ledger unless given. Returns the row."""
        if self.recorded is not None:
            return self.recorded
        metrics = {k: (float(v) if isinstance(v, (int, float)) and k != "num_steps" else v) for k, v in metrics.items()}
        index_entry = {"model": self.model, "fingerprint": self.record["fingerprint"], "error": error,
                       "branch": self.git["branch"], "worktree": self.git["worktree"], "dirty": self.git["dirty"]}
        try:
            self.recorded = append_record(self.results, self.sessions, self._row(metrics), index_entry, status)
        except ConfigError as e:             # e.g. a ledger whose header was damaged by hand
            self.recorded = {"status": "unrecorded"}
            fail(f"{e} (this run was not recorded; its log is {self.log_path})")
        self.record.update(status=self.recorded["status"], metrics=metrics, error=error,
                           finished=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
        self._write_json()
        print(f"recorded: {self.recorded['status']} -> {self.results} ; digest -> {self.sessions / 'memory.md'}")
        return self.recorded

    def crash(self, reason: str, metrics: dict | None = None) -> dict:
        print(f"CRASH: {reason}")
        return self.finish(metrics or {}, status="crash", error=reason)


def start_run(tokenizer: Tokenizer, model: ModelConfig, model_changes: dict, description: str | None = None,
              extra: dict | None = None) -> Run:
    """Begin recording: tee the console to sessions/<run_id>.log, record crashes and signals.
    Bad input found here (data not prepared, source changed) exits 2 before anything is written."""
    try:
        run = Run(settings(), tokenizer, model, model_changes, description, extra)
    except ConfigError as e:
        fail(str(e))
    return run.start()


_ERROR_LINE = re.compile(r"(Error|Exception|Killed|killed|CRASH|FAIL|Traceback|out of memory|OOM)")


def record_crash_from_log(log: Path, s: Settings | None = None) -> dict:
    """For a run killed outright (OOM killer, timeout): write its crash row from the saved log."""
    s = s or settings()
    if not log.exists():
        raise ConfigError(f"{log}: no such log file")
    run_id = log.name[:-4] if log.name.endswith(".log") else log.name
    results, sessions = ledger_paths(s)
    rec_path = log.with_suffix(".json")
    if not rec_path.exists():
        raise ConfigError(f"{rec_path}: no run record beside the log (not a train.py run log?)")
    rec = json.loads(rec_path.read_text())
    if any(r["run_id"] == run_id for r in read_ledger(results, warn=lambda m: None)):
        raise ConfigError(f"{results.name}: run {run_id} is already recorded")
    lines = [ln.strip() for ln in re.split(r"[\r\n]", log.read_text(encoding="utf-8", errors="replace")) if ln.strip()]
    errs = [ln for ln in lines if _ERROR_LINE.search(ln)]
    reason = errs[-1] if errs else (f"killed without an error message; last output: {lines[-1][:120]}" if lines
                                    else "killed before any output")
    git = rec.get("git", {})
    row = {"run_id": run_id, "commit": git.get("commit", ""), "val_bpb": None, "memory_gb": None,
           "description": rec.get("description", ""), "peak_vram_mb": None, "mfu_percent": None,
           "training_seconds": None, "total_tokens_M": None, "num_params_M": None, "num_steps": None,
           "mode": rec.get("mode", ""), "comparability_key": rec.get("comparability_key", LEGACY_KEY),
           "timestamp": rec.get("timestamp", "")}
    entry = {"model": rec.get("model"), "fingerprint": rec.get("fingerprint"), "error": f"killed: {reason}",
             "branch": git.get("branch"), "worktree": git.get("worktree"), "dirty": git.get("dirty")}
    row = append_record(results, sessions, row, entry, status="crash")
    rec.update(status="crash", error=entry["error"])
    _atomic_write_text(rec_path, json.dumps(rec, indent=2, default=str))
    return row


# ---------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------

def check(verbose: bool = True) -> tuple[Settings, ModelConfig, dict]:
    s = settings()
    try:
        model, changes = effective_model(load_model(), s)
    except ConfigError as e:
        fail(str(e))
    p = get_platform()
    if verbose:
        print(f"ground.json: ok ({ground_path()})")
        print(f"model.json:  ok ({model_path()})")
        print(f"mode: {s.mode} ({s.mode_reason})")
        print(f"  max_seq_len {s.max_seq_len}, time_budget_s {s.time_budget_s:g}, eval_tokens {s.eval_tokens:,}, "
              f"excluded_steps {s.excluded_steps}")
        for line in describe_changes(changes, s):
            print(f"  {line}")
        print("\n".join(platform_lines(p)))
    return s, model, changes


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Prepare data and tokenizer; validate configs; maintain the ledger.")
    ap.add_argument("--source", choices=("auto", "climbmix", "local", "builtin"), help="override ground.json data.source")
    ap.add_argument("--num-shards", type=int, help="ClimbMix train shards to download (ground.json data.num_train_shards)")
    ap.add_argument("--download-workers", type=int, help="parallel downloads (ground.json data.download_workers)")
    ap.add_argument("--check", action="store_true", help="validate ground.json and model.json, print mode and PLATFORM")
    ap.add_argument("--memory", action="store_true", help="regenerate sessions/memory.md from the ledger")
    ap.add_argument("--record-crash", metavar="LOG", help="record a killed run (sessions/<run_id>.log) as a crash")
    args = ap.parse_args(argv)
    for name in ("num_shards", "download_workers"):
        v = getattr(args, name)
        if v is not None and v < 1:
            fail(f"--{name.replace('_', '-')}: expected an integer >= 1, got {v}")
    s = settings()
    try:
        if args.check:
            check()
            return 0
        if args.memory:
            print(f"memory: {regenerate_memory(s)}")
            return 0
        if args.record_crash:
            row = record_crash_from_log(Path(args.record_crash), s)
            print(f"recorded: {row['run_id']} crash -> {ledger_paths(s)[0]}")
            return 0
        t0 = time.time()
        print(f"mode: {s.mode} ({s.mode_reason}); cache: {s.cache_dir}")
        manifest = prepare_data(s, args.source, args.num_shards, args.download_workers)
        train_tokenizer(s, manifest)
        tok = Tokenizer.from_directory()
        ntok = 0
        for path in manifest["train"] + [manifest["val"]]:
            tokens, _ = tokenize_file(s, tok, path)
            ntok += len(tokens)
        print(f"tokens: {ntok:,} cached under {s.cache_dir / 'tokens' / tok.fingerprint()}")
        eval_rows(tok, s, verbose=True)
        print(f"done in {time.time() - t0:.1f}s. Next: uv run train.py")
        return 0
    except ConfigError as e:
        fail(str(e))
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
