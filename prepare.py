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

from harness import settings
from harness.cli import main
from harness.dataloader import make_dataloader
from harness.evaluate import evaluate_bpb
from harness.hardware import get_platform
from harness.tokenizer import Tokenizer, get_token_bytes

__all__ = ["MAX_SEQ_LEN", "TIME_BUDGET", "EVAL_TOKENS", "VOCAB_SIZE", "CACHE_DIR", "PLATFORM", "Tokenizer",
           "make_dataloader", "evaluate_bpb", "get_token_bytes", "main"]

# ---------------------------------------------------------------------------
# Upstream's module constants, resolved from ground.json when first read
# ---------------------------------------------------------------------------

_CONSTANTS = {
    "MAX_SEQ_LEN": lambda: settings.current().max_seq_len,          # tokens per row
    "TIME_BUDGET": lambda: settings.current().time_budget_s,        # seconds of training
    "EVAL_TOKENS": lambda: settings.current().eval_tokens,          # tokens evaluate_bpb scores (at most)
    "VOCAB_SIZE": lambda: settings.current().ground.tokenizer.vocab_size,
    "CACHE_DIR": lambda: str(settings.current().cache_dir),
    "PLATFORM": get_platform,                                       # dict: device, dtype, attention, ... + reasons
}


def __getattr__(name: str):
    if name in _CONSTANTS:
        return _CONSTANTS[name]()
    raise AttributeError(f"module 'prepare' has no attribute {name!r}")


if __name__ == "__main__":
    sys.exit(main())
