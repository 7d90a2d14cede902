"""tfrec-schedule: profile a model version's op costs; explain the schedule tfrec would build.

    tfrec-schedule profile VERSION_DIR [--requests FILE] [--n 100 1000] [--runs 6] [--out PATH]
    tfrec-schedule explain VERSION_DIR [--signature NAME] [--requests FILE] [--n 100 1000]
                           [--slots K] [--realisation order|place] [--rounds 15] [--json]

Requests come from `--requests` (a TFRecord of PredictionLog, TF-Serving's warmup format),
else from the version's own warmup file, else they are generated from the signature: batch
dimension N (each `--n`), other unknown dimensions 1, floats N(0, 1), integers 0 or 1 (valid
ids in any table), strings empty (out of vocabulary), drawn from numpy's default_rng(--seed,
0 by default). Dimensions fixed to 1 in the signature (the per-user inputs of a structured
twin) stay 1.

`profile` writes the cost models (`tfrec.schedule.costmodel`) of every signature that can
be scheduled to `VERSION_DIR/assets.extra/tfrec_cost_model.json` (or `--out`): the server
then uses those costs instead of its own profile where the executed graph is the same.
`explain` prints, per signature and bucket of rows: the critical path, each slot's order,
the control edges, and the predicted time against the measured one (unscheduled on TF's
inter-op pool and in the calling thread, scheduled), in-process, arms alternating in rounds.
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

WARMUP = Path("assets.extra") / "tf_serving_warmup_requests"
SIZES = (100, 1000)
INIT_OP = "__saved_model_init_op"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tfrec-schedule", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("profile", "explain"):
        s = sub.add_parser(name)
        s.add_argument("version_dir", type=Path, help="a SavedModel version directory")
        s.add_argument("--signature", action="append", help="signature(s); default: all")
        s.add_argument("--requests", type=Path, help="PredictionLog TFRecord of requests")
        s.add_argument("--n", type=int, nargs="+", default=list(SIZES), help="rows generated")
        s.add_argument("--seed", type=int, default=0, help="seed of generated requests")
        s.add_argument("--runs", type=int, default=6, help="traced runs per bucket")
    sub.choices["profile"].add_argument("--out", type=Path, help="default: the version's file")
    e = sub.choices["explain"]
    e.add_argument("--slots", type=int, default=0, help="execution slots; 0: the CPUs")
    e.add_argument("--realisation", choices=("order", "place"), default="order")
    e.add_argument("--rounds", type=int, default=15, help="timing rounds, arms alternating")
    e.add_argument("--json", action="store_true", help="print the explanation as JSON")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from tfrec.schedule import costmodel

    if args.command == "profile":
        models = profile(args.version_dir, args.signature, args.requests, args.n, args.seed,
                         args.runs)  # fmt: skip
        out = args.out or args.version_dir / costmodel.COST_FILE
        costmodel.write(out, models)
        for m in models:
            buckets = ", ".join(f"{b} ({len(m.buckets[b].nodes)} ops)" for b in sorted(m.buckets))
            print(f"{m.signature}: buckets {buckets}")
        print(f"wrote {out}")
        return 0
    doc = explain(args.version_dir, args.signature, args.requests, args.n, args.seed, args.runs,
                  args.slots, args.realisation, args.rounds)  # fmt: skip
    if args.json:
        import json

        print(json.dumps(doc, indent=1))
    else:
        print(render(doc))
    return 0


# ----------------------------------------------------------------------------- requests


def _signatures(meta: Any, wanted: list[str] | None) -> list[str]:
    names = sorted(k for k in meta.signature_def if k != INIT_OP)
    if wanted:
        missing = sorted(set(wanted) - set(names))
        if missing:
            raise SystemExit(f"tfrec-schedule: no signature {', '.join(missing)}; has {names}")
        return list(wanted)
    return names


def generated(signature: Any, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random inputs for a SignatureDef (see the module doc for the value domains)."""
    from tensorflow.core.framework import types_pb2

    out = {}
    for alias, info in signature.inputs.items():
        dims = [d.size for d in info.tensor_shape.dim]
        shape = [n if i == 0 and d < 0 else (1 if d < 0 else d) for i, d in enumerate(dims)]
        if info.dtype == types_pb2.DT_STRING:
            out[alias] = np.full(shape, b"", dtype=object)
        elif info.dtype in (types_pb2.DT_FLOAT, types_pb2.DT_DOUBLE, types_pb2.DT_HALF):
            out[alias] = rng.standard_normal(shape).astype(_numpy(info.dtype))
        elif info.dtype == types_pb2.DT_BOOL:
            out[alias] = np.zeros(shape, bool)
        else:
            out[alias] = rng.integers(0, 2, shape).astype(_numpy(info.dtype))
    return out


def _numpy(enum: int) -> np.dtype:
    import tensorflow as tf

    return np.dtype(tf.dtypes.as_dtype(enum).as_numpy_dtype)


def requests(
    version_dir: Path, meta: Any, name: str, file: Path | None, sizes: Sequence[int], seed: int
) -> list[dict[str, np.ndarray]]:
    """Inputs (alias -> array) of the requests to profile `name` with."""
    from tensorflow_serving.apis import prediction_log_pb2

    from tfrec.base import codecs

    path = file or (version_dir / WARMUP)
    found: list[dict[str, np.ndarray]] = []
    if path.is_file():
        import tensorflow as tf

        for raw in tf.compat.v1.io.tf_record_iterator(str(path)):
            log = prediction_log_pb2.PredictionLog.FromString(raw)
            if log.WhichOneof("log_type") != "predict_log":
                continue
            request = log.predict_log.request
            if (request.model_spec.signature_name or "serving_default") == name:
                found.append({k: codecs.to_ndarray(v) for k, v in request.inputs.items()})
    if found or file is not None:
        return found
    rng = np.random.default_rng(seed)
    return [generated(meta.signature_def[name], n, rng) for n in sizes]


# ----------------------------------------------------------------------------- profile


class _Loaded:
    """A version loaded as tfrec_model_server loads it (default thread counts), with `slots`
    logical CPU devices for `place` schedules."""

    def __init__(self, version_dir: Path, devices: int = 1) -> None:
        import tensorflow as tf

        from tfrec.serving.servable import session_config

        config = session_config(0, 0)
        config.device_count["CPU"] = max(1, devices)
        self.graph = tf.Graph()
        self.session = tf.compat.v1.Session(graph=self.graph, config=config)
        with self.graph.as_default():
            self.meta = tf.compat.v1.saved_model.loader.load(
                self.session, ["serve"], str(version_dir)
            )

    def key(self, name: str) -> tuple[list[str], list[str]]:
        signature = self.meta.signature_def[name]
        aliases = sorted(signature.inputs)
        outputs = sorted(signature.outputs)
        return [signature.inputs[a].name for a in aliases], [
            signature.outputs[a].name for a in outputs
        ]

    def args(self, name: str, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        return [inputs[a] for a in sorted(self.meta.signature_def[name].inputs)]


def _trace(loaded: _Loaded, name: str, batch: list[dict[str, np.ndarray]], runs: int) -> Any:
    from tfrec.schedule.costmodel import Trace

    trace = Trace(loaded.session, *loaded.key(name))
    for inputs in batch:
        for _ in range(runs):
            trace(*loaded.args(name, inputs))
    return trace


def profile(
    version_dir: Path,
    signatures: list[str] | None,
    file: Path | None,
    sizes: Sequence[int],
    seed: int,
    runs: int,
) -> list[Any]:
    """Cost models of the version's signatures (those that only read state)."""
    from tfrec.schedule.planner import state_writers

    loaded = _Loaded(version_dir)
    models = []
    graph_def = loaded.graph.as_graph_def()
    for name in _signatures(loaded.meta, signatures):
        if state_writers(graph_def, loaded.key(name)[1]):
            print(f"{name}: changes state, not profiled", file=sys.stderr)
            continue
        batch = requests(version_dir, loaded.meta, name, file, sizes, seed)
        models.append(_trace(loaded, name, batch, runs).model(name))
    loaded.session.close()
    return models


# ----------------------------------------------------------------------------- explain


def explain(
    version_dir: Path,
    signatures: list[str] | None = None,
    file: Path | None = None,
    sizes: Sequence[int] = SIZES,
    seed: int = 0,
    runs: int = 6,
    slots: int = 0,
    realisation: str = "order",
    rounds: int = 15,
) -> dict[str, Any]:
    """Per signature and bucket: the plan, its prediction and the measured times."""
    from tfrec.base import affinity
    from tfrec.runtime.stage import bucket_of, rows_of
    from tfrec.schedule import planner

    slots = slots or len(affinity.allowed_cpus())
    loaded = _Loaded(version_dir, slots if realisation == "place" else 1)
    graph_def = loaded.graph.as_graph_def()
    out: dict[str, Any] = {"version_dir": str(version_dir), "slots": slots,
                           "realisation": realisation, "signatures": {}}  # fmt: skip
    for name in _signatures(loaded.meta, signatures):
        writers = planner.state_writers(graph_def, loaded.key(name)[1])
        if writers:
            out["signatures"][name] = {"skipped": f"changes state ({', '.join(writers)})"}
            continue
        batch = requests(version_dir, loaded.meta, name, file, sizes, seed)
        trace = _trace(loaded, name, batch, runs)
        model = trace.model(name)
        graph = planner.Graph(trace.graphs[0])
        by_bucket: dict[int, list[list[np.ndarray]]] = collections.defaultdict(list)
        for inputs in batch:
            args = loaded.args(name, inputs)
            by_bucket[bucket_of(rows_of(args))].append(args)
        buckets = {}
        for bucket, calls in sorted(by_bucket.items()):
            costs = model.buckets[bucket]
            plan = planner.plan(graph, costs, slots, realisation)
            entry: dict[str, Any] = {"rows": costs.rows, "plan": plan.to_json()}
            entry["ops"] = len(graph.nodes)
            entry["measured_ms"] = _measure(loaded, name, graph, plan, calls, rounds)
            buckets[str(bucket)] = entry
        out["signatures"][name] = {"buckets": buckets}
    loaded.session.close()
    return out


def _measure(loaded: _Loaded, name: str, graph: Any, plan: Any, calls: list, rounds: int) -> dict:
    """Median ms of the unscheduled (pool, caller thread) and scheduled runs, alternating."""
    import tensorflow as tf
    from tensorflow.core.protobuf import config_pb2

    from tfrec.schedule import planner

    feeds, fetches = loaded.key(name)
    fns = {}
    for arm, pool in (("unscheduled_pool", None), ("unscheduled_inline", -1)):
        options = config_pb2.CallableOptions(feed=feeds, fetch=fetches)
        if pool is not None:
            options.run_options.inter_op_thread_pool = pool
        fns[arm] = loaded.session._make_callable_from_options(options)
    if plan.edges or plan.realisation == "place":
        device = (lambda s: f"/device:CPU:{s}") if plan.realisation == "place" else (lambda s: "")
        copy = planner.rewrite(graph, plan, device)
        g = loaded.graph
        scope = g.unique_name("tfrec_schedule", mark_as_used=False)
        with g.as_default():
            tf.graph_util.import_graph_def(
                copy.graph,
                input_map={f"{s}:0": g.get_tensor_by_name(f"{s}:0") for s in copy.state},
                name=scope,
            )
        options = config_pb2.CallableOptions(
            feed=[f"{scope}/{t}" for t in copy.feeds], fetch=[f"{scope}/{t}" for t in copy.fetches]
        )
        fns["scheduled"] = loaded.session._make_callable_from_options(options)
    reference = [fns["unscheduled_pool"](*args) for args in calls]
    identical = True
    if "scheduled" in fns:
        for args, want in zip(calls, reference, strict=True):
            got = fns["scheduled"](*args)
            identical &= all(np.array_equal(a, b) for a, b in zip(got, want, strict=True))
    times: dict[str, list[float]] = collections.defaultdict(list)
    for r in range(rounds):
        arms = list(fns)
        arms = arms[r % len(arms) :] + arms[: r % len(arms)]
        for arm in arms:
            start = time.perf_counter()
            repeats = 0
            while repeats < 3 or time.perf_counter() - start < 0.03:
                fns[arm](*calls[repeats % len(calls)])
                repeats += 1
            times[arm].append((time.perf_counter() - start) / repeats * 1e3)
    out: dict[str, Any] = {arm: round(statistics.median(v), 4) for arm, v in times.items()}
    if "scheduled" in times:
        best = [min(a, b) for a, b in zip(times["unscheduled_pool"], times["unscheduled_inline"],
                                          strict=True)]  # fmt: skip
        ratios = [b / s for b, s in zip(best, times["scheduled"], strict=True)]
        out["speedup"] = round(statistics.median(ratios), 3)
        out["identical_outputs"] = identical
    return out


def render(doc: dict[str, Any], width: int = 60) -> str:
    """The explanation as text: critical path, slot orders, predicted against measured."""
    lines = [f"{doc['version_dir']}: {doc['slots']} slots, {doc['realisation']} schedules"]
    for name, sig in doc["signatures"].items():
        if "skipped" in sig:
            lines.append(f"{name}: not scheduled: {sig['skipped']}")
            continue
        for bucket, entry in sig["buckets"].items():
            plan, measured = entry["plan"], entry["measured_ms"]
            rows = ",".join(str(r) for r in sorted(set(entry["rows"])))
            serial, critical = plan["serial_us"], plan["critical_path_us"]
            lines += [
                "",
                f"{name}, rows {rows} (bucket {bucket}): {entry['ops']} ops, "
                f"{serial / 1e3:.3f} ms of work, critical path {critical / 1e3:.3f} ms "
                f"({critical / serial if serial else 0:.0%}): at most "
                f"{serial / critical if critical else 1:.2f}x from running branches concurrently",
                "  critical path (us, op, node):",
            ]
            lines += [f"    {s['us']:8.1f}  {s['op']:<24} {_short(s['unit'], width)}"
                      for s in plan["critical_path"] if s["us"] >= 1]  # fmt: skip
            for slot, steps in enumerate(plan["order"]):
                busy = sum(s["us"] for s in steps)
                costly = [s for s in steps if s["us"] >= 20]
                lines.append(f"  slot {slot}: {len(steps)} ops, {busy / 1e3:.3f} ms busy; "
                             f"ops of 20 us or more, in order (start-finish us):")  # fmt: skip
                lines += [f"    {s['start_us']:8.0f}-{s['finish_us']:<8.0f} {s['op']:<24} "
                          f"{_short(s['unit'], width)}" for s in costly]  # fmt: skip
            lines.append(f"  control edges added: {len(plan['control_edges'])}")
            pool, inline = measured["unscheduled_pool"], measured["unscheduled_inline"]
            text = (
                f"  predicted: {plan['predicted_us'] / 1e3:.3f} ms scheduled (traced costs), "
                f"{serial / 1e3:.3f} ms serial; measured: unscheduled {pool:.3f} ms on TF's "
                f"inter-op pool, {inline:.3f} ms in the calling thread"
            )
            if "scheduled" in measured:
                text += (
                    f"; scheduled {measured['scheduled']:.3f} ms ({measured['speedup']:.2f}x the "
                    f"faster unscheduled run; outputs "
                    f"{'identical' if measured['identical_outputs'] else 'DIFFER'})"
                )
            else:
                text += "; nothing to schedule"
            lines.append(text)
    return "\n".join(lines)


def _short(name: str, width: int) -> str:
    return name if len(name) <= width else "…" + name[-(width - 1) :]


if __name__ == "__main__":
    sys.exit(main())
