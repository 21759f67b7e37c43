"""train.py with one diagnostic change, for bench_caps' fp16 variants (not a test; never used by a real run).

    python3 tests/bench/patched_train.py [--init-scale K] [--plain] -- <train.py arguments>

--init-scale K: the GradScaler starts at 2^K instead of hardware.grad_scale_start's choice (torch's default
was 2^16). --plain: PLATFORM's mlp, rope and loss are
plain ops (attention and compile as PLATFORM chose them), to separate the Triton kernels from fp16 itself.
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
    ap.add_argument("rest", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    sys.path.insert(0, str(REPO))
    from harness import hardware
    if args.init_scale is not None:                 # the harness asks hardware.grad_scale_start at run time
        hardware.grad_scale_start = lambda tokens: 2.0 ** args.init_scale
        print(f"patched_train: GradScaler init_scale 2^{args.init_scale}")
    if args.plain:
        resolve = hardware.resolve_platform

        def plain(hw, proc):
            p = resolve(hw, proc)
            p.update(mlp="plain", rope="plain", loss="plain")
            return p
        hardware.resolve_platform = plain
        print("patched_train: mlp, rope and loss as plain ops")
    sys.argv = ["train.py", *[a for a in args.rest if a != "--"]]
    runpy.run_path(str(REPO / "train.py"), run_name="__main__")
