"""Damage each harness-written file in 24 ways, then run what reads them (not a test; prints the counts).

    uv run python tests/bench/fuzz_files.py [--out /tmp/fuzz_files] [--runs every|first] [--files results.tsv,...]

A tiny workspace (a local corpus from the standard library, vocab 512, 64-token rows, 2 s budget) gets a ledger of
two real runs. Then, for each file (results.tsv, sessions/index.jsonl, a run record, the claims file, memory.md,
sessions/heldout.jsonl) and each damage below, on a fresh copy of that ledger: `prepare.py --memory`,
`prepare.py --record-crash` of a killed run's log, and a real `train.py` run. Each outcome is one of:
  ok          exit 0 (the run recorded: one more row)
  refused     exit 2 with one `error:` line and nothing written (bad input named: the protocol's answer)
  traceback   a Python traceback (a defect)
  unrecorded  train.py trained and exited without a row and without a one-line refusal (a defect)
The issue's bar: 0 tracebacks, 0 unrecorded.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

DAMAGES = {
    "empty": lambda b: b"",
    "half": lambda b: b[: len(b) // 2],
    "last byte cut": lambda b: b[:-1],
    "garbage appended": lambda b: b + b"\x00\xff\xfe garbage \x1b[2J\n",
    "latin-1 line": lambda b: b + b"caf\xe9 \xe0 la cr\xe8me\n",
    "nul bytes": lambda b: b.replace(b"\n", b"\x00\n", 3),
    "bom": lambda b: b"\xef\xbb\xbf" + b,
    "utf-16": lambda b: b.decode("utf-8", "replace").encode("utf-16"),
    "crlf": lambda b: b.replace(b"\n", b"\r\n"),
    "no final newline": lambda b: b.rstrip(b"\n"),
    "array line": lambda b: b + b"[1, 2, 3]\n",
    "string line": lambda b: b + b'"just a string"\n',
    "null line": lambda b: b + b"null\n",
    "number line": lambda b: b + b"1e400\n",
    "wrong types": lambda b: b + json.dumps({"run_id": 5, "model": "x", "seed": "42", "started": "now",
                                            "expires": [], "heldout_bpb": "low", "git": 1}).encode() + b"\n",
    "deep nesting": lambda b: b + b"[" * 100000 + b"]" * 100000 + b"\n",
    "huge line": lambda b: b + b'{"run_id": "' + b"x" * 2_000_000 + b'"}\n',
    "duplicated": lambda b: b + b,
    "whitespace lines": lambda b: b + b"   \n\t\n",
    "tabs and bars": lambda b: b.replace(b"\t", b"\t|\t", 2),
    "binary": lambda b: bytes(range(256)) * 8,
    "forged keep row": lambda b: b + b"\t".join([b"20261207T000000Z-abcdef0-ffff", b"abcdef0", b"0.100000", b"0.0",
                                                 b"keep", b"forged"] + [b""] * 9) + b"\n",
    "folder": None,             # the file replaced by a folder
    "missing": None,            # the file removed
}


def tiny_workspace(root: Path) -> dict:
    from conftest import TINY_PROFILE, default_json, tiny_ground
    from harness import corpus, util
    docs = []
    for f in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:60]:
        docs.extend(corpus.split_source(f.read_text(encoding="utf-8", errors="replace")))
    data = root / "corpus"
    data.mkdir(parents=True)
    n = len(docs)
    util.write_text_parquet(data / "a_train.parquet", docs[: n // 2])
    util.write_text_parquet(data / "b_train.parquet", docs[n // 2: n - n // 6])
    util.write_text_parquet(data / "c_val.parquet", docs[n - n // 6:])
    g = tiny_ground(root / "cache", data)
    g["test"] = dict(TINY_PROFILE, max_steps=4)
    (root / "ground.json").write_text(json.dumps(g, indent=2))
    (root / "model.json").write_text(json.dumps(default_json("model.json"), indent=2))
    return env_for(root)


def env_for(d: Path) -> dict:
    return dict(os.environ, AUTORESEARCH_GROUND=str(d / "ground.json"), AUTORESEARCH_MODEL=str(d / "model.json"),
                PYTHONUNBUFFERED="1")


def run(d: Path, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=d, env=env_for(d), capture_output=True, text=True,
                          timeout=600)


def rows(d: Path) -> int:
    try:
        return sum(1 for line in (d / "results.tsv").read_text(errors="replace").splitlines()[1:] if line.strip())
    except OSError:
        return -1


def outcome(p: subprocess.CompletedProcess, trained: bool, before: int, after: int) -> str:
    text = p.stdout + p.stderr
    if "Traceback (most recent call last)" in text:
        return "traceback"
    if p.returncode == 2 and p.stderr.strip().startswith("error:") and p.stderr.strip().count("\n") == 0:
        return "refused"
    if trained and after <= before:
        return "unrecorded"
    return "ok" if p.returncode == 0 else f"exit {p.returncode}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--files", help="comma-separated names of the files to damage (default: all six)")
    ap.add_argument("--runs", choices=("every", "first"), default="every",
                    help="a real train.py run after every damage (default), or after each file's first only")
    args = ap.parse_args()
    root = Path(args.out or tempfile.mkdtemp(prefix="fuzz_files_"))
    shutil.rmtree(root, ignore_errors=True)
    base = root / "base"
    tiny_workspace(base)
    for a in (["prepare.py"], ["train.py"], ["train.py", "--seed", "43"]):
        p = run(base, str(REPO / a[0]), *a[1:])
        assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    ses = base / "sessions"
    record = sorted(ses.glob("*.json"))[0].name
    files = {"results.tsv": base / "results.tsv", "index.jsonl": ses / "index.jsonl", "run record": ses / record,
             "claims": base / "results.tsv.claims", "memory.md": ses / "memory.md",
             "heldout.jsonl": ses / "heldout.jsonl"}
    if args.files:
        files = {k: v for k, v in files.items() if k in args.files.split(",")}
    killed = "20261207T000000Z-0000000-0000dead"
    counts, bad = {}, []
    for fname, path in files.items():
        for n, (damage, how) in enumerate(DAMAGES.items()):
            case = root / "case"
            shutil.rmtree(case, ignore_errors=True)
            shutil.copytree(base, case, symlinks=True)
            target = case / path.relative_to(base)
            original = target.read_bytes() if target.is_file() else b""
            if damage == "folder":
                target.unlink(missing_ok=True)
                target.mkdir()
            elif damage == "missing":
                target.unlink(missing_ok=True)
            else:
                target.write_bytes(how(original))
            (case / "sessions" / f"{killed}.json").write_text(json.dumps({"run_id": killed, "status": "running"}))
            (case / "sessions" / f"{killed}.log").write_text("step 00001\nKilled\n")
            steps = [("--memory", [str(REPO / "prepare.py"), "--memory"], False),
                     ("--record-crash", [str(REPO / "prepare.py"), "--record-crash",
                                         str(case / "sessions" / f"{killed}.log")], False)]
            if args.runs == "every" or n == 0:
                steps.append(("train.py", [str(REPO / "train.py"), "--seed", str(100 + n)], True))
            for label, argv, trained in steps:
                before = rows(case)
                p = run(case, *argv)
                o = outcome(p, trained, before, rows(case))
                counts[o] = counts.get(o, 0) + 1
                if o in ("traceback", "unrecorded") or o.startswith("exit"):
                    tail = (p.stdout + p.stderr).strip().splitlines()[-1:] or [""]
                    bad.append(f"{fname} / {damage} / {label}: {o}: {tail[0][:160]}")
                    print(f"!! {bad[-1]}", flush=True)
            print(f"{fname:14s} {damage:18s} done", flush=True)
    print("\n".join(bad) if bad else "no tracebacks, no unrecorded runs")
    print(f"cases: {len(files)} files x {len(DAMAGES)} damages; outcomes: "
          + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))


if __name__ == "__main__":
    main()
