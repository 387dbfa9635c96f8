"""The PNG: throughput per system (median, min-max bars) and latency percentiles at 1,000/s."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def render(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    thr = [r for r in rows if r["metric"] == "throughput" and r.get("median")]
    lat = [r for r in rows if r["metric"] in ("p50", "p99") and r.get("median")]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5.2))
    names = [r["system"] for r in thr]
    med = [r["median"] for r in thr]
    err = [[m - r["min"] for m, r in zip(med, thr, strict=True)], [r["max"] - m for m, r in zip(med, thr, strict=True)]]
    colors = ["#2b7bba" if n.startswith(("mqtt-tasks", "coordinator")) else "#999999" if n.startswith("bare")
              else "#e08a2b" for n in names]
    ax1.barh(names, med, xerr=err, color=colors, capsize=3)
    for y, (m, r) in enumerate(zip(med, thr, strict=True)):
        ax1.text(max(m, r["max"]), y, f"  {m:,.0f}", va="center", fontsize=8)  # clear of the min-max bar
    ax1.invert_yaxis()
    ax1.set_xlabel("no-op tasks/s, submit all then await all (median of runs, min-max)")
    ax1.set_title("End-to-end throughput, 2 worker processes")
    systems = []
    for r in lat:
        if r["system"] not in systems:
            systems.append(r["system"])
    width = 0.38
    for k, metric in enumerate(("p50", "p99")):
        vals = []
        for s in systems:
            match = [r for r in lat if r["system"] == s and r["metric"] == metric]
            vals.append(match[0]["median"] if match else 0)
        xs = [i + (k - 0.5) * width for i in range(len(systems))]
        ax2.bar(xs, vals, width, label=metric)
        for x, v in zip(xs, vals, strict=True):
            ax2.text(x, v, f"{v:.1f}", ha="center", va="bottom", fontsize=7)
    ax2.set_xticks(range(len(systems)))
    ax2.set_xticklabels(systems, rotation=20, ha="right", fontsize=8)
    ax2.set_yscale("log")
    ax2.set_ylabel("ms, submit -> result in the producer (log scale)")
    ax2.set_title("Latency at 1,000 tasks/s")
    ax2.legend()
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
