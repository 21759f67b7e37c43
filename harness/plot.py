"""sessions/progress.png: the progress plot of the notebook, redrawn after every run (no Jupyter needed).

    uv run prepare.py --memory        # redraws it with memory.md

One comparability key (the last run's): every scored run in order, kept runs highlighted, the best
configuration's mean as a step line with the noise floor as a band around it, crashes marked.
Written atomically, like memory.md.
"""

from __future__ import annotations

from pathlib import Path

from harness.decide import ACCEPTED, UNSCORED, is_scored, standing
from harness.util import atomic_path


def write_progress_png(rows: list[dict], index: dict, sessions: Path) -> Path | None:
    if not rows:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    key = rows[-1]["comparability_key"]
    cur = [r for r in rows if r["comparability_key"] == key]
    fig, ax = plt.subplots(figsize=(10, 4.5), dpi=100)
    scored = [(i, r) for i, r in enumerate(cur) if is_scored(r)]
    ax.scatter([i for i, r in scored if r["status"] not in ACCEPTED],
               [r["val_bpb"] for i, r in scored if r["status"] not in ACCEPTED], s=14, c="#bbbbbb", label="not kept")
    kept = [(i, r) for i, r in scored if r["status"] in ACCEPTED]
    ax.scatter([i for i, _ in kept], [r["val_bpb"] for _, r in kept], s=28, c="#1f77b4", label="kept", zorder=3)
    xs, best, band = [], [], []
    moves = [i for i, r in enumerate(cur) if r["status"] in ACCEPTED + ("repeat",)] + [len(cur) - 1]
    for i in sorted(set(moves)):                  # the best configuration's mean as the ledger stood after run i
        st = standing(cur[: i + 1], index, key)
        if st.best is not None:
            xs.append(i)
            best.append(st.best.mean)
            band.append(st.sigma or 0.0)
    if xs:
        ax.step(xs, best, where="post", c="#1f77b4", lw=1.2, label="best configuration (mean over seeds)")
        ax.fill_between(xs, [b - s for b, s in zip(best, band)], [b + s for b, s in zip(best, band)], step="post",
                        color="#1f77b4", alpha=0.12, label="± noise floor (sigma)")
    crashes = [i for i, r in enumerate(cur) if r["status"] in UNSCORED]
    if crashes and scored:
        top = max(r["val_bpb"] for _, r in scored)
        ax.scatter(crashes, [top] * len(crashes), marker="x", c="#d62728", s=24, label="crash / interrupted")
    for i, r in kept[-8:]:
        ax.annotate(r["description"][:28], (i, r["val_bpb"]), fontsize=6, rotation=20, xytext=(3, 3),
                    textcoords="offset points")
    ax.set(xlabel="run", ylabel="val_bpb (lower is better)", title=f"{key}: {len(cur)} runs")
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    out = sessions / "progress.png"
    with atomic_path(out) as tmp:
        fig.savefig(tmp)
    plt.close(fig)
    return out

