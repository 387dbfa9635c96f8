"""Medians with min and max, percentiles, and the printed table."""

from __future__ import annotations

import statistics
from typing import Any


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of unsorted values; nan when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[k]


def summary(runs: list[float]) -> dict[str, Any]:
    clean = [r for r in runs if r == r]  # drop NaN
    if not clean:
        return {"runs": runs, "median": None, "min": None, "max": None}
    return {"runs": [round(r, 3) for r in runs], "median": statistics.median(clean), "min": min(clean),
            "max": max(clean)}


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    if unit in ("tasks/s",):
        return f"{value:,.0f}"
    if unit in ("ms",):
        return f"{value:.2f}" if value < 10 else f"{value:.1f}"
    if unit in ("MB", "s", "CPU s", "MB/10k"):
        return f"{value:.2f}"
    return f"{value:g}"


def table(rows: list[dict[str, Any]]) -> str:
    """Rows: workload, system, metric, unit, median/min/max, ratio (text), note."""
    head = ["workload", "system", "metric", "median", "min", "max", "unit", "ratio", "note"]
    lines = [head]
    for r in rows:
        lines.append([r["workload"], r["system"], r["metric"], fmt(r.get("median"), r["unit"]),
                      fmt(r.get("min"), r["unit"]), fmt(r.get("max"), r["unit"]), r["unit"],
                      r.get("ratio", ""), r.get("note", "")])
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(head))]
    out = []
    for j, line in enumerate(lines):
        out.append("| " + " | ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=False)) + " |")
        if j == 0:
            out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(out)
