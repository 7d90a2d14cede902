"""The bench's PNG: speedup over TF-Serving's floor against N, one colour per zoo model.

Solid: tfrec end-to-end structured (a/c); dashed: in-process structured floor (a/d); dotted:
the ideal FLOP ratio. Before the converter exists none of those are measured, and the plot
shows what is: the TF-Serving floor over tfrec end-to-end flat (a/b, below 1: the
server's overhead on flat requests).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import FuncFormatter, NullFormatter

# ratio key in a case's "ratios" -> (legend text, line style)
SERIES = {
    "floor_over_tfrec_structured": ("tfrec structured, end to end (a/c)", "-"),
    "floor_over_floor_structured": ("structured floor, in process (a/d)", "--"),
    "flop_ratio": ("ideal: FLOPs flat / structured", ":"),
}
FINE_TICKS = (0.1, 0.2, 0.3, 0.5, 0.7, 1, 1.5, 2, 3, 5, 7, 10, 15, 20)
COARSE_TICKS = (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)
FALLBACK = {"floor_over_tfrec_flat": ("tfrec flat, end to end (a/b)", "-")}


def speedup_plot(result: dict, path: Path) -> None:
    cases = result["cases"]
    measured = {k for c in cases for k, v in c["ratios"].items() if v is not None}
    series = {k: v for k, v in SERIES.items() if k in measured} or FALLBACK
    models = list(dict.fromkeys(c["model"] for c in cases))
    colors = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(9.5, 5))
    ratios: list[float] = [1.0]
    for i, model in enumerate(models):
        rows = sorted((c for c in cases if c["model"] == model), key=lambda c: c["n"])
        for key, (_, style) in series.items():
            points = [(c["n"], c["ratios"][key]) for c in rows if c["ratios"].get(key)]
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, style, marker="o", color=colors(i % 10), label=model)
                ratios += ys
    handles = [plt.Line2D([], [], color=colors(i % 10), label=m) for i, m in enumerate(models)]
    handles += [plt.Line2D([], [], color="grey", ls=s, label=t) for t, s in series.values()]
    ax.axhline(1.0, color="black", lw=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ns = sorted({c["n"] for c in cases})
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.xaxis.set_minor_formatter(NullFormatter())
    low, high = min(ratios), max(ratios)
    ticks = FINE_TICKS if high / low < 20 else COARSE_TICKS
    ax.set_yticks([t for t in ticks if low / 1.3 <= t <= high * 1.3] or [1.0])
    ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}x"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("candidates per request (N)")
    ax.set_ylabel("speedup over TF-Serving's floor (x, log)")
    title = f"tfrec bench, {result['scale']} scale, {result['date'][:10]}"
    if series is FALLBACK:
        title += "\n(no structured arms yet: tfrec flat against the floor)"
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
