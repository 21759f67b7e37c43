"""The human's held-out split: pinned by every source, scored for the baseline and kept runs only, stored for the
human (run record, sessions/heldout.jsonl, progress.png, the notebook), never in memory.md, `next:` or the score in
the run's output.

    uv run pytest tests/test_heldout.py
"""

import json
import shutil
from types import SimpleNamespace

import pyarrow.parquet as pq
import pytest
import torch

from harness import config, corpus, heldout, ledger, plot, settings, sources, tokenizer, util
from conftest import default_json, run_script, tiny_ground, write_json


def _py_files(root, n):
    root.mkdir(parents=True)
    for i in range(n):
        (root / f"mod_{i:03d}.py").write_text(f'"""Module {i}."""\n\n\ndef f_{i}(x):\n    return x * {i} + {i % 7}\n\n'
                                              f'\nclass C{i}:\n    value = {i}\n')
    return root


def test_builtin_corpus_pins_train_val_and_heldout_apart(tmp_path, capsys):
    files = _py_files(tmp_path / "lib", 400)
    got = corpus.build("builtin-stdlib", tmp_path / "out", folders=[("stdlib", files)])
    text = lambda p: set(pq.read_table(p).column("text").to_pylist())          # noqa: E731
    val, held = text(got["val"]), text(got["heldout"])
    train = set().union(*(text(p) for p in got["train"]))
    # 5% of the files each by path hash: about 20 of 400, and no document on two sides
    assert 5 <= got["builtin"]["val_documents"] <= 45 and 5 <= got["builtin"]["heldout_documents"] <= 45
    assert len(train) == 400 - len(val) - len(held)
    assert not (val & held) and not (val & train) and not (held & train)


def test_local_folder_holds_out_its_second_to_last_file_from_four(tmp_path, capsys, run_dir):
    folder = tmp_path / "local"
    folder.mkdir()
    for name in ("a.txt", "b.txt", "c.txt"):
        (folder / name).write_text(f"text of {name}\n")
    g = json.loads((run_dir / "ground.json").read_text())
    g["data"].update(source="local", local_dir=str(folder))
    write_json(run_dir / "ground.json", g)
    s = settings.make_settings(config.load_ground(run_dir / "ground.json"), False, run_dir)
    three = sources.local_files(s)
    assert "heldout" not in three and [p[-5:] for p in three["train"]] == ["a.txt", "b.txt"]
    assert "heldout: none:" in capsys.readouterr().out
    (folder / "d.txt").write_text("text of d\n")
    four = sources.local_files(s)
    assert four["heldout"].endswith("c.txt") and four["val"].endswith("d.txt")
    assert [p[-5:] for p in four["train"]] == ["a.txt", "b.txt"]
    assert "c.txt (the second-to-last file by name) is the human's held-out split" in capsys.readouterr().out


@pytest.mark.parametrize("shard, why", [(6542, "val shard"), (3, "train shard")])
def test_a_heldout_shard_that_trains_or_validates_is_refused(run_dir, shard, why):
    g = json.loads((run_dir / "ground.json").read_text())
    g["data"].update(val_shard=6542, num_train_shards=10, heldout_shard=shard)
    write_json(run_dir / "ground.json", g)
    with pytest.raises(config.ConfigError) as e:
        config.load_ground(run_dir / "ground.json")
    assert str(e.value).startswith("ground.json: key 'data.heldout_shard': expected a shard that is neither")
    assert f"got {shard}" in str(e.value)


def test_scores_read_back_with_damaged_lines_set_aside(tmp_path):
    store = ledger.FileLedger(tmp_path / "results.tsv", tmp_path / "sessions")
    store.sessions.mkdir()
    (store.sessions / heldout.HELDOUT_FILE).write_text(
        '{"run_id": "a", "heldout_bpb": 1.25}\n{"run_id": "b", "heldout_bpb": "x"}\n[1, 2]\n\x00\xff garbage\n'
        '{"run_id": "c", "heldout_bpb": 0.5, "status": "keep"}\n{"heldout_bpb": 0.1}\n')
    got = heldout.read(store)
    assert sorted(got) == ["a", "c"] and got["a"]["heldout_bpb"] == 1.25 and got["c"]["status"] == "keep"


def test_progress_png_gets_a_gain_panel_only_with_scores(tmp_path):
    rows = []
    for i, (v, st) in enumerate([(1.0, "baseline"), (0.99, "discard"), (0.97, "keep"), (0.96, "keep")]):
        row = {c: None for c in ledger.LEDGER_COLUMNS}
        row.update(run_id=f"r{i}", commit=f"{i:07d}", val_bpb=v, status=st, description=f"run {i}",
                   comparability_key="k", mode="test")
        rows.append(row)
    import matplotlib.image as mpimg
    plot.write_progress_png(rows, {}, tmp_path)
    one = mpimg.imread(tmp_path / "progress.png").shape
    plot.write_progress_png(rows, {}, tmp_path, {"r0": {"heldout_bpb": 1.1}, "r2": {"heldout_bpb": 1.08},
                                                 "r3": {"heldout_bpb": 1.09}})
    two = mpimg.imread(tmp_path / "progress.png").shape
    assert one[:2] == (450, 1000) and two[:2] == (750, 1000)


@pytest.fixture
def held_workspace(tmp_path, tiny_corpus):
    """The tiny corpus with a fourth file: a, b train; c held out; d val (prepared in its own cache)."""
    folder = tmp_path / "corpus"
    folder.mkdir()
    for name in ("a_train.parquet", "b_train.parquet"):
        shutil.copy(tiny_corpus / name, folder / name)
    docs = pq.read_table(tiny_corpus / "c_val.parquet").column("text").to_pylist()
    util.write_text_parquet(folder / "c_heldout.parquet", docs[: len(docs) // 2])
    util.write_text_parquet(folder / "d_val.parquet", docs[len(docs) // 2:])
    g = tiny_ground(tmp_path / "cache", folder, results=str(tmp_path / "results.tsv"),
                    sessions_dir=str(tmp_path / "sessions"))
    write_json(tmp_path / "ground.json", g)
    write_json(tmp_path / "model.json", default_json("model.json"))
    return tmp_path


def _prepare(d, monkeypatch):
    monkeypatch.setenv("AUTORESEARCH_GROUND", str(d / "ground.json"))
    monkeypatch.setenv("AUTORESEARCH_MODEL", str(d / "model.json"))
    settings.reset()
    s = settings.current()
    m = sources.prepare_data(s)
    tokenizer.train_tokenizer(s, m)
    return s, m


@pytest.mark.slow
def test_a_baseline_is_scored_for_the_human_and_a_repeat_is_not(held_workspace, monkeypatch):
    d = held_workspace
    _, m = _prepare(d, monkeypatch)
    assert m["heldout"].endswith("c_heldout.parquet") and m["train"][-1].endswith("b_train.parquet")
    first = run_script("train.py", d, "--description", "a baseline")       # not the commit subject: it may say "held"
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    scores = heldout.read(ledger.FileLedger(d / "results.tsv", d / "sessions"))
    (run_id, entry), = scores.items()
    record = json.loads((d / "sessions" / f"{run_id}.json").read_text())
    assert entry["status"] == "baseline" and record["heldout"]["heldout_bpb"] == entry["heldout_bpb"] > 0.5
    assert record["key_parts"]["heldout"] == m["heldout_sha256"]          # part of the comparability key
    # the output says the time it added, never the score; memory.md never mentions it
    line = next(x for x in first.stdout.splitlines() if x.startswith("heldout:"))
    assert "scored for this baseline in" in line and f"{entry['heldout_bpb']:.4f}" not in first.stdout
    memory = (d / "sessions" / "memory.md").read_text()
    assert "held" not in memory.lower() and f"{entry['heldout_bpb']:.4f}" not in memory
    second = run_script("train.py", d, "--seed", "43", "--description", "a repeat")
    assert second.returncode == 0 and "status:           repeat" in second.stdout
    assert "heldout:" not in second.stdout and len(heldout.read(ledger.FileLedger(d / "results.tsv",
                                                                                  d / "sessions"))) == 1


@pytest.mark.slow
def test_score_routes_only_baselines_and_keeps(held_workspace, monkeypatch, capsys):
    d = held_workspace
    _prepare(d, monkeypatch)
    tok = tokenizer.Tokenizer.from_directory()
    store = ledger.FileLedger(d / "results.tsv", d / "sessions")
    store.sessions.mkdir(exist_ok=True)
    written = []
    zero = lambda x, y, reduction: torch.zeros(y.numel())               # noqa: E731 - loss 0: bpb 0.0
    for status in ("discard", "confirm", "pruned", "keep"):
        run = SimpleNamespace(recorded={"status": status, "val_bpb": 0.9}, run_id=f"run-{status}", key="k", store=store,
                              record={}, _write_json=lambda: written.append(1))
        heldout.score(run, zero, tok, 8, torch.autocast("cpu", enabled=False))
    got = heldout.read(store)
    assert list(got) == ["run-keep"] and got["run-keep"]["heldout_bpb"] == 0.0 and written == [1]
    assert got["run-keep"]["rows"] == heldout.heldout_rows(tok) > 0
