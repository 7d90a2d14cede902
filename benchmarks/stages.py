"""Where tfrec's time goes per Predict: one instrumented in-process run, stage by stage.

The server's own objects (flags at their defaults: the same Loader, Handlers and stages
`tfrec_model_server` builds) serve a zoo model in this process. Each call is instrumented:
timestamps where it enters and leaves `Servable.run`, the stages and the session callable
(wrappers put in place by this script only; the product has no timing hooks). Medians:

- `parse`: the gRPC message parsed from its bytes (what grpcio does before the handler);
- `core`: the handler outside `Servable.run`: validation and decoding of the inputs, the
  output filter, the response's outputs by alias, the metrics;
- `dtypes`: `Servable.run` outside the stages: the feed dtype checks, the `Run`;
- `stages`: the chain (route, batch, lanes, Runners, the scheduler's wrapper) outside the
  session callable, both ways;
- `tf`: the session callable (TensorFlow's run, Python's call into it included);
- `encode`: the PredictResponse built from the outputs and serialized.

    python benchmarks/stages.py [--models wdl,mmoe] [--n 100 1000] [--requests 300]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from tensorflow_serving.apis import predict_pb2  # noqa: E402

from benchmarks import report, workloads  # noqa: E402
from benchmarks.zoo_cache import zoo_model  # noqa: E402
from server.assemble import load_options  # noqa: E402
from server.flags import Settings  # noqa: E402
from server.memory import tune_malloc  # noqa: E402
from tfrec.base import codecs  # noqa: E402
from tfrec.base.metrics import Metrics  # noqa: E402
from tfrec.runtime.stage import Run, Stage  # noqa: E402
from tfrec.serving.handlers import Handlers  # noqa: E402
from tfrec.serving.loader import Loader  # noqa: E402
from tfrec.serving.request import Request  # noqa: E402
from tfrec.serving.servable import Servable  # noqa: E402

STAGES = ("parse", "core", "dtypes", "stages", "tf", "encode")
SECONDS_PER_CASE = 20.0  # slow cases get fewer calls, at least MIN_REQUESTS a layer
MIN_REQUESTS = 20


def _spec_and_inputs(raw: bytes) -> tuple:
    parsed = predict_pb2.PredictRequest.FromString(raw)
    return parsed.model_spec, parsed.inputs


class _Clock:
    """Timestamps of one call at each layer boundary (perf_counter_ns)."""

    def __init__(self) -> None:
        self.marks: dict[str, int] = {}

    def mark(self, name: str) -> None:
        self.marks[name] = time.perf_counter_ns()


class _Timed:
    """Wraps a callable: marks `before` on entry and `after` on exit."""

    def __init__(self, fn: Callable[..., Any], clock: _Clock, before: str, after: str) -> None:
        self.fn, self.clock, self.before, self.after = fn, clock, before, after

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.clock.mark(self.before)
        try:
            return self.fn(*args, **kwargs)
        finally:
            self.clock.mark(self.after)


class _TimedStage:
    def __init__(self, below: Stage, clock: _Clock) -> None:
        self.below, self.clock = below, clock

    def run(self, run: Run) -> list[np.ndarray]:
        return _Timed(self.below.run, self.clock, "stages_in", "stages_out")(run)

    def close(self) -> None:
        self.below.close()


@contextlib.contextmanager
def _instrumented(servable: Servable, clock: _Clock) -> Iterator[None]:
    """Marks around the servable's run, its stages and every session callable it may call
    (each Runner's modes, and each decided bucket of the operator scheduler), then undone."""
    assert servable.runners is not None, "run with the server's default flags (no lanes)"
    undo: list[Callable[[], None]] = []

    def wrap(owner: Any, attr: str, value: Any) -> None:
        original = getattr(owner, attr)
        setattr(owner, attr, value(original))
        undo.append(lambda: setattr(owner, attr, original))

    wrap(servable, "run", lambda f: _Timed(f, clock, "servable_in", "servable_out"))
    wrap(servable, "stages", lambda s: _TimedStage(s, clock))
    for runner, call in servable.runners._entries.values():
        wrap(runner, "_fns", lambda fns: [_Timed(f, clock, "tf_in", "tf_out") for f in fns])
        for state in getattr(getattr(call, "__self__", None), "_buckets", {}).values():
            if state.fn is not None:
                wrap(state, "fn", lambda f: _Timed(f, clock, "tf_in", "tf_out"))
    try:
        yield
    finally:
        for step in reversed(undo):
            step()


def breakdown(servable: Servable, handlers: Handlers, raw: bytes, requests: int) -> dict:
    """Medians (us) of each layer's time over `requests` instrumented calls of one request:
    parse and encode timed on their own, the rest from timestamps inside each call."""
    clock = _Clock()
    spans: dict[str, list[float]] = {stage: [] for stage in STAGES}
    with _instrumented(servable, clock):
        _calls(servable, handlers, raw, requests, clock, spans)
    return {
        **{stage: float(np.median(v)) for stage, v in spans.items()},
        "request_bytes": len(raw),
    }


def _calls(
    servable: Servable,
    handlers: Handlers,
    raw: bytes,
    requests: int,
    clock: _Clock,
    spans: dict[str, list[float]],
) -> None:
    for _ in range(requests):
        clock.marks.clear()
        start = time.perf_counter_ns()
        parsed = predict_pb2.PredictRequest.FromString(raw)
        clock.mark("parsed")
        request = Request(parsed.model_spec, parsed.inputs, parsed.output_filter)
        _, outputs = handlers.predict_on(servable, request)
        clock.mark("handled")
        response = predict_pb2.PredictResponse()
        for alias, value in outputs.items():
            codecs.from_ndarray(value, proto=response.outputs[alias])
        response.SerializeToString()
        end = time.perf_counter_ns()
        m = clock.marks
        if not {"servable_in", "stages_in", "tf_in"} <= m.keys():
            raise RuntimeError(f"a call missed a layer: {sorted(m)}")
        span = {
            "parse": m["parsed"] - start,
            "core": (m["servable_in"] - m["parsed"]) + (m["handled"] - m["servable_out"]),
            "dtypes": (m["stages_in"] - m["servable_in"]) + (m["servable_out"] - m["stages_out"]),
            "stages": (m["tf_in"] - m["stages_in"]) + (m["stages_out"] - m["tf_out"]),
            "tf": m["tf_out"] - m["tf_in"],
            "encode": end - m["handled"],
        }
        for stage, ns in span.items():
            spans[stage].append(ns / 1e3)


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
            request = Request(*_spec_and_inputs(raw))
            start = time.perf_counter()
            handlers.predict_on(servable, request)
            budget = int(SECONDS_PER_CASE / max(time.perf_counter() - start, 1e-6))
            for _ in range(min(200, max(60, budget // 4))):  # the trials decide first
                handlers.predict_on(servable, request)
            servable.settle()  # as at load: replays a bucket's calls until it has decided
            count = min(requests, max(MIN_REQUESTS, budget // len(STAGES)))
            print(f"[stages] {name} N={n}: {count} calls per layer", file=sys.stderr, flush=True)
            cases.append({"model": name, "n": n, **breakdown(servable, handlers, raw, count)})
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
