"""Write a `local` corpus large enough for the full-size eval, from the Python sources on this machine (not a test).

    python3 tests/bench/make_local_corpus.py DIR [--val-rows 10400] [--train-docs 3000]
    # then ground.json: data.source = "local", data.local_dir = DIR; python3 prepare.py

The builtin corpus's val split holds far fewer than the 20,971,520 tokens of train mode's eval (the eval is then
capped, loudly), so the eval's time at full size needs another corpus where nothing can be downloaded. This one
cuts every .py file under the interpreter's prefix into documents of DOC_CHARS characters, each longer than a
2048-token row (best-fit packing crops it: one document, one row), and writes `train.jsonl` (--train-docs of
them) and `val.jsonl` (--val-rows; when the files run out, they are cut again at a third and at two thirds of
DOC_CHARS), each whole or not at all. For timing only: its val_bpb means nothing (val and train share text).
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
    docs = {name: [] for name in want}
    for offset in range(0, DOC_CHARS, DOC_CHARS // 3):       # three cuts of every file, then the text is used up
        for doc in documents(offset):
            name = "train.jsonl" if len(docs["train.jsonl"]) < want["train.jsonl"] else "val.jsonl"
            docs[name].append(json.dumps({"text": doc}))
            if len(docs["val.jsonl"]) >= want["val.jsonl"]:
                break
        else:
            continue
        break
    if len(docs["val.jsonl"]) < want["val.jsonl"]:
        sys.exit(f"make_local_corpus: the .py files under {sys.prefix} give {sum(map(len, docs.values()))} "
                 f"documents of {DOC_CHARS} characters, fewer than {sum(want.values())}; nothing written")
    for name, lines in docs.items():                        # written whole, then renamed: no half corpus
        tmp = out / f".{name}.tmp"
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
        tmp.replace(out / name)
    print(f"{out}: " + ", ".join(f"{name} {len(lines)} documents of {DOC_CHARS} characters"
                                 for name, lines in docs.items()))


if __name__ == "__main__":
    main()
