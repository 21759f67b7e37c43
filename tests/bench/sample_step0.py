"""Where a run's start-up and first step spend their wall time, by sampling stacks (not a test).

    AUTORESEARCH_GROUND=<a prepared ground.json> python3 tests/bench/sample_step0.py [--out FILE] [-- train.py args]

Runs train.py in this process while a thread reads every thread's stack each 5 ms, from the start until step
0 is over (main()'s `step` reaches 1), then writes: seconds per line of train.py's main() (the forward,
the backward, the model's build...), seconds per function on the main thread's stack (cumulative and own),
and what the other threads were doing (the backward runs on autograd's device thread, so its compilation shows
there). Unlike cProfile (tests/bench/profile_overhead.py) it does not slow the compiler's Python, and it
counts time spent waiting (GPU, locks, the GIL). The run goes on to its end; its record is written as usual.
"""

import argparse
import collections
import runpy
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PERIOD_S = 0.005


def where(frame) -> str:
    name = frame.f_code.co_filename
    for cut in ("site-packages/", "/lib/python3"):
        name = name.split(cut)[-1]
    return f"{name}:{frame.f_code.co_name}"


def stack(frame) -> tuple[list[str], int | None, int]:
    """The frames outermost first, the line train.py's main() is on, and its step counter (-1 before the loop)."""
    names, line, step = [], None, -1
    while frame is not None:
        names.append(where(frame))
        if frame.f_code.co_name == "main" and frame.f_code.co_filename.endswith("train.py"):
            line, step = frame.f_lineno, frame.f_locals.get("step", -1)
        frame = frame.f_back
    return names[::-1], line, step


def report(samples: list, seconds: float) -> str:
    per = seconds / max(len(samples), 1)
    lines = collections.Counter(line for _, line, _ in samples)
    cumulative = collections.Counter(name for names, _, _ in samples for name in set(names))
    own = collections.Counter(names[-1] for names, _, _ in samples)
    others = collections.Counter(name for _, _, other in samples for name in other)
    out = [f"{len(samples)} samples over {seconds:.1f} s (start of train.py to the end of step 0)", "",
           "# train.py main(), seconds per line (None: outside main, e.g. module imports)"]
    out += [f"{line}: {n * per:.2f}" for line, n in lines.most_common(25)]
    out += ["", "# main thread, seconds with the function on the stack"]
    out += [f"{n * per:7.2f} {name}" for name, n in cumulative.most_common(100)]
    out += ["", "# main thread, seconds as the innermost frame"]
    out += [f"{n * per:7.2f} {name}" for name, n in own.most_common(40)]
    out += ["", "# other threads, seconds as the innermost frame (summed over threads)"]
    out += [f"{n * per:7.2f} {name}" for name, n in others.most_common(30)]
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="sample_step0.txt")
    ap.add_argument("train_args", nargs="*")
    args = ap.parse_args()
    main_thread, samples, t0 = threading.get_ident(), [], time.perf_counter()

    def sample():
        while True:
            time.sleep(PERIOD_S)
            frames = sys._current_frames()
            if main_thread not in frames:
                continue
            names, line, step = stack(frames[main_thread])
            if isinstance(step, int) and step >= 1:                       # step 0 is over
                Path(args.out).write_text(report(samples, time.perf_counter() - t0))
                print(f"sample_step0: wrote {args.out}", file=sys.stderr)
                return
            other = [where(f) for t, f in frames.items() if t not in (main_thread, threading.get_ident())]
            samples.append((names, line, other))

    threading.Thread(target=sample, daemon=True).start()
    sys.argv = [str(REPO / "train.py"), *args.train_args]
    sys.path.insert(0, str(REPO))
    runpy.run_path(str(REPO / "train.py"), run_name="__main__")


if __name__ == "__main__":
    main()
