"""Data sources: climbmix (download), local (the user's folder), builtin (the environment's Python, offline).

    uv run prepare.py [--source auto|climbmix|local|builtin|builtin-stdlib]

Each source materializes train files and one pinned val file under the cache; the source actually
used, its reason and the val file's hash go to <cache>/data/manifest.json, which the tokenizer,
the dataloader and the comparability key read.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from harness import settings
from harness.config import ConfigError
from harness.settings import Settings
from harness import corpus
from harness.util import atomic_write_text, file_sha256, reachable

DOWNLOAD_ATTEMPTS = 5               # per shard, exponential backoff between tries
DOWNLOAD_BACKOFF_S = 2.0            # first wait; doubles each retry
DOWNLOAD_TIMEOUT_S = (10.0, 60.0)   # (connect, read) per request


# ---------------------------------------------------------------------------
# The cache layout
# ---------------------------------------------------------------------------

def data_dir(s: Settings) -> Path:
    return s.cache_dir / "data"


def manifest_path(s: Settings) -> Path:
    return data_dir(s) / "manifest.json"


def shard_name(index: int) -> str:
    return f"shard_{index:05d}.parquet"


def _valid_parquet(path: Path) -> bool:
    try:
        return "text" in pq.ParquetFile(path).schema_arrow.names
    except (pa.ArrowException, OSError):
        return False


# ---------------------------------------------------------------------------
# climbmix: upstream's parquet shards, downloaded in parallel, resumable
# ---------------------------------------------------------------------------

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
    indices = [i for i in range(num_shards) if i != d.val_shard] + [d.val_shard, d.heldout_shard]
    done, total_bytes, t0 = 0, 0, time.time()
    errors = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(download_shard, d.climbmix_url, i, out, DOWNLOAD_ATTEMPTS, backoff_s): i
                   for i in indices}
        for fut in as_completed(futures):
            try:
                path = fut.result()
                done += 1
                total_bytes += path.stat().st_size
                print(f"\rdownload: {done}/{len(indices)} shards, {total_bytes / 1e6:.1f} MB, {time.time() - t0:.0f}s  "
                      f" ",
                      end="", flush=True)
            except RuntimeError as e:
                errors.append(str(e))
    print()
    if errors:
        raise RuntimeError(f"{len(errors)} shard(s) failed; first: {errors[0]}")
    return {"train": [str(out / shard_name(i)) for i in indices[:-2]], "val": str(out / shard_name(d.val_shard)),
            "heldout": str(out / shard_name(d.heldout_shard))}


# ---------------------------------------------------------------------------
# local: the user's own folder; builtin: the environment's Python sources and docs, offline (harness/corpus.py)
# ---------------------------------------------------------------------------

def local_files(s: Settings) -> dict:
    d = s.path(s.ground.data.local_dir)
    if not d.is_dir():
        raise ConfigError(f"ground.json: key 'data.local_dir': expected an existing folder, got {json.dumps(str(d))}")
    files = sorted(p for p in d.iterdir() if p.suffix in (".parquet", ".txt", ".jsonl"))
    if len(files) < 2:
        raise ConfigError(f"ground.json: key 'data.local_dir': expected at least 2 .parquet/.txt/.jsonl files "
                          f"(the last by name is the pinned val file), found {len(files)} in {d}")
    if len(files) < 4:        # a held-out file out of 2 train files would halve what trains
        print(f"heldout: none: {d} holds {len(files)} data files; with 4 or more, the second-to-last by name becomes "
              f"the human's held-out split (never trained on)")
        return {"train": [str(p) for p in files[:-1]], "val": str(files[-1])}
    print(f"heldout: {files[-2].name} (the second-to-last file by name) is the human's held-out split, not trained on")
    return {"train": [str(p) for p in files[:-2]], "val": str(files[-1]), "heldout": str(files[-2])}


def build_builtin(s: Settings, kind: str = "builtin") -> dict:
    """The offline corpus (harness/corpus.py): `builtin` (standard library + site-packages) or `builtin-stdlib`."""
    return corpus.build(kind, data_dir(s) / kind)


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


# ---------------------------------------------------------------------------
# The source actually used, written to the manifest
# ---------------------------------------------------------------------------

def prepare_data(s: Settings, source: str | None = None, num_shards: int | None = None,
                 workers: int | None = None) -> dict:
    """Resolve the source (auto: climbmix if reachable, else builtin), materialize files, write the manifest."""
    d = s.ground.data
    source = source or d.source
    reason = f"ground.json data.source = {source}" if source == d.source else f"--source {source}"
    if source == "auto":
        url = f"{d.climbmix_url.rstrip('/')}/{shard_name(d.val_shard)}"
        if reachable(url, d.probe_timeout_s):
            source, reason = "climbmix", "auto: ClimbMix reachable"
        else:
            source, reason = "builtin", f"auto: ClimbMix not reachable within {d.probe_timeout_s:g}s"
            print("!" * 78)
            print("!! NOTICE: ClimbMix is not reachable; using the BUILTIN offline corpus (the environment's Python).")
            print("!! val_bpb on it is only comparable with other runs on the builtin corpus.")
            print("!" * 78)
    print(f"data: source = {source} ({reason})")
    if source == "climbmix":
        files = download_climbmix(s, num_shards or d.num_train_shards, workers or d.download_workers)
    elif source == "local":
        files = local_files(s)
    else:
        files = build_builtin(s, source)
    base = data_dir(s).resolve()

    def rel(p):    # paths inside the cache are stored relative to it, so the cache can move
        p = Path(p).resolve()
        return p.relative_to(base).as_posix() if p.is_relative_to(base) else str(p)
    files = dict(files, train=[rel(p) for p in files["train"]], val=rel(files["val"]),
                 **({"heldout": rel(files["heldout"])} if files.get("heldout") else {}))
    manifest = {"source": source, "reason": reason, "train": files["train"], "val": files["val"],
                "val_sha256": file_sha256(data_dir(s) / files["val"]),
                **({"heldout_sha256": file_sha256(data_dir(s) / files["heldout"])} if "heldout" in files else {}),
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    manifest.update({k: v for k, v in files.items() if k not in ("train", "val")})
    atomic_write_text(manifest_path(s), json.dumps(manifest, indent=2))
    return _resolve_manifest(s, manifest)


def _resolve_manifest(s: Settings, m: dict) -> dict:
    m = dict(m)
    m["train"] = [str(data_dir(s) / f) for f in m["train"]]     # absolute paths stay absolute
    m["val"] = str(data_dir(s) / m["val"])
    if m.get("heldout"):
        m["heldout"] = str(data_dir(s) / m["heldout"])
    return m


def load_manifest(s: Settings | None = None) -> dict:
    s = s or settings.current()
    p = manifest_path(s)
    if not p.exists():
        raise ConfigError(f"{p}: no prepared data (run prepare.py first)")
    m = _resolve_manifest(s, json.loads(p.read_text()))
    want = s.ground.data.source
    if want != "auto" and m["source"] != want:
        raise ConfigError(f"ground.json: key 'data.source': is {want!r} but the cache holds {m['source']!r} data (run "
                          f"prepare.py again)")
    return m
