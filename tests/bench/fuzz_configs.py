"""Fuzz ground.json and model.json: every mutated config loads or fails with one short line (not a test).

    uv run python tests/bench/fuzz_configs.py [--cases 600] [--cli 30] [--seed 0]

Mutations: delete, add or rename a key, swap a value's type, extreme numbers (huge, negative, NaN-like strings,
1e400), long and odd strings (newlines, NUL, non-ASCII), deep nesting, duplicate keys, truncation, other encodings.
Each case is loaded in-process (config.load_ground / load_model): the outcome must be a config or a ConfigError
whose message is one line of at most MAX_LINE characters; any other exception is a failure. A sample also runs
`prepare.py --check` in a subprocess: exit 0 or 2, no traceback, no ledger written. Prints the counts.
"""

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
from harness import config  # noqa: E402

MAX_LINE = 400                  # characters of an error line (the longest lists every model.json key)
ODD = [None, True, -1, 0, 10 ** 30, -10 ** 30, 1.5, "", "x" * 5000, "a\nb", "\u0000", "é", [], {}, [1, 2, 3],
       {"k": 1}, "NaN", "Infinity", 2 ** 63, "auto"]


def paths(obj, prefix=()):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield prefix + (k,)
            yield from paths(v, prefix + (k,))


def mutate(base: dict, rng: random.Random) -> bytes:
    obj = json.loads(json.dumps(base))
    keys = list(paths(obj))
    op = rng.choice(["delete", "add", "rename", "value", "value", "value", "nest", "dup", "truncate", "encoding"])
    path = rng.choice(keys)
    parent = obj
    for k in path[:-1]:
        parent = parent[k]
    if op == "delete":
        parent.pop(path[-1])
    elif op == "add":
        parent[rng.choice(["extra_key", "k\nk", "k" * 3000, ""])] = rng.choice(ODD)
    elif op == "rename":
        parent[path[-1] + rng.choice(["_", "X", " "])] = parent.pop(path[-1])
    elif op == "value":
        parent[path[-1]] = rng.choice(ODD)
    elif op == "nest":
        depth = rng.choice([10, 1000, 50000])
        parent[path[-1]] = "\0NEST\0"
    text = json.dumps(obj)
    if op == "nest":                                # written as text: json.dumps itself cannot nest that deep
        text = text.replace('"\\u0000NEST\\u0000"', "[" * depth + "1" + "]" * depth)
    if op == "dup":
        text = text[:-1] + f', "{path[0]}": 1' + "}"
    elif op == "truncate":
        text = text[: rng.randrange(len(text))]
    elif op == "encoding":
        return text.replace('"', '"\u00e9', 1).encode(rng.choice(["latin-1", "utf-16", "utf-32"]))
    if rng.random() < 0.1:
        text = text.replace("1", "1e400", 1)
    return text.encode("utf-8", "surrogatepass")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", type=int, default=600)
    ap.add_argument("--cli", type=int, default=30, help="cases also run through prepare.py --check")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    d = Path(tempfile.mkdtemp(prefix="fuzz_"))
    bases = {"ground.json": json.loads((REPO / "ground.json").read_text()),
             "model.json": json.loads((REPO / "model.json").read_text())}
    counts = {"ok": 0, "one-line error": 0, "failure": 0}
    failures = []
    for i in range(args.cases):
        name = rng.choice(list(bases))
        p = d / name
        p.write_bytes(mutate(bases[name], rng))
        try:
            (config.load_ground if name == "ground.json" else config.load_model)(p)
            counts["ok"] += 1
        except config.ConfigError as e:
            msg = str(e)
            if "\n" in msg or len(msg) > MAX_LINE:
                counts["failure"] += 1
                failures.append(f"{name} case {i}: error line of {len(msg)} chars")
            else:
                counts["one-line error"] += 1
        except Exception as e:  # noqa: BLE001 - anything else is what this script looks for
            counts["failure"] += 1
            failures.append(f"{name} case {i}: {type(e).__name__}: {str(e)[:100]}")
    cli = {"exit 0": 0, "exit 2": 0, "failure": 0}
    for i in range(args.cli):
        name = rng.choice(list(bases))
        case = d / f"cli_{i}"
        case.mkdir()
        g, m = json.dumps(bases["ground.json"]).encode(), json.dumps(bases["model.json"]).encode()
        (case / "ground.json").write_bytes(mutate(bases[name], rng) if name == "ground.json" else g)
        (case / "model.json").write_bytes(mutate(bases[name], rng) if name == "model.json" else m)
        env = dict(os.environ, AUTORESEARCH_GROUND=str(case / "ground.json"),
                   AUTORESEARCH_MODEL=str(case / "model.json"))
        r = subprocess.run([sys.executable, str(REPO / "prepare.py"), "--check"], capture_output=True, text=True,
                           env=env, cwd=case, timeout=120)
        written = [p.name for p in case.iterdir() if p.name not in ("ground.json", "model.json")]
        if r.returncode in (0, 2) and "Traceback" not in r.stderr and not written:
            cli[f"exit {r.returncode}"] += 1
        else:
            cli["failure"] += 1
            failures.append(f"cli case {i}: exit {r.returncode}, written {written}, {r.stderr.strip()[-120:]}")
    print(f"in-process: {args.cases} mutated configs: {counts}")
    print(f"prepare.py --check: {args.cli} cases: {cli}")
    for f in failures[:20]:
        print("  " + f)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
