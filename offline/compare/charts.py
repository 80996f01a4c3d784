"""PNG charts of a comparison (matplotlib, Agg backend: no display, no GUI toolkit)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

COLORS = {"base": "#7f7f7f", "rag": "#1f77b4", "finetune": "#d62728", "hybrid": "#9467bd"}
ACCURACY_LATENCY = "accuracy_latency.png"
UPDATE_COST = "update_cost.png"
MEMORY = "memory.png"


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> None:
    """Write the PNG 0600 like every other file of the report (a chart shows figures of private data)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()  # O_CREAT would keep an old file's mode
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        fig.savefig(f, dpi=100, format="png", metadata={"Software": None})
    tmp.replace(path)


def accuracy_latency(results: dict[str, Any], path: Path) -> None:
    """F1 and answer-contains against time to first token (p50 dot, line to p95) per mode."""
    plt = _plt()
    from matplotlib.lines import Line2D

    fig, ax = plt.subplots(figsize=(7.6, 4.0))
    handles = []
    for m in results["modes_order"]:
        fig_m = results["modes"][m]
        if fig_m.get("status") != "ok" or fig_m["ttft_s"]["p50"] is None:
            continue
        p50, p95 = fig_m["ttft_s"]["p50"], fig_m["ttft_s"]["p95"]
        c = COLORS.get(m, "black")
        for key, marker in (("f1", "o"), ("answer_contains", "s")):
            y = fig_m[key]
            ax.plot([p50, p95], [y, y], color=c, alpha=0.35, lw=2)
            ax.scatter([p50], [y], color=c, marker=marker, s=60, zorder=3)
        # Modes often share a point (base and finetune near zero): named in the legend by colour,
        # never by a label on the point, so no two labels can overlap.
        handles.append(
            Line2D(
                [],
                [],
                color=c,
                lw=6,
                label=f"{m}: F1 {fig_m['f1']:.2f}, contains {fig_m['answer_contains']:.2f}",
            )
        )
    handles += [
        Line2D([], [], color="black", marker="o", ls="", label="token F1"),
        Line2D([], [], color="black", marker="s", ls="", label="answer contains gold"),
    ]
    ax.set_xlabel("time to first token, s (dot p50, line to p95)")
    ax.set_ylabel("score (0-1)")
    ax.set_ylim(-0.03, max(0.1, min(1.0, _max_score(results) * 1.25 + 0.05)))
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    ax.legend(
        handles=handles,
        loc="upper left",
        bbox_to_anchor=(1.02, 1.0),
        fontsize=8,
        frameon=False,
        borderaxespad=0,
    )
    qa = results["qa"]
    n = qa["questions"] - (qa.get("unanswerable") or 0)  # accuracy is over the answerable ones
    ax.set_title(f"Accuracy vs latency, {n} answerable questions", fontsize=10)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def _max_score(results: dict[str, Any]) -> float:
    vals = [
        f[k]
        for f in results["modes"].values()
        if f.get("status") == "ok"
        for k in ("f1", "answer_contains")
        if f.get(k) is not None
    ]
    return max(vals, default=0.0)


def update_cost(results: dict[str, Any], path: Path) -> None:
    """Seconds to bring a new document in: ingest (rag/hybrid) vs fine-tune on it (finetune)."""
    plt = _plt()
    upd = (results.get("update") or {}).get("update_cost") or {}
    bars: list[tuple[str, float, str]] = []
    if upd:
        bars.append(("ingest 1 document\n(rag, hybrid)", upd["ingest_s"], COLORS["rag"]))
        bars.append(
            (
                f"fine-tune on it, {upd.get('finetune_steps')} steps\n(finetune)",
                upd["finetune_s"],
                COLORS["finetune"],
            )
        )
    full = (results.get("adapter") or {}).get("train_duration_s")
    if full:
        bars.append(("train the compared\nadapter (lineage)", float(full), "#f4a3a3"))
    fig, ax = plt.subplots(figsize=(6.4, 2.2 + 0.5 * max(1, len(bars))))
    if bars:
        labels, vals, cols = zip(*bars, strict=True)
        ax.barh(range(len(vals)), vals, color=cols)
        ax.set_yticks(range(len(vals)), labels, fontsize=8)
        ax.invert_yaxis()
        for i, v in enumerate(vals):
            ax.text(v, i, f" {v:.2f} s" if v < 1 else f" {v:.1f} s", va="center", fontsize=8)
        ax.set_xscale("log")
        ax.set_xlim(min(vals) / 2, max(vals) * 4)
    else:
        ax.text(0.5, 0.5, "update cost not measured", ha="center", va="center", transform=ax.transAxes)
        ax.set_yticks([])
    ax.set_xlabel("seconds (log scale)")
    ax.set_title("Cost of an update: one new document", fontsize=10)
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def memory(results: dict[str, Any], path: Path) -> None:
    """Peak RSS while answering, and disk needed, per mode."""
    plt = _plt()
    ms = [m for m in results["modes_order"] if results["modes"][m].get("status") == "ok"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(6.4, 3.0))
    rss = [results["modes"][m]["peak_rss_mb"] or 0 for m in ms]
    disk = [(results["modes"][m].get("disk_bytes") or 0) / 2**20 for m in ms]
    cols = [COLORS.get(m, "black") for m in ms]
    for ax, vals, title in ((a1, rss, "peak RSS while answering, MiB"), (a2, disk, "on disk to answer, MiB")):
        ax.bar(ms, vals, color=cols)
        for i, v in enumerate(vals):
            ax.text(i, v, f"{v:.0f}", ha="center", va="bottom", fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def write_charts(out: Path, results: dict[str, Any]) -> list[str]:
    """Write every chart into ``out``; return the file names."""
    accuracy_latency(results, out / ACCURACY_LATENCY)
    update_cost(results, out / UPDATE_COST)
    memory(results, out / MEMORY)
    return [ACCURACY_LATENCY, UPDATE_COST, MEMORY]
