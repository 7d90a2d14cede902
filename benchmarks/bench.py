"""Ranking requests on the model zoo: TF-Serving's floor against tfrec, flat and structured.

For each zoo model and each N (candidates per request), four arms on the same requests,
alternating in rounds (the order rotates each round) so drift hits all of them alike:
- (a) `floor_flat`, the TF-Serving floor: the original `serving_default` run in this process
  on the flat batch, loaded as TF-Serving loads it (TF1 loader into a plain
  `tf.compat.v1.Session`, a default ConfigProto: TensorFlow's own intra/inter-op thread
  counts) and run through a session callable on TF's inter-op pool (TF-Serving's default
  RunOptions). The best any server could do on flat input, the network excluded.
- (b) `tfrec_flat`: `tfrec_model_server` (subprocess, stock flags) over gRPC, flat requests.
- (c) `tfrec_structured`: the same server, the converted model's `serving_default_structured`
  over gRPC, structured requests (user inputs once).
- (d) `floor_structured`: (a) for the converted model's structured signature.
Plus the ideal FLOP ratio (`saved_model_tools.flops`: original at N rows / structured).
(c), (d) and the FLOP ratio need `saved_model_tools.convert`/`flops`; until they exist they are
skipped with a note. Latency is per request at concurrency 1 (e2e through `tfrec_tools.loadgen`).

Outputs: `<out>/<date>.json`, `<out>/<date>.md`, `<out>/speedup-<date>.png`, and the table in
`benchmarks/README.md` (unless --no-readme).

    python benchmarks/bench.py [--scale full|tiny] [--models din,wdl] [--n 100 500 1000]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

from benchmarks import report  # noqa: E402
from benchmarks.arms import Budget, Case, Converted, convert, run_model  # noqa: E402
from benchmarks.models import NAMES, export  # noqa: E402
from benchmarks.plot import speedup_plot  # noqa: E402
from benchmarks.servers import TfrecServer  # noqa: E402
from server.memory import tune_malloc  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=["full", "tiny"], default="full")
    parser.add_argument("--models", default=",".join(NAMES), help="comma-separated zoo names")
    parser.add_argument("--n", type=int, nargs="+", default=[100, 500, 1000])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds-per-case", type=float, default=20.0, help="time budget")
    parser.add_argument("--min-requests", type=int, default=2, help="per arm and round")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--no-readme", action="store_true", help="leave README.md alone")
    args = parser.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv
    unknown = set(args.models.split(",")) - set(NAMES)
    if unknown:
        parser.error(f"unknown models {sorted(unknown)}; known: {', '.join(NAMES)}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    tune_malloc()  # the in-process floors get the server's allocator settings
    started = time.monotonic()
    notes: list[str] = []
    cases: list[Case] = []
    with tempfile.TemporaryDirectory(prefix="tfrec-bench-") as tmp:
        work = Path(tmp)
        models: dict[str, Path] = {}
        converted: dict[str, Converted] = {}
        for name in args.models.split(","):
            log(f"build {name} ({args.scale})")
            models[name] = export(name, args.scale, work / "original", check=False).path
            result = convert(models[name], work / "converted" / name / "1", notes)
            if result is not None:
                log(f"converted {name} in {result.seconds:.1f} s")
                converted[name] = result
        served = {name: path.parent for name, path in models.items()}
        served |= {f"{name}_structured": c.path.parent for name, c in converted.items()}
        log(f"start tfrec_model_server with {len(served)} models")
        budget = Budget(args.rounds, args.seconds_per_case, args.min_requests)

        def progress(text: str) -> None:
            log(f"{text} ({time.monotonic() - started:.0f} s so far)")

        with TfrecServer(served) as server:
            for name, version_dir in models.items():
                conv = converted.get(name)
                cases += run_model(
                    name, version_dir, conv, server.address, args.n, budget, notes, progress
                )
    for note in dict.fromkeys(notes):
        log(f"note: {note}")
    seconds = {name: round(c.seconds, 1) for name, c in converted.items()}
    write(args, cases, list(dict.fromkeys(notes)), seconds, time.monotonic() - started)


def write(
    args: argparse.Namespace,
    cases: list[Case],
    notes: list[str],
    conversion_s: dict[str, float],
    seconds: float,
) -> None:
    today = dt.date.today().isoformat()
    output = {
        "benchmark": "bench",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": report.machine(),
        "command": "python benchmarks/bench.py " + " ".join(args.argv),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "scale": args.scale,
        "seconds": round(seconds, 1),
        "notes": notes,
        "conversion_seconds": conversion_s,
        "cases": [c.to_json() for c in cases],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{today}.json"
    path.write_text(json.dumps(output, indent=2) + "\n")
    table = case_table(output)
    (args.out / f"{today}.md").write_text(table + "\n")
    speedup_plot(output, args.out / f"speedup-{today}.png")
    if not args.no_readme:
        report.update_readme("bench", table)
    print(table)
    print(f"results: {path}, {args.out / f'speedup-{today}.png'} ({seconds:.0f} s)")


def _ms(summary: dict | None) -> str:
    return f"{summary['p50_us'] / 1e3:.2f}" if summary and summary["n"] else "-"


def _x(ratio: float | None) -> str:
    return f"{ratio:.2f}x" if ratio else "-"


def case_table(result: dict) -> str:
    """The README tables: medians per arm (ms) and ratios over the TF-Serving floor, then the
    structured-features summary at the largest N."""
    lines = [
        f"Run {result['date']} on {result['machine']} (shared with other engineers' jobs), "
        f"Python {result['python']}, TensorFlow {result['tensorflow']}, {result['scale']} "
        f"scale, {result['seconds']:.0f} s. Command: `{result['command']}`.",
        "",
        "| model | N | request KB flat / struct. | (a) floor flat | (b) tfrec flat |"
        " (c) tfrec struct. | (d) floor struct. | (e) tfrec dedup | a/b | a/c | a/d | a/e |"
        " FLOPs flat/struct. | max abs diff |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in result["cases"]:
        arms, r, size = c["arms"], c["ratios"], c["request_bytes"]
        kb = f"{size['flat'] / 1e3:.0f} / " + (
            f"{size['structured'] / 1e3:.0f}" if "structured" in size else "-"
        )
        diff = max(c["max_abs_diff_vs_floor_flat"].values())
        lines.append(
            f"| {c['model']} | {c['n']} | {kb} | {_ms(arms.get('floor_flat'))} | "
            f"{_ms(arms.get('tfrec_flat'))} | {_ms(arms.get('tfrec_structured'))} | "
            f"{_ms(arms.get('floor_structured'))} | {_ms(arms.get('tfrec_dedup'))} | "
            f"{_x(r['floor_over_tfrec_flat'])} | {_x(r['floor_over_tfrec_structured'])} | "
            f"{_x(r['floor_over_floor_structured'])} | {_x(r.get('floor_over_tfrec_dedup'))} | "
            f"{_x(r['flop_ratio'])} | {diff:.1e} |"
        )
    n = {arm: s["n"] for c in result["cases"] for arm, s in c["arms"].items()}
    lines += ["", f"Median latency in ms over {min(n.values(), default=0)}+ requests per arm "
              "and case; a/x = how many times faster than TF-Serving's floor (a)."]  # fmt: skip
    lines += [f"Note: {note}." for note in result["notes"]]
    return "\n".join([*lines, "", *summary_table(result)])


def summary_table(result: dict) -> list[str]:
    """Issue 5's figures at each model's largest N: structured speedup over the floor, the
    ideal FLOP ratio, their quotient, request bytes, and the dedup path for unchanged clients."""
    largest: dict[str, dict] = {}
    for c in result["cases"]:
        if c["n"] >= largest.get(c["model"], {"n": -1})["n"]:
            largest[c["model"]] = c
    lines = [
        "| model (N) | structured speedup a/c | ideal FLOP ratio | share of ideal |"
        " request bytes flat -> structured | dedup speedup a/e | dedup / structured |",
        "|---|---|---|---|---|---|---|",
    ]
    for model, c in largest.items():
        r, size = c["ratios"], c["request_bytes"]
        structured, dedup = r["floor_over_tfrec_structured"], r.get("floor_over_tfrec_dedup")
        share = r.get("share_of_ideal")
        half = dedup / structured if dedup and structured else None
        after = f"{size['structured']:,}" if "structured" in size else "-"
        lines.append(
            f"| {model} ({c['n']}) | {_x(structured)} | {_x(r['flop_ratio'])} | "
            f"{f'{share:.0%}' if share else '-'} | {size['flat']:,} -> {after} | "
            f"{_x(dedup)} | {f'{half:.0%}' if half else '-'} |"
        )
    return lines


def log(text: str) -> None:
    print(f"[bench] {text}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
