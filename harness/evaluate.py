"""Evaluation: bits per byte on the pinned val data — the fixed metric. Do not change.

    uv run pytest tests/test_data.py -k evaluate      # against an analytic value

val_bpb = (summed next-token loss in nats over the scored target tokens) / (ln 2 x their UTF-8
bytes). Tokens of 0 bytes (BOS and the other special tokens) count in neither sum, so the number
does not depend on the tokenizer's vocabulary size and is comparable across tokenizers of one
corpus. The rows scored are the first eval_tokens // MAX_SEQ_LEN packed val rows (best-fit
packing, as in training), the same rows whatever the batch size or the number of processes; if
the val file holds fewer, the eval is capped, says so with a `!!` line, and the cap enters the
comparability key. The human's held-out split is scored the same way (split="heldout"), for the baseline and
kept runs only, and never reaches the agent (harness/session.py).

The model is called as model(x, y, reduction="none") and must return the per-token loss in nats.
"""

from __future__ import annotations

import json
import math
import time

import numpy as np
import torch

from harness import settings
from harness.config import ConfigError, fail
from harness.dataloader import BestFitPacker, make_dataloader, row_stream
from harness.hardware import get_platform
from harness.settings import Settings
from harness.sources import load_manifest
from harness.tokenizer import Tokenizer, get_token_bytes, token_cache_paths
from harness.util import atomic_write_text

EVAL_PROGRESS_EVERY_S = 2.0        # a progress line at most this often while scoring

# ---------------------------------------------------------------------------
# Evaluation (DO NOT CHANGE — this is the fixed metric)
# ---------------------------------------------------------------------------

def val_rows_available(s: Settings, tokenizer: Tokenizer, manifest: dict, which: str = "val") -> int:
    """How many packed rows of MAX_SEQ_LEN + 1 tokens the val (or held-out) file fills before it would wrap."""
    tok_p, _ = token_cache_paths(s, tokenizer, manifest[which])
    limit = s.eval_tokens // s.max_seq_len
    split = "_split" if s.ground.data.split_long_documents else ""
    memo = tok_p.with_name(tok_p.name.replace(".tokens.npy", f".rows_T{s.max_seq_len}_max{limit}{split}.json"))
    if memo.exists():
        return json.loads(memo.read_text())["rows"]
    packer = BestFitPacker(row_stream(s, tokenizer, [manifest[which]], s.max_seq_len, False), s.max_seq_len + 1)
    row = np.empty(s.max_seq_len + 1, dtype=np.int32)
    rows = 0
    try:
        while rows < limit:
            packer.fill_row(row)
            rows += 1
    except EOFError:
        pass
    atomic_write_text(memo, json.dumps({"rows": rows}))
    return rows


_EVAL_ROWS = settings.cached()


def eval_rows(tokenizer: Tokenizer, s: Settings | None = None, verbose: bool = False) -> tuple[int, str]:
    """Rows the metric scores: eval_tokens // MAX_SEQ_LEN, capped (loudly) at what the val file holds."""
    s = s or settings.current()
    key = (id(s), tokenizer.fingerprint())
    if key not in _EVAL_ROWS:
        wanted = max(1, s.eval_tokens // s.max_seq_len)
        try:
            have = val_rows_available(s, tokenizer, load_manifest(s))
        except ConfigError as e:
            fail(str(e))
        if have < wanted:
            note = (f"eval: the val file holds only {have} rows of {s.max_seq_len} tokens; scoring "
                    f"{have * s.max_seq_len:,} "
                    f"tokens instead of eval_tokens = {s.eval_tokens:,} (recorded in the comparability key)")
        else:
            note = f"eval: {wanted} rows x {s.max_seq_len} = {wanted * s.max_seq_len:,} tokens"
        _EVAL_ROWS[key] = (max(1, min(have, wanted)), note)
    if verbose:
        print(("!! " if "only" in _EVAL_ROWS[key][1] else "") + _EVAL_ROWS[key][1])
    return _EVAL_ROWS[key]


def heldout_rows(tokenizer: Tokenizer, s: Settings | None = None) -> int:
    """Rows of the human's held-out split scored for a kept run: as many as the metric's, capped at what the
    held-out file holds (0: no held-out split prepared)."""
    s = s or settings.current()
    m = load_manifest(s)
    if not m.get("heldout"):
        return 0
    return max(1, min(val_rows_available(s, tokenizer, m, "heldout"), s.eval_tokens // s.max_seq_len))


@torch.no_grad()
def evaluate_bpb(model, tokenizer: Tokenizer, batch_size: int, split: str = "val") -> float:
    """Bits per byte on the pinned val data: summed next-token loss (nats) over the first
    eval_tokens // MAX_SEQ_LEN packed val rows, divided by ln 2 x the UTF-8 bytes of the
    targets. Special tokens (0 bytes) are excluded from both sums. Independent of batch_size
    and of the number of processes: the same rows are scored whatever the batch (the last
    batch is masked, not reshaped); under torchrun each rank scores its share of every global
    batch and the two sums are all-reduced."""
    import torch.distributed as dist
    s = settings.current()
    T = s.max_seq_len
    rows = eval_rows(tokenizer, s)[0] if split == "val" else heldout_rows(tokenizer, s)
    distributed = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    device = torch.device(get_platform()["device"])
    token_bytes = get_token_bytes(device=device)
    loader = make_dataloader(tokenizer, batch_size, T, split, device=device, rank=rank, world_size=world)
    total = torch.zeros(2, dtype=torch.float64, device=device)     # nats, bytes
    row_ids = torch.arange(batch_size, device=device)[:, None]
    done = 0                                                         # global rows before this batch
    t0 = shown = time.time()
    first = None                                                     # (time, rows) after the first batch's compile
    while done < rows:
        x, y, _ = next(loader)
        loss = model(x, y, reduction="none").view(batch_size, T).float()
        nbytes = token_bytes[y]
        nbytes = torch.where(done + rank * batch_size + row_ids < rows, nbytes, 0)
        total[0] += (loss * (nbytes > 0)).sum(dtype=torch.float64)
        total[1] += nbytes.sum(dtype=torch.float64)
        done += batch_size * world
        first = first or (time.time(), done)
        if time.time() - shown > EVAL_PROGRESS_EVERY_S and done < rows and done > first[1]:   # host time: runs ahead
            shown = time.time()
            eta = (shown - first[0]) / (done - first[1]) * (rows - done)
            print(f"\reval: {done:,}/{rows:,} rows, about {eta:.0f}s left   ", end="", flush=True)
    if shown > t0:
        print()
    loader.close()
    if distributed:
        dist.all_reduce(total)
    return (total[0] / (math.log(2) * total[1])).item()
