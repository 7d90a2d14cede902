"""Where tfrec's time goes per Predict: one instrumented in-process run, stage by stage.

The server's own objects (flags at their defaults: the same Loader, Handlers, Service and
stages `tfrec_model_server` builds) serve a zoo model in this process. Each stage is timed by
entering the path one layer lower, arms alternating in rounds, medians:

- `parse`: the gRPC message parsed from its bytes (what grpcio does before the handler);
- `core`: `Service.predict` on the parsed request minus `Servable.run` on decoded arrays:
  the lease, validation and decoding of the inputs, the output filter;
- `dtypes`: `Servable.run` minus the stages: the feed dtype checks, the `Run`;
- `stages`: the chain (route, batch, lanes, Runners) minus the bare session callable;
- `tf`: the session callable the Runner chose, called directly (the in-process floor);
- `encode`: the PredictResponse built from the outputs and serialized.

    python benchmarks/stages.py [--models wdl,mmoe] [--n 100 1000] [--requests 300]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from tensorflow_serving.apis import predict_pb2  # noqa: E402

from benchmarks import report, workloads  # noqa: E402
from benchmarks.zoo_cache import zoo_model  # noqa: E402
from server.assemble import load_options  # noqa: E402
from server.flags import Settings  # noqa: E402
from server.main import tune_malloc  # noqa: E402
from tfrec.base import codecs  # noqa: E402
from tfrec.base.metrics import Metrics  # noqa: E402
from tfrec.runtime.stage import Run, Stage, bucket_of  # noqa: E402
from tfrec.serving.handlers import Handlers  # noqa: E402
from tfrec.serving.loader import Loader  # noqa: E402
from tfrec.serving.request import Request  # noqa: E402
from tfrec.serving.servable import Servable  # noqa: E402

STAGES = ("parse", "core", "dtypes", "stages", "tf", "encode")


def _median_us(call: Callable[[], object], n: int) -> list[float]:
    out = []
    for _ in range(n):
        start = time.perf_counter_ns()
        call()
        out.append((time.perf_counter_ns() - start) / 1e3)
    return out


def _bare_callable(servable: Servable, run: Run) -> Callable[[], object]:
    """The session callable the version's Runner settled on for this run's bucket."""
    assert servable.runners is not None, "run with the server's default flags (no lanes)"
    runner = dict(servable.runners.runners())[run.key]
    fn = runner.fn_of(bucket_of(run.rows)) or runner.unscheduled
    return lambda: fn(*run.args)


class _Capture:
    """Stands in for a version's stages for one call: keeps the Run, passes it down."""

    def __init__(self, below: Stage) -> None:
        self.below, self.run_seen = below, None

    def run(self, run: Run) -> list[np.ndarray]:
        self.run_seen = run
        return self.below.run(run)


def _captured_run(servable: Servable, handlers: Handlers, request: Request) -> Run:
    stages = servable.stages
    capture = servable.stages = _Capture(stages)  # type: ignore[assignment]
    try:
        handlers.predict_on(servable, request)
    finally:
        servable.stages = stages
    assert capture.run_seen is not None
    return capture.run_seen


def breakdown(servable: Servable, handlers: Handlers, raw: bytes, requests: int) -> dict:
    """Medians (us) of each layer's time for one serialized PredictRequest."""
    parsed = predict_pb2.PredictRequest.FromString(raw)
    request = Request(parsed.model_spec, parsed.inputs, parsed.output_filter)
    run = _captured_run(servable, handlers, request)  # what the handler hands the stages
    feeds = dict(zip(run.key[0], run.args, strict=True))
    fetches = list(run.key[1])
    signature, aliases, outputs_alias = run.signature, run.aliases, run.outputs
    _, outputs = handlers.predict_on(servable, request)

    def encode() -> bytes:
        response = predict_pb2.PredictResponse()
        for alias, value in outputs.items():
            codecs.from_ndarray(value, proto=response.outputs[alias])
        return response.SerializeToString()

    arms: dict[str, Callable[[], object]] = {
        "parse": lambda: predict_pb2.PredictRequest.FromString(raw),
        "handler": lambda: handlers.predict_on(servable, request),
        "servable": lambda: servable.run(
            feeds, fetches, signature, aliases, outputs_alias, None, run.rows
        ),
        "chain": lambda: servable.stages.run(run),
        "tf": _bare_callable(servable, run),
        "encode": encode,
    }
    samples: dict[str, list[float]] = {arm: [] for arm in arms}
    rounds = 10
    for _ in range(rounds):
        for arm, call in arms.items():
            samples[arm].extend(_median_us(call, max(1, requests // rounds)))
    med = {arm: float(np.median(v)) for arm, v in samples.items()}
    return {
        "parse": med["parse"],
        "core": med["handler"] - med["servable"],
        "dtypes": med["servable"] - med["chain"],
        "stages": med["chain"] - med["tf"],
        "tf": med["tf"],
        "encode": med["encode"],
        "request_bytes": len(raw),
    }


def measure_model(name: str, scale: str, sizes: list[int], requests: int) -> list[dict]:
    base = zoo_model(name, scale)
    metrics = Metrics()
    handlers = Handlers(metrics=metrics)
    loader = Loader(load_options(Settings(), metrics), handlers, metrics)
    servable = loader("m", 1, base / "1")
    cases = []
    try:
        for n in sizes:
            inputs = workloads.make_request(base / "1", n, 0)
            raw = workloads.predict_request(inputs, "m", "serving_default").SerializeToString()
            request = predict_pb2.PredictRequest.FromString(raw)
            for _ in range(200):  # the Runner's and the scheduler's trials decide first
                handlers.predict_on(servable, Request(request.model_spec, request.inputs))
            print(f"[stages] {name} N={n}", file=sys.stderr, flush=True)
            cases.append({"model": name, "n": n, **breakdown(servable, handlers, raw, requests)})
    finally:
        servable.close()
    return cases


def table(result: dict) -> str:
    lines = [
        f"Run {result['date']} on {result['machine']}. Command: `{result['command']}`.",
        "",
        "| model | N | " + " | ".join(f"{s} ms" for s in STAGES) + " | tfrec's own ms |",
        "|---|---|" + "---|" * (len(STAGES) + 1),
    ]
    for case in result["cases"]:
        own = case["core"] + case["dtypes"] + case["stages"]
        cells = " | ".join(f"{case[s] / 1e3:.3f}" for s in STAGES)
        lines.append(f"| {case['model']} | {case['n']} | {cells} | {own / 1e3:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="wdl,dlrm,dcn_v2,din,dien,mmoe,user_heavy,strings")
    parser.add_argument("--n", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--scale", default="full")
    parser.add_argument("--no-readme", action="store_true")
    args = parser.parse_args(argv)
    tune_malloc()
    cases = []
    for name in args.models.split(","):
        cases.extend(measure_model(name, args.scale, args.n, args.requests))
    result = {
        "benchmark": "stages",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": report.machine(),
        "command": "python benchmarks/stages.py " + " ".join(sys.argv[1:]),
        "cases": cases,
    }
    report.publish("stages", result, table(result), readme=not args.no_readme)


if __name__ == "__main__":
    main()
