"""The operator scheduler side by side: --scheduler=off, on and auto on every zoo model.

Per zoo model at full scale (built once into --work, with a warmup file of ranking requests
at each N so that every arm makes its schedule decisions at load), three `tfrec_model_server`
subprocesses over the same model: `off` (the unscheduled baseline: tfrec's Runner, TF's
inter-op pool or the calling thread, whichever measured faster), `on` (the critical-path
schedule wherever one was built) and `auto` (the default: kept only where it measured faster
at load). Per N, flat requests to `serving_default` over gRPC (`tfrec_tools.loadgen`): latency at
concurrency 1 (p50) and throughput at concurrency 8. Arms alternate within each round (the
order rotates) and every figure is the median over rounds; the machine is shared and noisy.

Also recorded, to explain the figures: the server's CPU time per request at concurrency 1
over wall time (how many of the cores one request already keeps busy unscheduled), and from
the `auto` server's `--scheduler_cache_dir` report, per bucket: the decision and the
speedup measured at load, and the step-stats figures of the plan (serial work, critical path,
the 2-slot makespan predicted from traced costs), and the unscheduled run it was judged
against (TF's inter-op pool or the calling thread, as tfrec's Runner chose at load). Last, per
model, the same graphs in one process (`tfrec-schedule explain` on the warmup requests, arms
alternating): no transport and no second server, so the least noisy comparison, with the step
stats that say how much a schedule could gain on this machine at all.

Results go to `benchmarks/results/scheduler-<date>.json` and the `scheduler` table of
`benchmarks/README.md`.

    python benchmarks/scheduler.py [--models mmoe,dien] [--n 100 1000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

from benchmarks import report  # noqa: E402
from benchmarks.lanes import cpu_s, rotated  # noqa: E402
from benchmarks.models import NAMES, export  # noqa: E402
from benchmarks.servers import TfrecServer  # noqa: E402
from benchmarks.workloads import Workload, write_tfrecord  # noqa: E402
from tfrec.runtime.stage import bucket_of  # noqa: E402
from tfrec.schedule.scheduled import CACHE_FILE  # noqa: E402
from tfrec_tools import loadgen  # noqa: E402

WARMUP = Path("assets.extra") / "tf_serving_warmup_requests"
ARMS = ("off", "on", "auto")
TARGET_MODEL = "mmoe"  # the zoo model with the most independent branches (6 experts, 2 gates)
TARGET = 1.15


def model(work: Path, name: str, sizes: list[int]) -> Path:
    """The full-scale model's base path (built once), with a warmup file at every N."""
    version = work / name / "1"
    if not (version / "saved_model.pb").exists():
        print(f"[scheduler] building {name} at full scale in {work}", file=sys.stderr)
        export(name, "full", work, check=False)
    requests = Workload.load(version).predict_requests(sizes, 2 * len(sizes), 7)
    write_tfrecord(version / WARMUP, requests)
    return version.parent


def bodies(base: Path, n: int, count: int = 8) -> list[bytes]:
    workload = Workload.load(base / "1")
    target = loadgen.Target("127.0.0.1:0", workload.model)
    return [loadgen.encode(target, r) for r in workload.predict_requests([n], count, 1)]


def measure(name: str, base: Path, sizes: list[int], rounds: int, seconds: float) -> dict:
    caches = {arm: Path(tempfile.mkdtemp(prefix=f"tfrec-sched-{arm}-")) for arm in ARMS}
    loads = {n: bodies(base, n) for n in sizes}
    running: dict[str, TfrecServer] = {}
    samples: dict[tuple[str, int], list[dict]] = {(a, n): [] for a in ARMS for n in sizes}
    try:
        for arm in ARMS:  # one after another: each decides at load on a quiet machine
            flags = (f"--scheduler={arm}", f"--scheduler_cache_dir={caches[arm]}")
            running[arm] = TfrecServer({name: base}, flags)
        for server in running.values():  # warm the client and every bucket
            for n in sizes:
                loadgen.run_closed(loadgen.Target(server.address, name), loads[n], 2, 1.0)
        for r in range(rounds):
            for n in sizes:
                for arm in rotated({a: () for a in ARMS}, r):
                    target = loadgen.Target(running[arm].address, name)
                    pid = running[arm].proc.pid
                    cpu = cpu_s(pid)
                    one = loadgen.run_closed(target, loads[n], 1, seconds)
                    cpu = cpu_s(pid) - cpu
                    eight = loadgen.run_closed(target, loads[n], 8, seconds)
                    sample = {
                        "p50_ms": one.percentile(50) / 1e3,
                        "p99_ms": one.percentile(99) / 1e3,
                        "c1_rps": one.throughput,
                        "cores_c1": cpu / one.duration_s,
                        "c8_rps": eight.throughput,
                        "c8_p50_ms": eight.percentile(50) / 1e3,
                        "errors": sum(one.errors.values()) + sum(eight.errors.values()),
                    }
                    samples[(arm, n)].append(sample)
                    print(f"[scheduler] {name} N={n} {arm} round {r}: p50 "
                          f"{sample['p50_ms']:.3f} ms, {sample['c8_rps']:.0f} req/s at C=8, "
                          f"{sample['cores_c1']:.2f} cores", file=sys.stderr)  # fmt: skip
    finally:
        for server in running.values():
            server.close()
    reports = {}
    for arm, cache in caches.items():
        path = cache / name / "1" / CACHE_FILE
        reports[arm] = json.loads(path.read_text()) if path.exists() else {}
    return {"cases": [_case(name, n, samples, reports) for n in sizes]}


def _case(name: str, n: int, samples: dict, reports: dict) -> dict:
    arms = {}
    for arm in ARMS:
        values = samples[(arm, n)]
        arms[arm] = {key: statistics.median(v[key] for v in values) for key in values[0]}
        arms[arm]["errors"] = sum(v["errors"] for v in values)
        arms[arm]["rounds_p50_ms"] = [v["p50_ms"] for v in values]
    off = arms["off"]
    ratios = {
        f"p50_off_over_{arm}": off["p50_ms"] / arms[arm]["p50_ms"] for arm in ("on", "auto")
    } | {f"c8_{arm}_over_off": arms[arm]["c8_rps"] / off["c8_rps"] for arm in ("on", "auto")}
    # Paired by round (the arms of a round ran back to back): less exposed to drift.
    for arm in ("on", "auto"):
        pairs = zip(off["rounds_p50_ms"], arms[arm]["rounds_p50_ms"], strict=True)
        ratios[f"p50_off_over_{arm}_paired"] = statistics.median(o / a for o, a in pairs)
    bucket = bucket_of(n)
    explain = {}
    for arm in ("auto", "on"):
        for d in reports.get(arm, {}).get("decisions", []):
            if d["signature"] == "serving_default" and d["bucket"] == bucket:
                explain[arm] = _decision(d)
    return {"model": name, "n": n, "bucket": bucket, "arms": arms, "ratios": ratios,
            "decisions": explain}  # fmt: skip


def _decision(d: dict) -> dict:
    out = {"graph": d["graph"], "reason": d["reason"], "load_unscheduled_ms": d["unscheduled_ms"],
           "load_scheduled_ms": d["scheduled_ms"], "baseline": d.get("baseline", "")}  # fmt: skip
    plan = d.get("plan")
    if plan:
        out |= {
            "serial_ms": plan["serial_us"] / 1e3,
            "critical_path_ms": plan["critical_path_us"] / 1e3,
            "predicted_ms": plan["predicted_us"] / 1e3,
            "slots": plan["slots"],
            "control_edges": len(plan["control_edges"]),
        }
    return out


def in_process(name: str, base: Path, rounds: int) -> list[dict]:
    """`tfrec-schedule explain` of serving_default on the warmup requests: the step-stats
    figures and the three graphs timed in one process, alternating (no transport, no second
    server: the least noisy side by side this machine allows)."""
    from tfrec_tools.schedule_cli import explain

    doc = explain(base / "1", ["serving_default"], rounds=rounds)
    out = []
    for bucket, entry in doc["signatures"]["serving_default"]["buckets"].items():
        plan, measured = entry["plan"], entry["measured_ms"]
        out.append({
            "model": name, "rows": sorted(set(entry["rows"])), "bucket": int(bucket),
            "ops": entry["ops"], "work_ms": plan["serial_us"] / 1e3,
            "critical_path_ms": plan["critical_path_us"] / 1e3,
            "predicted_ms": plan["predicted_us"] / 1e3, "slots": plan["slots"],
            "control_edges": len(plan["control_edges"]),
            "unscheduled_pool_ms": measured["unscheduled_pool"],
            "unscheduled_inline_ms": measured["unscheduled_inline"],
            "scheduled_ms": measured.get("scheduled"), "speedup": measured.get("speedup"),
            "identical_outputs": measured.get("identical_outputs"),
        })  # fmt: skip
    return out


def table(result: dict) -> str:
    lines = [
        f"Run {result['date']} on {result['machine']}, Python {result['python']}, TensorFlow "
        f"{result['tensorflow']}, full scale. Command: `{result['command']}`. Medians of "
        f"{result['rounds']} rounds of {result['seconds']:g} s per arm and concurrency, arms "
        "alternating; a shared, noisy 2-vCPU machine.",
        "",
        "| model | N | p50 ms off | on | auto | off/on p50 (paired) | off/auto p50 (paired) "
        "| req/s C=8 off | on | auto | cores at C=1, off | auto decision (speedup at load) "
        "| work ms | critical path ms | 2-slot plan ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in result["cases"]:
        a, r = c["arms"], c["ratios"]
        d = c["decisions"].get("auto") or c["decisions"].get("on") or {}
        auto = c["decisions"].get("auto", {})
        load = ""
        if auto.get("load_scheduled_ms"):
            load = f" ({auto['load_unscheduled_ms'] / auto['load_scheduled_ms']:.2f}x)"
        lines.append(
            f"| {c['model']} | {c['n']} | {a['off']['p50_ms']:.2f} | {a['on']['p50_ms']:.2f} | "
            f"{a['auto']['p50_ms']:.2f} | {r['p50_off_over_on']:.2f}x "
            f"({r['p50_off_over_on_paired']:.2f}x) | {r['p50_off_over_auto']:.2f}x "
            f"({r['p50_off_over_auto_paired']:.2f}x) | {a['off']['c8_rps']:.0f} | "
            f"{a['on']['c8_rps']:.0f} | {a['auto']['c8_rps']:.0f} | {a['off']['cores_c1']:.2f} | "
            f"{auto.get('graph', '-')}{load}, over {auto.get('baseline') or '-'} | "
            f"{_f(d.get('serial_ms'))} | "
            f"{_f(d.get('critical_path_ms'))} | {_f(d.get('predicted_ms'))} |"
        )
    lines += [
        "",
        "In process (`tfrec-schedule explain`, the warmup requests, "
        f"{result['explain_rounds']} rounds, arms alternating): serving_default's executed graph "
        "and its step stats (traced kernel times), the schedule predicted on the lane's slots, "
        "and the graphs timed.",
        "",
        "| model | rows | ops | work ms | critical path ms | work / path | plan ms (slots) "
        "| unscheduled ms, TF pool | inline | scheduled | speedup | outputs |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in result["in_process"]:
        sched = "-" if c["scheduled_ms"] is None else f"{c['scheduled_ms']:.2f}"
        speed = "-" if c["speedup"] is None else f"{c['speedup']:.2f}x"
        same = {None: "-", True: "identical", False: "DIFFER"}[c["identical_outputs"]]
        path = c["critical_path_ms"]
        lines.append(
            f"| {c['model']} | {','.join(map(str, c['rows']))} | {c['ops']} | {c['work_ms']:.2f} "
            f"| {path:.2f} | {c['work_ms'] / path if path else 0:.1f} | {c['predicted_ms']:.2f} "
            f"({c['slots']}) | {c['unscheduled_pool_ms']:.2f} | {c['unscheduled_inline_ms']:.2f} "
            f"| {sched} | {speed} | {same} |"
        )
    lines += ["", *result["notes"]]
    return "\n".join(lines)


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def notes(result: dict) -> list[str]:
    """The target, and what `auto` did, in sentences from the figures."""
    out = []
    target = [c for c in result["cases"] if c["model"] == TARGET_MODEL]
    for c in target:
        ratio = c["ratios"]["p50_off_over_on_paired"]
        met = "meets" if ratio >= TARGET else "misses"
        out.append(f"Target ({TARGET_MODEL}, N={c['n']}): p50 {ratio:.2f}x lower scheduled "
                   f"(paired), {met} the {TARGET}x target.")  # fmt: skip
    for c in result.get("in_process", []):
        if c["model"] == TARGET_MODEL and c["speedup"] is not None:
            out.append(
                f"In process ({TARGET_MODEL}, rows {','.join(map(str, c['rows']))}): scheduled "
                f"{c['speedup']:.2f}x the faster unscheduled run; TF's pool already takes "
                f"{c['unscheduled_pool_ms']:.2f} ms where the best {c['slots']}-slot schedule of "
                f"the traced costs takes {c['predicted_ms']:.2f} ms (work "
                f"{c['work_ms']:.2f} ms, critical path {c['critical_path_ms']:.2f} ms)."
            )
    worst = min(result["cases"], key=lambda c: c["ratios"]["p50_off_over_auto_paired"])
    out.append(
        f"Under auto the worst case is {worst['model']} N={worst['n']} at "
        f"{worst['ratios']['p50_off_over_auto_paired']:.2f}x the unscheduled p50 (paired); "
        "auto runs the unscheduled graph wherever the decision column says so, so any "
        "difference there is the noise between two servers running the same graph."
    )
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(NAMES))
    parser.add_argument("--n", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0, help="per arm, round, C")
    parser.add_argument("--work", type=Path, default=Path("/tmp/tfrec-scheduler-bench"))
    parser.add_argument("--explain-rounds", type=int, default=10, help="in-process rounds")
    parser.add_argument("--no-readme", action="store_true")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    result: dict = {
        "benchmark": "scheduler",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": report.machine(),
        "command": "python benchmarks/scheduler.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "rounds": args.rounds,
        "seconds": args.seconds,
        "load_average": os.getloadavg(),
        "explain_rounds": args.explain_rounds,
        "cases": [],
        "in_process": [],
    }
    for name in args.models.split(","):
        base = model(args.work, name, args.n)
        result["cases"] += measure(name, base, args.n, args.rounds, args.seconds)["cases"]
        result["in_process"] += in_process(name, base, args.explain_rounds)
    result["load_average_after"] = os.getloadavg()
    result["notes"] = notes(result)
    report.publish("scheduler", result, table(result), readme=not args.no_readme)


if __name__ == "__main__":
    main()
