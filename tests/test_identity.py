"""What identifies a run (harness/identity.py): its commit and files' digests, ground.json's commit note, the
comparability key and its parts.

    uv run pytest tests/test_identity.py
"""

from harness import config, lineage, memory
from conftest import REPO
from harness.hardware import get_platform as hardware_platform
from test_ledger import _entry, _row


def _checkout_in_a_repo(tmp_path, monkeypatch):
    """A git repository at tmp_path whose checkout of this project is the folder sub/ (as inside a larger
    repository): REPO_DIR and ground.json there. Returns (sub, git)."""
    import subprocess
    from harness import config as cfg, identity
    sub = tmp_path / "sub"
    sub.mkdir()
    monkeypatch.setattr(cfg, "REPO_DIR", sub)
    monkeypatch.setattr(identity, "REPO_DIR", sub)
    monkeypatch.delenv("AUTORESEARCH_MODEL", raising=False)
    monkeypatch.setenv("AUTORESEARCH_GROUND", str(sub / "ground.json"))
    git = lambda *a: subprocess.run(["git", *a], cwd=sub, check=True, capture_output=True)   # noqa: E731
    git("init", "-q", str(tmp_path))
    git("config", "user.email", "t@t")
    git("config", "user.name", "t")
    return sub, git


def test_a_runs_git_info_digests_its_files_and_its_parents(tmp_path, monkeypatch):
    """files_sha: the agent's two files as the run reads them; parent_files_sha: as HEAD~1 holds them, only when HEAD
    changed nothing but them (a reset to the parent must not undo a ground.json change)."""
    from harness import identity
    sub, git = _checkout_in_a_repo(tmp_path, monkeypatch)
    assert identity.git_info()["parent_files_sha"] is None                 # no commit yet
    kept = {"model.json": '{"depth": 4}\n', "train.py": "print('kept')\n"}
    for name, text in kept.items():
        (sub / name).write_text(text)
    (sub / "ground.json").write_text("{}\n")
    git("add", "-A")
    git("commit", "-qm", "restored")
    assert identity.git_info()["parent_files_sha"] is None                 # the first commit: no parent
    (sub / "model.json").write_text('{"depth": 6}\n')
    git("commit", "-qam", "edit")
    info = identity.git_info()
    assert info["parent_files_sha"] == identity.files_digest(kept)
    assert info["files_sha"] == identity.files_digest({**kept, "model.json": '{"depth": 6}\n'})
    (sub / "ground.json").write_text('{"x": 1}\n')
    (sub / "model.json").write_text('{"depth": 8}\n')
    git("commit", "-qam", "edit with a ground.json change")
    assert identity.git_info()["parent_files_sha"] is None
    (tmp_path / "elsewhere.txt").write_text("x\n")                         # outside the checkout, in the repository
    (sub / "model.json").write_text('{"depth": 10}\n')
    git("add", "-A")
    git("commit", "-qm", "edit with another file of the repository")
    assert identity.git_info()["parent_files_sha"] is None


def test_a_run_says_when_ground_json_is_not_committed_on_its_own(tmp_path, monkeypatch):
    """A trial: ground.json edited for a shared ledger and left uncommitted, then swept into the first experiment's
    commit by `git commit -am`; the discard's reset undid it and later runs used the local ledger, silently."""
    from harness import identity
    sub, git = _checkout_in_a_repo(tmp_path, monkeypatch)
    for name in ("ground.json", "model.json", "train.py"):
        (sub / name).write_text("{}\n")
    git("add", "-A")
    git("commit", "-qm", "start")
    assert identity.ground_commit_note(after_a_run=True) is None
    (sub / "ground.json").write_text('{"ledger": "postgres"}\n')
    assert identity.ground_commit_note(after_a_run=False) == identity.GroundNote(
        "!! ground.json has uncommitted changes: commit them on their own first (`git commit ground.json -m \"ground: "
        "...\"`); in an experiment's commit, the `git reset --hard` after a discard would undo them", uncommitted=True)
    (sub / "model.json").write_text('{"depth": 4}\n')
    git("commit", "-qam", "depth 4")
    split = ("!! this commit changes ground.json with model.json: the `git reset --hard` after a discard would undo "
             "ground.json too; split it: `git reset --soft HEAD~1 && git commit ground.json -m \"ground: ...\" && git "
             "commit -am \"<the edit>\"`")
    assert identity.ground_commit_note(after_a_run=True) == identity.GroundNote(split, uncommitted=False)
    # a commit whose parent was never run is not an experiment's (a fresh clone's HEAD, the user's set-up): silent
    assert identity.ground_commit_note(after_a_run=False) is None
    git("reset", "-q", "--soft", "HEAD~1")              # the split it asks for
    git("commit", "-qm", "ground: postgres", "ground.json")
    git("commit", "-qam", "depth 4")
    assert identity.ground_commit_note(after_a_run=True) is None
    monkeypatch.setenv("AUTORESEARCH_GROUND", str(tmp_path.parent / "shared-ground.json"))
    (sub / "ground.json").write_text('{"x": 1}\n')
    assert identity.ground_commit_note(after_a_run=True) is None   # a ground.json outside the repository: not here


def test_comparability_key_changes_with_the_gpu_and_kernel_choices():
    """A fixed time budget buys more tokens on a faster GPU or kernel (FA4 over cuDNN: ~2% more steps): runs that
    differ there are another key, never compared, as are runs with another number of warm-up steps outside the
    budget (they train); PLATFORM's other entries (reasons, peak FLOPs) do not count."""
    from harness import identity, settings, sources, tokenizer
    s = settings.current()
    tok, manifest = tokenizer.Tokenizer.from_directory(), sources.load_manifest(s)
    h100 = {"device_name": "NVIDIA H100 80GB HBM3", "dtype": "bfloat16", "attention": "cudnn", "mlp": "triton",
            "rope": "triton", "loss": "triton", "compile": True, "compile_scope": "model", "world_size": 1,
            "peak_flops": 989.4e12, "reasons": {"attention": "x"}}
    key = identity.comparability_key(s, tok, manifest, h100)
    assert key == identity.comparability_key(s, tok, manifest, dict(h100, peak_flops=1.0, reasons={}))
    others = [dict(h100, attention="fa4"), dict(h100, device_name="NVIDIA H200"), dict(h100, dtype="float16"),
              dict(h100, compile_scope="blocks"), dict(h100, world_size=2), dict(h100, mlp="plain")]
    keys = {identity.comparability_key(s, tok, manifest, p) for p in others}
    assert len(keys) == len(others) and key not in keys
    assert key.startswith(f"{manifest['source']}-{s.mode}-")
    import dataclasses        # the warm-up steps outside the budget train too: another count, other tokens
    assert identity.comparability_key(dataclasses.replace(s, excluded_steps=s.excluded_steps + 1), tok, manifest,
                                    h100) not in keys | {key}


def test_a_backend_refused_at_start_up_keeps_the_runs_key():
    """confirm_attention may move a run to the next backend when the model's shapes are refused (an edit's doing):
    the run stays in its lineage's key, computed from this machine's PLATFORM, and its record says what ran."""
    from harness import hardware, identity, record, settings, sources, tokenizer
    s, tok = settings.current(), tokenizer.Tokenizer.from_directory()
    m, changes = settings.effective_model(config.load_model(), s)
    P = hardware.get_platform()
    fell_back = record.Run(s, tok, m, changes, "fallback", dict(P, attention="flex", mlp="plain", reasons={}), None, 42)
    assert fell_back.key == identity.comparability_key(s, tok, sources.load_manifest(s), P)
    assert fell_back.key != identity.comparability_key(s, tok, sources.load_manifest(s), dict(P, attention="flex"))
    assert (fell_back.record["platform"]["attention"], fell_back.record["platform"]["mlp"]) == ("flex", "plain")


def test_recorded_runs_keep_the_parts_of_their_key():
    """The index entry a real run writes holds the parts its key hashes (what memory.md compares across keys)."""
    import dataclasses
    from harness import identity, record, settings, sources, tokenizer
    s, tok = settings.current(), tokenizer.Tokenizer.from_directory()
    m, changes = settings.effective_model(config.load_model(), s)
    for steps in (s.excluded_steps, s.excluded_steps + 1):
        run = record.Run(dataclasses.replace(s, excluded_steps=steps), tok, m, changes, f"steps {steps}",
                         hardware_platform(), None, 42)
        run.finish({"val_bpb": 1.0, "num_steps": 10})
    rows, index = run.store.read()
    assert [index[r["run_id"]]["key_parts"]["excluded_steps"] for r in rows[-2:]] == [s.excluded_steps,
                                                                                     s.excluded_steps + 1]
    assert run.key == identity.comparability_key(run.s, tok, sources.load_manifest(s), hardware_platform())
    text = (run.sessions / "memory.md").read_text()
    assert (f"(the key its first run's host ran before it): excluded_steps: {s.excluded_steps} -> "
            f"{s.excluded_steps + 1}\n") in text


def test_cpu_threads_are_part_of_a_cpu_runs_key():
    """On a CPU the thread count sets the speed (steps in the budget) and the order of the sums: runs on 1 and on 2
    threads are another key, and memory.md names the difference; a GPU's key does not hold it."""
    import torch
    from harness import identity, settings, sources, tokenizer
    s, tok = settings.current(), tokenizer.Tokenizer.from_directory()
    manifest, cpu = sources.load_manifest(s), dict(hardware_platform(), device="cpu")
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = identity.key_parts(s, tok, manifest, cpu)
        torch.set_num_threads(2)
        two = identity.key_parts(s, tok, manifest, cpu)
        gpu = identity.key_parts(s, tok, manifest, dict(cpu, device="cuda"))
    finally:
        torch.set_num_threads(before)
    assert (one["threads"], two["threads"]) == (1, 2) and identity.key_of(one) != identity.key_of(two)
    assert "threads" not in gpu
    rows = [_row("a", 1.0, key=identity.key_of(one), status="baseline", line=2),
            _row("b", 1.0, key=identity.key_of(two), status="baseline", line=3)]
    text = memory.render_memory(rows, {"a": _entry(key_parts=one), "b": _entry(key_parts=two)}, "")
    assert (f"- this key against `{identity.key_of(one)}` (the key its first run's host ran before it): CPU threads "
            "(OMP_NUM_THREADS): 1 -> 2\n") in text
    # the next command keeps the thread count the run was given, or the key it asks for would be another one
    one_thread = {"key_parts": one, "launch": {"per_node": 1, "omp_num_threads": "1"}}
    assert lineage.train_command(one_thread, 43) == "env OMP_NUM_THREADS=1 uv run train.py --seed 43"   # timeout-safe
    assert lineage.train_command({"key_parts": two, "launch": {"per_node": 1}}, 43) == "uv run train.py --seed 43"
    assert lineage.train_command({"key_parts": gpu, "launch": one_thread["launch"]}, 43) == "uv run train.py --seed 43"


def test_a_launch_records_the_thread_setting_it_was_given(monkeypatch):
    from harness import identity
    for var in ("OMP_NUM_THREADS", *identity.HARNESS_ENV):
        monkeypatch.delenv(var, raising=False)
    assert identity.launch_info() == {"per_node": 1, "env": {}}
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert identity.launch_info() == {"per_node": 1, "omp_num_threads": "1", "env": {}}


def test_a_comment_changes_no_function_of_train_py(tmp_path):
    """memory.md said `norm changed` where norm only gained a comment: the parts are hashed from the syntax tree,
    as the fingerprint is; a changed expression still shows."""
    from harness.identity import train_py_functions
    src = (REPO / "train.py").read_text()
    base = tmp_path / "a.py"
    base.write_text(src)
    commented = tmp_path / "b.py"
    commented.write_text(src.replace("def norm(x):", "def norm(x):  # the RMS norm, unchanged\n    # a comment",
                                     1))
    changed = tmp_path / "c.py"
    changed.write_text(src.replace("def norm(x):", "def norm(x):\n    x = x * 1.0", 1))
    a, b, c = (train_py_functions(p) for p in (base, commented, changed))
    assert "def norm(x):" in src and a == b
    assert [k for k in a if a[k] != c[k]] == ["norm"]
