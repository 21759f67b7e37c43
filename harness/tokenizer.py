"""Tokenizer: BPE trained with rustbpe, served by tiktoken; the per-file token cache.

    uv run prepare.py                 # trains it once (retrained only when its config or data change)

Tokenizer is upstream's wrapper (encode, decode, get_vocab_size, get_bos_token_id); token_bytes
(UTF-8 bytes per token id, 0 for special tokens) is what evaluate_bpb divides by.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pickle
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from harness import settings
from harness.config import ConfigError, TokenizerConfig, fail
from harness.settings import Settings
from harness.sources import load_manifest, read_documents
from harness.util import atomic_path, atomic_write_bytes, atomic_write_text, file_sha256

TOKENIZER_VERSION = 1          # part of the tokenizer's fingerprint: bump to retrain every cached tokenizer

# ---------------------------------------------------------------------------
# Training: rustbpe -> tiktoken encoding + token_bytes
# ---------------------------------------------------------------------------

def tokenizer_dir(s: Settings) -> Path:
    return s.cache_dir / "tokenizer"


def tokenizer_config_fingerprint(t: TokenizerConfig, manifest: dict) -> str:
    blob = json.dumps({"cfg": dataclasses.asdict(t), "source": manifest["source"],
                       "train": [Path(p).name for p in manifest["train"]], "v": TOKENIZER_VERSION}, sort_keys=True)
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
    token_bytes = torch.tensor([0 if i >= offset else len(enc.decode_single_token_bytes(i))
                                for i in range(enc.n_vocab)],
                               dtype=torch.int32)
    atomic_write_bytes(out / "tokenizer.pkl", pickle.dumps(enc))
    with atomic_path(out / "token_bytes.pt") as tmp:
        torch.save(token_bytes, tmp)
    atomic_write_text(meta_path, json.dumps({"config_fingerprint": fp, "vocab_size": enc.n_vocab,
                                              "sha256": file_sha256(out / "tokenizer.pkl")}, indent=2))
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
        s = settings.current()
        d = Path(tokenizer_dir_) if tokenizer_dir_ else tokenizer_dir(s)
        p = d / "tokenizer.pkl"
        if not p.exists():
            fail(f"{p}: no tokenizer (run prepare.py first)")
        if tokenizer_dir_ is None:
            stale = _stale(s, d)
            if stale:
                fail(stale)
        with open(p, "rb") as f:
            return cls(pickle.load(f), s.ground.tokenizer.bos_token)

    def get_vocab_size(self) -> int:
        return self.enc.n_vocab

    def get_bos_token_id(self) -> int:
        return self.bos_token_id

    def encode(self, text, prepend=None, num_threads: int = 8):
        pre = None if prepend is None else (prepend if isinstance(prepend, int)
                                            else self.enc.encode_single_token(prepend))
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


def _stale(s: Settings, d: Path) -> str | None:
    """Why the cached tokenizer is not the one ground.json describes (its settings changed since prepare.py)."""
    meta = d / "meta.json"
    try:
        manifest = load_manifest(s)
        cached = json.loads(meta.read_text()).get("config_fingerprint")
    except (ConfigError, OSError, ValueError):
        return None                                  # no manifest or meta: the loaders say what is missing
    if cached != tokenizer_config_fingerprint(s.ground.tokenizer, manifest):
        return (f"ground.json: key 'tokenizer': differs from the tokenizer cached in {d} (run prepare.py to train "
                f"it again; the metric's definition depends on it)")
    return None


def get_token_bytes(device="cpu") -> torch.Tensor:
    p = tokenizer_dir(settings.current()) / "token_bytes.pt"
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
            with atomic_path(p) as tmp:
                np.save(tmp, arr)
    return np.load(tok_p, mmap_mode="r"), np.load(off_p)
