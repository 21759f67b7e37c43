"""A ledger for the live view's tests and benchmark: runs of two hosts written through the ledger's own append
(FileLedger or PostgresLedger), with records, curves, decisions, held-out scores, a run in flight and its log.

    from web_fixture import build_ledger, add_run, start_server
"""

from __future__ import annotations

import json
import math
import socket
import threading
import time
from pathlib import Path

from harness.heldout import HELDOUT_FILE
from harness.ledger import FileLedger

HOSTILE = ("<script>window.__xss = 1; alert(1)</script> lr x2", "<img src=x onerror=\"window.__xss = 2\"> wd 0")
MODEL = {"depth": 2, "matrix_lr": 0.04, "weight_decay": 0.2}
TRAIN = "import torch\n\ndef main():\n    lr = 0.04\n    return lr\n"


def run_id(i: int, commit: str = "abc1234") -> str:
    return f"20261207T{(i // 3600) % 24:02d}{(i // 60) % 60:02d}{i % 60:02d}Z-{commit}-{i:08x}"


def curve(end: float, points: int = 32) -> list:
    """A loss curve of the harness's shape (progress, loss), falling to `end`."""
    return [[round(p / (points - 1), 4), round(end + 6.0 * math.exp(-5 * p / (points - 1)), 5)] for p in range(points)]


def add_run(store, i: int, status: str, val: float | None, host: str, branch: str, seed: int, config: str,
            desc: str, lr: float = 0.04, decision: dict | None = None, key: str = "k1") -> str:
    rid = run_id(i)
    row = {"run_id": rid, "commit": "abc1234", "val_bpb": val, "memory_gb": 1.0, "status": status, "description": desc,
           "peak_vram_mb": 1024.0, "mfu_percent": 40.0, "training_seconds": 300.0, "total_tokens_M": 500.0,
           "num_params_M": 50.0, "num_steps": 1000 if val is not None else 400, "mode": "train",
           "comparability_key": key, "timestamp": f"2026-12-07T{(i // 3600) % 24:02d}:{(i // 60) % 60:02d}:"
                                                  f"{i % 60:02d}+00:00"}
    entry = {"model": dict(MODEL, matrix_lr=lr), "fingerprint": config, "seed": seed, "host": host, "branch": branch,
             "commit": "abc1234", "parent": "0000000", "error": "CUDA out of memory" if status == "crash" else None,
             "curve": curve(val if val is not None else 3.5), "decision": decision}
    files = {"model.json": json.dumps(dict(MODEL, matrix_lr=lr), indent=2) + "\n",
             "train.py": TRAIN.replace("0.04", str(lr))}
    sessions = getattr(store, "local", store).sessions
    sessions.mkdir(parents=True, exist_ok=True)
    (sessions / f"{rid}.json").write_text(json.dumps({"run_id": rid, "status": status, "files": files}))
    (sessions / f"{rid}.log").write_text("".join(f"step {s:05d} ({s / 10:.1f}%) | loss: {4 - s / 500:.6f} | "
                                                 f"dt: 280ms\r" for s in range(0, 1000, 50)) + "\n---\nval_bpb: x\n")
    store.append(row, entry, status=status, files=files)
    return rid


def build_ledger(root: Path, store=None, hosts=("gpu-a", "gpu-b")) -> tuple[object, dict]:
    """Eight runs on two hosts (hostile descriptions among them), two held-out scores, one run in flight."""
    root.mkdir(parents=True, exist_ok=True)
    store = store or FileLedger(root / "results.tsv", root / "sessions")
    a, b = hosts
    ids = {
        "baseline": add_run(store, 1, "baseline", 1.0, a, "night/a", 42, "cfgA" * 4, "baseline"),
        "repeat": add_run(store, 2, "repeat", 1.004, a, "night/a", 43, "cfgA" * 4, "baseline, another seed"),
        "confirm": add_run(store, 3, "confirm", 0.99, a, "night/a", 42, "cfgB" * 4, HOSTILE[0], lr=0.08),
        "keep": add_run(store, 4, "keep", 0.985, a, "night/a", 43, "cfgB" * 4, HOSTILE[0], lr=0.08,
                        decision={"reason": "gain 0.0145 beyond the margin 0.0100 over 2 seeds", "n": 2,
                                  "mean": 0.9875, "best_mean": 1.002, "diff": -0.0145, "margin": 0.01,
                                  "sigma": 0.0028, "dof": 1, "paired": True}),
        "discard": add_run(store, 5, "discard", 1.02, b, "night/b", 44, "cfgC" * 4, HOSTILE[1], lr=0.01),
        "crash": add_run(store, 6, "crash", None, b, "night/b", 42, "cfgD" * 4, "depth 64"),
        "pruned": add_run(store, 7, "pruned", None, b, "night/b", 42, "cfgE" * 4, "lr x 10"),
        "discard2": add_run(store, 8, "discard", 1.01, b, "night/b", 42, "cfgF" * 4, "warmdown 0.8"),
    }
    sessions = getattr(store, "local", store).sessions
    with open(sessions / HELDOUT_FILE, "a") as f:
        for name, score in (("baseline", 1.006), ("keep", 0.991)):
            f.write(json.dumps({"run_id": ids[name], "heldout_bpb": score, "heldout_seconds": 0.9, "rows": 100}) + "\n")
    log = sessions / f"{run_id(99)}.log"
    log.write_text("".join(f"step {s:05d} ({s:.1f}%) | loss: {5 - s / 40:.6f} | dt: 280ms\r" for s in range(0, 30)))
    now = time.time()
    store.claim({"run_id": run_id(99), "started": now - 120, "expires": now + 3600, "host": a, "branch": "night/a",
                 "description": "<b>in flight</b> window 512", "seed": 44, "fingerprint": "cfgG" * 4,
                 "comparability_key": "k1", "log": str(log)})
    ids["inflight"] = run_id(99)
    return store, ids


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(store, token: str | None = None, poll_s: float = 0.2):
    """The live view on a free local port, in a thread: (base URL, stop())."""
    import uvicorn

    from harness.web import make_app
    port, stopping = free_port(), threading.Event()
    server = uvicorn.Server(uvicorn.Config(make_app(store, token, poll_s, stopping), host="127.0.0.1", port=port,
                                           log_level="warning", ws="none", timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    assert server.started, "the live view did not start"

    def stop():
        stopping.set()
        server.should_exit = True
        thread.join(10)
    return f"http://127.0.0.1:{port}", stop
