"""Overload: 64 closed-loop gRPC clients against one server, with and without a queue bound.

Each client sends the next flat demo Predict (N items) as soon as the last one answered. With
`--max_queued_requests` at its default (4x the worker threads) the server refuses the calls
beyond the bound at once (RESOURCE_EXHAUSTED); unbounded (`-1`) every call waits its turn.
Reported per arm: accepted and shed calls per second, p50/p99/max latency of the accepted
ones, and of every call a client made (a shed call costs its client one round trip).

The clients are one asyncio process (grpc.aio): on a 2-core machine they share the cores with
the server, so the figures compare the arms, not the server's ceiling.

    .venv/bin/python benchmarks/overload.py [--clients 64] [--seconds 20] [--n 100]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

import grpc
import numpy as np
from tensorflow_serving.apis import prediction_service_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.servers import ROOT, TfrecServer
from benchmarks.soak_requests import flat_inputs, predict_request
from benchmarks.soak_setup import DEMO, Models

ARMS = {"bounded (default)": (), "unbounded": ("--max_queued_requests=-1",)}


async def _drive(address: str, clients: int, seconds: float, n: int) -> dict[str, object]:
    request = predict_request(DEMO, flat_inputs(n))
    accepted: list[float] = []
    shed: list[float] = []
    other: dict[str, int] = {}
    async with grpc.aio.insecure_channel(address) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        for _ in range(20):  # warm: the run mode of N's bucket decides on live calls
            await stub.Predict(request, timeout=30)
        end = time.monotonic() + seconds

        async def client() -> None:
            while time.monotonic() < end:
                start = time.perf_counter()
                try:
                    await stub.Predict(request, timeout=30)
                    accepted.append(time.perf_counter() - start)
                except grpc.aio.AioRpcError as err:
                    if err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                        shed.append(time.perf_counter() - start)
                    else:
                        other[err.code().name] = other.get(err.code().name, 0) + 1

        await asyncio.gather(*(client() for _ in range(clients)))

    def ms(values: list[float], q: float) -> float:
        return float(np.quantile(values, q) * 1e3) if values else float("nan")

    every = accepted + shed
    return {
        "accepted_per_s": len(accepted) / seconds,
        "shed_per_s": len(shed) / seconds,
        "shed_share": len(shed) / max(1, len(every)),
        "accepted_p50_ms": ms(accepted, 0.5),
        "accepted_p99_ms": ms(accepted, 0.99),
        "accepted_max_ms": max(accepted) * 1e3 if accepted else float("nan"),
        "shed_median_ms": statistics.median(shed) * 1e3 if shed else float("nan"),
        "all_p99_ms": ms(every, 0.99),
        "other_errors": other,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--n", type=int, default=100, help="items per request")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    models = Models()
    results: dict[str, dict[str, object]] = {}
    try:
        for arm, flags in ARMS.items():
            with TfrecServer({DEMO: models.demo}, flags) as server:
                print(f"[overload] {arm}: {args.clients} clients for {args.seconds:.0f} s",
                      flush=True)  # fmt: skip
                results[arm] = asyncio.run(
                    _drive(server.address, args.clients, args.seconds, args.n)
                )
    finally:
        models.close()
    print(f"\n{args.clients} closed-loop clients, flat demo Predict N={args.n}, "
          f"{args.seconds:.0f} s per arm\n")  # fmt: skip
    print(
        "| arm | accepted/s | shed/s | shed | p50 accepted | p99 accepted | max accepted "
        "| shed answer (median) | p99 of all calls |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for arm, r in results.items():
        print(
            f"| {arm} | {r['accepted_per_s']:.0f} | {r['shed_per_s']:.0f} "
            f"| {r['shed_share']:.0%} | {r['accepted_p50_ms']:.1f} ms "
            f"| {r['accepted_p99_ms']:.1f} ms | {r['accepted_max_ms']:.1f} ms "
            f"| {r['shed_median_ms']:.2f} ms | {r['all_p99_ms']:.1f} ms |"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"overload-{time.strftime('%Y-%m-%d')}.json"
    doc = {"clients": args.clients, "seconds": args.seconds, "n": args.n, "arms": results}
    path.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
