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

from harness.decide import ACCEPTED, UNSCORED, is_scored, run_fingerprint, standing
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
    ax.plot([i for i, r in scored if r["status"] not in ACCEPTED],              # markers of one line: 10,000 draw
            [r["val_bpb"] for i, r in scored if r["status"] not in ACCEPTED], "o", ms=3.5, c="#bbbbbb",
            label="not kept")                                                    # in a fraction of a scatter's time
    kept = [(i, r) for i, r in scored if r["status"] in ACCEPTED]
    ax.scatter([i for i, _ in kept], [r["val_bpb"] for _, r in kept], s=28, c="#1f77b4", label="kept", zorder=3)
    xs, best = best_line(cur, index)
    sigma = standing(cur, index, key).sigma or 0.0          # the floor as measured now: one standing, not one a step
    if xs:
        ax.step(xs, best, where="post", c="#1f77b4", lw=1.2, label="best configuration (mean over seeds)")
        ax.fill_between(xs, [b - sigma for b in best], [b + sigma for b in best], step="post", color="#1f77b4",
                        alpha=0.12, label="± noise floor (sigma, as measured now)")
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
    fig.subplots_adjust(left=0.08, right=0.98, top=0.94 if held else 0.91, bottom=0.08 if held else 0.12,
                        hspace=0.08)                                  # fixed margins: tight_layout measures every text
    out = sessions / "progress.png"
    with atomic_path(out) as tmp:
        fig.savefig(tmp)
    plt.close(fig)
    return out



def best_line(cur: list[dict], index: dict) -> tuple[list[int], list[float]]:
    """The best configuration's mean after each run that moved it, in one sweep: the accepted configuration with the
    lowest mean of its scored runs (a seed's rerun once), earliest first on a tie, as decide.standing picks it."""
    values, first, accepted, seen, xs, ys = {}, {}, {}, set(), [], []
    for i, r in enumerate(cur):
        fp, seed = run_fingerprint(r, index), index.get(r["run_id"], {}).get("seed")
        if not is_scored(r) or (seed is not None and (fp, seed) in seen):
            continue
        seen.add((fp, seed))
        values.setdefault(fp, []).append(r["val_bpb"])
        first.setdefault(fp, i)
        if r["status"] in ACCEPTED or fp in accepted:
            accepted[fp] = (sum(values[fp]) / len(values[fp]), first[fp])
            mean = min(accepted.values())[0]
            if not ys or mean != ys[-1]:
                xs.append(i)
                ys.append(mean)
    if xs and xs[-1] != len(cur) - 1:
        xs.append(len(cur) - 1)
        ys.append(ys[-1])
    return xs, ys


def gain_panel(ax, held: list[tuple[int, dict, float]]) -> None:
    """Each held-out-scored run's gain over the first one, on val and on the held-out split (the human's check)."""
    (_, first, first_held), xs = held[0], [i for i, _, _ in held]
    ax.plot(xs, [first["val_bpb"] - r["val_bpb"] for _, r, _ in held], "o-", c="#1f77b4", ms=4, label="val gain")
    ax.plot(xs, [first_held - h for _, _, h in held], "s--", c="#ff7f0e", ms=4, label="held-out gain")
    ax.axhline(0, c="#888888", lw=0.6)
    ax.set(xlabel="run", ylabel="gain over the first (bpb)")
    ax.legend(fontsize=7, loc="upper left")
