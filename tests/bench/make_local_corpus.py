"""Write a `local` corpus large enough for the full-size eval, from the Python sources on this machine (not a test).

    python3 tests/bench/make_local_corpus.py DIR [--val-rows 10400] [--train-docs 3000]
    # then ground.json: data.source = "local", data.local_dir = DIR; python3 prepare.py

The builtin corpus's val split holds far fewer than the 20,971,520 tokens of train mode's eval (the eval is then
capped, loudly), so the eval's time at full size needs another corpus where nothing can be downloaded. This one
cuts every .py file under the interpreter's prefix into documents of DOC_CHARS characters, each longer than a
2048-token row (best-fit packing crops it: one document, one row), and writes `train.jsonl` (--train-docs of
them) and `val.jsonl` (--val-rows, cycling over the files with a shifted cut when they run out). For timing
only: its val_bpb means nothing (val and train may share text).
"""

import argparse
import json
import sys
from pathlib import Path

DOC_CHARS = 12000               # > 2049 tokens of Python (2.5 to 4.5 characters a token at the default vocabulary)


def documents(offset: int):
    for path in sorted(Path(sys.prefix).rglob("*.py")):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        for start in range(offset, len(text) - DOC_CHARS + 1, DOC_CHARS):
            yield text[start:start + DOC_CHARS]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--val-rows", type=int, default=10400)
    ap.add_argument("--train-docs", type=int, default=3000)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    want = {"train.jsonl": args.train_docs, "val.jsonl": args.val_rows}
    files = {name: (out / name).open("w", encoding="utf-8") for name in want}
    written = dict.fromkeys(want, 0)
    offset = 0
    while written["val.jsonl"] < want["val.jsonl"]:
        before = sum(written.values())
        for doc in documents(offset):
            name = "train.jsonl" if written["train.jsonl"] < want["train.jsonl"] else "val.jsonl"
            files[name].write(json.dumps({"text": doc}) + "\n")
            written[name] += 1
            if written["val.jsonl"] >= want["val.jsonl"]:
                break
        if sum(written.values()) == before:
            sys.exit(f"make_local_corpus: no .py file of {DOC_CHARS}+ characters under {sys.prefix}")
        offset += DOC_CHARS // 3
    for f in files.values():
        f.close()
    print(f"{out}: " + ", ".join(f"{name} {n} documents of {DOC_CHARS} characters" for name, n in written.items()))


if __name__ == "__main__":
    main()
