"""Shared pytest fixtures: a hermetic workspace (tiny corpus, tiny tokenizer), no network.

    uv run pytest

Every test runs against its own ground.json/model.json through AUTORESEARCH_GROUND and
AUTORESEARCH_MODEL; caches and ledgers live under pytest's tmp dirs, never in the repo.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness import corpus, settings, sources, tokenizer, util

# ---------------------------------------------------------------------------
# Network: loopback only
# ---------------------------------------------------------------------------

_real_connect = socket.socket.connect


def _loopback_only(self, address):
    host = address[0] if isinstance(address, tuple) else None
    if self.family in (socket.AF_INET, socket.AF_INET6) and host not in ("127.0.0.1", "::1", "localhost"):
        raise OSError(f"network disabled in tests (tried {address})")
    return _real_connect(self, address)


socket.socket.connect = _loopback_only

# ---------------------------------------------------------------------------
# Tiny workspace: 3 local parquet files from stdlib sources, vocab 512, seq 64
# ---------------------------------------------------------------------------

TINY_PROFILE = {"max_seq_len": 64, "time_budget_s": 2, "eval_tokens": 4096, "excluded_steps": 1,
                "model_caps": {"depth": 2, "head_dim": 32, "total_batch_size": 1024, "device_batch_size": 8}}


def default_json(name):
    return json.loads((REPO / name).read_text())


def tiny_ground(cache_dir, local_dir, **ledger):
    g = default_json("ground.json")
    g["mode"] = "test"
    g["data"].update(source="local", cache_dir=str(cache_dir), local_dir=str(local_dir))
    g["tokenizer"]["vocab_size"] = 512
    g["test"] = dict(TINY_PROFILE)
    g["ledger"] = {"results": ledger.get("results", "results.tsv"), "sessions_dir": ledger.get("sessions_dir",
                                                                                               "sessions")}
    return g


def write_json(path, obj):
    path.write_text(json.dumps(obj, indent=2))
    return path


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    """Three parquet files of Python-source documents; the last is the val file."""
    import sysconfig
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(root.glob("*.py"))[:60]
    docs = []
    for f in files:
        docs.extend(corpus.split_source(f.read_text(encoding="utf-8", errors="replace")))
    d = tmp_path_factory.mktemp("corpus")
    n = len(docs)
    util.write_text_parquet(d / "a_train.parquet", docs[: n // 2])
    util.write_text_parquet(d / "b_train.parquet", docs[n // 2: n - n // 6])
    util.write_text_parquet(d / "c_val.parquet", docs[n - n // 6:])
    return d


@pytest.fixture(scope="session")
def workspace(tmp_path_factory, tiny_corpus):
    """A prepared workspace: ground.json + model.json + cache (data manifest, tokenizer, tokens)."""
    d = tmp_path_factory.mktemp("ws")
    ground = write_json(d / "ground.json", tiny_ground(d / "cache", tiny_corpus))
    model = write_json(d / "model.json", default_json("model.json"))
    env = {"AUTORESEARCH_GROUND": str(ground), "AUTORESEARCH_MODEL": str(model)}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    settings.reset()
    s = settings.current()
    m = sources.prepare_data(s)
    tokenizer.train_tokenizer(s, m)
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    return d


@pytest.fixture(autouse=True)
def use_workspace(workspace, monkeypatch):
    monkeypatch.setenv("AUTORESEARCH_GROUND", str(workspace / "ground.json"))
    monkeypatch.setenv("AUTORESEARCH_MODEL", str(workspace / "model.json"))
    settings.reset()
    yield
    settings.reset()


@pytest.fixture
def run_dir(tmp_path, workspace):
    """A per-test ground.json sharing the prepared cache but with its own ledger in tmp_path."""
    g = json.loads((workspace / "ground.json").read_text())
    g["ledger"] = {"results": str(tmp_path / "results.tsv"), "sessions_dir": str(tmp_path / "sessions")}
    write_json(tmp_path / "ground.json", g)
    write_json(tmp_path / "model.json", json.loads((workspace / "model.json").read_text()))
    return tmp_path


def run_script(script, run_dir, *args, timeout=300, env_extra=None):
    env = dict(os.environ, AUTORESEARCH_GROUND=str(run_dir / "ground.json"),
               AUTORESEARCH_MODEL=str(run_dir / "model.json"), PYTHONUNBUFFERED="1")
    env.update(env_extra or {})
    return subprocess.run([sys.executable, str(REPO / script), *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=run_dir)


def sync_working_tree(dest: Path) -> None:
    """Copy the working tree's harness, prepare.py, train.py and program.md over a clone (which has HEAD's)."""
    import shutil
    for f in ("prepare.py", "train.py", "program.md"):
        (dest / f).write_text((REPO / f).read_text())
    shutil.rmtree(dest / "harness", ignore_errors=True)
    shutil.copytree(REPO / "harness", dest / "harness", ignore=shutil.ignore_patterns("__pycache__"))
