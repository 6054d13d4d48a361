"""The results as a Markdown table (times as ratios to s5cmd) and the issue's targets checked."""

from __future__ import annotations

import statistics
from typing import Any

REFERENCE = "s5cmd"
AGENT = "catalog-agent"
MEMORY_LIMIT_MIB = 150
START_LIMIT_S = 0.5


def _median(samples: list[dict[str, Any]]) -> float:
    return statistics.median(s["seconds"] for s in samples)


def _peak_mib(samples: list[dict[str, Any]]) -> float:
    return max(s["rss_kib"] for s in samples) / 1024


def table(results: dict[str, Any]) -> str:
    """One row per work; each cell: median seconds, ratio to s5cmd, peak RSS."""
    tools = list(results["rows"][0]["samples"])
    lines = ["| work | " + " | ".join(tools) + " |", "|---" * (len(tools) + 1) + "|"]
    for row in results["rows"]:
        samples = row["samples"]
        reference = _median(samples[REFERENCE])
        cells = []
        for tool in tools:
            if tool not in samples:
                cells.append("—")
                continue
            median = _median(samples[tool])
            cells.append(f"{median:.2f} s ×{median / reference:.2f} · "
                         f"{_peak_mib(samples[tool]):.0f} MiB")
        lines.append(f"| {row['label']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def targets(results: dict[str, Any]) -> str:
    """Each of issue 8's targets for the agent, met or by how much not."""
    out = []
    for row in results["rows"]:
        samples = row["samples"]
        if AGENT not in samples:
            continue
        agent = _median(samples[AGENT])
        reference = _median(samples[REFERENCE])
        ratio = agent / reference
        checks = []
        if row["work"] == "get-one":
            checks.append((agent <= START_LIMIT_S, f"{agent:.2f} s ≤ {START_LIMIT_S} s"))
        else:
            limit = 1.5 if row["dataset"] == "small" else 1.15
            checks.append((ratio <= limit, f"×{ratio:.2f} of s5cmd ≤ ×{limit}"))
            for peer in ("rclone", "aws-cli-v2"):
                if peer in samples:
                    checks.append((agent < _median(samples[peer]),
                                   f"faster than {peer} ({agent:.2f} < "
                                   f"{_median(samples[peer]):.2f} s)"))
        peak = _peak_mib(samples[AGENT])
        checks.append((peak <= MEMORY_LIMIT_MIB, f"{peak:.0f} MiB ≤ {MEMORY_LIMIT_MIB} MiB"))
        text = "; ".join(("met: " if ok else "MISSED: ") + what for ok, what in checks)
        out.append(f"- {row['label']}: {text}")
    return "\n".join(out)
