"""Small shared helpers: atomic file writes, file hashes, a short network probe, a bytecode check.

    uv run pytest tests/test_data.py        # exercised through the data sources and the token cache

Files that other processes read (manifests, shards, the tokenizer, memory.md) are written to a
temporary sibling and renamed into place, so a reader never sees half a file.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: Path):
    """Yield a temporary sibling of `path` to write; it replaces `path` only if the write finished.
    The suffix is kept last so that writers that add one (np.save) write exactly there."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.tmp{os.getpid()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_text_parquet(path: Path, docs: list[str]) -> None:
    """A parquet file with one `text` column (the data sources' format), written atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    with atomic_path(path) as tmp:
        pq.write_table(pa.table({"text": docs}), tmp, row_group_size=1024)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def reachable(url: str, timeout_s: float) -> bool:
    """Short probe so that a flaky network cannot hang a choice (data source, FA3 download)."""
    import requests
    try:
        r = requests.head(url, timeout=timeout_s, allow_redirects=True)
        return r.status_code < 400      # a 403/404 means the file is not there: not a usable source
    except requests.RequestException:
        return False


def bytecode_note(module) -> str | None:
    """A note when `module`'s bytecode is not cached: then every process recompiles its Python sources (for torch,
    seconds of each run's start-up; not `!!`: it costs time, the metric is the same). None when it is cached."""
    cached = getattr(module, "__cached__", None)
    if not cached or os.path.exists(cached):
        return None
    why = ("PYTHONDONTWRITEBYTECODE is set" if os.environ.get("PYTHONDONTWRITEBYTECODE")
           else "its folder is not writable" if not os.access(os.path.dirname(cached) or ".", os.W_OK)
           else "it could not be written")
    return (f"note: {module.__name__}'s bytecode is not cached ({why}): each run recompiles its sources at start-up; "
            f"`uv sync --compile-bytecode` once, or PYTHONPYCACHEPREFIX=<a writable folder>, fixes it")


class Tee:
    """A console stream that also writes to the run's log: log first, flushed, so that whatever the console showed
    is in the log even after SIGKILL."""

    def __init__(self, stream, log_path: Path):
        self.stream, self.log_path = stream, log_path
        self.log = open(log_path, "a", encoding="utf-8", buffering=1)

    def write(self, data):
        self.log.write(data)
        self.log.flush()
        self.stream.write(data)
        return len(data)

    def flush(self):
        self.stream.flush()
        self.log.flush()

    def reopen(self) -> None:
        """New objects on the same log and console, for a signal handler: the signal (a terminal's Ctrl-C reaches
        the whole process group, `timeout` sends it twice) may have arrived inside a write to the old ones, and a
        buffered file written from inside its own write raises `reentrant call`."""
        self.log = open(self.log_path, "a", encoding="utf-8", buffering=1)
        try:
            self.stream = open(os.dup(self.stream.fileno()), "w", encoding="utf-8", buffering=1)
        except (OSError, ValueError, AttributeError):      # a console without a file descriptor: kept
            pass

    def __getattr__(self, name):
        return getattr(self.stream, name)
