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

from harness import corpus, settings, sources, tokenizer, util  # noqa: E402

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


# ---------------------------------------------------------------------------
# A real PostgreSQL server, started by the tests (binaries from Debian's postgresql package; .ci/run installs it)
# ---------------------------------------------------------------------------

def _pg_bin(name):
    import glob
    import shutil
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    return found


class PostgresServer:
    """initdb + pg_ctl on 127.0.0.1 with password authentication; run as the `postgres` user when the tests run as
    root (the server refuses root). `url(database)` for the superuser `agent`; stop/start/restart."""

    PASSWORD = "s3cret-test-only"

    def __init__(self):
        import tempfile
        self.root = Path(tempfile.mkdtemp(prefix="autoresearch-pg-"))
        self.data, self.log = self.root / "data", self.root / "server.log"
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        (self.root / "pw").write_text(self.PASSWORD + "\n")
        if self.as_user:
            subprocess.run(["chown", "-R", "postgres", str(self.root)], check=True)
        self._run(_pg_bin("initdb"), "-D", str(self.data), "-U", "agent", "--auth=scram-sha-256",
                  f"--pwfile={self.root / 'pw'}", "-E", "UTF8", "--no-sync")
        self.start()

    def _run(self, *cmd):
        r = subprocess.run(self.as_user + list(cmd), capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, (cmd, r.stdout[-2000:], r.stderr[-2000:])

    def start(self):
        self._run(_pg_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "-o",
                  f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off", "start")

    def stop(self):
        self._run(_pg_bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def restart(self):
        self.stop()
        self.start()

    def url(self, database="postgres", password=None):
        return f"postgresql://agent:{password or self.PASSWORD}@127.0.0.1:{self.port}/{database}"

    def new_database(self, name):
        import psycopg
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


@pytest.fixture(scope="session")
def postgres():
    """One server for the session; each test makes its own database with postgres.new_database(name)."""
    if _pg_bin("initdb") is None or _pg_bin("pg_ctl") is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL's initdb/pg_ctl not found: .ci/run installs Debian's postgresql package")
        pytest.skip("PostgreSQL's initdb/pg_ctl not found (apt-get install postgresql)")
    pytest.importorskip("psycopg")
    server = PostgresServer()
    yield server
    import shutil
    server.stop()
    shutil.rmtree(server.root, ignore_errors=True)
