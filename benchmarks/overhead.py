"""Serving overhead on every zoo model: tfrec over gRPC against its floors, side by side.

Cases: `half_plus_two` with x=[[2.0]] (TF-Serving's test model), and every zoo model
(benchmarks/models, the original export: not converted, so this measures overhead, not the
structured speedups) with flat ranking requests of N = 100 and 1000 rows (one user, N
candidates, user features repeated per row, as a stock TF-Serving client sends them:
`benchmarks.workloads`). The `strings` model's request holds ~52k strings at N = 1000.

Four arms per case, alternating in rounds (the order rotates each round) so machine drift
hits all of them alike; latency end-to-end at concurrency 1, the client in this process:
- `in_process`: the signature run in this process through a session callable (loaded as
  TF-Serving loads it; the faster of TF's pooled and inline modes): no network, no server;
- `python_floor`: benchmarks/grpc_floor.py, a bare grpcio PredictionService that decodes every
  input into numpy (strings into Python bytes), waits the in-process p50 (re-read after every
  round) and returns the model's outputs: a Python server with zero overhead of its own;
- `cxx_floor`: the same in C++ (benchmarks/cxx_floor/floor.cc): what stock TF-Serving's
  transport could at best do. Built and cached on first use; skipped with a note when the gRPC
  C++ toolchain is not installed;
- `tfrec`: `python -m server.main` with default flags, the stock `tensorflow_serving.apis` stub,
  the request built once. Its outputs must equal `in_process`'s before any timing.

Targets: on every zoo model at N = 100 and 1000, tfrec's p50 at most the Python floor's plus
0.1 ms or 1.05x it, whichever is larger; on `strings` at N = 1000 at most 0.7x the Python floor;
half_plus_two at most 1.3x the Python floor (issue 2). Results go to
`benchmarks/results/overhead-<date>.json` and the table in `benchmarks/README.md`.

    python benchmarks/overhead.py [--models wdl,strings] [--n 100 1000] [--scale full]
        [--requests 1000] [--rounds 40] [--seconds-per-arm 30] [--no-readme]
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from benchmarks import report  # noqa: E402
from benchmarks.grpc_floor import tune_malloc  # noqa: E402
from benchmarks.models import NAMES  # noqa: E402
from benchmarks.models.scales import SCALES  # noqa: E402
from benchmarks.overhead_arms import (  # noqa: E402
    Arrays,
    InProcess,
    Subprocess,
    cxx_floor,
    floor_request,
    measure,
    python_floor,
    response_arrays,
    set_delay,
    tfrec_server,
)
from benchmarks.workloads import Workload, predict_request  # noqa: E402
from benchmarks.zoo_cache import zoo_model  # noqa: E402

HALF_PLUS_TWO = ROOT / "tests" / "testdata" / "tfserving" / "saved_model_half_plus_two_cpu"
CASES = ("half_plus_two", *NAMES)
ARMS = ("in_process", "python_floor", "cxx_floor", "tfrec")
TARGET_EXTRA_US, TARGET_RATIO = 100.0, 1.05  # zoo: max(floor + 0.1 ms, 1.05 floor)
STRINGS_TARGET_RATIO = 0.7  # `strings` at N = 1000
HALF_PLUS_TWO_TARGET_RATIO = 1.3
TFREC_WARMUP = 400  # past the per-bucket trials (run mode: 2x16; schedule: 5 traced, 2x20, a build)
MIN_REQUESTS = 20
PARITY_RTOL = PARITY_ATOL = 1e-5


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(CASES), help="comma-separated cases")
    parser.add_argument("--n", type=int, nargs="+", default=[100, 1000], help="rows per request")
    parser.add_argument("--scale", choices=list(SCALES), default="full", help="zoo scale")
    parser.add_argument("--requests", type=int, default=1000, help="per arm and case, at most")
    parser.add_argument("--rounds", type=int, default=40, help="arms alternate this often")
    parser.add_argument(
        "--seconds-per-arm", type=float, default=30.0, help="fewer requests for slow cases"
    )
    parser.add_argument(
        "--no-readme", action="store_true", help="results to a temp dir; README.md left alone"
    )
    args = parser.parse_args(argv)
    args.models = [m for m in args.models.split(",") if m]
    unknown = set(args.models) - set(CASES)
    if unknown:
        parser.error(f"unknown models {sorted(unknown)}; known: {', '.join(CASES)}")
    return args


def log(text: str) -> None:
    print(f"[overhead] {text}", file=sys.stderr, flush=True)


def target(model: str, n: int, arms: dict[str, dict]) -> dict | None:
    """The case's target on tfrec's p50, from the Python floor's p50; None where none is set."""
    floor = arms["python_floor"]["p50_us"]
    if model == "half_plus_two":
        limit, rule = HALF_PLUS_TWO_TARGET_RATIO * floor, "1.3x python_floor"
    elif model == "strings" and n == 1000:
        limit, rule = STRINGS_TARGET_RATIO * floor, "0.7x python_floor"
    elif n in (100, 1000):
        limit = max(floor + TARGET_EXTRA_US, TARGET_RATIO * floor)
        rule = "max(python_floor + 0.1 ms, 1.05x python_floor)"
    else:
        return None
    return {"rule": rule, "limit_us": limit, "met": arms["tfrec"]["p50_us"] <= limit}


def ratios(arms: dict[str, dict]) -> dict[str, float | None]:
    tfrec = arms["tfrec"]["p50_us"]

    def over(arm: str) -> float | None:
        return tfrec / arms[arm]["p50_us"] if arm in arms else None

    return {
        "tfrec_over_python_floor_p50": over("python_floor"),
        "tfrec_minus_python_floor_ms": (tfrec - arms["python_floor"]["p50_us"]) / 1e3,
        "tfrec_over_cxx_floor_p50": over("cxx_floor"),
        "tfrec_over_in_process_p50": over("in_process"),
    }


def check_parity(want: Arrays, got: Arrays, arm: str) -> float:
    """Raises unless `got` has `want`'s outputs within PARITY; returns the largest |diff|."""
    if set(got) != set(want):
        raise AssertionError(f"{arm} returned outputs {sorted(got)}, expected {sorted(want)}")
    for name, value in want.items():
        if got[name].shape != value.shape:
            raise AssertionError(f"{arm}: {name} has shape {got[name].shape}, not {value.shape}")
        np.testing.assert_allclose(
            got[name], value, rtol=PARITY_RTOL, atol=PARITY_ATOL, err_msg=f"{arm}: {name}"
        )
    return max(float(np.max(np.abs(got[k] - want[k]), initial=0.0)) for k in want)


def run_case(
    model: str,
    n: int,
    inputs: Arrays,
    in_process: InProcess,
    servers: dict[str, Subprocess],
    args: argparse.Namespace,
) -> dict:
    request = predict_request(inputs, "m", "serving_default")
    expected = in_process.prepare(inputs)
    tfrec = servers["tfrec"]
    max_abs_diff = check_parity(expected, response_arrays(tfrec.stub.Predict(request)), "tfrec")
    floors = {name: servers[name] for name in ("python_floor", "cxx_floor") if name in servers}
    to_floor = floor_request(request, expected)
    set_delay(to_floor, statistics.median(measure(in_process.call, 5)))
    calls: dict[str, Callable[[], object]] = {
        "in_process": in_process.call,
        "tfrec": lambda: tfrec.stub.Predict(request),
    }
    for name, floor in floors.items():
        check_parity(expected, response_arrays(floor.stub.Predict(to_floor)), name)
        calls[name] = functools.partial(floor.stub.Predict, to_floor)
    arms = [arm for arm in ARMS if arm in calls]
    # Warm-up: tfrec's first calls of a size decide its execution mode; the others settle.
    deadline = time.monotonic() + max(60.0, args.seconds_per_arm)
    slowest = 0.0
    for i in range(TFREC_WARMUP):
        slowest = max(slowest, *measure(calls["tfrec"], 1))
        if i >= 4 and time.monotonic() > deadline:
            break
    for arm in arms:
        measure(calls[arm], 3)
    budget = int(args.seconds_per_arm * 1e6 / max(slowest, 1.0))
    requests = min(args.requests, max(MIN_REQUESTS, budget))
    per_round = math.ceil(requests / args.rounds)
    log(f"{model} N={n}: {per_round * args.rounds} requests per arm, in-process {in_process.mode}")
    samples: dict[str, list[float]] = {arm: [] for arm in arms}
    for r in range(args.rounds):
        for arm in arms[r % len(arms) :] + arms[: r % len(arms)]:
            samples[arm].extend(measure(calls[arm], per_round))
        set_delay(to_floor, statistics.median(samples["in_process"]))
    stats = {arm: report.summarize(samples[arm]) for arm in arms}
    strings = sum(v.size for v in inputs.values() if v.dtype == object)
    return {
        "case": model if model == "half_plus_two" else f"{model} N={n}",
        "model": model,
        "n": n,
        "request_bytes": request.ByteSize(),
        "request_strings": int(strings),
        "in_process_mode": in_process.mode,
        "floor_delay_us": statistics.median(samples["in_process"]),
        "max_abs_diff_tfrec_vs_in_process": max_abs_diff,
        "arms": stats,
        "ratios": ratios(stats),
        "target": target(model, n, stats),
    }


def run_model(
    model: str, args: argparse.Namespace, floors: dict[str, Subprocess], cases: list[dict]
) -> None:
    if model == "half_plus_two":
        base = HALF_PLUS_TWO
        requests = [(1, {"x": np.array([[2.0]], np.float32)})]
    else:
        base = zoo_model(model, args.scale)
        workload = Workload.load(base / "1", "m")
        requests = [(n, workload.request(n, seed=n)) for n in args.n]
    log(f"{model}: loading")
    version = next(p for p in sorted(base.iterdir()) if p.name.isdigit())
    in_process = InProcess(version)
    tfrec = tfrec_server(base)
    try:
        for n, inputs in requests:
            cases.append(run_case(model, n, inputs, in_process, {**floors, "tfrec": tfrec}, args))
    finally:
        tfrec.close()
        in_process.close()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    tune_malloc()  # the in-process arm gets tfrec's allocator settings too
    started = time.monotonic()
    notes: list[str] = []
    cases: list[dict] = []
    floors = {"python_floor": python_floor()}
    cxx = cxx_floor(notes)
    if cxx is not None:
        floors["cxx_floor"] = cxx
    try:
        for model in args.models:
            run_model(model, args, floors, cases)
    finally:
        for floor in floors.values():
            floor.close()
    command = "python benchmarks/overhead.py " + " ".join(sys.argv[1:] if argv is None else argv)
    output = {
        "benchmark": "overhead",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": report.machine(),
        "command": command.strip(),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "scale": args.scale,
        "rounds": args.rounds,
        "seconds": round(time.monotonic() - started, 1),
        "notes": notes,
        "cases": cases,
    }
    out = Path(tempfile.mkdtemp(prefix="tfrec-overhead-")) if args.no_readme else report.RESULTS
    report.publish("overhead", output, report.overhead_table(output), not args.no_readme, out)


if __name__ == "__main__":
    main()
