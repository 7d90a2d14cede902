"""Shared benchmark plumbing: percentiles, machine description, README tables."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import re
import socket
from pathlib import Path

import numpy as np

README = Path(__file__).resolve().parent / "README.md"
RESULTS = README.parent / "results"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def summarize(latencies_us: list[float]) -> dict[str, float]:
    values = np.asarray(latencies_us)
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return {
        "n": int(values.size),
        "p50_us": float(p50),
        "p90_us": float(p90),
        "p99_us": float(p99),
        "mean_us": float(values.mean()),
    }


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = ""
    try:
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f", {kib / 2**20:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return f"{os.cpu_count()} vCPU {model}{memory}, {platform.system()} {platform.machine()}"


def _ms(us: float) -> str:
    return f"{us / 1e3:.3f}"


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def overhead_table(result: dict) -> str:
    """p50 of every arm per case, tfrec against the floors, and whether its target is met."""
    arms = ("in_process", "python_floor", "cxx_floor", "tfrec")
    lines = [
        f"Run {result['date']} on {result['machine']}, Python {result['python']}, "
        f"TensorFlow {result['tensorflow']}, zoo scale `{result.get('scale', '-')}`. "
        f"Command: `{result['command']}`.",
        *(f"Note: {note}" for note in result.get("notes", [])),
        "",
        "| case | request | " + " | ".join(f"{a} p50 ms" for a in arms) + " | tfrec / "
        "python_floor | tfrec - python_floor ms | tfrec / cxx_floor | tfrec p99 ms | target |",
        "|---|---|" + "---|" * (len(arms) + 5),
    ]
    for case in result["cases"]:
        stats, ratios, target = case["arms"], case["ratios"], case.get("target")
        request = f"{case['request_bytes']:,} B"
        if case.get("request_strings"):
            request += f", {case['request_strings']:,} strings"
        p50s = " | ".join(_ms(stats[a]["p50_us"]) if a in stats else "-" for a in arms)
        verdict = "-"
        if target:
            verdict = f"{'met' if target['met'] else 'MISSED'} (<= {_ms(target['limit_us'])})"
        lines.append(
            f"| {case['case']} | {request} | {p50s} | "
            f"{_x(ratios['tfrec_over_python_floor_p50'])} | "
            f"{ratios['tfrec_minus_python_floor_ms']:+.3f} | "
            f"{_x(ratios['tfrec_over_cxx_floor_p50'])} | {_ms(stats['tfrec']['p99_us'])} | "
            f"{verdict} |"
        )
    return "\n".join(lines)


def update_readme(section: str, table: str) -> None:
    """Replaces the text between `<!-- section:begin -->` and `<!-- section:end -->`."""
    text = README.read_text()
    begin, end = f"<!-- {section}:begin -->", f"<!-- {section}:end -->"
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
    block = f"{begin}\n{table}\n{end}"
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    README.write_text(text)


def publish(name: str, result: dict, text: str, readme: bool = True, out: Path = RESULTS) -> Path:
    """Writes `<out>/<name>-<date>.json` (out: benchmarks/results), puts `text` in the README's
    `name` section (unless `readme` is false) and prints it; returns the JSON's path."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}-{dt.date.today().isoformat()}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    if readme:
        update_readme(name, text)
    print(text)
    print(f"results: {path}")
    return path
