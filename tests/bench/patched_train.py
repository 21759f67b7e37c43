"""train.py with one diagnostic change, for bench_caps' fp16 variants (not a test; never used by a real run).

    python3 tests/bench/patched_train.py [--init-scale K] [--plain] [--fp32-embeddings] -- <train.py arguments>

--init-scale K: the GradScaler starts at 2^K instead of hardware.grad_scale_start's choice (torch's default
was 2^16). --plain: PLATFORM's mlp, rope and loss are
plain ops (attention and compile as PLATFORM chose them), to separate the Triton kernels from fp16 itself.
--fp32-embeddings: the token and value embeddings in fp32 (PLATFORM keeps them in bf16 in a bf16 run).
"""

import argparse
import runpy
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--init-scale", type=int)
    ap.add_argument("--plain", action="store_true")
    ap.add_argument("--fp32-embeddings", action="store_true")
    ap.add_argument("rest", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    sys.path.insert(0, str(REPO))
    from harness import hardware
    if args.init_scale is not None:                 # the harness asks hardware.grad_scale_start at run time
        hardware.grad_scale_start = lambda tokens: 2.0 ** args.init_scale
        print(f"patched_train: GradScaler init_scale 2^{args.init_scale}")
    change = {**(dict(mlp="plain", rope="plain", loss="plain") if args.plain else {}),
              **(dict(embedding_dtype="float32") if args.fp32_embeddings else {})}
    if change:
        resolve = hardware.resolve_platform

        def patched(hw, proc):
            p = resolve(hw, proc)
            p.update(change)
            return p
        hardware.resolve_platform = patched
        print(f"patched_train: PLATFORM {change}")
    sys.argv = ["train.py", *[a for a in args.rest if a != "--"]]
    runpy.run_path(str(REPO / "train.py"), run_name="__main__")
