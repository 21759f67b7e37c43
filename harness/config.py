"""Config: ground.json and model.json loaded into frozen, typed objects; one error type.

    uv run prepare.py --check        # validates both files (exit 2 with one line on bad input)

Every field carries its check; an unknown key, a wrong type or an out-of-range value raises
ConfigError with one line naming the file, the key and what was expected.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_DIR = Path(__file__).resolve().parents[1]


def ground_path() -> Path:
    """ground.json beside prepare.py, unless AUTORESEARCH_GROUND names another (tests, shared setups)."""
    return Path(os.environ.get("AUTORESEARCH_GROUND", REPO_DIR / "ground.json"))


def model_path() -> Path:
    return Path(os.environ.get("AUTORESEARCH_MODEL", REPO_DIR / "model.json"))


def agent_files() -> dict[str, Path]:
    """The agent's two files by name: what a run's record keeps and `prepare.py --restore` writes back."""
    return {"model.json": model_path(), "train.py": REPO_DIR / "train.py"}


# Errors: one type, one line, exit code 2

class ConfigError(Exception):
    """Bad input (config, data, ledger). The message is one line naming the file and key."""


def fail(message: str) -> None:
    """Print one error line and exit 2. Used at the CLI/import boundary only."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)


# Config schema: frozen dataclasses, every field carries its check

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


MAX_MAGNITUDE, MAX_PATH_CHARS = 10**18, 4096     # no setting needs more (a node's peak FLOP/s: ~1e16); PATH_MAX


def _path_ok(v: str, empty: bool = False) -> bool:     # one line, no control characters (an OSError is no message)
    return (empty or v.strip() != "") and len(v) <= MAX_PATH_CHARS and not re.search(r"[\x00-\x1f\x7f]", v)


def _compiles(pattern: str) -> bool:
    import regex                                   # tiktoken's own dependency; the tokenizer's pattern dialect
    try:
        regex.compile(pattern)
        return True
    except (regex.error, RecursionError, OverflowError):
        return False


def _is_pow2(v: int) -> bool:
    return v > 0 and (v & (v - 1)) == 0


@dataclass(frozen=True)
class DataConfig:
    source: str = _f("choice", "one of auto, climbmix, local, builtin, builtin-stdlib",
                     choices=("auto", "climbmix", "local", "builtin", "builtin-stdlib"))
    cache_dir: str = _f("str", "a folder path (one line, at most 4096 characters)", check=_path_ok)
    climbmix_url: str = _f("str", "an http(s) URL", check=lambda v: v.startswith(("http://", "https://")))
    num_train_shards: int = _f("int", "an integer >= 1", check=lambda v: v >= 1)
    val_shard: int = _f("int", "an integer >= 0", check=lambda v: v >= 0)
    heldout_shard: int = _f("int", "an integer >= 0, not the val shard (climbmix: the human's held-out split)",
                            check=lambda v: v >= 0, default=6541)
    download_workers: int = _f("int", "an integer between 1 and 64", check=lambda v: 1 <= v <= 64)
    probe_timeout_s: float = _f("num", "a positive number of seconds", check=lambda v: v > 0)
    local_dir: str = _f("str", "a folder path (or \"\" when not using source local)",
                        check=lambda v: _path_ok(v, empty=True))
    split_long_documents: bool = _f("bool", "true or false (local sources: documents longer than a row are split "
                                            "into row-sized pieces instead of cropped)", default=False)


@dataclass(frozen=True)
class TokenizerConfig:
    vocab_size: int = _f("int", "an integer between 256 and 65536", check=lambda v: 256 <= v <= 65536)
    split_pattern: str = _f("str", "a non-empty regex that compiles", check=lambda v: v != "" and _compiles(v))
    num_reserved_tokens: int = _f("int", "an integer between 1 and 64", check=lambda v: 1 <= v <= 64)
    bos_token: str = _f("str", "one of the reserved tokens <|reserved_N|>",
                        check=lambda v: re.fullmatch(r"<\|reserved_\d{1,4}\|>", v) is not None)
    max_train_chars: int = _f("int", "a positive integer", check=lambda v: v > 0)
    doc_cap_chars: int = _f("int", "a positive integer", check=lambda v: v > 0)


@dataclass(frozen=True)
class ProfileConfig:
    max_seq_len: int = _f("int", "a power of two between 16 and 65536", check=lambda v: _is_pow2(v)
                          and 16 <= v <= 65536)
    time_budget_s: float = _f("num", "a positive number of seconds", check=lambda v: v > 0)
    eval_tokens: int = _f("int", "a positive integer", check=lambda v: v > 0)
    excluded_steps: int = _f("int", "an integer between 0 and 1000", check=lambda v: 0 <= v <= 1000)
    max_steps: int = _f("int", "an integer >= 0 (0 = no cap)", check=lambda v: v >= 0, default=0)
    model_caps: dict = _f("object", "an object of model.json integer keys -> caps", default={})


@dataclass(frozen=True)
class ProcessorConfig:
    device: str = _f("choice", "one of auto, cuda, cpu, mps", choices=("auto", "cuda", "cpu", "mps"))
    dtype: str = _f("choice", "one of auto, bfloat16, float16, float32", choices=("auto", "bfloat16", "float16",
                                                                                  "float32"))
    compile: Any = _f("auto_bool", "\"auto\", true, false or \"blocks\"")
    attention: str = _f("choice", "one of auto, fa4, fa3, cudnn, flex, sdpa", choices=("auto", "fa4", "fa3", "cudnn",
                                                                                       "flex", "sdpa"))
    peak_flops: Any = _f("auto_num", "\"auto\" or a positive number of FLOP/s")


@dataclass(frozen=True)
class LedgerConfig:
    results: str = _f("str", "a file path (one line, at most 4096 characters)", check=_path_ok)
    sessions_dir: str = _f("str", "a folder path (one line, at most 4096 characters)", check=_path_ok)
    backend: str = _f("choice", "one of file, postgres", choices=("file", "postgres"), default="file")
    database_url_env: str = _f("str", "the name of an environment variable that holds the postgresql:// URL (the "
                               "URL and its password stay out of tracked files)",
                               check=lambda v: re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", v) is not None,
                               default="AUTORESEARCH_DATABASE_URL")


@dataclass(frozen=True)
class GroundConfig:
    mode: str = _f("choice", "one of auto, train, test, small", choices=("auto", "train", "test", "small"))
    data: DataConfig = None
    tokenizer: TokenizerConfig = None
    train: ProfileConfig = None
    test: ProfileConfig = None
    small: ProfileConfig = None            # optional: the profile for 8-24 GB cards (README, "Your hardware")
    processor: ProcessorConfig = None
    ledger: LedgerConfig = None


@dataclass(frozen=True)
class ModelConfig:
    depth: int = _f("int", "an integer between 1 and 256", check=lambda v: 1 <= v <= 256)
    aspect_ratio: int = _f("int", "a positive integer", check=lambda v: v >= 1)
    head_dim: int = _f("int", "an even integer between 8 and 512", check=lambda v: 8 <= v <= 512 and v % 2 == 0)
    window_pattern: str = _f("str", "a non-empty string of S and L", check=lambda v: re.fullmatch(r"[SL]+", v))
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
    prune: bool = _f("bool", "true or false (the early stop of harness/prune.py)", default=True)
    extra: dict = _f("object", "an object of agent-defined scalars (read by train.py)", default={})


MODEL_INT_KEYS = ("depth", "aspect_ratio", "head_dim", "total_batch_size", "device_batch_size")
EXTRA_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")      # model.json `extra` keys: the agent's own knobs


def _typed(spec: Spec, value: Any):
    """Return the value converted to the spec's type, or None when the type is wrong."""
    is_num = isinstance(value, (int, float)) and not isinstance(value, bool)
    if is_num and not abs(value) <= MAX_MAGNITUDE:       # 1e400 is inf, 10**400 overflows float(): bounded first
        return None
    if spec.kind == "int":
        return value if isinstance(value, int) and not isinstance(value, bool) else None
    if spec.kind == "num":
        return float(value) if is_num and math.isfinite(value) else None
    if spec.kind in ("str", "choice"):
        return value if isinstance(value, str) else None
    if spec.kind == "bool":
        return value if isinstance(value, bool) else None
    if spec.kind == "auto_bool":
        return value if value in ("auto", "blocks") or isinstance(value, bool) else None
    if spec.kind == "auto_num":
        return value if value == "auto" or (is_num and value > 0) else None
    if spec.kind == "pair":
        ok = (isinstance(value, list) and len(value) == 2
              and all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in value))
        return tuple(float(b) for b in value) if ok else None
    if spec.kind == "object":
        return dict(value) if isinstance(value, dict) else None
    raise AssertionError(f"unknown spec kind {spec.kind}")


def _build(cls, raw: Any, fname: str, prefix: str = ""):
    """Validate `raw` against dataclass `cls` and build the frozen object (raises ConfigError)."""
    where = prefix.rstrip(".") or "(top level)"
    if not isinstance(raw, dict):
        raise ConfigError(f"{fname}: key '{_key(where)}': expected an object, got {_show(raw)}")
    names = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in names:
            raise ConfigError(f"{fname}: unknown key '{_key(prefix + key)}' (expected one of: {', '.join(names)})")
    values = {}
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        if f.name in _NESTED.get(cls.__name__, {}):
            sub = _NESTED[cls.__name__][f.name]
            if f.name not in raw and f.name not in _OPTIONAL:
                raise ConfigError(f"{fname}: missing key '{key}' (an object)")
            values[f.name] = _build(sub, raw[f.name], fname, key + ".") if f.name in raw else None
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
            raise ConfigError(f"{fname}: key '{key}': expected {spec.expect}, got {_show(raw[f.name])}")
        values[f.name] = value
    return cls(**values)


_NESTED = {
    "GroundConfig": {"data": DataConfig, "tokenizer": TokenizerConfig, "train": ProfileConfig,
                     "test": ProfileConfig, "small": ProfileConfig, "processor": ProcessorConfig,
                     "ledger": LedgerConfig},
}
_OPTIONAL = {"small"}       # a ground.json from before the small profile still loads


MAX_SHOWN_CHARS = 60        # of a bad value or key quoted in an error line: the line stays one short line


def _show(value: Any) -> str:
    """A value for an error line: JSON, on one line, cut short, a URL's password masked (a database URL pasted into
    ground.json must not reach the terminal and the logs)."""
    text = json.dumps(value, ensure_ascii=True)
    window = MAX_SHOWN_CHARS + 400                                   # masked within it: bounded work for any value
    shown = re.sub(r"\b([A-Za-z][\w+.-]{0,19}://[^:/@\s\"]*:)[^\s\"]*@", r"\1***@", text[:window])
    shown = re.sub(r"(\bpassword=)[^\s&\"]*", r"\1***", shown)      # key=value and ?password= forms
    return shown if len(shown) <= MAX_SHOWN_CHARS and len(text) <= window else shown[:MAX_SHOWN_CHARS] + "..."


def _key(name: str) -> str:
    """A key for an error line: printable, on one line, cut short."""
    return _show(name)[1:-1] if not re.fullmatch(r"[\w.]{1,60}", name) else name


def _no_duplicates(pairs):
    keys = [k for k, _ in pairs]
    if (dup := next((k for k in keys if keys.count(k) > 1), None)) is not None:
        raise ValueError(f"duplicate key '{_key(dup)}'")
    return dict(pairs)


def _read_json(path: Path) -> Any:
    fname = path.name
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{fname}: file not found at {path}") from None
    except OSError as e:
        raise ConfigError(f"{fname}: cannot be read ({type(e).__name__})") from None
    try:
        text = data.decode("utf-8-sig")            # UTF-8, with or without the BOM some editors write
    except UnicodeDecodeError as e:
        raise ConfigError(f"{fname}: not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{fname}: not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except RecursionError:
        raise ConfigError(f"{fname}: not valid JSON: nested too deeply") from None
    except ValueError as e:                        # duplicate keys; integers past Python's digit limit
        why = str(e) if str(e).startswith("duplicate key") else "a number too long to read"
        raise ConfigError(f"{fname}: not valid JSON: {why}") from None


def load_ground(path: Path | None = None) -> GroundConfig:
    path = Path(path or ground_path())
    cfg = _build(GroundConfig, _read_json(path), path.name)
    if getattr(cfg, cfg.mode, True) is None:
        raise ConfigError(f"{path.name}: key 'small': expected a profile object when mode is small (see the "
                          f"repository's ground.json)")
    for name, prof in (p for p in (("train", cfg.train), ("test", cfg.test), ("small", cfg.small)) if p[1]):
        for key, cap in prof.model_caps.items():
            if key not in MODEL_INT_KEYS:
                raise ConfigError(f"{path.name}: key '{name}.model_caps.{_key(key)}': expected one of "
                                  f"{', '.join(MODEL_INT_KEYS)}")
            if not (isinstance(cap, int) and not isinstance(cap, bool) and cap >= 1):
                raise ConfigError(f"{path.name}: key '{name}.model_caps.{_key(key)}': expected a positive integer, got "
                                  f"{_show(cap)}")
        if 0 < prof.max_steps <= prof.excluded_steps:       # no step would count: no budget, no tok/s
            raise ConfigError(f"{path.name}: key '{name}.max_steps': expected 0 (no cap) or more than "
                              f"{name}.excluded_steps ({prof.excluded_steps}), got {prof.max_steps}")
    if int(re.fullmatch(r"<\|reserved_(\d+)\|>", (t := cfg.tokenizer).bos_token).group(1)) >= t.num_reserved_tokens:
        raise ConfigError(f"{path.name}: key 'tokenizer.bos_token': expected one of <|reserved_0|>..<|reserved_"
                          f"{t.num_reserved_tokens - 1}|>, got {_show(t.bos_token)}")
    if (d := cfg.data).split_long_documents and d.source in ("climbmix", "auto"):
        raise ConfigError(f"{path.name}: key 'data.split_long_documents': expected false with data.source {d.source} "
                          f"(ClimbMix keeps upstream's cropping)")
    if d.heldout_shard == d.val_shard or d.heldout_shard < d.num_train_shards:     # never trained
        raise ConfigError(f"{path.name}: key 'data.heldout_shard': expected a shard that is neither the val shard nor "
                          f"a train shard (>= {d.num_train_shards}), got {d.heldout_shard}")
    if d.source == "local" and not d.local_dir:
        raise ConfigError(f"{path.name}: key 'data.local_dir': expected a folder path when data.source is local, got "
                          f"\"\"")
    return cfg


def load_model(path: Path | None = None) -> ModelConfig:
    path = Path(path or model_path())
    cfg = _build(ModelConfig, _read_json(path), path.name)
    for key, value in cfg.extra.items():
        if not EXTRA_KEY.fullmatch(key):       # it is printed in memory.md: no Markdown, no control characters
            raise ConfigError(f"{path.name}: key 'extra.{_key(key)}': expected an identifier (letters, digits, _; "
                              f"a letter or _ first; at most 64)")
        if not isinstance(value, (int, float, str, bool)) and value is not None:
            raise ConfigError(f"{path.name}: key 'extra.{_key(key)}': expected a number, string, bool or null, got "
                              f"{_show(value)}")
    return cfg
