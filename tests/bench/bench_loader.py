"""Dataloader packing rate on one CPU core (not a test; prints the figure).

    uv run python tests/bench/bench_loader.py [--seconds 5] [--seq-len 2048]

Uses the prepared data and tokenizer of ground.json (run prepare.py first). Target: >= 5M
tokens/s (the GPU consumes ~1.7M tokens/s).
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from harness import dataloader, settings, sources, tokenizer


def loader_rate(seconds: float = 5.0, T: int | None = None, B: int = 128) -> float:
    """Tokens/s of the best-fit packer (the loader's producer thread) on one core, warm."""
    s = settings.current()
    tok = tokenizer.Tokenizer.from_directory()
    m = sources.load_manifest(s)
    T = T or s.ground.train.max_seq_len
    packer = dataloader.BestFitPacker(dataloader.document_stream(s, tok, m["train"], True), T + 1)
    rows = np.empty((B, T + 1), dtype=np.int32)
    for r in range(B):
        packer.fill_row(rows[r])                     # warm: token cache loaded, buffer full
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for r in range(B):
            packer.fill_row(rows[r])
        n += B
    return n * (T + 1) / (time.perf_counter() - t0)


def iterator_rate(seconds: float = 5.0, T: int | None = None, B: int = 128) -> float:
    """Tokens/s yielded by make_dataloader on the CPU device (packing thread + int64 tensors)."""
    s = settings.current()
    T = T or s.ground.train.max_seq_len
    dl = dataloader.make_dataloader(tokenizer.Tokenizer.from_directory(), B, T, "train", device="cpu")
    next(dl)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        next(dl)
        n += 1
    return n * B * T / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--seq-len", type=int, default=None, help="default: ground.json train.max_seq_len")
    args = ap.parse_args()
    rate = loader_rate(args.seconds, args.seq_len)
    T = args.seq_len or settings.current().ground.train.max_seq_len
    print(f"dataloader packing: {rate / 1e6:.1f}M tokens/s on one core (T={T}, batches of 128 rows)")
    it = iterator_rate(args.seconds, args.seq_len)
    print(f"make_dataloader on the CPU device: {it / 1e6:.1f}M tokens/s (packing thread + int64 tensors)")


if __name__ == "__main__":
    main()
