"""`tfrec-ab`: two PredictionService servers on the same requests, parity first, then speed.

    tfrec-ab --a HOST:PORT --b HOST:PORT --model NAME --requests FILE [--protocol grpc|rest]
             [--b-signature SIG --b-structured [--b-model-dir DIR]] [--concurrency C]
             [--duration S] [--rounds R] [--out DIR]

1. Parity: every request goes to A as it is in FILE (a TFRecord of PredictionLog, TF-Serving's
   warmup format) and to B (in structured form with `--b-structured`); each output must agree
   within `--atol` + `--rtol` x |A|. The first disagreement stops the run (exit 1) with the
   request, output, shapes and max abs/rel differences.
2. Speed: closed-loop load at `--concurrency` on A and B in alternating rounds (A B, B A, ...)
   so drift hits both alike; `--duration` seconds per arm in all.
3. Writes `ab.json`, `ab.md` and `ab-latency-cdf.png` into `--out`; prints the table.

`--b-structured`: B receives user inputs once (row 0, batch 1) and item inputs as they are,
on `--b-signature` (default `<signature>_structured`). The per-user inputs are the sidecar's
(`assets.extra/tfrec_features.json` under `--b-model-dir`), else the inputs whose rows all
repeat in every request. A pure client over the stock TF-Serving APIs: it works against
`tensorflow_model_server` too. Bad endpoints, models, signatures or request files: one line on
stderr, exit 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO, TypeAlias

import numpy as np
import tensorflow as tf
from tensorflow.python.util import deprecation
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

from tfrec.base import codecs
from tfrec_tools import loadgen

Request: TypeAlias = predict_pb2.PredictRequest
Arrays = dict[str, np.ndarray]

EXIT_MISMATCH, EXIT_SETUP = 1, 2
SIDECAR = Path("assets.extra") / "tfrec_features.json"


class SetupError(Exception):
    """Something to fix before a comparison can run; printed as one line."""


class ProgressBar:
    """`label [#######.......]  45%` on one stderr line, redrawn at most 10 times a second.
    When stderr is not a terminal only each label's start and end are printed."""

    def __init__(self, stream: TextIO = sys.stderr, width: int = 30) -> None:
        self._stream, self._width = stream, width
        self._tty = stream.isatty()
        self._label, self._last = "", 0.0

    def update(self, label: str, fraction: float) -> None:
        now = time.monotonic()
        new = label != self._label
        if not self._tty:
            if new:
                print(f"{label} ...", file=self._stream, flush=True)
                self._label = label
            return
        if not new and now - self._last < 0.1 and fraction < 1.0:
            return
        filled = int(self._width * min(max(fraction, 0.0), 1.0))
        bar = "#" * filled + "." * (self._width - filled)
        self._stream.write(f"\r{label:<40.40} [{bar}] {fraction:4.0%}")
        self._stream.flush()
        self._label, self._last = label, now

    def close(self) -> None:
        if self._tty and self._label:
            self._stream.write("\n")
        self._label = ""


# ----------------------------------------------------------------------------- requests


def read_requests(path: str) -> list[Request]:
    """The PredictRequests of a PredictionLog TFRecord; SetupError if unreadable or empty."""
    if not Path(path).is_file():
        raise SetupError(f"cannot read requests: {path}: no such file")
    requests = []
    try:
        with deprecation.silence():
            records = list(tf.compat.v1.io.tf_record_iterator(path))
        for record in records:
            log = prediction_log_pb2.PredictionLog.FromString(record)
            if log.WhichOneof("log_type") != "predict_log":
                raise SetupError(f"cannot read requests: {path}: a record is not a predict log")
            requests.append(log.predict_log.request)
    except (tf.errors.OpError, ValueError) as err:  # DecodeError is a ValueError
        text = " ".join(str(getattr(err, "message", err)).split())
        raise SetupError(
            f"cannot read requests: {path}: not a PredictionLog TFRecord ({text})"
        ) from None
    if not requests:
        raise SetupError(f"cannot read requests: {path}: no records")
    return requests


def arrays(request: Request) -> Arrays:
    return {name: codecs.to_ndarray(proto) for name, proto in request.inputs.items()}


def sidecar_user_inputs(model_dir: str) -> set[str]:
    """Per-user inputs named by a zoo sidecar in a version dir, or in a base dir's latest."""
    root = Path(model_dir)
    if not root.is_dir():
        raise SetupError(f"--b-model-dir {model_dir}: not a directory")
    versions = sorted((p for p in root.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    for candidate in [root, *reversed(versions)]:
        if (candidate / SIDECAR).is_file():
            return set(json.loads((candidate / SIDECAR).read_text())["user_inputs"])
    raise SetupError(f"--b-model-dir {model_dir}: no {SIDECAR} in it or its latest version")


def _repeats(array: np.ndarray) -> bool:
    return array.ndim > 0 and bool(np.array_equal(array, np.broadcast_to(array[:1], array.shape)))


def inferred_user_inputs(batches: Sequence[Arrays]) -> set[str]:
    """Inputs whose rows all repeat row 0 in every request (with some request of 2+ rows)."""
    names = set(batches[0])
    if not any(a.ndim and a.shape[0] > 1 for b in batches for a in b.values()):
        raise SetupError("cannot infer per-user inputs: every request has one row")
    user = {name for name in names if all(_repeats(b[name]) for b in batches)}
    if not user or user == names:
        what = "no input repeats" if not user else "every input repeats"
        raise SetupError(f"cannot infer per-user inputs ({what} its rows); pass --b-model-dir")
    return user


def structured(request: Request, user: set[str], signature: str) -> Request:
    """The structured form of a flat request: user inputs cut to their first row."""
    out = Request()
    out.model_spec.CopyFrom(request.model_spec)
    out.model_spec.signature_name = signature
    out.output_filter.extend(request.output_filter)
    for name, array in arrays(request).items():
        value = array[:1] if name in user else array
        codecs.from_ndarray(value, tensor_content=value.dtype != object, proto=out.inputs[name])
    return out


def with_signature(request: Request, signature: str) -> Request:
    out = Request()
    out.CopyFrom(request)
    out.model_spec.signature_name = signature
    return out


# ----------------------------------------------------------------------------- parity


@dataclasses.dataclass(frozen=True)
class Diff:
    output: str
    max_abs: float
    max_rel: float
    ok: bool
    note: str = ""  # why it fails beyond values: a missing output, a shape


def _numeric(x: np.ndarray) -> bool:
    return x.dtype.kind in "fciub"


def compare(a: Arrays, b: Arrays, atol: float, rtol: float) -> list[Diff]:
    """Per-output differences of B from A: ok when |A - B| <= atol + rtol * |A| everywhere
    (NaN equals NaN); non-numeric outputs must be equal."""
    diffs = []
    for name in sorted(set(a) | set(b)):
        if name not in a or name not in b:
            where = "B" if name not in b else "A"
            diffs.append(Diff(name, np.inf, np.inf, False, f"missing from {where}"))
            continue
        x, y = np.asarray(a[name]), np.asarray(b[name])
        if x.shape != y.shape:
            diffs.append(Diff(name, np.inf, np.inf, False, f"shape {x.shape} vs {y.shape}"))
        elif not (_numeric(x) and _numeric(y)):
            same = bool(np.array_equal(x, y))
            diffs.append(Diff(name, 0.0 if same else np.inf, 0.0 if same else np.inf, same))
        else:
            x, y = x.astype(np.float64), y.astype(np.float64)
            both_nan = np.isnan(x) & np.isnan(y)
            gap = np.where(both_nan, 0.0, np.nan_to_num(np.abs(x - y), nan=np.inf))
            scale = np.maximum(np.abs(x), np.abs(y))
            rel = np.divide(gap, scale, out=np.zeros_like(gap), where=scale > 0)
            ok = bool(np.all(both_nan | (gap <= atol + rtol * np.abs(x))))
            diffs.append(Diff(name, float(gap.max(initial=0)), float(rel.max(initial=0)), ok))
    return diffs


def parity(
    endpoints: tuple[loadgen.Endpoint, loadgen.Endpoint],
    pairs: Sequence[tuple[Request, Request]],
    tolerance: tuple[float, float],
    bar: ProgressBar,
) -> dict[str, Any]:
    """Sends each pair to A and B; the worst differences per output, or the first failure."""
    worst: dict[str, dict[str, float]] = {}
    label = f"parity: {len(pairs)} requests"
    for i, (req_a, req_b) in enumerate(pairs):
        bar.update(label, i / len(pairs))
        got_a, got_b = endpoints[0].predict(req_a), endpoints[1].predict(req_b)
        for d in compare(got_a, got_b, *tolerance):
            if not d.ok:
                shapes = [list(np.shape(got.get(d.output, []))) for got in (got_a, got_b)]
                return {"ok": False, "request": i, "shapes": shapes, **dataclasses.asdict(d)}
            w = worst.setdefault(d.output, {"max_abs": 0.0, "max_rel": 0.0})
            w["max_abs"], w["max_rel"] = max(w["max_abs"], d.max_abs), max(w["max_rel"], d.max_rel)
    bar.update(label, 1.0)
    return {"ok": True, "requests": len(pairs), "outputs": worst}


def mismatch_line(report: dict[str, Any], tolerance: tuple[float, float]) -> str:
    a, b = report["shapes"]
    return (
        f"parity FAILED on request {report['request']}, output {report['output']!r}: "
        f"{report['note'] or 'values differ'}; shapes A {a} B {b}; max abs diff "
        f"{report['max_abs']:.3e}, max rel diff {report['max_rel']:.3e} (tolerance "
        f"{tolerance[0]:g} + {tolerance[1]:g} x |A|). No speed measured."
    )


# ----------------------------------------------------------------------------- speed


def speed(
    targets: dict[str, loadgen.Target],
    bodies: dict[str, list[bytes]],
    args: argparse.Namespace,
    bar: ProgressBar,
) -> dict[str, list[loadgen.LoadResult]]:
    """Alternating rounds (A B, B A, ...) of closed-loop load; each arm's rounds."""
    per_round = args.duration / args.rounds
    total = per_round * args.rounds * len(targets)
    rounds: dict[str, list[loadgen.LoadResult]] = {arm: [] for arm in targets}
    for r in range(args.rounds):
        for arm in sorted(targets, reverse=bool(r % 2)):
            label = f"speed: round {r + 1}/{args.rounds}, {arm}"
            done = sum(map(len, rounds.values())) * per_round

            def tick(fraction: float, label: str = label, done: float = done) -> None:
                bar.update(label, (done + fraction * per_round) / total)

            # Round 1 warms the server; every round opens a fresh connection.
            warmup = max(20, 5 * args.concurrency) if r == 0 else max(2, args.concurrency)
            result = loadgen.run_closed(
                targets[arm],
                bodies[arm],
                args.concurrency,
                per_round,
                warmup=warmup,
                timeout_s=args.timeout,
                progress=tick,
            )
            rounds[arm].append(result)
    bar.update("speed: done", 1.0)
    return rounds


# ----------------------------------------------------------------------------- report


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} vCPU {model}, {platform.system()} {platform.machine()}"


def cdf(latencies_us: np.ndarray, points: int = 200) -> list[list[float]]:
    """[latency_us, fraction] pairs at `points` evenly spaced quantiles."""
    if not latencies_us.size:
        return []
    q = np.linspace(0, 1, points)
    return [[float(x), float(p)] for x, p in zip(np.quantile(latencies_us, q), q, strict=True)]


@dataclasses.dataclass(frozen=True)
class Arm:
    """One side of the comparison: where it goes and what it is sent."""

    target: loadgen.Target
    requests: list[Request]
    form: str  # "as in file" or "structured"

    @property
    def signature(self) -> str:
        return self.requests[0].model_spec.signature_name


def document(
    args: argparse.Namespace,
    arms: dict[str, Arm],
    user: set[str],
    parity_report: dict[str, Any],
    rounds: dict[str, list[loadgen.LoadResult]],
) -> dict[str, Any]:
    summaries = {}
    for name, arm in arms.items():
        merged = loadgen.LoadResult.merge(rounds[name])
        summaries[name] = merged.summary() | {
            "address": arm.target.address,
            "model": arm.target.model,
            "signature": arm.signature,
            "form": arm.form,
            "rounds": [r.summary() for r in rounds[name]],
            "cdf": cdf(merged.latencies_us),
        }
    a, b = summaries["A"], summaries["B"]
    ratios = {
        "p50": b["p50_us"] / a["p50_us"],
        "p99": b["p99_us"] / a["p99_us"],
        "throughput": b["throughput_rps"] / max(a["throughput_rps"], 1e-9),
        "bytes_per_request": b["bytes_per_request"] / a["bytes_per_request"],
    }
    config = {
        "model": args.model,
        "protocol": args.protocol,
        "concurrency": args.concurrency,
        "duration_s": args.duration,
        "rounds": args.rounds,
        "atol": args.atol,
        "rtol": args.rtol,
        "requests_file": args.requests,
        "requests": len(arms["A"].requests),
        "b_structured": args.b_structured,
        "user_inputs": sorted(user),
    }
    return {
        "tool": "tfrec-ab",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "command": "tfrec-ab " + " ".join(args.argv),
        "config": config,
        "parity": parity_report,
        "arms": summaries,
        "ratios": ratios,
    }


def markdown(doc: dict[str, Any]) -> str:
    c, p, r = doc["config"], doc["parity"], doc["ratios"]
    agree = ", ".join(
        f"`{k}` max abs diff {v['max_abs']:.2e} (rel {v['max_rel']:.2e})"
        for k, v in p["outputs"].items()
    )
    lines = [
        f"tfrec-ab run {doc['date']} on {doc['machine']}. Model `{c['model']}` over "
        f"{c['protocol']}, concurrency {c['concurrency']}, {c['rounds']} alternating rounds, "
        f"{c['duration_s']:g} s per arm, {c['requests']} requests from "
        f"`{Path(c['requests_file']).name}`. Command: `{doc['command']}`.",
        "",
        f"Parity over {p['requests']} requests: {agree} (tolerance {c['atol']:g} + "
        f"{c['rtol']:g} x |A|).",
        "",
        "| arm | server | signature | form | p50 ms | p90 ms | p99 ms | req/s | errors "
        "| bytes/req | client CPU us/req |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for arm, s in doc["arms"].items():
        errors = ", ".join(f"{k} {v}" for k, v in s["errors"].items()) or "0"
        lines.append(
            f"| {arm} | {s['address']} | {s['signature']} | {s['form']} | "
            f"{s['p50_us'] / 1e3:.3f} | {s['p90_us'] / 1e3:.3f} | {s['p99_us'] / 1e3:.3f} | "
            f"{s['throughput_rps']:.1f} | {errors} | {s['bytes_per_request']:.0f} | "
            f"{s['client_cpu_us_per_request']:.0f} |"
        )
    lines += [
        "",
        f"B / A: p50 {r['p50']:.2f}x, p99 {r['p99']:.2f}x, throughput {r['throughput']:.2f}x, "
        f"bytes/request {r['bytes_per_request']:.2f}x.",
    ]
    return "\n".join(lines)


def plot_cdf(doc: dict[str, Any], rounds: dict[str, list[loadgen.LoadResult]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for arm, results in rounds.items():
        values = np.sort(np.concatenate([r.latencies_us for r in results])) / 1e3
        s = doc["arms"][arm]
        label = f"{arm}: {s['signature']} ({s['form']}), p50 {s['p50_us'] / 1e3:.2f} ms"
        ax.plot(values, np.arange(1, values.size + 1) / max(values.size, 1), label=label)
    c = doc["config"]
    ax.set_xscale("log")
    ax.set_xlabel("latency (ms, log scale)")
    ax.set_ylabel("fraction of requests")
    ax.set_title(f"tfrec-ab: {c['model']} over {c['protocol']}, concurrency {c['concurrency']}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------- command line


def address(text: str) -> str:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return text


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="tfrec-ab",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = parser.add_argument
    add("--a", required=True, type=address, help="reference server HOST:PORT")
    add("--b", required=True, type=address, help="candidate server HOST:PORT")
    add("--model", required=True, help="model name on A (and on B unless --b-model)")
    add("--b-model", help="model name on B (default: --model)")
    add("--requests", required=True, help="TFRecord of PredictionLog (flat requests)")
    add("--protocol", choices=["grpc", "rest"], default="grpc")
    add("--signature", help="A's signature (default: the requests' own, else serving_default)")
    add("--b-signature", help="B's signature (default: A's, + '_structured' if --b-structured)")
    add("--b-structured", action="store_true", help="send B user inputs once (batch 1)")
    add("--b-model-dir", help="B's model dir, to read which inputs are per-user")
    add("--concurrency", type=int, default=1)
    add("--duration", type=float, default=20.0, help="seconds of load per arm, all rounds")
    add("--rounds", type=int, default=4)
    add("--atol", type=float, default=1e-5)
    add("--rtol", type=float, default=1e-4)
    add("--timeout", type=float, default=60.0, help="seconds per request")
    add("--out", help="output dir (default: ./tfrec-ab-<timestamp>)")
    args = parser.parse_args(argv)
    if args.concurrency < 1 or args.rounds < 1 or args.duration <= 0:
        parser.error("--concurrency and --rounds must be >= 1, --duration > 0")
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args


def prepare(args: argparse.Namespace) -> tuple[dict[str, Arm], set[str]]:
    """Both arms, after checking the request file, endpoints, models and signatures."""
    flat = read_requests(args.requests)
    sig_a = args.signature or flat[0].model_spec.signature_name or "serving_default"
    sig_b = args.b_signature or (f"{sig_a}_structured" if args.b_structured else sig_a)
    targets = {
        "A": loadgen.Target(args.a, args.model, args.protocol),
        "B": loadgen.Target(args.b, args.b_model or args.model, args.protocol),
    }
    for name, signature in (("A", sig_a), ("B", sig_b)):
        target = targets[name]
        with loadgen.Endpoint(target, timeout_s=min(args.timeout, 10.0)) as endpoint:
            endpoint.check_model()
            known = endpoint.signatures()
        if signature not in known:
            raise SetupError(
                f"{name} ({target.address}): model {target.model!r} has no signature "
                f"{signature!r} (it has: {', '.join(sorted(known)) or 'none'})"
            )
    user: set[str] = set()
    requests_b = [with_signature(r, sig_b) for r in flat]
    if args.b_structured:
        if args.b_model_dir:
            user = sidecar_user_inputs(args.b_model_dir)
        else:
            user = inferred_user_inputs([arrays(r) for r in flat])
        requests_b = [structured(r, user, sig_b) for r in flat]
    arms = {
        "A": Arm(targets["A"], [with_signature(r, sig_a) for r in flat], "as in file"),
        "B": Arm(targets["B"], requests_b, "structured" if args.b_structured else "as in file"),
    }
    return arms, user


def run(args: argparse.Namespace, bar: ProgressBar) -> int:
    arms, user = prepare(args)
    tolerance = (args.atol, args.rtol)
    pairs = list(zip(arms["A"].requests, arms["B"].requests, strict=True))
    a, b = (loadgen.Endpoint(arm.target, args.timeout) for arm in arms.values())
    with a, b:
        report = parity((a, b), pairs, tolerance, bar)
    bar.close()
    if not report["ok"]:
        print(f"tfrec-ab: {mismatch_line(report, tolerance)}", file=sys.stderr)
        return EXIT_MISMATCH
    bodies = {k: [loadgen.encode(arm.target, r) for r in arm.requests] for k, arm in arms.items()}
    targets = {k: arm.target for k, arm in arms.items()}
    rounds = speed(targets, bodies, args, bar)
    bar.close()
    doc = document(args, arms, user, report, rounds)
    out = Path(args.out or f"tfrec-ab-{dt.datetime.now():%Y%m%d-%H%M%S}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "ab.json").write_text(json.dumps(doc, indent=2) + "\n")
    table = markdown(doc)
    (out / "ab.md").write_text(table + "\n")
    plot_cdf(doc, rounds, out / "ab-latency-cdf.png")
    print(table)
    print(f"\nwritten: {out / 'ab.json'}, {out / 'ab.md'}, {out / 'ab-latency-cdf.png'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    bar = ProgressBar()
    try:
        return run(args, bar)
    except (SetupError, loadgen.LoadError) as err:
        bar.close()
        print(f"tfrec-ab: {err}", file=sys.stderr)
        return EXIT_SETUP
    except KeyboardInterrupt:
        bar.close()
        print("tfrec-ab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
