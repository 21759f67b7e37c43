"""Config loading: each file in tests/configs/{valid,invalid}/ against the exact one-line error it must give
(or none); the CLI's exit code 2 with nothing written; the defaults against upstream's constants.

    uv run pytest tests/test_config.py
"""

import dataclasses
import json
import re
from pathlib import Path

import pytest

from harness import config, settings
from conftest import REPO, default_json, run_script, write_json

CASES = Path(__file__).parent / "configs"


def _apply(case):
    """Build the file text for a case: raw text, or the repo default with keys set/deleted."""
    if "raw" in case:
        return case["raw"]
    obj = default_json(case["file"])
    for dotted, value in case.get("set", {}).items():
        *parents, last = dotted.split(".")
        node = obj
        for p in parents:
            node = node[p]
        node[last] = value
    for dotted in case.get("delete", []):
        *parents, last = dotted.split(".")
        node = obj
        for p in parents:
            node = node[p]
        del node[last]
    return json.dumps(obj)


def _load(case, tmp_path):
    path = tmp_path / case["file"]
    path.write_text(_apply(case))
    if case["file"] == "ground.json":
        return config.load_ground(path)
    model = config.load_model(path)
    ground = config.load_ground(REPO / "ground.json")
    if case.get("mode"):
        ground = dataclasses.replace(ground, mode=case["mode"])
    settings.effective_model(model, settings.make_settings(ground, False, tmp_path))
    return model


INVALID = sorted((CASES / "invalid").glob("*.json"))
VALID = sorted((CASES / "valid").glob("*.json"))


def test_enough_cases():
    assert len(INVALID) >= 30


@pytest.mark.parametrize("case_path", INVALID, ids=lambda p: p.stem)
def test_invalid_config_exact_message(case_path, tmp_path):
    case = json.loads(case_path.read_text())
    with pytest.raises(config.ConfigError) as e:
        _load(case, tmp_path)
    assert str(e.value) == case["error"]
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("case_path", VALID, ids=lambda p: p.stem)
def test_valid_config_loads(case_path, tmp_path):
    cfg = _load(json.loads(case_path.read_text()), tmp_path)
    assert cfg is not None


def test_defaults_are_upstream_values():
    g = config.load_ground(REPO / "ground.json")
    m = config.load_model(REPO / "model.json")
    assert (g.train.time_budget_s, g.train.max_seq_len, g.train.eval_tokens) == (300, 2048, 40 * 524288)
    tok = g.tokenizer
    assert (tok.vocab_size, tok.num_reserved_tokens, tok.bos_token) == (8192, 4, "<|reserved_0|>")
    assert r"\p{N}{1,2}" in g.tokenizer.split_pattern
    assert (g.data.num_train_shards, g.data.val_shard, g.data.download_workers) == (10, 6542, 8)
    assert (m.depth, m.aspect_ratio, m.head_dim, m.window_pattern) == (8, 64, 128, "SSSL")
    assert (m.total_batch_size, m.device_batch_size) == (2 ** 19, 128)
    assert (m.embedding_lr, m.unembedding_lr, m.matrix_lr, m.scalar_lr) == (0.6, 0.004, 0.04, 0.5)
    assert (m.weight_decay, m.adam_betas, m.warmup_ratio, m.warmdown_ratio, m.final_lr_frac) == (0.2, (0.8, 0.95),
                                                                                                 0.0, 0.5, 0.0)


def test_configs_are_frozen():
    m = config.load_model(REPO / "model.json")
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.depth = 3


def test_modes():
    assert settings.resolve_mode("auto", True)[0] == "train"
    assert settings.resolve_mode("auto", False)[0] == "test"
    assert settings.resolve_mode("train", False) == ("train", "ground.json mode = train")
    g = config.load_ground(REPO / "ground.json")
    s = settings.make_settings(g, False, REPO)
    assert (s.mode, s.max_seq_len, s.time_budget_s) == ("test", 256, 30)
    m, changes = settings.effective_model(config.load_model(REPO / "model.json"), s)
    assert (m.depth, m.head_dim, m.total_batch_size, m.device_batch_size) == (2, 64, 8192, 16)
    assert changes == {"depth": (8, 2), "head_dim": (128, 64), "total_batch_size": (524288, 8192),
                       "device_batch_size": (128, 16)}
    s = settings.make_settings(g, True, REPO)
    m2, changes = settings.effective_model(config.load_model(REPO / "model.json"), s)
    assert changes == {} and m2.depth == 8 and s.max_seq_len == 2048


def test_small_profile_for_small_cards():
    """mode "small": T 512, a 4M-token eval, 65,536 tokens a step (thousands of steps in 5 minutes on a 16 GB card);
    the model itself is the agent's (no depth or width cap); a ground.json without the profile still loads."""
    g = dataclasses.replace(config.load_ground(REPO / "ground.json"), mode="small")
    s = settings.make_settings(g, True, REPO)
    assert (s.mode, s.mode_reason) == ("small", "ground.json mode = small")
    assert (s.max_seq_len, s.time_budget_s, s.eval_tokens, s.excluded_steps) == (512, 300, 4194304, 2)
    m, changes = settings.effective_model(config.load_model(REPO / "model.json"), s)
    assert changes == {"total_batch_size": (524288, 65536)}
    assert (m.depth, m.aspect_ratio, m.device_batch_size, m.total_batch_size // (m.device_batch_size * 512)) == \
        (8, 64, 128, 1)


def test_check_cli_prints_mode_and_platform(run_dir):
    r = run_script("prepare.py", run_dir, "--check")
    assert r.returncode == 0, r.stderr
    assert "mode: test (ground.json mode = test)" in r.stdout
    split = re.search(r"^batch: ([\d,]+) tokens/step = (\d+) x (\d+) x (\d+) accumulation steps \(no CUDA GPU: "
                      r"model.json's device_batch_size, capped by the profile\)$", r.stdout, re.M)
    total, rows, T, accum = (int(v.replace(",", "")) for v in split.groups())
    assert total == rows * T * accum and T == json.loads((run_dir / "ground.json").read_text())["test"]["max_seq_len"]
    assert "expected tok/s: no estimate: this device has no reference peak FLOP/s" in r.stdout
    assert "attention        sdpa" in r.stdout and "dtype            float32" in r.stdout


@pytest.mark.parametrize("target", ["ground.json", "model.json"])
def test_cli_bad_input_exit_2_one_line_nothing_written(run_dir, target):
    bad = json.loads((run_dir / target).read_text())
    if target == "ground.json":
        bad["train"]["time_budget_s"] = 0
        bad["data"]["cache_dir"] = str(run_dir / "fresh_cache")
        expected = "error: ground.json: key 'train.time_budget_s': expected a positive number of seconds, got 0"
    else:
        bad["depth"] = 0
        expected = "error: model.json: key 'depth': expected an integer between 1 and 256, got 0"
    write_json(run_dir / target, bad)
    before = sorted(p.name for p in run_dir.iterdir())
    for script, args in (("prepare.py", ["--check"]), ("train.py", [])):
        r = run_script(script, run_dir, *args)
        assert r.returncode == 2, (script, r.stdout, r.stderr)
        assert r.stderr.strip() == expected
    assert sorted(p.name for p in run_dir.iterdir()) == before        # no ledger, no sessions, no cache


def test_cli_bad_flag_value(run_dir):
    r = run_script("prepare.py", run_dir, "--num-shards", "0")
    assert r.returncode == 2
    assert r.stderr.strip() == "error: --num-shards: expected an integer >= 1, got 0"


def test_missing_data_or_tokenizer_says_run_prepare_first(run_dir):
    g = json.loads((run_dir / "ground.json").read_text())
    g["data"]["cache_dir"] = str(run_dir / "empty_cache")
    write_json(run_dir / "ground.json", g)
    r = run_script("train.py", run_dir)
    assert r.returncode == 2
    assert (r.stderr.strip()
            == f"error: {run_dir / 'empty_cache' / 'tokenizer' / 'tokenizer.pkl'}: no tokenizer (run prepare.py first)")
    assert not (run_dir / "results.tsv").exists() and not (run_dir / "sessions").exists()


def test_source_mismatch_with_the_cache_is_an_error(run_dir):
    g = json.loads((run_dir / "ground.json").read_text())
    g["data"]["source"] = "builtin"
    write_json(run_dir / "ground.json", g)
    r = run_script("train.py", run_dir)
    assert r.returncode == 2
    assert r.stderr.strip() == ("error: ground.json: key 'data.source': is 'builtin' but the cache holds 'local' data "
                                "(run prepare.py again)")
    assert not (run_dir / "results.tsv").exists()
