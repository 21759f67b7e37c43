"""Data: the ClimbMix download against a real HTTP server on 127.0.0.1 (failing, truncated and missing shards,
resume); the local and builtin sources against their files; tokenizer round trips; best-fit packing against
its rules; the dataloader's rows against the packer's; evaluate_bpb against an analytic value.

    uv run pytest tests/test_data.py
"""

import http.server
import json
import math
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from harness import config, corpus, dataloader, evaluate, settings, sources, tokenizer, util
from conftest import write_json

# ---------------------------------------------------------------------------
# A real HTTP server on 127.0.0.1 with a failing, a truncated and a missing shard
# ---------------------------------------------------------------------------


class ShardServer:
    def __init__(self, root: Path, fail_first: dict, truncate_first: dict):
        self.root, self.fail_first, self.truncate_first = root, dict(fail_first), dict(truncate_first)
        self.requests = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _serve(self, body_wanted):
                name = self.path.rsplit("/", 1)[-1]
                server.requests.append((self.command, name))
                path = server.root / name
                if not path.exists():
                    self.send_response(404)
                    self.end_headers()
                    return
                if body_wanted and server.fail_first.get(name, 0) > 0:
                    server.fail_first[name] -= 1
                    self.send_response(503)
                    self.end_headers()
                    return
                data = path.read_bytes()
                short = body_wanted and server.truncate_first.get(name, 0) > 0
                if short:
                    server.truncate_first[name] -= 1
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if body_wanted:
                    self.wfile.write(data[: len(data) // 2] if short else data)

            def do_GET(self):
                self._serve(True)

            def do_HEAD(self):
                self._serve(False)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/data"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *a):
        self.httpd.shutdown()
        self.httpd.server_close()


def _make_shards(root: Path, indices):
    root.mkdir(parents=True, exist_ok=True)
    for i in indices:
        docs = [f"document {i}-{j}: " + "lorem ipsum " * (5 + j % 7) for j in range(200)]
        pq.write_table(pa.table({"text": docs}), root / sources.shard_name(i))


def _settings_with(run_dir, **data):
    g = json.loads((run_dir / "ground.json").read_text())
    g["data"].update(data)
    write_json(run_dir / "ground.json", g)
    settings.reset()
    return config.load_ground(run_dir / "ground.json")


def test_climbmix_download_retries_truncation_and_resume(tmp_path, run_dir, monkeypatch):
    served = tmp_path / "served"
    _make_shards(served, [0, 1, 2, 9, 12])
    with ShardServer(served, fail_first={sources.shard_name(1): 2}, truncate_first={sources.shard_name(2): 1}) as srv:
        g = _settings_with(run_dir, source="climbmix", climbmix_url=srv.url, val_shard=9, num_train_shards=3,
                           heldout_shard=12, cache_dir=str(tmp_path / "cache"))
        s = settings.make_settings(g, False, run_dir)
        files = sources.download_climbmix(s, 3, workers=4, backoff_s=0.01)
        out = tmp_path / "cache" / "data" / "climbmix"
        assert sorted(p.name for p in out.iterdir()) == [sources.shard_name(i) for i in (0, 1, 2, 9, 12)]  # no .tmp
        for i in (0, 1, 2, 9, 12):
            assert (out / sources.shard_name(i)).read_bytes() == (served / sources.shard_name(i)).read_bytes()
        assert files["val"].endswith(sources.shard_name(9)) and len(files["train"]) == 3
        assert files["heldout"].endswith(sources.shard_name(12))       # the human's held-out shard, not trained
        gets = [n for c, n in srv.requests if c == "GET"]
        assert gets.count(sources.shard_name(1)) == 3          # two 503s, then success
        assert gets.count(sources.shard_name(2)) == 2          # truncated once, then success
        # resume: nothing is fetched again
        srv.requests.clear()
        sources.download_climbmix(s, 3, workers=4, backoff_s=0.01)
        assert [r for r in srv.requests if r[0] == "GET"] == []


def test_climbmix_permanent_failure_is_reported(tmp_path):
    served = tmp_path / "served"
    _make_shards(served, [0])
    with ShardServer(served, {}, {}) as srv:
        with pytest.raises(RuntimeError) as e:
            sources.download_shard(srv.url, 5, tmp_path / "out", attempts=3, backoff_s=0.01)
        assert "failed after 3 attempts" in str(e.value) and "404" in str(e.value)
        assert not (tmp_path / "out" / sources.shard_name(5)).exists()
        assert list((tmp_path / "out").glob("*.tmp")) == []


def test_auto_source_uses_climbmix_when_reachable_and_builtin_otherwise(tmp_path, run_dir, monkeypatch, capsys):
    served = tmp_path / "served"
    _make_shards(served, [0, 7, 8])
    with ShardServer(served, {}, {}) as srv:
        g = _settings_with(run_dir, source="auto", climbmix_url=srv.url, val_shard=7, num_train_shards=1,
                           heldout_shard=8, cache_dir=str(tmp_path / "cache"), probe_timeout_s=2.0)
        s = settings.make_settings(g, False, run_dir)
        m = sources.prepare_data(s)
        assert m["source"] == "climbmix" and m["reason"] == "auto: ClimbMix reachable"
        manifest = json.loads((tmp_path / "cache" / "data" / "manifest.json").read_text())
        assert (manifest["train"] == ["climbmix/shard_00000.parquet"] and manifest["val"]
                == "climbmix/shard_00007.parquet" and manifest["heldout"] == "climbmix/shard_00008.parquet")
        assert manifest["heldout_sha256"] == util.file_sha256(served / "shard_00008.parquet")
    # server gone: auto falls back to builtin, loudly (builtin build is stubbed to keep the test fast)
    monkeypatch.setattr(sources, "build_builtin", lambda s, kind: {"train": [str(served / "shard_00000.parquet")],
                                                             "val": str(served / "shard_00007.parquet")})
    m = sources.prepare_data(s)
    out = capsys.readouterr().out
    assert m["source"] == "builtin" and "NOTICE: ClimbMix is not reachable" in out
    assert "data: source = builtin (auto: ClimbMix not reachable within 2s)" in out


def test_local_source_needs_two_files(tmp_path, run_dir):
    d = tmp_path / "mine"
    d.mkdir()
    (d / "one.txt").write_text("hello")
    g = _settings_with(run_dir, source="local", local_dir=str(d))
    s = settings.make_settings(g, False, run_dir)
    with pytest.raises(config.ConfigError) as e:
        sources.local_files(s)
    assert str(e.value) == (f"ground.json: key 'data.local_dir': expected at least 2 .parquet/.txt/.jsonl files "
                            f"(the last by name is the pinned val file), found 1 in {d}")
    (d / "two.jsonl").write_text(json.dumps({"text": "a"}) + "\n" + json.dumps({"text": "b"}) + "\n")
    files = sources.local_files(s)
    assert files["val"].endswith("two.jsonl") and files["train"][0].endswith("one.txt")
    assert sources.read_documents(files["val"]) == ["a", "b"]
    assert sources.read_documents(files["train"][0]) == ["hello"]
    (d / "two.jsonl").write_text('{"txt": 1}\n')
    with pytest.raises(config.ConfigError) as e:
        sources.read_documents(d / "two.jsonl")
    assert str(e.value) == f"{d / 'two.jsonl'}: line 1: expected a JSON object with a 'text' key"


def test_split_source_at_top_level_definitions():
    blocks = [f"@decorator\ndef f{i}(x):\n" + "    y = x + 1\n" * 60 + "    return y\n" for i in range(6)]
    text = "import os\n\n" + "\n".join(blocks) + "\nclass C:\n    pass\n"
    docs = corpus.split_source(text, target=1500, max_chars=4000)
    assert "".join(docs) == text                                  # nothing lost
    assert len(docs) > 2
    for d in docs[1:]:
        assert d.startswith("@decorator\ndef f") or d.startswith("class C")   # decorators stay with their def
    assert all(len(d) < 4000 for d in docs)
    long_fn = "def g():\n" + "    x = 1\n" * 1000                   # one 10 KB function: split at lines
    docs = corpus.split_source(long_fn, target=2000, max_chars=4000)
    assert "".join(docs) == long_fn and max(map(len, docs)) <= 4000 and len(docs) == 3


def test_corpus_filters_and_dedup_on_fixtures(tmp_path):
    """Files a corpus must not take (minified, generated, numeric tables, binary-like, non-UTF-8), a vendored copy
    (kept once), and the val split by path: against what build() writes and reports."""
    root = tmp_path / "pkgs"
    good = "def f(x):\n    return x + 1\n\n\nclass A:\n    pass\n"
    files = {"a/core.py": good, "b/_vendor/a/core.py": good,                  # a vendored copy of a/core.py
             "a/min.js.py": "x=1;" * 400 + "\n",                             # one 1,600-character line
             "a/gen.py": "# Generated by protoc. DO NOT EDIT.\nx = 1\n",
             "a/table.py": "T = [\n" + "    1234567, 7654321, 1234567,\n" * 50 + "]\n",
             "a/bin.py": "x = '\x00\x01\x02'\n" * 20, "a/README.md": "# Title\n\nSome prose.\n",
             "a/LICENSE.txt": "MIT License\n"}
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    (root / "a/latin1.py").write_bytes("s = 'caf\xe9'\n".encode("latin-1"))
    (root / "c").mkdir()
    for i in range(60):                                           # enough files for both sides of the split
        (root / f"c/m{i:02d}.py").write_text(f"def m{i}():\n    return {i}\n")
    m = corpus.build("builtin", tmp_path / "out", folders=[("pkgs", root)])
    info = m["builtin"]
    assert info["rejected"] == {"binary-like": 1, "generated": 1, "minified or data": 1, "numeric table": 1,
                                "unreadable": 1}
    assert info["duplicates"] == 1 and info["files"] == 62            # core.py once, README, 60 modules
    train = [d for p in m["train"] for d in sources.read_documents(p)]
    val = sources.read_documents(m["val"])
    assert sum(d.count("def f(x)") for d in train + val) == 1
    assert any("Some prose" in d for d in train + val) and not any("MIT License" in d for d in train + val)
    assert set(train).isdisjoint(val) and 0 < len(val) < len(train)
    again = corpus.build("builtin", tmp_path / "out2", folders=[("pkgs", root)])
    assert again["builtin"]["corpus_sha256"] == info["corpus_sha256"]
    assert util.file_sha256(Path(again["val"])) == util.file_sha256(Path(m["val"]))


def test_a_finished_builtin_build_is_reused_and_an_interrupted_one_redone(tmp_path, capsys):
    root = tmp_path / "pkgs"
    for i in range(40):
        (root / f"m{i:02d}.py").parent.mkdir(parents=True, exist_ok=True)
        (root / f"m{i:02d}.py").write_text(f"def m{i}():\n    return {i}\n")
    first = corpus.build("builtin", tmp_path / "out", folders=[("pkgs", root)])
    stamp = Path(first["val"]).stat().st_mtime_ns
    capsys.readouterr()
    assert corpus.build("builtin", tmp_path / "out", folders=[("pkgs", root)]) == first
    assert "builtin: up to date in" in capsys.readouterr().out and Path(first["val"]).stat().st_mtime_ns == stamp
    (root / "m00.py").write_text("def m0():\n    return 'changed'\n")          # a package upgraded: rebuilt
    changed = corpus.build("builtin", tmp_path / "out", folders=[("pkgs", root)])
    assert "up to date" not in capsys.readouterr().out
    assert changed["builtin"]["corpus_sha256"] != first["builtin"]["corpus_sha256"]
    (tmp_path / "out" / corpus.BUILD_RECORD).unlink()                        # interrupted before its record
    assert corpus.build("builtin", tmp_path / "out", folders=[("pkgs", root)]) == changed
    assert "up to date" not in capsys.readouterr().out


def test_builtin_stdlib_corpus_is_deterministic_with_pinned_val(tmp_path, run_dir):
    g = _settings_with(run_dir, source="builtin-stdlib", cache_dir=str(tmp_path / "c1"))
    s = settings.make_settings(g, False, run_dir)
    a = sources.build_builtin(s, "builtin-stdlib")
    val_a = sources.read_documents(a["val"])
    train_a = sources.read_documents(a["train"][0])
    assert len(a["train"]) == corpus.TRAIN_SHARDS
    assert len(val_a) > 100 and len(train_a) > 300
    assert max(len(d) for d in train_a) <= corpus.DOC_MAX_CHARS      # nothing a row must crop
    assert set(val_a).isdisjoint(train_a)
    assert a["builtin"]["roots"] == [str(corpus.roots("builtin-stdlib")[0][1])]
    g2 = _settings_with(run_dir, source="builtin-stdlib", cache_dir=str(tmp_path / "c2"))
    b = sources.build_builtin(settings.make_settings(g2, False, run_dir), "builtin-stdlib")
    assert a["builtin"]["corpus_sha256"] == b["builtin"]["corpus_sha256"]
    assert util.file_sha256(Path(a["val"])) == util.file_sha256(Path(b["val"]))


# ---------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------

def test_tokenizer_roundtrip_specials_and_token_bytes():
    tok = tokenizer.Tokenizer.from_directory()
    assert tok.get_vocab_size() == 512
    assert tok.get_bos_token_id() == 508                 # specials come after the 508 mergeable ranks
    text = "def f(x):\n    return x  # ünïcode ✓\n"
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert tok.encode(text, prepend=tok.get_bos_token_id())[0] == 508
    assert tok.encode([text, "ab"])[1] == tok.encode("ab")
    tb = tokenizer.get_token_bytes()
    assert tb.shape == (512,) and tb[:256].min() == 1 and tb[508:].sum() == 0
    assert int(tb[ids].sum()) == len(text.encode("utf-8"))


def test_tokenizer_reused_then_retrained_on_config_change(run_dir, capsys):
    s = settings.current()
    m = sources.load_manifest(s)
    tokenizer.train_tokenizer(s, m)
    assert "tokenizer: reusing" in capsys.readouterr().out
    g = json.loads((run_dir / "ground.json").read_text())
    g["tokenizer"]["vocab_size"] = 300
    g["data"]["cache_dir"] = str(run_dir / "cache2")
    write_json(run_dir / "ground.json", g)
    s2 = settings.make_settings(config.load_ground(run_dir / "ground.json"), False, run_dir)
    out = tokenizer.train_tokenizer(s2, m)
    assert "trained vocab 300" in capsys.readouterr().out
    assert json.loads((out / "meta.json").read_text())["vocab_size"] == 300


# ---------------------------------------------------------------------------
# Packing and the loader
# ---------------------------------------------------------------------------

def _docs(lengths, bos=999):
    return iter([(np.array([bos] + list(range(1, n)), dtype=np.int32), 1) for n in lengths])


def test_best_fit_packing_full_rows_bos_aligned():
    rng = np.random.default_rng(0)
    lengths = list(rng.integers(2, 300, size=3000))
    packer = dataloader.BestFitPacker(_docs(lengths), capacity=257, buffer_size=100)
    row = np.empty(257, dtype=np.int32)
    used = 0
    for _ in range(200):
        row[:] = -1
        packer.fill_row(row)
        assert row[0] == 999                          # every row starts at a document start
        assert (row >= 0).all()                       # 100% utilization, no padding
        used += 1
    assert used == 200


def test_best_fit_picks_largest_that_fits_and_crops_shortest():
    packer = dataloader.BestFitPacker(_docs([5, 3, 8, 2, 2]), capacity=10, buffer_size=5)
    row = np.empty(10, dtype=np.int32)
    packer.fill_row(row)
    # 8 fits first (largest <= 10), then a 2 fills the rest
    assert row.tolist() == [999, 1, 2, 3, 4, 5, 6, 7, 999, 1]
    packer.fill_row(row)
    # then 5, 3 and the other 2
    assert row.tolist() == [999, 1, 2, 3, 4, 999, 1, 2, 999, 1]
    with pytest.raises(EOFError):
        packer.fill_row(row)
    packer = dataloader.BestFitPacker(_docs([30, 40]), capacity=10, buffer_size=4)
    packer.fill_row(row)
    assert row.tolist() == [999] + list(range(1, 10))          # shortest (30) cropped to the row
    packer.fill_row(row)
    assert row.tolist() == [999] + list(range(1, 10))          # the 40 next; the 30's rest was dropped
    with pytest.raises(EOFError):
        packer.fill_row(row)


def test_dataloader_shapes_targets_and_determinism():
    tok = tokenizer.Tokenizer.from_directory()
    bos = tok.get_bos_token_id()
    dl = dataloader.make_dataloader(tok, 4, 64, "train")
    x, y, epoch = next(dl)
    assert x.shape == (4, 64) and y.shape == (4, 64) and x.dtype == torch.long
    assert (x[:, 0] == bos).all()
    assert torch.equal(x[:, 1:], y[:, :-1])                  # targets are inputs shifted by one
    dl2 = dataloader.make_dataloader(tok, 4, 64, "train")
    x2, _, _ = next(dl2)
    assert torch.equal(x, x2)
    epochs = [next(dl)[2] for _ in range(400)]
    assert epochs[-1] > 1 and epochs == sorted(epochs)     # tiny corpus: the train split loops


def test_val_loader_is_one_pass():
    tok = tokenizer.Tokenizer.from_directory()
    s = settings.current()
    have = evaluate.val_rows_available(s, tok, sources.load_manifest(s))
    rows = sum(int((x[:, 0] == tok.get_bos_token_id()).sum()) for x, _, _ in dataloader.make_dataloader(tok, 8, 64,
                                                                                                        "val"))
    assert have > 8 and rows >= have                         # the loader stops, it never repeats


# ---------------------------------------------------------------------------
# The metric
# ---------------------------------------------------------------------------

class UniformModel(torch.nn.Module):
    """Uniform logits: the loss of every token is exactly ln(V)."""

    def __init__(self, vocab):
        super().__init__()
        self.vocab = vocab

    def forward(self, x, y, reduction="mean"):
        logits = torch.zeros(*x.shape, self.vocab)
        return torch.nn.functional.cross_entropy(logits.view(-1, self.vocab), y.reshape(-1), reduction=reduction)


def _val_rows(tok, rows):
    s = settings.current()
    m = sources.load_manifest(s)
    packer = dataloader.BestFitPacker(dataloader.document_stream(s, tok, [m["val"]], False), s.max_seq_len + 1)
    out = np.empty((rows, s.max_seq_len + 1), dtype=np.int64)
    for r in range(rows):
        packer.fill_row(out[r])
    return out


@pytest.mark.parametrize("batch_size", [8, 16, 3])
def test_evaluate_bpb_matches_analytic_value(batch_size):
    tok = tokenizer.Tokenizer.from_directory()
    rows, _ = evaluate.eval_rows(tok)
    assert rows == 4096 // 64
    targets = _val_rows(tok, rows)[:, 1:]
    tb = tokenizer.get_token_bytes().numpy()
    nbytes = tb[targets]
    expected = math.log(512) * (nbytes > 0).sum() / (math.log(2) * nbytes.sum())
    got = evaluate.evaluate_bpb(UniformModel(512), tok, batch_size)
    assert got == pytest.approx(expected, rel=1e-6)          # fp32 losses; independent of batch size


def test_eval_is_capped_loudly_when_val_is_small(run_dir, capsys, monkeypatch):
    g = json.loads((run_dir / "ground.json").read_text())
    g["test"]["eval_tokens"] = 10_000_000
    write_json(run_dir / "ground.json", g)
    settings.reset()
    monkeypatch.setenv("AUTORESEARCH_GROUND", str(run_dir / "ground.json"))
    tok = tokenizer.Tokenizer.from_directory()
    rows, note = evaluate.eval_rows(tok, verbose=True)
    have = evaluate.val_rows_available(settings.current(), tok, sources.load_manifest())
    assert rows == have < 10_000_000 // 64
    assert capsys.readouterr().out.startswith(f"!! eval: the val file holds only {have} rows of 64 tokens")


# ---------------------------------------------------------------------------
# Long documents: how much the loader can use, and the split option
# ---------------------------------------------------------------------------

def _long_docs_workspace(tmp_path, run_dir, split):
    d = tmp_path / "long"
    d.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]
    for i in range(4):                                  # one document per file, each ~40 rows of 64 tokens long
        (d / f"{i}.txt").write_text(" ".join(rng.choice(words, 2000)))
    g = _settings_with(run_dir, source="local", local_dir=str(d), cache_dir=str(tmp_path / "cache"),
                       split_long_documents=split)
    s = settings.make_settings(g, False, run_dir)
    m = sources.prepare_data(s)
    tokenizer.train_tokenizer(s, m)
    return s, m, tokenizer.Tokenizer.from_directory(tmp_path / "cache" / "tokenizer")


def test_long_documents_are_cropped_unless_split(tmp_path, run_dir):
    """Best-fit packing crops a document longer than a row (upstream): packing_report says how little of such
    a corpus the loader uses; data.split_long_documents cuts them into row-sized pieces and it uses nearly all."""
    s, m, tok = _long_docs_workspace(tmp_path, run_dir, split=False)
    used, cached = dataloader.packing_report(s, tok, m["train"], s.max_seq_len)
    assert cached > 20 * (s.max_seq_len + 1) and used / cached < 0.2
    s, m, tok = _long_docs_workspace(tmp_path, run_dir, split=True)
    used2, cached2 = dataloader.packing_report(s, tok, m["train"], s.max_seq_len)
    assert cached2 == cached and used2 / cached2 > 0.9
    pieces = list(dataloader.row_stream(s, tok, m["train"][:1], s.max_seq_len, loop=False))
    doc, _ = next(dataloader.document_stream(s, tok, m["train"][:1], loop=False))
    assert all(len(p) <= s.max_seq_len + 1 and p[0] == tok.get_bos_token_id() for p, _ in pieces)
    assert sum(len(p) - 1 for p, _ in pieces) == len(doc) - 1          # every token kept once, a BOS per piece


def test_split_option_is_refused_for_climbmix(run_dir):
    g = json.loads((run_dir / "ground.json").read_text())
    g["data"].update(source="climbmix", split_long_documents=True)
    write_json(run_dir / "ground.json", g)
    with pytest.raises(config.ConfigError) as e:
        config.load_ground(run_dir / "ground.json")
    assert str(e.value) == ("ground.json: key 'data.split_long_documents': expected false with data.source climbmix "
                            "(ClimbMix keeps upstream's cropping)")
