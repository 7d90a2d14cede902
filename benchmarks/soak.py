"""Soak and fault benchmark (issue 16; `make soak`, not run in CI).

Starts a real `tfrec_model_server` (gRPC and REST on loopback, a model config of a converted
demo ranker and TF-Serving's half_plus_two, base paths polled every second) and for
`--minutes` drives, at once:
- mixed traffic (`soak_traffic`): paced threads sending gRPC and REST Predict, flat and
  structured, Classify and Regress, and invalid requests whose refusals are expected;
- hot swaps and reloads (`soak_faults`): half_plus_two's versions copied in, removed and
  rolled back while it serves; HandleReloadConfigRequest with the same and a changed config;
- abandoned bursts: traffic paused, 100 heavy requests sent with a 30 ms deadline, then the
  time until the server's CPU idles and one normal request's latency against its baseline.

Reports totals, failures by code (expected / shed / unexpected, INTERNAL apart), p50/p99 of
accepted normal requests per minute, the server's RSS over time and its slope after warm-up,
swaps, reloads and bursts; writes `results/soak-<date>.json` (or `--out`), prints the table and
with `--readme` puts it in benchmarks/README.md. Exits 1 on any unexpected failure.

    python benchmarks/soak.py --minutes 2
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import report
from benchmarks.soak_faults import Faults, Periodic, cpu_seconds, memory
from benchmarks.soak_requests import (
    PREDICT,
    SIZES,
    Kind,
    demo_kinds,
    heavy_body,
    hpt_kinds,
    invalid_kinds,
    reference_requests,
)
from benchmarks.soak_setup import Models, SoakServer
from benchmarks.soak_traffic import GRPC_OPTIONS, Stats, Traffic, by_period, percentiles

PROGRESS_S = 30.0
RSS_EVERY_S = 5.0
LOG_ERROR = re.compile(r"^(\d{4}-\d\d-\d\d [\d:,]+ [EF] |[EF]\d{4} )")  # Python, absl
SERVER_LOG = Path(tempfile.gettempdir()) / "tfrec-soak-server.log"


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="traffic duration")
    parser.add_argument("--rate", type=float, default=200.0, help="offered requests/s in all")
    parser.add_argument("--workers", type=int, default=4, help="client threads")
    parser.add_argument("--swap-every", type=float, default=20.0, help="seconds between swaps")
    parser.add_argument("--reload-every", type=float, default=45.0, help="seconds between reloads")
    parser.add_argument("--burst-every", type=float, default=300.0, help="seconds between bursts")
    parser.add_argument("--port-base", type=int, default=0, help="gRPC port (REST: +1); 0: free")
    parser.add_argument("--out", type=Path, default=report.RESULTS, help="results directory")
    parser.add_argument("--readme", action="store_true", help="update benchmarks/README.md")
    parser.add_argument("--server-flag", action="append", default=[], help="extra server flag")
    return parser.parse_args(argv)


def references(address: str) -> dict[int, np.ndarray]:
    """Each size's score from a flat gRPC Predict: what every demo request must return."""
    from tensorflow_serving.apis import predict_pb2

    from tfrec.base import codecs

    with grpc.insecure_channel(address, options=GRPC_OPTIONS) as channel:
        call = channel.unary_unary(PREDICT)
        return {
            n: codecs.to_ndarray(
                predict_pb2.PredictResponse.FromString(call(body, timeout=60)).outputs["score"]
            )
            for n, body in reference_requests().items()
        }


def rss_slope(samples: list[tuple[float, float, int]], warmup_s: float) -> float | None:
    """Least-squares slope of RSS (MB per minute) over the samples after `warmup_s`."""
    kept = [(t, mb) for t, mb, _ in samples if t >= warmup_s]
    if len(kept) < 3:
        return None
    t, mb = np.asarray(kept).T
    return float(np.polyfit(t / 60.0, mb, 1)[0])


def log_errors(text: str, limit: int = 5) -> dict[str, Any]:
    """Tracebacks and error-level lines in the server's log (the first few, shortened);
    TensorFlow's start-up complaint about CUDA on a machine without GPU is left out."""
    lines = text.splitlines()
    found = [i for i, line in enumerate(lines) if _is_error(line)]
    return {
        "count": len(found),
        "first": ["\n".join(lines[i : i + 12])[:1500] for i in found[:limit]],
    }


def _is_error(line: str) -> bool:
    if "cuInit" in line:
        return False
    return line.startswith("Traceback") or bool(LOG_ERROR.match(line))


def run(args: argparse.Namespace) -> dict[str, Any]:
    print("[soak] building models", flush=True)
    models = Models()
    server: SoakServer | None = None
    try:
        flags = tuple(args.server_flag)
        server = SoakServer(models, args.port_base, flags)
        print(
            f"[soak] server pid {server.pid}: gRPC {server.address}, REST {server.rest_address}",
            flush=True,
        )
        kinds = demo_kinds(references(server.address)) + hpt_kinds() + invalid_kinds()
        return soak(args, models, server, kinds)
    finally:
        if server is not None:
            log = server.log_text()
            server.close()
            SERVER_LOG.write_text(log)
            print(f"[soak] server log: {SERVER_LOG}", flush=True)
        models.close()


def soak(
    args: argparse.Namespace, models: Models, server: SoakServer, kinds: list[Kind]
) -> dict[str, Any]:
    start = time.monotonic()
    cpu = {"client": time.process_time(), "server": cpu_seconds(server.pid)}
    stats = Stats(start)
    traffic = Traffic(kinds, server.address, server.rest_address, stats, args.rate, args.workers)
    probe = next(k for k in kinds if k.name == f"grpc_flat_{SIZES[1]}")
    faults = Faults(models, server.address, server.pid, stats, traffic, probe, heavy_body())
    duration = args.minutes * 60.0
    stop = threading.Event()
    periodic = [
        Periodic("swap", faults.swap, args.swap_every, min(15.0, duration / 4), stop),
        Periodic("reload", faults.reload, args.reload_every, min(30.0, duration / 3), stop),
        Periodic("burst", faults.burst, args.burst_every, min(60.0, duration / 2), stop),
    ]
    rss: list[tuple[float, float, int]] = []
    died = ""
    traffic.start()
    for thread in periodic:
        thread.start()
    next_progress = start + PROGRESS_S
    try:
        while (now := time.monotonic()) < start + duration:
            if server.proc.poll() is not None:
                died = f"server exited with {server.proc.returncode} at {now - start:.0f} s"
                break
            mb, threads = memory(server.pid)
            rss.append((round(now - start, 1), round(mb, 1), threads))
            if now >= next_progress:
                next_progress += PROGRESS_S
                total, cats = stats.snapshot()
                print(
                    f"[soak] {(now - start) / 60:5.1f} min  requests {total:,}  ok "
                    f"{cats['ok']:,}  expected {cats['expected']:,}  shed {cats['shed']:,}  "
                    f"unexpected {cats['unexpected']:,}  rss {mb:.0f} MB  threads {threads}  "
                    f"swaps {len(faults.swaps)}  reloads {len(faults.reloads)}  bursts "
                    f"{len(faults.bursts)}",
                    flush=True,
                )
            time.sleep(min(RSS_EVERY_S, max(0.0, start + duration - now)))
    finally:
        stop.set()
        traffic.stop()
        for thread in periodic:
            thread.join(180)
        faults.close()
    elapsed = time.monotonic() - start
    cpu["client"] = (time.process_time() - cpu["client"]) / elapsed * 100
    if not died:
        cpu["server"] = (cpu_seconds(server.pid) - cpu["server"]) / elapsed * 100
    load = {"elapsed": elapsed, "client_cpu_pct": round(cpu["client"], 1),
            "server_cpu_pct": None if died else round(cpu["server"], 1)}  # fmt: skip
    return result(args, server, stats, traffic, faults, periodic, rss, load, died)


def result(
    args: argparse.Namespace,
    server: SoakServer,
    stats: Stats,
    traffic: Traffic,
    faults: Faults,
    periodic: list[Periodic],
    rss: list[tuple[float, float, int]],
    load: dict[str, Any],
    died: str,
) -> dict[str, Any]:
    elapsed = load["elapsed"]
    warmup_s = min(300.0, elapsed / 3)
    accepted = [(t, ms) for t, ms in stats.accepted if t < args.minutes * 60]  # not the stop's
    slope = rss_slope(rss, warmup_s)
    internal = stats.internal()
    unexpected = dict(stats.codes["unexpected"])
    failed_swaps = [s for s in faults.swaps if s["settle_s"] is None]
    failed_reloads = [
        r for r in faults.reloads if r["code"] != "OK" or r.get("hp3_available") is False
    ]
    fault_errors = [e for p in periodic for e in p.errors]
    problems = []
    if died:
        problems.append(died)
    if unexpected:
        problems.append(f"unexpected outcomes: {unexpected}")
    if internal:
        problems.append(f"INTERNAL / HTTP 500: {internal}")
    if failed_swaps:
        problems.append(f"{len(failed_swaps)} hot swaps did not settle within 60 s")
    if failed_reloads:
        problems.append(f"{len(failed_reloads)} config reloads failed")
    problems += fault_errors
    notes = []
    if slope is not None and slope > 1.0:
        notes.append(f"RSS grows {slope:.2f} MB/min after warm-up")
    for burst in faults.bursts:
        idle = burst.get("idle_after_s")
        if idle is None or idle > 1.0 or burst.get("after_over_baseline", 0) > 3:
            notes.append(
                f"burst at {burst['t_s']} s: CPU idle after {idle} s, probe "
                f"{burst.get('after_ms')} ms vs {burst.get('baseline_ms')} ms"
            )
    if stats.codes["shed"]:
        notes.append(f"shed: {dict(stats.codes['shed'])}")
    rss_mb = [mb for _, mb, _ in rss]
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": report.machine(),
        "command": "python benchmarks/soak.py " + " ".join(sys.argv[1:]),
        "server": " ".join(Path(a).name if i == 0 else a for i, a in enumerate(server.args)),
        "minutes": round(elapsed / 60, 2),
        "offered_rps": args.rate,
        "workers": args.workers,
        "client_cpu_pct_of_a_core": load["client_cpu_pct"],
        "server_cpu_pct_of_a_core": load["server_cpu_pct"],
        "total_requests": stats.total,
        "by_category": dict(stats.by_category),
        "codes": {c: dict(v) for c, v in stats.codes.items()},
        "internal": internal,
        "unexpected_examples": stats.examples,
        "by_kind": {k: dict(v) for k, v in sorted(stats.by_kind.items())},
        "latency_by_kind": {k: percentiles(v) for k, v in sorted(stats.kind_latency.items())},
        "latency_by_minute": by_period(accepted, 60.0),
        "latency_by_10s": by_period(accepted, 10.0),
        "rest_reconnects": traffic.reconnects,
        "rss": {
            "samples": rss,
            "warmup_s": round(warmup_s, 1),
            "slope_mb_per_min": None if slope is None else round(slope, 3),
            "start_mb": rss_mb[0] if rss_mb else None,
            "end_mb": rss_mb[-1] if rss_mb else None,
            "max_mb": max(rss_mb, default=None),
        },
        "swaps": {
            "count": len(faults.swaps),
            "list": faults.swaps,
            "requests_during": dict(stats.swap_requests),
            "failed_during": dict(stats.swap_failures),
        },
        "reloads": faults.reloads,
        "bursts": faults.bursts,
        "server_log": log_errors(server.log_text()),
        "problems": problems,
        "notes": notes,
        "passed": not problems,
    }


def table(r: dict[str, Any]) -> str:
    cats = r["by_category"]
    rss = r["rss"]
    swaps = r["swaps"]
    lines = [
        f"Run {r['date']} on {r['machine']}: {r['minutes']} min at {r['offered_rps']:.0f} "
        f"req/s offered ({r['workers']} client threads; CPU of one core: server "
        f"{_num(r['server_cpu_pct_of_a_core'])}%, client {_num(r['client_cpu_pct_of_a_core'])}%). "
        f"Command: `{r['command']}`.",
        "",
        "| figure | value |",
        "|---|---|",
        f"| requests | {r['total_requests']:,} (ok {cats.get('ok', 0):,}, expected refusals "
        f"{cats.get('expected', 0):,}, shed {cats.get('shed', 0):,}, unexpected "
        f"{cats.get('unexpected', 0):,}) |",
        f"| expected codes | {_codes(r['codes'].get('expected', {}))} |",
        f"| shed codes | {_codes(r['codes'].get('shed', {}))} |",
        f"| unexpected codes | {_codes(r['codes'].get('unexpected', {}))} |",
        f"| INTERNAL / HTTP 500 | {sum(r['internal'].values())} |",
        f"| RSS MB (start, end, max) | {rss['start_mb']}, {rss['end_mb']}, {rss['max_mb']} |",
        f"| RSS slope after {rss['warmup_s']:.0f} s | {_num(rss['slope_mb_per_min'])} MB/min |",
        f"| hot swaps (settle s) | {swaps['count']} "
        f"({', '.join(_num(s['settle_s']) for s in swaps['list'])}) |",
        f"| requests during swaps / failed | {sum(swaps['requests_during'].values()):,} / "
        f"{sum(swaps['failed_during'].values())} |",
        f"| config reloads (code, s) | {len(r['reloads'])} "
        f"({', '.join(_reload(x) for x in r['reloads'])}) |",
        f"| server log tracebacks / ERROR lines | {r['server_log']['count']} |",
    ]
    for b in r["bursts"]:
        lines.append(
            f"| burst at {b['t_s']:.0f} s: {b['requests']} x {b['timeout_ms']:.0f} ms deadline | "
            f"codes {b.get('codes')}, CPU idle {_num(b.get('idle_after_s'))} s after, probe "
            f"{_num(b.get('after_ms'))} ms vs baseline {_num(b.get('baseline_ms'))} ms "
            f"({_num(b.get('after_over_baseline'))}x) sent at once, "
            f"{_num(b.get('after_idle_first_ms'))} ms first once idle (first after the pause "
            f"before the burst: {_num(b.get('baseline_first_ms'))} ms; median of 10: "
            f"{_num(b.get('after_idle_ms'))} ms); server CPU {_num(b.get('server_cpu_s'))} s "
            f"in {_num(b.get('burst_s'))} s of burst |"
        )
    lines += ["", "| minute | accepted | p50 ms | p99 ms |", "|---|---|---|---|"]
    for minute, p in r["latency_by_minute"].items():
        lines.append(f"| {minute} | {p['n']:,} | {p.get('p50_ms', '-')} | {p.get('p99_ms', '-')} |")
    verdict = "PASSED" if r["passed"] else "FAILED: " + "; ".join(r["problems"])
    lines += ["", f"Verdict: {verdict}."]
    lines += [f"Note: {n}." for n in r["notes"]]
    return "\n".join(lines)


def _reload(entry: dict[str, Any]) -> str:
    return f"{entry['config']} {entry['code']} {entry['seconds']}"


def _codes(codes: dict[str, int]) -> str:
    return ", ".join(f"{c} {n:,}" for c, n in sorted(codes.items())) or "-"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    r = run(args)
    text = table(r)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"soak-{dt.date.today().isoformat()}.json"
    path.write_text(json.dumps(r, indent=2) + "\n")
    if args.readme:
        report.update_readme("soak", text)
    print(text)
    print(f"results: {path}")
    return 0 if r["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
