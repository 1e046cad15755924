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
        for c in shown:
            color = (
                "tab:green"
                if c.name == chosen
                else ("tab:orange" if c.status == "over budget" else "tab:blue")
            )
            ax.scatter(
                c.latency_ms,
                c.metric,
                s=90 if c.name == chosen else 45,
                color=color,
                zorder=3,
                edgecolors="black" if c.name == chosen else "none",
            )
            ax.annotate(
                c.name + (" (chosen)" if c.name == chosen else ""),
                (c.latency_ms, c.metric),
                textcoords="offset points",
                xytext=(6, 4),
                fontsize=8,
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
