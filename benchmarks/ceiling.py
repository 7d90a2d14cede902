"""The load generator's own ceiling: `tfrec_tools.loadgen` against servers that do nothing.

gRPC: `benchmarks/grpc_floor.py` echoing a 1x1 float (the bare grpcio floor). REST: a bare
aiohttp app (`--rest-floor PORT`, started here in a subprocess) answering every predict with
a fixed small body. For each, closed loops at concurrency 1, 4, 16 and open loops at fixed
rates; the figure to read is `client_cpu_us_per_request`: the generator's CPU per request,
so 1e6 / that is the most one client core can send, on a machine it shares with the server.

    python benchmarks/ceiling.py [--seconds 3]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from tensorflow_serving.apis import predict_pb2  # noqa: E402

from benchmarks import report  # noqa: E402
from benchmarks.servers import Process  # noqa: E402
from tfrec.base import codecs  # noqa: E402
from tfrec_tools import loadgen  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
REPLY = b'{"outputs": [[2.5]]}'


def serve_rest_floor(port: int) -> None:
    from aiohttp import web

    async def predict(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=REPLY, content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/models/{name}", predict)  # ":predict" is part of the last segment
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def request() -> predict_pb2.PredictRequest:
    out = predict_pb2.PredictRequest()
    out.model_spec.name = "m"
    codecs.from_ndarray(np.array([[2.0]], np.float32), proto=out.inputs["x"])
    return out


def row(arm: str, result: loadgen.LoadResult) -> dict:
    summary = result.summary()
    summary["arm"] = arm
    return summary


def measure(target: loadgen.Target, seconds: float) -> list[dict]:
    bodies = [loadgen.encode(target, request())]
    rows = []
    for c in (1, 4, 16):
        result = loadgen.run_closed(target, bodies, c, seconds, warmup=100)
        rows.append(row(f"closed c={c}", result))
    for rate in (500, 1000, 2000, 4000):
        result = loadgen.run_open(target, bodies, rate, seconds, warmup=100)
        rows.append(row(f"open {rate}/s", result))
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "| protocol | load | achieved req/s | p50 ms | p99 ms | errors | client CPU us/req |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        errors = sum(r["errors"].values())
        lines.append(
            f"| {r['protocol']} | {r['arm']} | {r['throughput_rps']:.0f} | "
            f"{r['p50_us'] / 1e3:.3f} | {r['p99_us'] / 1e3:.3f} | {errors} | "
            f"{r['client_cpu_us_per_request']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per load point")
    parser.add_argument("--rest-floor", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rest_floor:
        serve_rest_floor(args.rest_floor)
        return
    rows = []
    grpc_port, rest_port = report.free_port(), report.free_port()
    floor = [sys.executable, "-m", "benchmarks.grpc_floor", f"--port={grpc_port}"]
    with Process(floor, [grpc_port]) as server:
        rows += measure(loadgen.Target(server.address, "m", "grpc"), args.seconds)
    rest = [sys.executable, "benchmarks/ceiling.py", f"--rest-floor={rest_port}"]
    with Process(rest, [rest_port]) as server:
        rows += measure(loadgen.Target(server.address, "m", "rest"), args.seconds)
    output = {
        "benchmark": "loadgen-ceiling",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": report.machine(),
        "command": "python benchmarks/ceiling.py " + " ".join(sys.argv[1:]),
        "rows": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"loadgen-ceiling-{dt.date.today().isoformat()}.json"
    path.write_text(json.dumps(output, indent=2) + "\n")
    print(table(rows))
    print(f"results: {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
