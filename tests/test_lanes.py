"""SessionGroup lanes: same outputs on every lane, one shared state, dispatch, limits, affinity,
reloads, batching, metrics, and K=1 unchanged.

In-process tests cannot rely on TF_OVERRIDE_GLOBAL_THREADPOOL (TF reads it when the test
process creates its first device), so thread pools and CPU pinning are checked on the real
server in a subprocess; outputs do not depend on pools and are checked in-process.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import config_pb2
from tensorflow_serving.apis import classification_pb2, inference_pb2, regression_pb2

from benchmarks.models import build
from benchmarks.workloads import Workload
from server.assemble import validate as _validate
from server.flags import StartupError
from tests import structured_model
from tests.conftest import (
    COUNTER,
    HALF_PLUS_THREE,
    HALF_PLUS_TWO,
    TESTDATA,
    TF2,
    TWO_VERSIONS,
    copy_model,
    free_port,
    wait_for,
)
from tests.test_grpc_api import example_input, predict_request
from tfrec.base import affinity
from tfrec.base.errors import ResourceExhausted, ServingError
from tfrec.base.settings import Settings
from tfrec.runtime import lane_dispatch as lanes_module
from tfrec.runtime import session_group
from tfrec.runtime.lanes import HEAVY_FLOOR_S, Cost, Dispatcher, ServerLanes, rows_of
from tfrec.runtime.session_group import GroupOptions, SessionGroup
from tfrec.serving.servable import Servable, session_config

ROOT = Path(__file__).resolve().parents[1]
TF_SERVING_MODELS = [
    HALF_PLUS_TWO,
    HALF_PLUS_THREE,
    TF2,
    TESTDATA / "matrix_half_plus_two",
    TESTDATA / "saved_model_half_plus_two_mlmd",
]
# (lanes, intra-op, multi_stream): pools only; replicas on logical CPU devices; the GPU path.
MODES = [(2, 1, False), (3, 2, False), (2, 1, True)]


def version_dir(base: Path) -> Path:
    return next(p for p in sorted(base.iterdir()) if p.name.isdigit())


def load(path: Path, lanes: int = 0, intra: int = 1, multi_stream: bool = False) -> Servable:
    group = None
    if lanes:
        group = ServerLanes(GroupOptions.resolve(lanes, intra, 1, multi_stream=multi_stream))
    return Servable.load("m", 1, path, ["serve"], session_config(0, 0), lanes=group)


def example_tensor(n: int = 3) -> np.ndarray:
    out = np.empty(n, dtype=object)
    for i in range(n):
        example = tf.train.Example()
        for name in ("x", "x2"):
            example.features.feature[name].float_list.value.append(float(i + 1))
        out[i] = example.SerializeToString()
    return out


def signature_inputs(servable: Servable, name: str) -> dict[str, np.ndarray]:
    """Valid feeds for every input of a TF-Serving test model's signature."""
    feeds = {}
    for alias, tensor in servable.signatures[name].inputs.items():
        info = servable.signatures[name].definition.inputs[alias]
        dtype = servable.feed_dtype(tensor)
        if dtype is not None and dtype.name == "string":
            feeds[tensor] = example_tensor()
            continue
        dims = [3 if d.size < 0 else d.size for d in info.tensor_shape.dim] or [3]
        if info.tensor_shape.unknown_rank:
            dims = [3, 1]
        feeds[tensor] = np.arange(np.prod(dims), dtype=np.float32).reshape(dims)
    return feeds


def assert_lanes_match(reference: Servable, servable: Servable, signature: str, feeds) -> None:
    assert servable.lanes is not None
    fetches = list(servable.signatures[signature].outputs.values())
    expected = reference.run(feeds, fetches)
    key = (tuple(feeds), tuple(fetches))
    for lane in range(len(servable.lanes.group.lanes)):
        for inline in (False, True):  # on the lane's pool; a light run on the caller's thread
            got = servable.lanes.run_on(lane, key, list(feeds.values()), inline=inline)
            for a, b in zip(got, expected, strict=True):
                np.testing.assert_array_equal(a, b)
    for a, b in zip(servable.run(feeds, fetches), expected, strict=True):  # dispatched
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------------- same outputs


@pytest.mark.parametrize("base", TF_SERVING_MODELS, ids=lambda p: p.name)
def test_every_lane_matches_one_session_on_tfserving_models(base: Path) -> None:
    path = version_dir(base)
    reference = load(path)
    for lanes, intra, multi_stream in MODES:
        servable = load(path, lanes, intra, multi_stream)
        for name in servable.signatures:
            if name != "__saved_model_init_op":
                assert_lanes_match(reference, servable, name, signature_inputs(servable, name))
        servable.close()
    reference.close()


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("zoo")
    for name in ("wdl", "dlrm", "dcn_v2", "din", "dien", "mmoe", "user_heavy"):
        build(name, "tiny", out)
    return out


@pytest.mark.parametrize("model", ["wdl", "dlrm", "dcn_v2", "din", "dien", "mmoe", "user_heavy"])
def test_every_lane_matches_one_session_on_the_zoo(zoo: Path, model: str) -> None:
    path = zoo / model / "1"
    reference = load(path)
    request = Workload.load(path).request(17, seed=1)
    signature = reference.signatures["serving_default"]
    feeds = {signature.inputs[alias]: value for alias, value in request.items()}
    for lanes, intra, multi_stream in MODES:
        servable = load(path, lanes, intra, multi_stream)
        assert_lanes_match(reference, servable, "serving_default", feeds)
        servable.close()
    reference.close()


def test_structured_signature_on_every_lane(tmp_path: Path) -> None:
    path = structured_model.build(tmp_path)
    reference = load(path)
    rng = np.random.default_rng(0)
    flat = {
        "user_id:0": np.full(5, 7, np.int64),
        "user_hist:0": np.tile(rng.integers(0, 100, structured_model.SEQ), (5, 1)),
        "item_id:0": rng.integers(0, 500, 5),
    }
    for lanes, intra, multi_stream in MODES:
        servable = load(path, lanes, intra, multi_stream)
        for name in ("serving_default", "serving_default_structured"):
            signature = servable.signatures[name]
            feeds = {
                signature.inputs[alias]: flat[f"{alias}:0"][:1]
                if name.endswith("structured") and alias.startswith("user")
                else flat[f"{alias}:0"]
                for alias in signature.inputs
            }
            assert_lanes_match(reference, servable, name, feeds)
        servable.close()
    reference.close()


def test_lanes_share_one_state(tmp_path: Path) -> None:
    """The counter model's variable: what one lane adds, every lane sees (one copy)."""
    for lanes, intra, multi_stream in MODES[:2]:
        servable = load(version_dir(COUNTER), lanes, intra, multi_stream)
        assert servable.lanes is not None
        sig = {name: s.outputs["output"] for name, s in servable.signatures.items()}
        for lane in range(lanes):
            out = servable.lanes.run_on(lane, ((), (sig["incr_counter"],)), [])
            assert float(out[0]) == lane + 1
        got = servable.lanes.run_on(lanes - 1, ((), (sig["get_counter"],)), [])
        assert float(got[0]) == lanes
        servable.close()


def test_multi_stream_path_copies_dense_variables_and_keeps_tables(zoo: Path, monkeypatch) -> None:
    """The GPU path on logical CPU devices: small variables copied per lane, big ones shared."""
    monkeypatch.setattr(session_group, "DENSE_COPY_MAX_BYTES", 4096)
    servable = load(zoo / "dlrm" / "1", 2, 1, multi_stream=True)
    assert servable.lanes is not None
    graph = servable.lanes.session.graph
    ops = graph.get_operations()
    copies = {op.name.split("/", 1)[1] for op in ops if op.name.startswith("tfrec_lane0_copy/")}
    sizes = {
        op.name: np.prod(tf.TensorShape(op.get_attr("shape")).as_list()) * 4
        for op in ops
        if op.type == "VarHandleOp" and not op.name.startswith("tfrec_")
    }
    assert copies == {name for name, size in sizes.items() if size <= 4096}  # dense: copied
    assert any(size > 4096 for size in sizes.values())  # the tables stay on the host
    devices = {op.device for op in graph.get_operations() if op.name.startswith("tfrec_lane1_")}
    assert devices == {"/device:CPU:2"}
    servable.close()


# ---------------------------------------------------------------------------- dispatch


KEY = (("x:0",), ("y:0",))
OTHER = (("z:0",), ("y:0",))


def test_cost_fit_follows_rows() -> None:
    cost = Cost()
    for rows in (10, 1000, 10, 500):  # 1 ms + 9 us a row
        cost.observe(rows, 0.001 + 9e-6 * rows)
    assert cost.estimate(10) == pytest.approx(0.00109)
    assert cost.estimate(2000) == pytest.approx(0.019)
    for _ in range(200):  # a flood of light runs, some slowed down by a busy neighbour
        cost.observe(10, 0.00109)
        cost.observe(12, 0.05)
    assert cost.estimate(2000) == pytest.approx(0.019)
    before = cost.estimate(1000)
    for _ in range(16):  # the fast 1000-row run leaves the window: the fit follows
        cost.observe(1000, 0.03)
    assert cost.estimate(1000) > before + 0.01
    single = Cost()
    single.observe(100, 0.002)
    assert single.estimate(200) == pytest.approx(0.004)
    assert rows_of([np.zeros((1, 3)), np.zeros(7), np.float32(1)]) == 7


def test_least_work_with_rotation_on_ties() -> None:
    d = Dispatcher(3, capacity=10, policy="least_work")
    tickets = [d.acquire(KEY, 10) for _ in range(3)]
    assert sorted(t.lane for t in tickets) == [0, 1, 2]
    big = d.acquire(KEY, 1000)
    assert d.in_flight[big.lane] == 2
    assert d.acquire(KEY, 10).lane != big.lane


def heavy_and_light(policy: str) -> tuple[Dispatcher, Cost]:
    d = Dispatcher(2, capacity=10, policy=policy)
    d._costs[KEY] = cost = Cost()
    cost.a, cost.b = 0.0, HEAVY_FLOOR_S / 10  # 10 rows: 1 ms, 1000 rows: 100 ms
    for _ in range(8):  # light history sets the threshold
        d.release(d.acquire(KEY, 10), KEY, 10, 0.0, ok=False)
    return d, cost


def test_reserve_keeps_a_lane_free_of_heavy_work() -> None:
    d, _ = heavy_and_light("reserve")
    heavy = [d.acquire(KEY, 1000) for _ in range(3)]
    assert all(t.heavy for t in heavy)
    assert len({t.lane for t in heavy}) == 1  # every heavy run on one lane
    light = d.acquire(KEY, 10)
    assert not light.heavy and light.lane != heavy[0].lane
    # Plain least work spreads the heavy runs, so a light one lands next to one.
    d, _ = heavy_and_light("least_work")
    assert len({d.acquire(KEY, 1000).lane for _ in range(2)}) == 2


def test_light_runs_take_the_callers_thread_only_while_heavy_ones_run() -> None:
    d, _ = heavy_and_light("reserve")
    d.inline_light = True
    assert not d.acquire(KEY, 10).inline  # nothing heavy in flight: the lane's pool
    heavy = d.acquire(KEY, 1000)
    assert heavy.heavy and not heavy.inline  # heavy runs keep to their pools
    light = d.acquire(KEY, 10)
    assert light.inline and light.lane != heavy.lane
    d.release(heavy, KEY, 1000, 0.0, ok=False)
    assert not d.acquire(KEY, 10).inline
    assert not Dispatcher(2, 10, "least_work", inline_light=True).inline_light  # no light/heavy


def test_the_reference_remembers_light_runs_for_a_while(monkeypatch) -> None:
    d, _ = heavy_and_light("reserve")
    clock = [time.monotonic()]
    monkeypatch.setattr(lanes_module.time, "monotonic", lambda: clock[0])
    for _ in range(50):  # a burst of heavy runs: still heavy, one lane stays free
        ticket = d.acquire(KEY, 1000)
        assert ticket.heavy
        d.release(ticket, KEY, 1000, 0.0, ok=False)
    clock[0] += 4 * lanes_module.REFERENCE_TAU_S  # light requests stopped long ago
    assert not d.acquire(KEY, 1000).heavy


def test_light_runs_stay_light_when_the_fit_drifts() -> None:
    # Seen on WDL under a heavy burst: the fit's intercept rose from ~0 to 1.5 ms, so a
    # 10-row run was estimated at 1.57 ms; against the reference priced at 0.1 ms when it was
    # seen, every light request became "heavy" and queued behind the heavy runs.
    d = Dispatcher(2, capacity=10, policy="reserve")
    d._costs[KEY] = cost = Cost()
    cost.a, cost.b = 0.0, 1e-5  # after warmup: 10 rows 0.1 ms, 1000 rows 10 ms
    d.release(d.acquire(KEY, 10), KEY, 10, 0.0, ok=False)
    cost.a, cost.b = 1.5e-3, 7.4e-6  # under load: 10 rows 1.57 ms, 1000 rows 8.9 ms
    heavy = d.acquire(KEY, 1000)
    light = d.acquire(KEY, 10)
    assert heavy.heavy and not light.heavy and light.lane != heavy.lane


def test_only_heavy_traffic_uses_every_lane() -> None:
    d = Dispatcher(2, capacity=50, policy="reserve")
    for _ in range(40):
        d.acquire(KEY, 1000)
    assert d.in_flight == [20, 20] and d.heavy == [0, 0]


def test_full_lanes_raise_resource_exhausted() -> None:
    d = Dispatcher(2, capacity=1, label="m v1")
    d.acquire(KEY, 1)
    d.acquire(KEY, 1)
    with pytest.raises(ResourceExhausted, match="m v1: all 2 lanes hold 1 requests in flight"):
        d.acquire(KEY, 1)
    d, _ = heavy_and_light("reserve")
    d.capacity = 1
    d.acquire(KEY, 1000)
    with pytest.raises(ResourceExhausted, match="kept free of heavy work"):
        d.acquire(KEY, 1000)
    assert d.acquire(KEY, 10).lane in (0, 1)  # the free lane still takes a light request


def test_only_solo_runs_refine_the_cost() -> None:
    d = Dispatcher(1, capacity=10, policy="least_work")
    a = d.acquire(KEY, 10)
    b = d.acquire(KEY, 10)  # shares the lane with a
    d.release(b, KEY, 10, 5.0, ok=True)
    d.release(a, KEY, 10, 5.0, ok=True)
    assert KEY not in d._costs
    d.release(d.acquire(OTHER, 10), OTHER, 10, 0.002, ok=True)
    assert d.estimate(OTHER, 20) == pytest.approx(0.004)


# ---------------------------------------------------------------------------- the server


def test_grpc_apis_on_lanes_match_one_session(serve) -> None:
    plain = serve(model_name="default", model_base_path=str(HALF_PLUS_TWO))
    lanes = serve(
        model_name="default",
        model_base_path=str(HALF_PLUS_TWO),
        session_num_per_group=2,
        tensorflow_intra_op_parallelism=2,
    )
    assert lanes.manager.servables()[0].lanes is not None
    for _ in range(4):  # spread over both lanes
        request = predict_request(x=[[1.0], [2.0], [5.0]])
        assert lanes.predict.Predict(request) == plain.predict.Predict(request)
    classify = classification_pb2.ClassificationRequest()
    classify.model_spec.name = "default"
    classify.model_spec.signature_name = "classify_x_to_y"
    example_input(classify, x=4.0)
    assert lanes.predict.Classify(classify) == plain.predict.Classify(classify)
    regress = regression_pb2.RegressionRequest()
    regress.model_spec.name = "default"
    regress.model_spec.signature_name = "regress_x_to_y"
    example_input(regress, x=4.0)
    assert lanes.predict.Regress(regress) == plain.predict.Regress(regress)
    multi = inference_pb2.MultiInferenceRequest()
    for signature in ("regress_x_to_y", "regress_x_to_y2"):
        multi.tasks.add(model_spec={"name": "default", "signature_name": signature},
                        method_name="tensorflow/serving/regress")  # fmt: skip
    example_input(multi, x=1.0)
    assert lanes.predict.MultiInference(multi) == plain.predict.MultiInference(multi)


def test_resource_exhausted_when_every_lane_is_full(serve) -> None:
    running = serve(
        model_name="default",
        model_base_path=str(HALF_PLUS_TWO),
        session_num_per_group=2,
        session_group_queue_capacity=1,
    )
    lanes = running.manager.servables()[0].lanes
    held = [lanes.dispatcher.acquire(KEY, 1) for _ in range(2)]  # two runs in flight
    with pytest.raises(grpc.RpcError) as info:
        running.predict.Predict(predict_request(x=[2.0]))
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert info.value.details() == (
        "default v123: all 2 lanes hold 1 requests in flight "
        "(--session_group_queue_capacity). Retry later"
    )
    for ticket in held:
        lanes.dispatcher.release(ticket, KEY, 1, 0.0, ok=False)
    assert list(running.predict.Predict(predict_request(x=[2.0])).outputs["y"].float_val) == [3.0]
    text = running.server.metrics.render().decode()
    assert ':tfrec:lane_rejections{model_name="default"} 1' in text


def test_lanes_in_metrics_and_start_up_log(serve, caplog) -> None:
    caplog.set_level("INFO")
    running = serve(
        model_name="default",
        model_base_path=str(HALF_PLUS_TWO),
        session_num_per_group=2,
        tensorflow_inter_op_parallelism=1,
    )
    for _ in range(4):
        running.predict.Predict(predict_request(x=[2.0]))
    text = running.server.metrics.render().decode()
    for lane in ("0", "1"):
        assert f':tfrec:lane_in_flight{{model_name="default",lane="{lane}"}} 0' in text
        labels = f'model_name="default",version="123",lane="{lane}",pool="inter_op"'
        assert f":tfrec:lane_threads{{{labels}}} 1" in text
    requests = re.findall(r':tfrec:lane_requests\{model_name="default",lane="\d".*\} (\d+)', text)
    assert sum(map(int, requests)) >= 4
    assert ":tfrec:lane_work_in_flight{" in text
    assert "SessionGroup: 2 lanes per model version" in caplog.text
    assert "Session group of {name: default version: 123}: 2 lanes" in caplog.text


def test_lanes_with_batching(serve) -> None:
    running = serve(
        model_name="default",
        model_base_path=str(HALF_PLUS_TWO),
        session_num_per_group=2,
        enable_batching=True,
    )
    errors: list[Exception] = []

    def client(i: int) -> None:
        try:
            for j in range(10):
                x = float(i * 10 + j)
                response = running.predict.Predict(predict_request(x=[[x]]))
                assert list(response.outputs["y"].float_val) == [0.5 * x + 2]
        except Exception as err:
            errors.append(err)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    text = running.server.metrics.render().decode()
    assert ":tfrec:batch_size_count{" in text and ":tfrec:lane_requests{" in text


def test_reload_swaps_groups_without_failing_a_request(serve, tmp_path: Path) -> None:
    base = copy_model(TWO_VERSIONS, tmp_path / "m", versions=["00000123"])
    running = serve(
        model_name="default",
        model_base_path=str(base),
        session_num_per_group=2,
        file_system_poll_wait_seconds=1,
    )
    stop = threading.Event()
    served: list[int] = []
    errors: list[str] = []

    def client() -> None:
        channel_stub = running.predict
        while not stop.is_set():
            try:
                response = channel_stub.Predict(predict_request(x=[[2.0], [4.0]]))
                assert list(response.outputs["y"].float_val) == [3.0, 4.0]
                served.append(response.model_spec.version.value)
            except Exception as err:
                errors.append(repr(err))

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: len(served) > 20, what="requests on version 123")
        shutil.copytree(TWO_VERSIONS / "00000124", base / "00000124")
        wait_for(
            lambda: [s.version for s in running.manager.servables()] == [124] and served[-1] == 124,
            what="version 124 to replace 123",
        )
        count = len(served)
        wait_for(lambda: len(served) > count + 20, what="requests on version 124")
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors
    assert {123, 124} <= set(served)
    assert running.manager.servables()[0].lanes is not None


def test_k1_is_unchanged(serve) -> None:
    assert not Settings().session_group()
    running = serve(model_name="default", model_base_path=str(HALF_PLUS_TWO))
    servable = running.manager.servables()[0]
    assert servable.lanes is None
    running.predict.Predict(predict_request(x=[2.0]))
    (runner,) = [r for _, r in servable.runners.runners()]
    assert len(runner._fns) == 2  # pooled and inline on trial, as before
    assert ":tfrec:lane_in_flight{" not in running.server.metrics.render().decode()


def test_flag_validation() -> None:
    def check(message: str, **flags: object) -> None:
        settings = Settings(model_base_path="/m", **flags)  # type: ignore[arg-type]
        with pytest.raises(StartupError, match=message):
            _validate(settings)

    check("session_num_per_group must be >= 1", session_num_per_group=0)
    check("3 CPU sets for 2 lanes", session_num_per_group=2, session_group_cpusets="0;1;0")
    check("not a CPU or a range", session_num_per_group=2, session_group_cpusets="0;x")
    check("not available", session_num_per_group=1, session_group_cpusets="100000")
    check("reserve or least_work", select_session_policy="rr")
    check("queue_capacity must be >= 1", session_group_queue_capacity=0)
    assert affinity.parse_cpusets("0-1;0", 2) == [frozenset({0, 1}), frozenset({0})]
    assert affinity.format_cpus({0, 1, 2, 5, 7, 8}) == "0-2,5,7-8"


def test_pool_threads_carry_their_names_at_the_os_level() -> None:
    def comm() -> str:
        return Path(f"/proc/self/task/{threading.get_native_id()}/comm").read_text().strip()

    with concurrent.futures.ThreadPoolExecutor(
        1, thread_name_prefix="tfrec-test-pool", initializer=affinity.name_os_thread
    ) as pool:
        assert pool.submit(comm).result() == "tfrec-test-pool"[:15]


def test_thread_counts_are_asserted_before_pinning(monkeypatch) -> None:
    cpu = min(affinity.allowed_cpus())
    options = GroupOptions.resolve(2, 1, 1, cpusets=f"{cpu};{cpu}", per_session_threads=True)
    monkeypatch.setenv(session_group.OVERRIDE_ENV, "1")
    with pytest.raises(ServingError, match="lane 1: found 0 threads of its inter-op pool"):
        session_group._lanes_and_threads(options, {12: "python", 13: "tf_Compute0"})
    created = {10: "tf_Compute0", 11: "tf_Compute1", 12: "python"}
    monkeypatch.setenv(session_group.OVERRIDE_ENV, "0")  # as if TF had one global pool
    with pytest.raises(ServingError, match="lanes need their own intra-op pools"):
        session_group._lanes_and_threads(options, created)


def test_group_options_share_the_cores() -> None:
    cores = len(affinity.allowed_cpus())
    options = GroupOptions.resolve(2, 0, 0)
    assert options.intra_op == options.inter_op == max(1, cores // 2)
    config = GroupOptions.resolve(3, 2, 1).config(config_pb2.ConfigProto())
    assert config.device_count["CPU"] == 4 and len(config.session_inter_op_thread_pool) == 3
    assert config.session_inter_op_thread_pool[2].global_name == "tfrec_lane2_x1"
    own = GroupOptions.resolve(2, 1, 1, per_session_threads=True).config(config_pb2.ConfigProto())
    assert own.device_count["CPU"] == 1 and not own.session_inter_op_thread_pool[0].global_name


# ---------------------------------------------------------------------------- real server


def started(log_path: Path, proc: subprocess.Popen) -> bool:
    return "Running gRPC ModelServer" in log_path.read_text() or proc.poll() is not None


def thread_status(pid: int, tid: int) -> tuple[str, str]:
    root = Path(f"/proc/{pid}/task/{tid}")
    cpus = re.search(r"Cpus_allowed_list:\s*(\S+)", (root / "status").read_text())
    assert cpus is not None
    return (root / "comm").read_text().strip(), cpus.group(1)


@pytest.mark.slow
@pytest.mark.skipif(
    not affinity.supported() or len(affinity.allowed_cpus()) < 2, reason="needs Linux, 2 CPUs"
)
@contextlib.contextmanager
def lane_server(tmp_path: Path, *flags: str) -> Iterator[tuple[subprocess.Popen, str, int]]:
    """`tfrec_model_server` in a subprocess serving half_plus_two as "m" with 2 lanes of 1
    inter-op and 2 intra-op threads (plus `flags`), started: (process, start-up log, port)."""
    port = free_port()
    log_path = tmp_path / "server.log"
    args = [
        sys.executable, "-m", "server.main", f"--port={port}", "--model_name=m",
        f"--model_base_path={HALF_PLUS_TWO}", "--session_num_per_group=2",
        "--tensorflow_intra_op_parallelism=2", "--tensorflow_inter_op_parallelism=1", *flags,
    ]  # fmt: skip
    with log_path.open("w") as log:
        proc = subprocess.Popen(args, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: started(log_path, proc), timeout=120, what="the server")
        text = log_path.read_text()
        assert proc.poll() is None, text
        yield proc, text, port
    finally:
        proc.terminate()
        proc.wait(30)


def test_pinned_lanes_threads_carry_their_cpus(tmp_path: Path) -> None:
    cpus = sorted(affinity.allowed_cpus())[:2]
    cpusets = f"--session_group_cpusets={cpus[0]};{cpus[1]}"
    with lane_server(tmp_path, cpusets, "--use_per_session_threads") as (proc, text, _):
        lanes = re.findall(
            r"lane (\d): inter-op pool \d threads \[([\d, ]*)\], device (\S+), "
            r"intra-op threads \[([\d, ]*)\], CPUs ([\d,-]+)",
            text,
        )
        assert len(lanes) == 2, text
        for lane, inter, device, intra, cpuset in lanes:
            assert cpuset == str(cpus[int(lane)]) and device == f"/device:CPU:{int(lane) + 1}"
            inter_tids = [int(t) for t in inter.split(",")]
            intra_tids = [int(t) for t in intra.split(",")]
            assert len(inter_tids) == 1 and len(intra_tids) == 2
            for tid in inter_tids + intra_tids:
                name, allowed = thread_status(proc.pid, tid)
                assert allowed == cpuset, (tid, name)
            assert thread_status(proc.pid, inter_tids[0])[0] == f"tf_Compute{lane}"
        state = re.search(r"state device \S+ intra-op threads \[([\d, ]*)\]", text)
        assert state is not None
        both = affinity.format_cpus(set(cpus))
        for tid in map(int, state.group(1).split(",")):
            assert thread_status(proc.pid, tid)[1] == both
        assert thread_status(proc.pid, proc.pid)[1] == affinity.format_cpus(
            affinity.allowed_cpus()
        )  # the rest of the server is not pinned
        assert "CPU sets: " in text and "light runs on the request's thread" not in text


@pytest.mark.slow
def test_server_subprocess_lanes_pools_are_their_own(tmp_path: Path) -> None:
    """With TF_OVERRIDE_GLOBAL_THREADPOOL set by main(), every lane device gets its own
    intra-op threads; requests succeed on both lanes."""
    with lane_server(tmp_path) as (proc, text, port):
        assert "lanes share one intra-op pool" not in text
        assert "light runs on the request's thread while heavy ones are in flight" in text
        intra = re.findall(r"intra-op threads \[([\d, ]+)\]", text)
        assert len(intra) == 3 and all(len(t.split(",")) == 2 for t in intra)  # 2 lanes + state
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            for _ in range(4):
                response = stub.Predict(predict_request("m", x=[2.0]), timeout=30)
                assert list(response.outputs["y"].float_val) == [3.0]
        names = {(p / "comm").read_text().strip() for p in Path(f"/proc/{proc.pid}/task").iterdir()}
        assert "tfrec-grpc_0" in names, names  # handlers are named for top -H and the bench


def test_session_group_load_failure_is_a_serving_error(tmp_path: Path) -> None:
    (tmp_path / "saved_model.pb").write_bytes(b"not a model")
    with pytest.raises(ServingError, match="Failed to load SavedModel"):
        SessionGroup.load(tmp_path, ["serve"], session_config(0, 0), GroupOptions.resolve(2, 1, 1))
