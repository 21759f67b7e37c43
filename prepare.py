"""The fixed harness's entry point: prepare data and tokenizer, check the configs, maintain the ledger.

    uv run prepare.py                      # data + tokenizer + token cache, source from ground.json
    uv run prepare.py --source builtin     # the offline corpus, no network needed
    uv run prepare.py --check              # validate ground.json + model.json, print mode and PLATFORM
    uv run prepare.py --memory             # regenerate sessions/memory.md from the ledger
    uv run prepare.py --record-crash sessions/<run_id>.log   # record a run that was killed outright

Owned by the user, read-only for the agent. The harness itself lives in the `harness/` package
beside this file, one module per job (README, "How it works"); the metric is harness/evaluate.py.

Upstream-compatible names: an upstream-style train.py doing
`from prepare import MAX_SEQ_LEN, TIME_BUDGET, Tokenizer, make_dataloader, evaluate_bpb`
keeps working, with the same meanings; the constants are resolved from ground.json (its mode's
profile) when first read, and PLATFORM is this machine's (harness.hardware).
"""

from __future__ import annotations

import sys

__all__ = ["MAX_SEQ_LEN", "TIME_BUDGET", "EVAL_TOKENS", "VOCAB_SIZE", "CACHE_DIR", "PLATFORM", "Tokenizer",
           "make_dataloader", "evaluate_bpb", "get_token_bytes", "main"]

# ---------------------------------------------------------------------------
# Upstream's names, resolved when first read (the constants from ground.json's profile)
# ---------------------------------------------------------------------------

def _settings():
    from harness import settings
    return settings.current()


def _harness(module: str, name: str):
    import importlib
    return lambda: getattr(importlib.import_module(f"harness.{module}"), name)


# Imported when first read, so that `uv run prepare.py --help` and a config error answer before torch loads
_NAMES = {
    "MAX_SEQ_LEN": lambda: _settings().max_seq_len,          # tokens per row
    "TIME_BUDGET": lambda: _settings().time_budget_s,        # seconds of training
    "EVAL_TOKENS": lambda: _settings().eval_tokens,          # tokens evaluate_bpb scores (at most)
    "VOCAB_SIZE": lambda: _settings().ground.tokenizer.vocab_size,
    "CACHE_DIR": lambda: str(_settings().cache_dir),
    "PLATFORM": lambda: _harness("hardware", "get_platform")()(),   # dict: device, dtype, attention, ... + reasons
    "Tokenizer": _harness("tokenizer", "Tokenizer"),
    "get_token_bytes": _harness("tokenizer", "get_token_bytes"),
    "make_dataloader": _harness("dataloader", "make_dataloader"),
    "evaluate_bpb": _harness("evaluate", "evaluate_bpb"),
    "main": _harness("cli", "main"),
}


def __getattr__(name: str):
    if name in _NAMES:
        return _NAMES[name]()
    raise AttributeError(f"module 'prepare' has no attribute {name!r}")


if __name__ == "__main__":
    from harness.cli import main
    sys.exit(main())
