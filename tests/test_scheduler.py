"""The operator scheduler: identical outputs on every zoo model (original and structured
signatures), cost models through JSON, the list-scheduling policy, auto's fall-back when a
schedule is slower, --scheduler on/off through the server, lanes, and tfrec-schedule.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import graph_pb2
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

from benchmarks.models import NAMES, Sidecar, build
from benchmarks.workloads import Workload
from saved_model_tools import convert
from server.assemble import validate as _validate
from server.flags import StartupError
from tests.conftest import COUNTER
from tfrec.base.settings import Settings
from tfrec.runtime.lanes import ServerLanes
from tfrec.runtime.session_group import GroupOptions
from tfrec.runtime.trial import Trial
from tfrec.schedule import costmodel, planner
from tfrec.schedule import scheduled as scheduling
from tfrec.schedule.costmodel import Bucket, CostModel, Trace
from tfrec.serving.servable import Servable, session_config
from tfrec_tools import schedule_cli

TWIN = "serving_default_structured"
BRANCHES, WIDTH = 4, 384


def branchy(base: Path, version: int = 1) -> Path:
    """A TF1 model with BRANCHES independent MatMul chains over one input, summed: TF's
    inter-op pool runs the chains concurrently, a one-slot schedule runs them in turn."""
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, WIDTH], name="x")
        outs = []
        for b in range(BRANCHES):
            h = x
            for i in range(3):
                w = tf.compat.v1.get_variable(
                    f"w{b}_{i}", [WIDTH, WIDTH], initializer=tf.random_normal_initializer(0, 0.05)
                )
                h = tf.math.tanh(tf.matmul(h, w))
            outs.append(h)
        y = tf.identity(tf.add_n(outs), name="y")
        session = tf.compat.v1.Session(graph=graph)
        session.run(tf.compat.v1.global_variables_initializer())
        path = base / str(version)
        tf.compat.v1.saved_model.simple_save(session, str(path), {"x": x}, {"y": y})
    session.close()
    return path


def warmup(version_dir: Path, rows: list[int], copies: int = 1) -> None:
    path = version_dir / "assets.extra" / "tf_serving_warmup_requests"
    path.parent.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for n in rows * copies:
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "m"
            request.inputs["x"].CopyFrom(
                tf.make_tensor_proto(rng.standard_normal((n, WIDTH)).astype(np.float32))
            )
            log = prediction_log_pb2.PredictionLog()
            log.predict_log.request.CopyFrom(request)
            writer.write(log.SerializeToString())


def load(path: Path, mode: str | None = None, **options) -> Servable:  # type: ignore[no-untyped-def]
    sched = (
        None
        if mode is None
        else scheduling.ServerScheduling(scheduling.SchedulerOptions(mode, **options))
    )
    return Servable.load("m", 1, path, ["serve"], session_config(0, 0), scheduling=sched)


def traced(servable: Servable, signature: str, calls: list[dict[str, np.ndarray]]) -> Trace:
    sig = servable.signatures[signature]
    trace = Trace(servable._session, list(sig.inputs.values()), list(sig.outputs.values()))
    for inputs in calls:
        trace(*[inputs[a] for a in sig.inputs])
    return trace


def run_copy(servable: Servable, copy: planner.Copy, args: list[np.ndarray]) -> list:
    scheduler_ = scheduling.OpScheduler(
        scheduling.SchedulerOptions("on"), servable._session, 2, model="m", version=1
    )
    feeds, fetches = scheduler_._import(copy)
    return servable._session.run(fetches, dict(zip(feeds, args, strict=True)))


# ---------------------------------------------------------------------------- identical outputs


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every zoo model at tiny scale, converted: serving_default and its structured twin."""
    out = tmp_path_factory.mktemp("zoo")
    converted = {}
    for name in NAMES:
        path = build(name, "tiny", out / "original")
        converted[name] = out / "converted" / name / "1"
        convert(path, converted[name], Sidecar.read(path).user_inputs)
    return converted


@pytest.mark.parametrize("name", NAMES)
def test_scheduled_graphs_give_identical_outputs_on_the_zoo(
    zoo: dict[str, Path], name: str
) -> None:
    """Every op ordered (order_us=0), both realisations, original and structured signatures."""
    path = zoo[name]
    servable = Servable.load("m", 1, path, ["serve"], _devices(2))
    workload = Workload.load(path)
    for signature, form in (("serving_default", "flat"), (TWIN, "structured")):
        calls = [workload.request(n, seed=n, form=form) for n in (3, 40)]
        trace = traced(servable, signature, calls)
        graph = planner.Graph(trace.graphs[0])
        model = trace.model(signature)
        sig = servable.signatures[signature]
        for realisation in planner.REALISATIONS:
            for inputs in calls:
                args = [inputs[a] for a in sig.inputs]
                costs = model.nearest(len(args[0]))
                plan = planner.plan(graph, costs, 2, realisation, order_us=0.0)
                assert plan.edges, (signature, realisation)
                device = (
                    (lambda s: f"/device:CPU:{s}") if realisation == "place" else (lambda s: "")
                )
                got = run_copy(servable, planner.rewrite(graph, plan, device), args)
                want = servable.run(dict(zip(sig.inputs.values(), args, strict=True)),
                                    list(sig.outputs.values()))  # fmt: skip
                for a, b in zip(got, want, strict=True):
                    np.testing.assert_array_equal(a, b)
    servable.close()


def _devices(n: int):  # type: ignore[no-untyped-def]
    config = session_config(0, 0)
    config.device_count["CPU"] = n
    return config


# ---------------------------------------------------------------------------- cost models


def test_cost_model_round_trips_through_its_json(tmp_path: Path) -> None:
    path = branchy(tmp_path / "b")
    servable = load(path)
    rng = np.random.default_rng(1)
    calls = [{"x": rng.standard_normal((n, WIDTH)).astype(np.float32)} for n in (8, 8, 8, 100)]
    model = traced(servable, "serving_default", calls).model("serving_default")
    assert set(model.buckets) == {8, 128}
    costs = model.buckets[8]
    assert costs.rows == [8, 8]  # the first run of a bucket is left out
    assert any(op == "_MklMatMul" or op == "MatMul" for op, _ in costs.nodes.values())
    text = costmodel.dumps([model])
    (again,) = costmodel.loads(text)
    assert again == CostModel.from_json(json.loads(json.dumps(model.to_json())))
    assert again.to_json() == model.to_json()
    assert again.nearest(5) is again.buckets[8] and again.nearest(3000) is again.buckets[128]
    costmodel.write(tmp_path / "c.json", [model])
    assert costmodel.read(tmp_path / "c.json")[0].to_json() == model.to_json()
    assert costmodel.read(tmp_path / "missing.json") == []
    servable.close()


def test_buckets_are_powers_of_two() -> None:
    assert [costmodel.bucket_of(r) for r in (0, 1, 2, 3, 100, 128, 129)] == [1, 1, 2, 4, 128,
                                                                              128, 256]  # fmt: skip


# ---------------------------------------------------------------------------- the policy


def _graph(edges: dict[str, list[str]]) -> planner.Graph:
    graph = graph_pb2.GraphDef()
    for name, inputs in edges.items():
        node = graph.node.add(name=name, op="Identity" if inputs else "Placeholder")
        node.input.extend(inputs)
    return planner.Graph(graph)


def test_ranks_are_cost_plus_the_longest_chain_after() -> None:
    # x -> a (100) -> c (10) ; x -> b1 (40) -> b2 (40) -> c ; c -> out
    graph = _graph({"x": [], "a": ["x"], "b1": ["x"], "b2": ["b1"], "c": ["a", "b2"],
                    "out": ["c"]})  # fmt: skip
    us = {"x": 1, "a": 100, "b1": 40, "b2": 40, "c": 10, "out": 1}
    costs = Bucket([1], 0.0, 0.0, {n: ("Identity", t) for n, t in us.items()})
    plan = planner.plan(graph, costs, 2, hop_us=0.0)
    assert plan.rank["c"] == 11 and plan.rank["a"] == 111 and plan.rank["b1"] == 91
    assert plan.critical_path_length == 112
    assert [s.unit for s in plan.critical_path] == ["x", "a", "c", "out"]
    assert plan.slot_of["a"] != plan.slot_of["b1"]  # the branches run side by side
    assert plan.predicted_us == pytest.approx(112) and plan.serial_us == pytest.approx(192)
    one = planner.plan(graph, costs, 1, hop_us=0.0)
    assert one.predicted_us == pytest.approx(192)
    assert ("a", "b1") in one.edges or ("b1", "a") in one.edges  # serialised by an edge


def test_rewrite_orders_places_and_renames(tmp_path: Path) -> None:
    servable = load(branchy(tmp_path / "b"))
    trace = traced(servable, "serving_default", [{"x": np.ones((64, WIDTH), np.float32)}] * 3)
    graph = planner.Graph(trace.graphs[0])
    plan = planner.plan(graph, trace.model("s").buckets[64], 2, "place", order_us=0.0)
    copy = planner.rewrite(graph, plan, lambda s: f"/device:CPU:{s}")
    nodes = {n.name: n for n in copy.graph.node}
    assert not any(name.startswith("_") for name in nodes)  # _Arg, _Retval renamed

    def name(n: str) -> str:
        return f"tfrec{n}" if n.startswith("_") else n

    assert [nodes[f.split(":")[0]].op for f in copy.feeds] == ["Placeholder"]
    assert [nodes[f.split(":")[0]].op for f in copy.fetches] == ["Identity"]
    assert plan.edges and all(f"^{name(a)}" in nodes[name(b)].input for a, b in plan.edges)
    assert {n.device for n in copy.graph.node} == {"/device:CPU:0", "/device:CPU:1"}
    variables = {n.name for n in trace.graphs[0].node if n.op in ("VarHandleOp", "VariableV2")}
    assert set(copy.state) == variables and not variables & set(nodes)  # input-mapped
    servable.close()


def test_graphs_that_change_state_are_never_scheduled() -> None:
    servable = load(next(p for p in COUNTER.iterdir() if p.name.isdigit()), "auto")
    graph_def = servable._session.graph.as_graph_def()
    incr = servable.signatures["incr_counter"].outputs["output"]
    get = servable.signatures["get_counter"].outputs["output"]
    assert planner.state_writers(graph_def, [incr]) == ["AssignAdd"]
    assert planner.state_writers(graph_def, [get]) == []
    for _ in range(3):
        servable.run({}, [incr])
    servable.settle()  # nothing replayed
    assert float(servable.run({}, [get])[0]) == 3.0
    assert servable.scheduler is not None
    (decision,) = [d for d in servable.scheduler.decisions() if d.signature == "incr_counter"]
    assert not decision.scheduled and "changes state" in decision.reason
    servable.close()


# ---------------------------------------------------------------------------- auto, on, off


def test_auto_falls_back_when_the_schedule_is_slower(tmp_path: Path, monkeypatch) -> None:
    """A schedule that serialises the independent branches (one slot, every op ordered) is
    slower than TF's inter-op pool running them side by side: auto keeps the unscheduled."""
    path = branchy(tmp_path / "b")
    warmup(path, [64])
    real = planner.plan

    def serial(graph, costs, slots, realisation="order", **kw):  # type: ignore[no-untyped-def]
        return real(graph, costs, 1, realisation, order_us=0.0)

    monkeypatch.setattr(planner, "plan", serial)
    servable = load(path, "auto")
    request = {"x:0": np.random.default_rng(2).standard_normal((64, WIDTH)).astype(np.float32)}
    want = load(path).run(request, ["y:0"])
    for _ in range(2):
        servable.run(request, ["y:0"])  # as the warmup replays would
    servable.settle()
    assert servable.scheduler is not None
    (decision,) = servable.scheduler.decisions()
    assert not decision.scheduled, decision
    assert decision.plan is not None and decision.plan.slots == 1
    assert decision.scheduled_ms > 0 and decision.unscheduled_ms > 0  # both were timed
    np.testing.assert_array_equal(servable.run(request, ["y:0"])[0], want[0])
    servable.close()


def test_judging_keeps_only_a_faster_schedule() -> None:
    class Owner:
        options = scheduling.SchedulerOptions("auto")  # MIN_GAIN: 5% faster at least
        metrics = None
        model, version = "m", 1
        sampling = True

    class Baseline:
        def mode_of(self, bucket: int) -> int:
            return 0

        def unscheduled(self) -> str:
            return "unscheduled"

        def fn_of(self, bucket: int):  # type: ignore[no-untyped-def]
            return self.unscheduled

    runner = scheduling.ScheduledRunner(
        Owner(),  # type: ignore[arg-type]
        Baseline(),  # type: ignore[arg-type]
        ((), ()),
        "s",
        scheduling._Shared(),
        None,
    )
    for sched_s, kept in ((0.9, True), (0.99, False), (1.2, False)):
        state = scheduling._Bucket(scheduled=lambda: "scheduled")
        trial = Trial(20, Owner.options.min_gain)
        trial.times[0].extend([1.0] * 20)
        trial.times[1].extend([sched_s] * 20)
        runner._judge(state, 128, trial)
        assert state.fn is not None and state.fn() == ("scheduled" if kept else "unscheduled")
        assert runner.decisions[128].scheduled is kept
        assert runner.decisions[128].unscheduled_ms == pytest.approx(1000.0)


def test_on_forces_the_schedule_and_off_builds_none(serve, tmp_path: Path) -> None:
    base = tmp_path / "b"
    path = branchy(base)
    warmup(path, [64, 300])
    cache = tmp_path / "cache"
    on = serve(model_name="m", model_base_path=str(base), scheduler="on",
               scheduler_cache_dir=str(cache))  # fmt: skip
    off = serve(model_name="m", model_base_path=str(base), scheduler="off")
    servable = on.manager.servables()[0]
    assert servable.scheduler is not None
    decisions = servable.scheduler.decisions()
    assert {d.bucket for d in decisions} == {64, 512}
    assert all(d.scheduled and d.reason == "--scheduler=on" for d in decisions)
    assert off.manager.servables()[0].scheduler is None
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "m"
    x = np.random.default_rng(3).standard_normal((300, WIDTH)).astype(np.float32)
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(x))
    assert on.predict.Predict(request) == off.predict.Predict(request)
    page = on.server.metrics.render().decode()
    assert ':tfrec:scheduler_decisions{model_name="m",graph="scheduled"} 2' in page
    report = json.loads((cache / "m" / "1" / scheduling.CACHE_FILE).read_text())
    assert {d["graph"] for d in report["decisions"]} == {"scheduled"}
    assert set(report["cost_models"][0]["buckets"]) == {"64", "512"}
    with pytest.raises(StartupError, match="--scheduler must be auto, on or off"):
        _validate(Settings(model_base_path=str(base), scheduler="sometimes"))


def test_lanes_schedule_their_pools(tmp_path: Path) -> None:
    path = branchy(tmp_path / "b")
    lanes = ServerLanes(GroupOptions.resolve(2, 1, 2))
    sched = scheduling.ServerScheduling(scheduling.SchedulerOptions("on"))
    servable = Servable.load("m", 1, path, ["serve"], session_config(0, 0), lanes=lanes,
                             scheduling=sched)  # fmt: skip
    reference = load(path)
    x = np.random.default_rng(4).standard_normal((128, WIDTH)).astype(np.float32)
    key = (("x:0",), ("y:0",))
    assert servable.lanes is not None and servable.scheduler is not None
    for lane in (0, 1):
        for _ in range(8):
            servable.lanes.run_on(lane, key, [x])
    servable.settle()
    assert {(d.bucket, d.scheduled) for d in servable.scheduler.decisions()} == {(128, True)}
    for lane in (0, 1):
        np.testing.assert_array_equal(servable.lanes.run_on(lane, key, [x])[0],
                                      reference.run({"x:0": x}, ["y:0"])[0])  # fmt: skip
    servable.close()
    reference.close()


# ---------------------------------------------------------------------------- tfrec-schedule


def test_explain_and_profile(tmp_path: Path, capsys) -> None:
    path = branchy(tmp_path / "b")
    assert (
        schedule_cli.main(["explain", str(path), "--n", "64", "--rounds", "2", "--runs", "2"]) == 0
    )
    text = capsys.readouterr().out
    assert "serving_default, rows 64 (bucket 64)" in text
    for part in ("critical path", "slot 0:", "slot 1:", "control edges added", "predicted:",
                 "measured: unscheduled", "outputs identical"):  # fmt: skip
        assert part in text, part
    assert schedule_cli.main(["profile", str(path), "--n", "64", "512", "--runs", "2"]) == 0
    (model,) = costmodel.read(path / costmodel.COST_FILE)
    assert set(model.buckets) == {64, 512}
    assert "wrote" in capsys.readouterr().out
    # The server takes the stored costs: one traced run per bucket is enough.
    servable = load(path, "on", profile_runs=50)
    x = np.ones((64, WIDTH), np.float32)
    servable.run({"x:0": x}, ["y:0"])
    servable.settle()
    assert servable.scheduler is not None
    (decision,) = servable.scheduler.decisions()
    assert decision.scheduled
    servable.close()
    assert schedule_cli.main(["explain", str(path), "--n", "64", "--rounds", "1", "--runs", "2",
                              "--json"]) == 0  # fmt: skip
    doc = json.loads(capsys.readouterr().out)
    plan = doc["signatures"]["serving_default"]["buckets"]["64"]["plan"]
    assert plan["slots"] >= 1 and plan["critical_path"] and "predicted_us" in plan


def test_conversion_report_explains_the_schedule(tmp_path: Path) -> None:
    """tfrec-convert --report --schedule: the explanation is in the summary, the HTML page
    and the JSON report, for the original signature and its structured twin."""
    from saved_model_tools import cli
    from saved_model_tools.report import REPORT, REPORT_JSON

    src = build("mmoe", "tiny", tmp_path / "original")
    dst = tmp_path / "converted" / "1"
    user = ",".join(Sidecar.read(src).user_inputs)
    argv = [str(src), str(dst), "--user-inputs", user, "--report", "--schedule"]
    assert cli.main(argv) == 0
    doc = json.loads((dst / REPORT_JSON).read_text())["schedule"]
    assert doc["version_dir"] == str(dst)
    for name in ("serving_default", TWIN):
        buckets = doc["signatures"][name]["buckets"]
        assert set(buckets) == {"128", "1024"}, name
        assert buckets["128"]["plan"]["critical_path"], name
    page = (dst / REPORT).read_text()
    assert "Operator schedules" in page and f"{TWIN}, rows 1000 (bucket 1024)" in page


def test_generated_requests_follow_the_signature() -> None:
    from tensorflow.core.protobuf import meta_graph_pb2

    signature = meta_graph_pb2.SignatureDef()
    signature.inputs["ids"].dtype = tf.int64.as_datatype_enum
    signature.inputs["ids"].tensor_shape.dim.add(size=-1)
    signature.inputs["ids"].tensor_shape.dim.add(size=5)
    signature.inputs["user"].dtype = tf.float32.as_datatype_enum
    signature.inputs["user"].tensor_shape.dim.add(size=1)
    signature.inputs["name"].dtype = tf.string.as_datatype_enum
    signature.inputs["name"].tensor_shape.dim.add(size=-1)
    out = schedule_cli.generated(signature, 7, np.random.default_rng(0))
    assert out["ids"].shape == (7, 5) and out["ids"].dtype == np.int64 and out["ids"].max() <= 1
    assert out["user"].shape == (1,) and out["user"].dtype == np.float32
    assert out["name"].shape == (7,) and out["name"][0] == b""
    again = schedule_cli.generated(signature, 7, np.random.default_rng(0))
    np.testing.assert_array_equal(out["user"], again["user"])


def test_server_flag_parses(tmp_path: Path) -> None:
    from server import flags

    settings, explicit = flags.parse(["--scheduler=off", f"--scheduler_cache_dir={tmp_path}"])
    assert settings.scheduler == "off" and settings.scheduler_cache_dir == str(tmp_path)
    assert explicit == ["scheduler", "scheduler_cache_dir"]
