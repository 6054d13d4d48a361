"""The results as Markdown: a header with the machine and its load, one table of every tool
(time, ratios to s5cmd, CPU, peak memory), the agent against its baseline, and the
performance targets checked.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from bench.tools import AGENT, FLOORS, OPENSSL, REFERENCE, SHA256SUM

SLOWER = 1.10  # a row more than 10 % slower than the baseline is flagged
# Peak RSS differs by a MiB or two between runs of the same code: more than this is "more".
MEMORY_NOISE = 1.05
TITLES = {"aws-cli-v2": "aws-cli v2", OPENSSL: "openssl dgst -sha256"}


@dataclass(frozen=True)
class Stats:
    seconds: float  # median wall time
    user: float  # median user CPU seconds
    sys: float  # median system CPU seconds
    cpu: float  # median of user + system
    peak_mib: float  # highest peak RSS of the runs
    runs: int


def stats(samples: list[dict[str, Any]]) -> Stats:
    return Stats(statistics.median(s["seconds"] for s in samples),
                 statistics.median(s["user"] for s in samples),
                 statistics.median(s["sys"] for s in samples),
                 statistics.median(s["user"] + s["sys"] for s in samples),
                 max(s["rss_kib"] for s in samples) / 1024, len(samples))


def num(x: float) -> str:
    return f"{x:.2f}" if x < 10 else f"{x:.1f}"


def tools_of(results: dict[str, Any]) -> list[str]:
    """Every tool that has a sample, in the order of the first row that has it."""
    seen: list[str] = []
    for row in results["rows"]:
        seen += [t for t in row["samples"] if t not in seen]
    head = [t for t in (REFERENCE, AGENT) if t in seen]
    baseline = [t for t in seen if t.startswith(AGENT + "@")]
    rest = [t for t in seen if t not in head + baseline and t not in FLOORS]
    return head + baseline + rest + [t for t in FLOORS if t in seen]


def short_version(tool: str, line: str) -> str:
    """"rclone v1.75.2" -> "v1.75.2", "aws-cli/2.9.19 Python/..." -> "2.9.19"."""
    words = line.split() or [line]
    if tool == SHA256SUM:  # "sha256sum (GNU coreutils) 9.1"
        return words[-1]
    if "/" in words[0]:
        return words[0].split("/", 1)[1]
    if len(words) > 1 and words[0].lower() in (tool.lower(), "openssl"):
        return words[1]
    return words[0]


def header(results: dict[str, Any]) -> str:
    m, v, load = results["machine"], results["versions"], results["load"]
    baseline = results.get("baseline")
    size = "quick sets" if results["quick"] else "full sets"
    if results.get("scale", 1) != 1:
        size += f" × {results['scale']}"
    peers = ", ".join(f"{TITLES.get(t, t).split()[0]} {short_version(t, v[t])}" for t in v
                      if not t.startswith(AGENT))
    lines = [
        f"**{results['date']}, {m['cpus']} × {m['cpu']} (Python {m['python']}, kernel "
        f"{m['kernel']}), SeaweedFS on loopback"
        f"{' over https' if results.get('tls') else ''}; {peers}; the agent at "
        f"{results.get('agent_commit', '?')}"
        + (f", its baseline at {baseline['ref']} ({baseline['sha'][:12]})" if baseline else "")
        + ".**",
        f"Load average (1/5/15 min) at start {' '.join(map(str, load['start']))}, at end "
        f"{' '.join(map(str, load['end']))}. {size.capitalize()}, median of {results['runs']} "
        f"runs per tool (the one-file get at least 5), tools alternating; whole run "
        f"{results['seconds'] / 60:.1f} min."
        + (" Seeding: " + ", ".join(f"{k} {s:.0f} s" for k, s in results["seeding_seconds"].items())
           + "." if results.get("seeding_seconds") else ""),
    ]
    return "\n".join(lines)


def table(results: dict[str, Any]) -> str:
    """One row per work; each cell: median time, ×s5cmd; CPU user+sys, ×s5cmd; peak RSS."""
    tools = tools_of(results)
    lines = ["| work | " + " | ".join(TITLES.get(t, t) for t in tools) + " |",
             "|---" * (len(tools) + 1) + "|"]
    for row in results["rows"]:
        samples = row["samples"]
        ref = stats(samples[REFERENCE])
        cells = []
        for tool in tools:
            if tool not in samples:
                cells.append("—")
                continue
            s = stats(samples[tool])
            ratios = (f" ×{s.seconds / ref.seconds:.2f}", f" ×{s.cpu / ref.cpu:.2f}")
            if tool in FLOORS:
                ratios = ("", "")
            cells.append(f"{num(s.seconds)} s{ratios[0]} · CPU {num(s.user)}+{num(s.sys)} s"
                         f"{ratios[1]} · {s.peak_mib:.0f} MiB")
        lines.append(f"| {row['label']} | " + " | ".join(cells) + " |")
    note = ("Each cell: median time, ratio to s5cmd; CPU seconds user+system (medians), ratio of "
            "their sum to s5cmd's; peak RSS (highest of the runs).")
    works = {row["work"] for row in results["rows"]}
    if "ls" in works:
        note += (" ls: the agent lists the run and reads its manifests (a hash per file); s5cmd "
                 "and rclone list the keys.")
    if "get-present" in works:
        note += (" All present: the agent hashes every local file against the manifest and "
                 "moves none; rclone `copy --checksum` compares size and MD5 of every file; "
                 "s5cmd `cp --if-size-differ` compares sizes only (a floor, not the same work).")
    if any(t in FLOORS for t in tools):
        note += (" sha256sum and openssl hash the large file from the page cache: the floor of "
                 "its get (coreutils' sha256sum has no SHA extensions; OpenSSL, which the "
                 "agent's hashlib uses, has).")
    return "\n".join(lines) + "\n\n" + note


def _paired(row: dict[str, Any], tool: str, baseline: str) -> list[float]:
    """Ratios of runs made in the same repetition (adjacent in time): the noise of the row."""
    now, then = row["samples"][tool], row["samples"][baseline]
    return [a["seconds"] / b["seconds"] for a, b in zip(now, then)]


def baseline_table(results: dict[str, Any]) -> str:
    """The agent against its baseline per row: time, CPU and peak RSS as ratios."""
    base = results.get("baseline")
    if not base:
        return ""
    tool = base["tool"]
    lines = [f"| work | time now / {base['ref']} | CPU now / {base['ref']} | "
             f"peak RSS now / {base['ref']} | |", "|---|---|---|---|---|"]
    for row in results["rows"]:
        samples = row["samples"]
        if AGENT not in samples or tool not in samples:
            continue
        now, then = stats(samples[AGENT]), stats(samples[tool])
        time_ratio, cpu_ratio = now.seconds / then.seconds, now.cpu / then.cpu
        rss_ratio = now.peak_mib / then.peak_mib
        paired = _paired(row, AGENT, tool)
        spread = f" (runs {min(paired):.2f}–{max(paired):.2f})" if len(paired) > 1 else ""
        flags = []
        if time_ratio > SLOWER:
            flags.append(f"**SLOWER by {time_ratio * 100 - 100:.0f} %**")
        if cpu_ratio > SLOWER:
            flags.append(f"more CPU by {cpu_ratio * 100 - 100:.0f} %")
        if rss_ratio > MEMORY_NOISE:
            flags.append(f"more memory by {rss_ratio * 100 - 100:.0f} %")
        lines.append(
            f"| {row['label']} | {num(now.seconds)} / {num(then.seconds)} s "
            f"×{time_ratio:.2f}{spread} | {num(now.cpu)} / {num(then.cpu)} s ×{cpu_ratio:.2f} | "
            f"{now.peak_mib:.0f} / {then.peak_mib:.0f} MiB ×{rss_ratio:.2f} | "
            f"{'; '.join(flags) or 'ok'} |")
    return (f"The agent ({results.get('agent_commit', 'current')}) against {tool} in the same "
            f"run (ratios of medians; a row more than {SLOWER * 100 - 100:.0f} % slower is "
            f"flagged):\n\n" + "\n".join(lines))


def targets(results: dict[str, Any]) -> str:
    """Each performance target for the agent, met or by how much not."""
    base = results.get("baseline")
    out = []
    for row in results["rows"]:
        samples, work, name = row["samples"], row["work"], row["dataset"]
        if AGENT not in samples:
            continue
        agent, ref = stats(samples[AGENT]), stats(samples[REFERENCE])
        checks: list[tuple[bool, str]] = []
        if name == "many":
            checks.append((agent.seconds <= 1.2 * ref.seconds,
                           f"time ×{agent.seconds / ref.seconds:.2f} of s5cmd ≤ ×1.2"))
            checks.append((agent.cpu <= 1.3 * ref.cpu, f"CPU ×{agent.cpu / ref.cpu:.2f} of s5cmd ≤ ×1.3"))
            checks.append((agent.peak_mib <= 150, f"{agent.peak_mib:.0f} MiB ≤ 150 MiB"))
        elif name == "million":
            checks.append((agent.peak_mib <= 400, f"{agent.peak_mib:.0f} MiB ≤ 400 MiB"))
        elif work == "get-one":
            checks.append((agent.seconds <= 0.10, f"{agent.seconds:.3f} s ≤ 0.10 s"))
        elif work == "get" and name == "large" and SHA256SUM in samples:
            floor = stats(samples[SHA256SUM]).seconds
            checks.append((agent.seconds <= 1.1 * floor,
                           f"×{agent.seconds / floor:.2f} of sha256sum ({num(floor)} s) ≤ ×1.1"))
            if OPENSSL in samples:
                fast = stats(samples[OPENSSL]).seconds
                checks.append((agent.seconds <= 1.1 * fast,
                               f"(stricter) ×{agent.seconds / fast:.2f} of openssl dgst -sha256 "
                               f"({num(fast)} s) ≤ ×1.1"))
        else:
            checks.append((agent.seconds <= 1.2 * ref.seconds,
                           f"×{agent.seconds / ref.seconds:.2f} of s5cmd ≤ ×1.2"))
            if "rclone" in samples:
                rclone = stats(samples["rclone"]).seconds
                checks.append((agent.seconds < rclone, f"faster than rclone ({num(agent.seconds)} "
                                                       f"< {num(rclone)} s)"))
        if base and base["tool"] in samples:
            then = stats(samples[base["tool"]]).peak_mib
            checks.append((agent.peak_mib <= then * MEMORY_NOISE,
                           f"memory {agent.peak_mib:.0f} MiB not above {base['ref']}'s "
                           f"{then:.0f} MiB (+{MEMORY_NOISE * 100 - 100:.0f} % noise)"))
        text = "; ".join(("met: " if ok else "MISSED: ") + what for ok, what in checks)
        out.append(f"- {row['label']}: {text}")
    note = ""
    if results["quick"] or results.get("scale", 1) != 1:
        note = ("\n(Quick or scaled sets: the targets are stated for the full sizes; read these "
                "as indications only.)")
    return "Targets for the agent:\n\n" + "\n".join(out) + note


def render(results: dict[str, Any]) -> str:
    parts = [header(results), table(results), baseline_table(results), targets(results)]
    return "\n\n".join(p for p in parts if p)
