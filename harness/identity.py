"""What identifies a run: its commit, its configuration's fingerprint (model.json + train.py), the hash of each
train.py function, the comparability key and what it is made of, the library versions.

    uv run pytest tests/test_ledger.py -k "fingerprint or key"

Two runs are compared only under one comparability key: the same data, tokenizer, sequence length, eval size,
budget, mode, process count, GPU model and kernel choices (key_parts). Within a key, runs of one fingerprint
are one configuration under several seeds.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform as _platform
import re
import shlex
import socket
import subprocess
from pathlib import Path
from typing import NamedTuple

import torch

from harness.config import REPO_DIR, ConfigError, agent_files, ground_path, model_path
from harness.evaluate import eval_rows
from harness.settings import Settings
from harness.tokenizer import Tokenizer


def _git(*args: str) -> str:
    try:
        out = subprocess.run(["git", *args], cwd=REPO_DIR, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def git_info() -> dict:
    return {"commit": _git("rev-parse", "--short=7", "HEAD") or "nocommit",
            "parent": _git("rev-parse", "--short=7", "HEAD~1") or None,
            "files_sha": files_digest(trained_files()), "parent_files_sha": files_digest(parent_files()),
            "subject": _git("log", "-1", "--format=%s"),
            "dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
            "branch": _git("rev-parse", "--abbrev-ref", "HEAD"),
            "worktree": str(REPO_DIR)}


def config_fingerprint(train_py: Path | None = None, capped: dict | None = None) -> str:
    """The configuration a run trains: model.json's values and train.py's code, so that a change in comments,
    blank lines or key order is the same configuration (parsed where they parse, else their bytes). `capped`:
    the values the mode's caps train instead of model.json's, so that an edit a cap cancels is its parent's
    configuration (a rerun or a repeat), not a new one judged on noise."""
    import ast
    h = hashlib.sha256()
    model, code = model_path(), train_py or REPO_DIR / "train.py"
    raw = [p.read_bytes() if p.exists() else b"" for p in (model, code)]
    try:
        values = json.loads(raw[0])
        h.update(json.dumps({**values, **(capped or {})} if isinstance(values, dict) else values,
                            sort_keys=True).encode())
    except ValueError:
        h.update(raw[0])
    try:
        h.update(ast.dump(ast.parse(raw[1])).encode())
    except (SyntaxError, ValueError):
        h.update(raw[1])
    return h.hexdigest()[:12]


def train_py_functions(train_py: Path | None = None) -> dict:
    """A short hash of each top-level function, class and method of train.py ("GPT.forward"), and of the
    module-level statements together: what memory.md compares to say which parts of train.py a run changed."""
    import ast
    path = train_py or REPO_DIR / "train.py"
    text = path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""
    digest = lambda s: hashlib.sha256(s.encode()).hexdigest()[:8]        # noqa: E731
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return {"(train.py does not parse)": digest(text)}
    out, module = {}, []
    for node in tree.body:            # the syntax tree, not the text: a comment or a blank line changes nothing
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            out[node.name] = digest(ast.dump(node))
        elif isinstance(node, ast.ClassDef):
            methods = [n for n in node.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
            for m in methods:
                out[f"{node.name}.{m.name}"] = digest(ast.dump(m))
            out[node.name] = digest("\n".join(ast.dump(n) for n in node.body if n not in methods))
        else:
            module.append(ast.dump(node))
    out["(module level)"] = digest("\n".join(module))
    return out


def _head_change() -> tuple[Path, set[str]] | None:
    """The repository's top folder and the files HEAD changed against its first parent (git's paths, from that
    folder: this checkout may be a folder of a larger repository); None without git, a parent or a diff."""
    top = _git("rev-parse", "--show-toplevel")
    if not top or not _git("rev-parse", "--verify", "--quiet", "HEAD~1"):
        return None
    try:
        out = subprocess.run(["git", "diff", "--name-only", "HEAD~1", "HEAD"], cwd=REPO_DIR, capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return (Path(top).resolve(), set(out.stdout.splitlines())) if out.returncode == 0 else None


def _from(top: Path, path: Path) -> str | None:
    return path.resolve().relative_to(top).as_posix() if path.resolve().is_relative_to(top) else None


class GroundNote(NamedTuple):
    """Why ground.json is not committed on its own: the `!!` line a run prints, and whether it is uncommitted (else
    committed by HEAD together with the agent's files)."""
    line: str
    uncommitted: bool


def _ground_name() -> tuple[str, str]:
    """ground.json's path as the agent's shell names it (from this checkout), and shell-quoted."""
    name = os.path.relpath(ground_path().resolve(), REPO_DIR.resolve())
    return name, shlex.quote(name)


def ground_commit_note(after_a_run: bool) -> GroundNote | None:
    """When ground.json (in this repository) is not committed on its own: uncommitted, a `git commit -am` would put
    it in the next experiment's commit; changed with model.json or train.py by HEAD, an experiment's commit
    (`after_a_run`: its parent was run), the `git reset --hard` after a discard would undo it too (e.g. a shared
    ledger's settings: later runs would silently use another)."""
    top = _git("rev-parse", "--show-toplevel")
    if not top or _from(Path(top).resolve(), ground_path()) is None:
        return None
    name, arg = _ground_name()
    if _git("status", "--porcelain", "--untracked-files=no", "--", name):
        return GroundNote(f"!! {name} has uncommitted changes: commit them on their own first (`git commit {arg} -m "
                          f"\"ground: ...\"`); in an experiment's commit, the `git reset --hard` after a discard would "
                          f"undo them", uncommitted=True)
    change = _head_change() if after_a_run else None
    if change is None:
        return None
    top, changed = change
    agent = {p for p in (_from(top, f) for f in agent_files().values()) if p} & changed
    if _from(top, ground_path()) in changed and agent:
        return GroundNote(f"!! this commit changes {name} with {' and '.join(sorted(Path(p).name for p in agent))}: "
                          f"the `git reset --hard` after a discard would undo {name} too; split it: `git reset --soft "
                          f"HEAD~1 && git commit {arg} -m \"ground: ...\" && git commit -am \"<the edit>\"`",
                          uncommitted=False)
    return None


def keeping_ground(step: str, note: GroundNote | None) -> str:
    """`next:` when ground.json is not committed on its own (`note`): its `git reset --hard` keeps the user's
    ground.json (copied aside, put back, committed on its own after the return); an uncommitted ground.json is
    committed first otherwise."""
    if not note:
        return step
    _, name = _ground_name()
    commit = f"git commit {name} -m \"ground: the user's settings\""
    if (reset := re.search(r"git reset --hard (\w+)", step)) is not None:
        return (step[:reset.start()] + f"cp {name} {name}.keep && {reset.group(0)} && mv {name}.keep {name} && "
                f"{commit}" + step[reset.end():] + f" (keeping {name}: it is not committed on its own)")
    return f"first commit {name} on its own: `{commit}`; then: {step}" if note.uncommitted else step


def files_digest(files: dict | None) -> str | None:
    """model.json and train.py, byte for byte, as one short hash: the commit `prepare.py --restore` wrote a kept
    run's files into has that run's digest (decide.return_commit returns to it)."""
    return None if files is None else hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:12]


def parent_files() -> dict | None:
    """model.json and train.py as the parent commit holds them, when HEAD changed nothing else (a reset to the parent
    then undoes only the agent's edit, not a ground.json or harness change); None without a parent, for a file
    outside the repository, or when HEAD changed other files."""
    change = _head_change()
    if change is None:
        return None
    top, changed = change
    paths = {name: _from(top, path) for name, path in agent_files().items()}
    if None in paths.values() or not changed <= set(paths.values()):
        return None
    files = {}
    for name, path in paths.items():
        try:
            out = subprocess.run(["git", "show", f"HEAD~1:{path}"], cwd=REPO_DIR, capture_output=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        if out.returncode != 0:
            return None
        files[name] = out.stdout.decode("utf-8", errors="replace")
    return files


def trained_files() -> dict:
    """model.json and train.py as this run reads them: what another agent needs to build on it (--restore)."""
    return {name: path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""
            for name, path in agent_files().items()}


# What sets the tokens a fixed budget buys, and their numerics: another GPU model or kernel choice (cuDNN -> FA4
# attention: ~2% more steps) is another comparability key, so that a faster machine is never read as a better model.
PLATFORM_KEYS = ("device_name", "dtype", "attention", "mlp", "rope", "loss", "compile", "compile_scope")


def key_parts(s: Settings, tokenizer: Tokenizer, manifest: dict, platform: dict) -> dict:
    """What makes two runs comparable: hashed into the comparability key, and kept in each run's index entry so
    that memory.md can say what separates one key from another."""
    rows, _ = eval_rows(tokenizer, s)
    return {"source": manifest["source"], "val": manifest["val_sha256"], "tok": tokenizer.fingerprint(),
            "T": s.max_seq_len, "eval": rows * s.max_seq_len, "budget": s.time_budget_s, "mode": s.mode,
            "excluded_steps": s.excluded_steps,          # they train: more of them, more tokens
            "world": platform["world_size"], "max_steps": s.max_steps,
            "platform": {k: platform[k] for k in PLATFORM_KEYS},
            **({"schedule": "steps"} if s.max_steps else {}),    # the steps, not the budget, end the run
            "caps": s.model_caps,
            **({"fingerprint": "as trained"} if s.model_caps else {}),   # config_fingerprint(capped=)
            **({"corpus": manifest["builtin"]["corpus_sha256"]} if "builtin" in manifest else {}),
            **({"heldout": manifest["heldout_sha256"]} if manifest.get("heldout_sha256") else {}),
            **({"split_long_documents": True} if s.ground.data.split_long_documents else {}),
            **({"threads": torch.get_num_threads()} if platform.get("device") == "cpu" else {})}   # speed, sums


def key_of(parts: dict) -> str:
    """The comparability key of key_parts: source and mode, readable, then a hash of all the parts."""
    blob = json.dumps(parts, sort_keys=True)
    return f"{parts['source']}-{parts['mode']}-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"


def comparability_key(s: Settings, tokenizer: Tokenizer, manifest: dict, platform: dict) -> str:
    return key_of(key_parts(s, tokenizer, manifest, platform))


def host_name() -> str:
    return os.environ.get("AUTORESEARCH_HOST") or socket.gethostname()


HARNESS_ENV = ("AUTORESEARCH_GROUND", "AUTORESEARCH_MODEL", "AUTORESEARCH_HOST")   # which files, which host


def harness_env() -> dict:
    """The harness's variables this process was started with (paths made absolute): the commands it prints for its
    agent repeat them, or the run they ask for would read other files, or count as another host's."""
    env = {}
    for var in HARNESS_ENV:
        value = os.environ.get(var)
        if not value:
            continue
        if any(ord(c) < 32 for c in value):             # it would break the printed commands and memory.md's lines
            raise ConfigError(f"{var}: a control character in {value!r}")
        env[var] = value if var == "AUTORESEARCH_HOST" else os.path.abspath(value)
    return env


def launch_info() -> dict:
    """How train.py was started beyond what its key says (the process count, key_parts' `world`): processes per
    node (torchrun's environment; all of them without it), OMP_NUM_THREADS where it was set (a CPU key holds the
    thread count), so that the digest's next command starts the next run the same way, and the harness's variables
    (`env`: a later --record-crash of the run must read the same ledger as the same host)."""
    omp = os.environ.get("OMP_NUM_THREADS")
    return {"per_node": int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1"))),
            **({"omp_num_threads": omp} if omp else {}), "env": harness_env()}


def library_versions() -> dict:
    import importlib.metadata as md
    out = {"python": _platform.python_version(), "torch": torch.__version__}
    for name in ("numpy", "tiktoken", "rustbpe", "pyarrow", "kernels", "triton", "flash-attn-4", "nvidia-cutlass-dsl"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out
