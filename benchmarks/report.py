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


def overhead_table(result: dict) -> str:
    lines = [
        f"Run {result['date']} on {result['machine']}, Python {result['python']}, "
        f"TensorFlow {result['tensorflow']}. Command: `{result['command']}`.",
        "",
        "| case | request | arm | p50 ms | p90 ms | p99 ms | n |",
        "|---|---|---|---|---|---|---|",
    ]
    for case in result["cases"]:
        shape = "x".join(str(d) for d in case["input_shape"])
        for arm, stats in case["arms"].items():
            lines.append(
                f"| {case['case']} | {shape} f32, {case['request_bytes']} B | {arm} | "
                f"{_ms(stats['p50_us'])} | {_ms(stats['p90_us'])} | {_ms(stats['p99_us'])} | "
                f"{stats['n']} |"
            )
    lines += [
        "",
        "| case | tfrec p50 / gRPC floor p50 | tfrec p50 / in-process p50 |",
        "|---|---|---|",
    ]
    for case in result["cases"]:
        ratios = case["ratios"]
        lines.append(
            f"| {case['case']} | {ratios['tfrec_over_floor_p50']:.2f}x | "
            f"{ratios['tfrec_over_in_process_p50']:.2f}x |"
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


def publish(name: str, result: dict, text: str, readme: bool = True) -> Path:
    """Writes `results/<name>-<date>.json`, puts `text` in the README's `name` section (unless
    `readme` is false) and prints it; returns the JSON's path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}-{dt.date.today().isoformat()}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    if readme:
        update_readme(name, text)
    print(text)
    print(f"results: {path}")
    return path
