"""sessions/progress.png: the progress plot of the notebook, redrawn after every run (no Jupyter needed).

    uv run prepare.py --memory        # redraws it with memory.md

One comparability key (the last run's): every scored run in order, kept runs highlighted, the best
configuration's mean as a step line with the noise floor as a band around it, crashes marked. Where baseline
and kept runs have a held-out score (harness/heldout.py), a second panel shows each one's gain over the
first scored one on val and on the held-out split: a val gain the held-out split does not share is val overfit.
Written atomically, like memory.md.
"""

from __future__ import annotations

from pathlib import Path

from harness.decide import ACCEPTED, UNSCORED, is_scored, standing
from harness.util import atomic_path


def write_progress_png(rows: list[dict], index: dict, sessions: Path, heldout: dict | None = None) -> Path | None:
    if not rows:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    key = rows[-1]["comparability_key"]
    cur = [r for r in rows if r["comparability_key"] == key]
    held = [(i, r, heldout[r["run_id"]]["heldout_bpb"]) for i, r in enumerate(cur)
            if heldout and r["run_id"] in heldout and is_scored(r)]
    fig, axes = plt.subplots(2 if held else 1, 1, figsize=(10, 7.5 if held else 4.5), dpi=100, sharex=True,
                             squeeze=False, gridspec_kw={"height_ratios": [2, 1]} if held else None)
    ax = axes[0][0]
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
    if held:
        gain_panel(axes[1][0], held)
    fig.tight_layout()
    out = sessions / "progress.png"
    with atomic_path(out) as tmp:
        fig.savefig(tmp)
    plt.close(fig)
    return out



def gain_panel(ax, held: list[tuple[int, dict, float]]) -> None:
    """Each held-out-scored run's gain over the first one, on val and on the held-out split (the human's check)."""
    (_, first, first_held), xs = held[0], [i for i, _, _ in held]
    ax.plot(xs, [first["val_bpb"] - r["val_bpb"] for _, r, _ in held], "o-", c="#1f77b4", ms=4, label="val gain")
    ax.plot(xs, [first_held - h for _, _, h in held], "s--", c="#ff7f0e", ms=4, label="held-out gain")
    ax.axhline(0, c="#888888", lw=0.6)
    ax.set(xlabel="run", ylabel="gain over the first (bpb)")
    ax.legend(fontsize=7, loc="upper left")
