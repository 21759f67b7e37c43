"""Dataloader: BOS-aligned best-fit packing into rows of T + 1 tokens, prefetched off the critical path.

    uv run python tests/bench/bench_loader.py       # packing rate on one CPU core

Every row starts at a document start (BOS); the largest buffered document that fits goes next,
and when none fits the shortest is cropped to fill the row (upstream's rule: 100% of each row is
tokens, never padding). A background thread packs into pinned buffers; the copy to the GPU is async.
"""

from __future__ import annotations

import atexit
import bisect
import queue
import threading
from typing import Iterator

import numpy as np
import torch

from harness import settings
from harness.config import ConfigError, fail
from harness.hardware import get_platform
from harness.settings import Settings
from harness.sources import load_manifest
from harness.tokenizer import Tokenizer, tokenize_file

LOADER_BUFFER_DOCS = 1000           # best-fit candidates (upstream's buffer_size)
LOADER_PREFETCH_BATCHES = 3         # packed batches kept ready by the background thread

# ---------------------------------------------------------------------------
# Best-fit packing
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


def document_stream(s: Settings, tokenizer: Tokenizer, files: list[str], loop: bool, seed: int | None = None,
                    max_tokens: int | None = None) -> Iterator[tuple[np.ndarray, int]]:
    """(document tokens, epoch) in the stored order, or, with a seed, in an order drawn anew for every
    epoch from (seed, epoch): files shuffled, then the documents of each file. With max_tokens, a longer
    document comes as pieces of at most max_tokens, each after the first starting with a BOS of its own."""
    bos = np.array([tokenizer.get_bos_token_id()])
    epoch = 1
    while True:
        rng = np.random.default_rng((seed, epoch)) if seed is not None else None
        for f in (rng.permutation(len(files)) if rng is not None else range(len(files))):
            tokens, offsets = tokenize_file(s, tokenizer, files[f])
            n = len(offsets) - 1
            for j in (rng.permutation(n) if rng is not None else range(n)):
                doc = tokens[offsets[j]:offsets[j + 1]]
                if max_tokens is None or len(doc) <= max_tokens:
                    yield doc, epoch
                    continue
                yield doc[:max_tokens], epoch
                for k in range(max_tokens, len(doc), max_tokens - 1):
                    yield np.concatenate((bos, doc[k:k + max_tokens - 1])).astype(doc.dtype), epoch
        if not loop:
            return
        epoch += 1


def row_stream(s: Settings, tokenizer: Tokenizer, files: list[str], T: int, loop: bool, seed: int | None = None):
    """The documents that fill rows of T + 1 tokens: long ones split into row-sized pieces when ground.json's
    data.split_long_documents asks for it, else whole (best-fit packing crops them, as upstream)."""
    split = T + 1 if s.ground.data.split_long_documents else None
    return document_stream(s, tokenizer, files, loop, seed, split)


def train_tokens(tokenizer: Tokenizer) -> int:
    """Distinct tokens in the train split (its token cache): what `epochs` divides the tokens trained by."""
    s = settings.current()
    try:
        m = load_manifest(s)
    except ConfigError as e:
        fail(str(e))
    return sum(len(tokenize_file(s, tokenizer, f)[0]) for f in m["train"])


def packing_report(s: Settings, tokenizer: Tokenizer, files: list[str], T: int) -> tuple[int, int]:
    """(tokens that one pass of best-fit packing puts into rows of T + 1, tokens cached): how much of a corpus
    the loader can use; the rest is cropped off documents longer than the space left in a row."""
    total = sum(len(tokenize_file(s, tokenizer, f)[0]) for f in files)
    packer = BestFitPacker(row_stream(s, tokenizer, files, T, loop=False), T + 1)
    row = np.empty(T + 1, dtype=np.int32)
    rows = 0
    try:
        while True:
            packer.fill_row(row)
            rows += 1
    except EOFError:
        pass
    return rows * (T + 1), total


def _pin_ok(device: torch.device) -> bool:
    return device.type == "cuda"


# ---------------------------------------------------------------------------
# make_dataloader: (inputs, targets, epoch) batches on the run's device
# ---------------------------------------------------------------------------

def _producer(packer, pinned: list, free: queue.Queue, ready: queue.Queue, stop: threading.Event, mine: range,
              rows_per_batch: int, bos: int):
    """The loader thread's body: fill a free pinned buffer with this rank's rows of each global batch (the other
    ranks' rows packed into scratch and dropped), hand it to the consumer, until `stop`; at the end of the val
    data the rest of the batch is BOS (0 bytes: it scores nothing), and an exception goes to the consumer."""
    scratch = np.empty(pinned[0].shape[1], dtype=np.int32)

    def produce():
        while not stop.is_set():
            try:
                i, ev = free.get(timeout=0.1)
            except queue.Empty:           # the consumer is slow or gone: look at `stop` again
                continue
            if ev is not None:
                ev.synchronize()          # the async copy out of this buffer has finished
            rows = pinned[i].numpy()
            g, filled = 0, 0
            try:
                for g in range(rows_per_batch):
                    if g in mine:
                        packer.fill_row(rows[g - mine.start])
                        filled = g - mine.start + 1
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
    return produce


def make_dataloader(tokenizer: Tokenizer, B: int, T: int, split: str, buffer_size: int = LOADER_BUFFER_DOCS,
                    device: str | torch.device | None = None, rank: int = 0, world_size: int = 1,
                    prefetch: int = LOADER_PREFETCH_BATCHES, seed: int | None = None):
    """Yield (inputs, targets, epoch) forever: int64 tensors of shape (B, T) on the run's device.
    Rows are packed by a background thread into pinned buffers; the copy to the GPU is async.

    With world_size > 1 (torchrun) every rank packs the same global batch of B x world_size
    rows and keeps rows [rank x B, (rank + 1) x B): the ranks together see exactly the rows a
    single process with world_size x the gradient accumulation would see, in the same order."""
    assert split in ("train", "val", "heldout"), f"split must be 'train', 'val' or 'heldout', got {split!r}"
    s = settings.current()
    try:
        m = load_manifest(s)
    except ConfigError as e:
        fail(str(e))
    files = m["train"] if split == "train" else [m[split]]
    device = torch.device(device or get_platform()["device"])
    # train loops over its files (epoch counts the passes); val is one pass, never repeated
    # the seed orders the train documents (train.py --seed); val is never shuffled: the metric's rows are fixed
    assert split == "train" or seed is None, "the val split is scored in its stored order"
    packer = BestFitPacker(row_stream(s, tokenizer, files, T, split == "train", seed), T + 1, buffer_size)
    lo = rank * B
    bos = tokenizer.get_bos_token_id()
    nbuf = prefetch + 2
    pinned = [torch.empty((B, T + 1), dtype=torch.int32, pin_memory=_pin_ok(device)) for _ in range(nbuf)]
    free: queue.Queue = queue.Queue()
    ready: queue.Queue = queue.Queue(maxsize=prefetch)
    for i in range(nbuf):
        free.put((i, None))
    stop = threading.Event()

    produce = _producer(packer, pinned, free, ready, stop, range(lo, lo + B), B * world_size, bos)
    worker = threading.Thread(target=produce, name=f"loader-{split}", daemon=True)
    worker.start()
    # a script that exits with the loader still open (upstream's train.py does) must not leave the thread
    # inside torch while the interpreter tears torch down: that aborts the process after its work is done
    def shut():
        stop.set()
        worker.join(timeout=2)
    atexit.register(shut)
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
        atexit.unregister(shut)
