"""SessionGroup lanes side by side: memory, throughput at 8 clients, light latency in a mix.

Four measurements, all but `inprocess` against `tfrec_model_server` subprocesses over real
gRPC (`tfrec_tools.loadgen`, client in this process, same machine):
- `memory`: RSS of a server holding DLRM at full scale (426 MB of embedding tables), after
  load, warmup and requests on every lane: K=1 (defaults) against K=4 (lanes are inter-op
  pools) and K=4 with intra-op 2 (each lane a graph replica on its own logical CPU device).
- `throughput`: 8 closed-loop clients, N=200 flat requests, on WDL at full scale (the zoo
  model with the most embedding features: 13 tables and 2 string lookups). The baseline is
  K=1 with TF-Serving's default configuration (TF's thread counts, every run on TF's
  inter-op pool: `--session_run_mode=pool`); also K=1 as tfrec runs it by default (`auto`:
  per signature the faster of the pool and inline), K=2 (also pinned, one core per lane) and
  K=4. The best K is reported, with the server's CPU time per request.
- `inprocess`: the throughput arms without gRPC: 8 threads calling tfrec's `Servable` in one
  process per arm (K=1 pooled as TF-Serving runs it, K=2, K=4): how much lanes gain where
  TensorFlow is all the work, against what is left of it behind a Python gRPC server.
- `mixed`: 4 closed-loop clients sending heavy requests (N=1000) while light requests (N=10)
  arrive at a fixed rate (open loop, blocking calls from 8 threads of a client process of
  their own), WDL at full scale: one shared session (TF-Serving's execution, and tfrec's
  `auto`) against lanes (K=2 `reserve`, pinned and not, K=2 `least_work`, K=4 `reserve`);
  light p50/p99, heavy throughput in the mix, and heavy throughput alone (what the policy
  costs when there is nothing to protect).

Arms alternate within each round (the order rotates) and every figure is the median over
rounds; the machine is shared and noisy. Results go to `benchmarks/results/lanes-<date>.json`
and the `lanes` table of `benchmarks/README.md`.

    python benchmarks/lanes.py [--rounds 3] [--seconds 8] [--only memory,throughput,inprocess,mixed]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import grpc  # noqa: E402
import tensorflow as tf  # noqa: E402

from benchmarks import report  # noqa: E402
from benchmarks.models import export  # noqa: E402
from benchmarks.servers import TfrecServer  # noqa: E402
from benchmarks.workloads import Workload, write_tfrecord  # noqa: E402
from tfrec_tools import loadgen  # noqa: E402

HALF_PLUS_TWO = ROOT / "tests" / "testdata" / "tfserving" / "saved_model_half_plus_two_cpu"
WARMUP = Path("assets.extra") / "tf_serving_warmup_requests"
Arms = dict[str, tuple[str, ...]]

MEMORY_ARMS: Arms = {
    "K=1 (defaults)": (),
    "K=4": ("--session_num_per_group=4",),
    "K=4, intra-op 2 (replicas)": (
        "--session_num_per_group=4",
        "--tensorflow_intra_op_parallelism=2",
    ),
}
POOL = ("--session_run_mode=pool",)  # TF-Serving's execution: every run on TF's inter-op pool
BASELINE = "K=1, TF-Serving defaults"
THROUGHPUT_ARMS: Arms = {
    BASELINE: POOL,
    "K=1, tfrec auto": (),
    "K=2": ("--session_num_per_group=2",),
    "K=2, pinned": ("--session_num_per_group=2", "--session_group_cpusets=0;1"),
    "K=4": ("--session_num_per_group=4",),
}
SHARED = "one shared session, TF-Serving (pool)"
MIXED_ARMS: Arms = {
    SHARED: POOL,
    "one shared session, tfrec auto": (),
    "K=2 lanes, reserve": ("--session_num_per_group=2",),
    "K=2 lanes, least_work": ("--session_num_per_group=2", "--select_session_policy=least_work"),
    "K=2 lanes, reserve, pinned": ("--session_num_per_group=2", "--session_group_cpusets=0;1"),
    "K=4 lanes, reserve": ("--session_num_per_group=4",),
}


def model(work: Path, name: str, warmup_sizes: tuple[int, ...]) -> Path:
    """The full-scale zoo model's base path (built once into `work`), with a warmup file."""
    version = work / name / "1"
    if not (version / "saved_model.pb").exists():
        print(f"[lanes] building {name} at full scale in {work}", file=sys.stderr)
        export(name, "full", work)
    requests = Workload.load(version).predict_requests(warmup_sizes, 4 * len(warmup_sizes), 7)
    write_tfrecord(version / WARMUP, requests)  # every arm replays it: same cost estimates
    return version.parent


def bodies(base: Path, n: int, count: int = 16, seed: int = 0) -> list[bytes]:
    workload = Workload.load(base / "1")
    target = loadgen.Target("127.0.0.1:0", workload.model)
    return [loadgen.encode(target, r) for r in workload.predict_requests([n], count, seed)]


def rss_mb(pid: int) -> dict[str, float]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return fields


def stat_cpu_s(stat: Path) -> float:
    """User + system CPU seconds from a /proc `stat` file (a process's or one thread's)."""
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads."""
    return stat_cpu_s(Path(f"/proc/{pid}/stat"))


THREAD_KINDS = ("handlers", "tf pools", "other")


def thread_cpu_s(pid: int) -> dict[str, float]:
    """CPU seconds of a server's threads by kind, from their OS names: `handlers` (the gRPC
    request handlers: decoding, encoding, Python), `tf pools` (TensorFlow's inter-op pools,
    where lanes with intra-op 1 also run the kernels), `other` (TensorFlow's unnamed
    intra-op threads, gRPC's own threads, the main thread). Threads that ended are missing:
    compare counts taken while every pool is alive."""
    out = dict.fromkeys(THREAD_KINDS, 0.0)
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            seconds = stat_cpu_s(task / "stat")
        except OSError:
            continue  # the thread ended meanwhile
        kind = "handlers" if name.startswith("tfrec-grpc") else "other"
        kind = "tf pools" if name.startswith("tf_") else kind
        out[kind] += seconds
    return out


def rotated(arms: Arms, round_: int) -> list[str]:
    names = list(arms)
    shift = round_ % len(names)
    return names[shift:] + names[:shift]


def median_of(rounds: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rounds)


# ----------------------------------------------------------------------------- memory


def memory(work: Path, rounds: int) -> dict:
    base = model(work, "dlrm", (100,))
    load = bodies(base, 100)
    samples: dict[str, list[dict]] = {arm: [] for arm in MEMORY_ARMS}
    for r in range(rounds):
        for arm in rotated(MEMORY_ARMS, r):
            with TfrecServer({"dlrm": base}, MEMORY_ARMS[arm]) as server:
                target = loadgen.Target(server.address, "dlrm")
                result = loadgen.run_closed(target, load, 4, 60.0, max_requests=64)
                assert not result.errors, result.errors
                sample = rss_mb(server.proc.pid)
            samples[arm].append(sample)
            print(f"[lanes] memory {arm}: {sample}", file=sys.stderr)
    with TfrecServer({"half_plus_two": HALF_PLUS_TWO}) as server:  # TF, gRPC, no big model
        empty = rss_mb(server.proc.pid)["VmRSS"]
    base_rss = statistics.median(s["VmRSS"] for s in samples["K=1 (defaults)"])
    out = {}
    for arm, values in samples.items():
        rss = statistics.median(s["VmRSS"] for s in values)
        out[arm] = {
            "rss_mb": rss,
            "peak_mb": statistics.median(s["VmHWM"] for s in values),
            "model_mb": rss - empty,
            "ratio": rss / base_rss,
            "rounds": values,
        }
    return {"model": "dlrm (full, 426 MB of tables)", "empty_server_mb": empty, "arms": out}


# ----------------------------------------------------------------------------- throughput


def servers(bases: dict[str, Path], arms: Arms) -> dict[str, TfrecServer]:
    started: dict[str, TfrecServer] = {}
    try:
        for arm, flags in arms.items():
            started[arm] = TfrecServer(bases, flags)
    except BaseException:
        for server in started.values():
            server.close()
        raise
    return started


def throughput(work: Path, rounds: int, seconds: float, n: int) -> dict:
    base = model(work, "wdl", (10, 200, 1000))
    load = bodies(base, n)
    running = servers({"wdl": base}, THROUGHPUT_ARMS)
    samples: dict[str, list[dict]] = {arm: [] for arm in THROUGHPUT_ARMS}
    try:
        for server in running.values():  # warm every lane and the client
            loadgen.run_closed(loadgen.Target(server.address, "wdl"), load, 8, 2.0)
        for r in range(rounds):
            for arm in rotated(THROUGHPUT_ARMS, r):
                target = loadgen.Target(running[arm].address, "wdl")
                pid = running[arm].proc.pid
                cpu, threads = cpu_s(pid), thread_cpu_s(pid)
                summary = loadgen.run_closed(target, load, 8, seconds).summary()
                cpu, after = cpu_s(pid) - cpu, thread_cpu_s(pid)
                per_request = 1e3 / max(1, summary["ok"])
                summary["server_cpu_ms"] = cpu * per_request
                summary["server_cores"] = cpu / summary["duration_s"]
                for kind in THREAD_KINDS:
                    summary[f"{kind}_ms"] = (after[kind] - threads[kind]) * per_request
                samples[arm].append(summary)
                print(
                    f"[lanes] throughput {arm}: {summary['throughput_rps']:.0f} req/s "
                    f"p99 {summary['p99_us'] / 1e3:.1f} ms errors {summary['errors']}",
                    file=sys.stderr,
                )
    finally:
        for server in running.values():
            server.close()
    out = {
        arm: {
            "rps": median_of(values, "throughput_rps"),
            "p50_ms": median_of(values, "p50_us") / 1e3,
            "p99_ms": median_of(values, "p99_us") / 1e3,
            "server_cpu_ms": median_of(values, "server_cpu_ms"),
            "server_cores": median_of(values, "server_cores"),
            "thread_cpu_ms": {k: median_of(values, f"{k}_ms") for k in THREAD_KINDS},
            "errors": sum(sum(v["errors"].values()) for v in values),
            "rounds": [v["throughput_rps"] for v in values],
        }
        for arm, values in samples.items()
    }
    baseline = out[BASELINE]["rps"]
    best = max((a for a in out if not a.startswith("K=1")), key=lambda a: out[a]["rps"])
    for values in out.values():
        values["ratio"] = values["rps"] / baseline
    return {"model": "wdl (full)", "n": n, "clients": 8, "arms": out, "best": best}


# ----------------------------------------------------------------------------- in process

# The throughput arms without gRPC: tfrec's own Servable (the server's code path from decoded
# arrays on), 8 threads calling it, one process per arm and round (the lanes' pools are
# process-wide and TF_OVERRIDE_GLOBAL_THREADPOOL is read once).
INPROCESS_ARMS: dict[str, int] = {BASELINE: 1, "K=2": 2, "K=4": 4}


def run_inprocess_worker(arm: str, work: Path, n: int, seconds: float) -> None:
    from tfrec.runtime.lanes import ServerLanes
    from tfrec.runtime.runner import POOLED
    from tfrec.runtime.session_group import GroupOptions
    from tfrec.serving.servable import Servable, session_config

    k = INPROCESS_ARMS[arm]
    version = work / "wdl" / "1"
    lanes = ServerLanes(GroupOptions.resolve(k, 0, 0)) if k > 1 else None  # the server's defaults
    servable = Servable.load(
        "wdl", 1, version, ["serve"], session_config(0, 0), lanes=lanes, run_mode=POOLED
    )
    signature = servable.signatures["serving_default"]
    workload = Workload.load(version)
    fetches = list(signature.outputs.values())
    calls = [
        {signature.inputs[alias]: array for alias, array in workload.request(n, seed).items()}
        for seed in range(16)
    ]
    counts = [0] * 8

    def loop(i: int, until: float) -> None:
        done = 0
        while time.perf_counter() < until:
            servable.run(calls[(i + done) % len(calls)], fetches)
            done += 1
        counts[i] = done

    for until in (time.perf_counter() + 2.0, None):  # 2 s warm, then the measured run
        if until is None:
            counts[:] = [0] * 8
            cpu, start = time.process_time(), time.perf_counter()
            until = start + seconds
        threads = [threading.Thread(target=loop, args=(i, until)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    print(json.dumps({"rps": sum(counts) / elapsed, "cpu_ms": cpu * 1e3 / sum(counts)}))
    servable.close()


def inprocess(work: Path, rounds: int, seconds: float, n: int) -> dict:
    model(work, "wdl", (10, 200, 1000))
    samples: dict[str, list[dict]] = {arm: [] for arm in INPROCESS_ARMS}
    for r in range(rounds):
        for arm in rotated(dict.fromkeys(INPROCESS_ARMS, ()), r):
            args = [
                sys.executable,
                __file__,
                "--inprocess-worker",
                arm,
                "--work",
                str(work),
                "--n",
                str(n),
                "--seconds",
                str(seconds),
            ]
            env = dict(os.environ)
            if INPROCESS_ARMS[arm] > 1:
                env["TF_OVERRIDE_GLOBAL_THREADPOOL"] = "1"  # as tfrec_model_server sets it
            out = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, env=env)
            if out.returncode != 0:
                raise RuntimeError(f"in-process worker {arm} failed:\n{out.stderr[-2000:]}")
            sample = json.loads(out.stdout.strip().splitlines()[-1])
            samples[arm].append(sample)
            print(f"[lanes] in process {arm}: {sample}", file=sys.stderr)
    base = [v["rps"] for v in samples[BASELINE]]
    out = {}
    for arm, values in samples.items():
        ratios = [v["rps"] / b for v, b in zip(values, base, strict=True)]
        out[arm] = {
            "rps": median_of(values, "rps"),
            "cpu_ms": median_of(values, "cpu_ms"),
            "ratio_paired": statistics.median(ratios),
            "ratios": ratios,
        }
    return {"model": "wdl (full)", "n": n, "threads": 8, "arms": out}


# ----------------------------------------------------------------------------- mixed


def concurrently(*calls: Callable[[], object]) -> list:
    results: list = [None] * len(calls)

    def run(i: int) -> None:
        results[i] = calls[i]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


class LightClient:
    """The light stream in its own process (`--light-client`): in this one it would share a
    GIL with the heavy clients' event loop, which then delays light requests by milliseconds
    that no server caused. It prepares its requests, says `ready`, starts on `go`."""

    def __init__(self, address: str, work: Path, rate: float, seconds: float) -> None:
        args = [
            sys.executable,
            __file__,
            "--light-client",
            address,
            "--work",
            str(work),
            "--light-rate",
            str(rate),
            "--seconds",
            str(seconds),
        ]
        self.proc = subprocess.Popen(
            args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT
        )
        assert self.proc.stdout is not None and self.proc.stdin is not None
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError("the light client did not start")

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def result(self) -> dict:
        out, _ = self.proc.communicate(timeout=600)
        return json.loads(out.strip().splitlines()[-1])


LIGHT_THREADS = 8  # thread k sends requests k, k + 8, ...: 160 ms apart at 50/s


def run_light_client(address: str, work: Path, rate: float, seconds: float) -> None:
    """Open loop, blocking gRPC calls: request i is due at i / rate and sent by thread
    i mod LIGHT_THREADS, which waits in C for the answer. No event loop: an asyncio client
    (`tfrec_tools.loadgen`) wakes its loop through grpc.aio's poller thread on every answer, a
    hand-off that on two busy vCPUs added 1-2 ms to the light p99 in every arm."""
    light = bodies(work / "wdl", 10, 16, seed=2)
    channel = grpc.insecure_channel(address)
    call = channel.unary_unary(loadgen.PREDICT_METHOD)
    for body in light:
        call(body, timeout=60)
    total = max(1, int(rate * seconds))
    latencies: list[float] = []
    lags: list[float] = []
    errors: list[str] = []
    print("ready", flush=True)
    sys.stdin.readline()
    start = time.perf_counter() + 0.01

    def sender(k: int) -> None:
        for i in range(k, total, LIGHT_THREADS):
            due = start + i / rate
            time.sleep(max(0.0, due - time.perf_counter()))
            sent = time.perf_counter()
            try:
                call(light[i % len(light)], timeout=60)
            except grpc.RpcError as err:
                errors.append(err.code().name)  # type: ignore[attr-defined]
                continue
            latencies.append(time.perf_counter() - sent)  # list.append: atomic under the GIL
            lags.append(sent - due)

    threads = [threading.Thread(target=sender, args=(k,)) for k in range(LIGHT_THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    percentiles = statistics.quantiles(latencies, n=100)
    summary = {
        "p50_ms": percentiles[49] * 1e3,
        "p99_ms": percentiles[98] * 1e3,
        "rps": len(latencies) / elapsed,
        "send_lag_p99_ms": statistics.quantiles(lags, n=100)[98] * 1e3,
        "errors": len(errors),
    }
    print(json.dumps(summary), flush=True)


def mixed(work: Path, rounds: int, seconds: float, light_rate: float) -> dict:
    base = model(work, "wdl", (10, 200, 1000))
    heavy, light = bodies(base, 1000, 8, seed=1), bodies(base, 10, 16, seed=2)
    running = servers({"wdl": base}, MIXED_ARMS)
    samples: dict[str, list[dict]] = {arm: [] for arm in MIXED_ARMS}
    try:
        for server in running.values():  # warm up: every lane, both sizes
            target = loadgen.Target(server.address, "wdl")
            concurrently(
                lambda t=target: loadgen.run_closed(t, heavy, 4, 3.0),
                lambda t=target: loadgen.run_open(t, light, light_rate, 3.0),
            )
        for r in range(rounds):
            for arm in rotated(MIXED_ARMS, r):
                target = loadgen.Target(running[arm].address, "wdl")
                # Heavy alone first: a minute after this server's last light request, so
                # `reserve` has forgotten light requests (its reference ages by e per 10 s).
                alone = loadgen.run_closed(target, heavy, 4, seconds / 2)
                client = LightClient(target.address, work, light_rate, seconds)
                h, _ = concurrently(
                    lambda t=target: loadgen.run_closed(t, heavy, 4, seconds + 1.0),
                    lambda c=client: (time.sleep(0.5), c.go()),  # heavy first, then both
                )
                lt = client.result()
                sample = {
                    "light_p50_ms": lt["p50_ms"],
                    "light_p99_ms": lt["p99_ms"],
                    "light_rps": lt["rps"],
                    "light_send_lag_p99_ms": lt["send_lag_p99_ms"],
                    "heavy_rps": h.throughput,
                    "heavy_p50_ms": h.percentile(50) / 1e3,
                    "heavy_alone_rps": alone.throughput,
                    "errors": sum(h.errors.values()) + lt["errors"],
                }
                samples[arm].append(sample)
                print(f"[lanes] mixed {arm}: {sample}", file=sys.stderr)
    finally:
        for server in running.values():
            server.close()
    out = {
        arm: {key: median_of(values, key) for key in values[0]} | {"rounds": values}
        for arm, values in samples.items()
    }
    shared = [v["light_p99_ms"] for v in samples[SHARED]]
    for arm, values in out.items():
        values["light_p99_vs_shared"] = values["light_p99_ms"] / out[SHARED]["light_p99_ms"]
        # Paired by round (the arms of a round ran back to back): less exposed to drift.
        ratios = [v["light_p99_ms"] / s for v, s in zip(samples[arm], shared, strict=True)]
        values["light_p99_vs_shared_per_round"] = ratios
        values["light_p99_vs_shared_paired"] = statistics.median(ratios)
    return {
        "model": "wdl (full)",
        "heavy": "N=1000, 4 closed-loop clients",
        "light": f"N=10, open loop at {light_rate:g} req/s from its own process "
        f"({LIGHT_THREADS} threads, blocking calls)",
        "arms": out,
    }


# ----------------------------------------------------------------------------- report


def section(title: str, columns: list[str], rows: list[list[str]]) -> list[str]:
    """A titled markdown table, as lines (a blank line before the title and the table)."""
    return [
        "",
        title,
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def per_round(values: list[float], fmt: str) -> str:
    return ", ".join(format(v, fmt) for v in values)


def table(result: dict) -> str:
    lines = [
        f"Run {result['date']} on {result['machine']}, Python {result['python']}, "
        f"TensorFlow {result['tensorflow']}. Command: `{result['command']}`. Medians of "
        f"{result['rounds']} rounds, arms alternating; a shared, noisy 2-vCPU machine.",
    ]
    if "memory" in result:
        m = result["memory"]
        lines += section(
            f"Memory, {m['model']}; RSS over a server holding only half_plus_two "
            f"({m['empty_server_mb']:.0f} MB) in the third column:",
            ["arm", "RSS MB", "over empty server MB", "peak MB", "RSS x K=1"],
            [
                [
                    arm,
                    f"{v['rss_mb']:.0f}",
                    f"{v['model_mb']:.0f}",
                    f"{v['peak_mb']:.0f}",
                    f"{v['ratio']:.3f}",
                ]
                for arm, v in m["arms"].items()
            ],
        )
    if "throughput" in result:
        t = result["throughput"]
        lines += section(
            f"Throughput, {t['model']}, N={t['n']}, {t['clients']} clients (best: {t['best']}):",
            [
                "arm",
                "req/s",
                "x K=1",
                "p50 ms",
                "p99 ms",
                "server CPU ms/req",
                "of which handlers / TF pools / other",
                "server cores",
                "req/s per round",
            ],
            [
                [
                    arm,
                    f"{v['rps']:.0f}",
                    f"{v['ratio']:.2f}",
                    f"{v['p50_ms']:.1f}",
                    f"{v['p99_ms']:.1f}",
                    f"{v['server_cpu_ms']:.2f}",
                    " / ".join(f"{v['thread_cpu_ms'][k]:.2f}" for k in THREAD_KINDS),
                    f"{v['server_cores']:.2f}",
                    per_round(v["rounds"], ".0f"),
                ]
                for arm, v in t["arms"].items()
            ],
        )
    if "inprocess" in result:
        p = result["inprocess"]
        lines += section(
            f"The same throughput arms in one process without gRPC, {p['model']}, N={p['n']}, "
            f"{p['threads']} threads calling tfrec's Servable:",
            ["arm", "req/s", "x K=1 (per round)", "CPU ms/req"],
            [
                [
                    arm,
                    f"{v['rps']:.0f}",
                    f"{v['ratio_paired']:.2f} ({per_round(v['ratios'], '.2f')})",
                    f"{v['cpu_ms']:.2f}",
                ]
                for arm, v in p["arms"].items()
            ],
        )
    if "mixed" in result:
        x = result["mixed"]
        lines += section(
            f"Mixed load, {x['model']}: heavy {x['heavy']}; light {x['light']}:",
            [
                "arm",
                "light p50 ms",
                "light p99 ms",
                "light p99 / shared (per round)",
                "heavy req/s",
                "heavy req/s alone",
            ],
            [
                [
                    arm,
                    f"{v['light_p50_ms']:.1f}",
                    f"{v['light_p99_ms']:.1f}",
                    f"{v['light_p99_vs_shared_paired']:.2f} "
                    f"({per_round(v['light_p99_vs_shared_per_round'], '.2f')})",
                    f"{v['heavy_rps']:.0f}",
                    f"{v['heavy_alone_rps']:.0f}",
                ]
                for arm, v in x["arms"].items()
            ],
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0, help="per arm and round")
    parser.add_argument("--light-rate", type=float, default=50.0, help="light requests/s")
    parser.add_argument("--n", type=int, default=200, help="candidates, throughput requests")
    parser.add_argument("--only", default="memory,throughput,inprocess,mixed")
    parser.add_argument("--work", type=Path, default=Path("/tmp/tfrec-lanes-bench"))
    parser.add_argument("--no-readme", action="store_true")
    parser.add_argument("--light-client", metavar="ADDRESS", help=argparse.SUPPRESS)
    parser.add_argument("--inprocess-worker", metavar="ARM", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.light_client:  # internal: the mixed benchmark's light stream (see LightClient)
        run_light_client(args.light_client, args.work, args.light_rate, args.seconds)
        return
    if args.inprocess_worker:  # internal: one arm of `inprocess`
        run_inprocess_worker(args.inprocess_worker, args.work, args.n, args.seconds)
        return
    args.work.mkdir(parents=True, exist_ok=True)
    parts = set(args.only.split(","))
    result: dict = {
        "benchmark": "lanes",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": report.machine(),
        "command": "python benchmarks/lanes.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "rounds": args.rounds,
        "load_average": os.getloadavg(),
    }
    if "memory" in parts:
        result["memory"] = memory(args.work, args.rounds)
    if "throughput" in parts:
        result["throughput"] = throughput(args.work, args.rounds, args.seconds, args.n)
    if "inprocess" in parts:
        result["inprocess"] = inprocess(args.work, args.rounds, args.seconds, args.n)
    if "mixed" in parts:
        result["mixed"] = mixed(args.work, args.rounds, args.seconds, args.light_rate)
    result["load_average_after"] = os.getloadavg()
    report.publish("lanes", result, table(result), readme=not args.no_readme)


if __name__ == "__main__":
    main()
