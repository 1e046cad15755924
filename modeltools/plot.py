"""The optimize report's picture: latency at batch 1 against the accuracy metric, per variant."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from inferstack.modeltools.optimize import Candidate


def plot(
    cands: list[Candidate],
    chosen: str,
    metric: str,
    budget: list[tuple[str, str, float]],
    path: Path,
    title: str,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    try:
        shown = [c for c in cands if c.latency_ms is not None and c.metric is not None]
        seen: dict[float, int] = {}
        for c in sorted(shown, key=lambda c: c.latency_ms or 0.0):
            chosen_one = c.name == chosen
            color = "tab:green" if chosen_one else ("tab:orange" if c.status == "over budget" else "tab:blue")
            ax.scatter(
                c.latency_ms,
                c.metric,
                s=90 if chosen_one else 45,
                color=color,
                zorder=3,
                edgecolors="black" if chosen_one else "none",
            )
            # variants with the same score would print over each other: stack their labels
            k = seen.get(round(c.metric or 0.0, 4), 0)
            seen[round(c.metric or 0.0, 4)] = k + 1
            ax.annotate(
                c.name + (" (chosen)" if chosen_one else ""),
                (c.latency_ms, c.metric),
                textcoords="offset points",
                xytext=(6, 4 - 11 * k),
                fontsize=8,
                arrowprops={"arrowstyle": "-", "color": "0.6", "lw": 0.5} if k else None,
            )
        for m, _op, value in budget:
            if m == metric:
                ax.axhline(
                    value, color="tab:red", linestyle="--", linewidth=1, label=f"budget {metric} >= {value:g}"
                )
        missing = [f"{c.name}: {c.status}" for c in cands if c not in shown]
        if missing:
            ax.text(
                0.01,
                0.01,
                "not plotted: " + "; ".join(missing),
                transform=ax.transAxes,
                fontsize=6,
                va="bottom",
                wrap=True,
            )
        ax.set_xlabel("p50 latency at batch 1 (ms)")
        ax.set_ylabel("top-1 agreement with fp32" if metric == "top1" else "cosine similarity to fp32")
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="lower right", fontsize=8)
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
