"""Model lifecycle: version polling, policies, labels, failed loads, leases, config reloads."""

from __future__ import annotations

import shutil
import threading

import grpc
import pytest
from google.protobuf import text_format
from tensorflow_serving.apis import get_model_status_pb2, model_management_pb2, model_pb2

from server.flags import StartupError
from tests.conftest import (
    HALF_PLUS_THREE,
    TWO_VERSIONS,
    Running,
    copy_model,
    model_config_text,
    start,
    wait_for,
)
from tests.test_grpc_api import predict_request
from tfrec.serving import manager as manager_lib
from tfrec.serving.manager import State

AVAILABLE = get_model_status_pb2.ModelVersionStatus.AVAILABLE
END = get_model_status_pb2.ModelVersionStatus.END


def statuses(running: Running, name: str = "default") -> dict[int, tuple[int, int, str]]:
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = name
    response = running.models.GetModelStatus(request)
    return {
        s.version: (s.state, s.status.error_code, s.status.error_message)
        for s in response.model_version_status
    }


def served_version(running: Running, name: str = "default", **spec: object) -> int:
    request = predict_request(name, x=[2.0])
    if "version" in spec:
        request.model_spec.version.value = int(spec["version"])  # type: ignore[call-overload]
    if "label" in spec:
        request.model_spec.version_label = str(spec["label"])
    response = running.predict.Predict(request)
    assert list(response.outputs["y"].float_val) == [3.0]
    return response.model_spec.version.value


def reload(running: Running, text: str) -> None:
    request = model_management_pb2.ReloadConfigRequest()
    text_format.Parse(text, request.config)
    running.models.HandleReloadConfigRequest(request)


def test_new_version_dir_becomes_latest_and_old_unloads(serve, tmp_path) -> None:
    base = copy_model(TWO_VERSIONS, tmp_path / "m", versions=["00000123"])
    running = serve(model_name="default", model_base_path=str(base))
    assert served_version(running) == 123
    shutil.copytree(TWO_VERSIONS / "00000124", base / "00000124")
    wait_for(lambda: statuses(running).get(123, (0,))[0] == END, what="v123 to unload")
    assert served_version(running) == 124
    assert statuses(running) == {124: (AVAILABLE, 0, ""), 123: (END, 0, "")}
    # Status lists versions highest first.
    request = get_model_status_pb2.GetModelStatusRequest(model_spec={"name": "default"})
    versions = [s.version for s in running.models.GetModelStatus(request).model_version_status]
    assert versions == [124, 123]


def test_corrupt_new_version_leaves_old_one_serving(serve, tmp_path) -> None:
    base = copy_model(TWO_VERSIONS, tmp_path / "m", versions=["00000123"])
    running = serve(model_name="default", model_base_path=str(base))
    (base / "125").mkdir()
    (base / "125" / "saved_model.pb").write_bytes(b"this is not a SavedModel")
    wait_for(lambda: 125 in statuses(running) and statuses(running)[125][0] == END)
    _, code, message = statuses(running)[125]
    assert code != 0 and "125" in message
    assert statuses(running)[123][0] == AVAILABLE
    assert served_version(running) == 123
    request = predict_request(x=[2.0])
    request.model_spec.version.value = 125
    with pytest.raises(grpc.RpcError) as info:
        running.predict.Predict(request)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_removing_every_version_dir_unloads_everything(serve, tmp_path) -> None:
    base = copy_model(TWO_VERSIONS, tmp_path / "m", versions=["00000123"])
    running = serve(model_name="default", model_base_path=str(base))
    shutil.rmtree(base / "00000123")
    wait_for(lambda: statuses(running)[123][0] == END)
    with pytest.raises(grpc.RpcError) as info:
        served_version(running)
    assert info.value.details() == "Servable not found for request: Latest(default)"


def test_specific_and_all_policies(serve, tmp_path) -> None:
    config = tmp_path / "models.config"
    config.write_text(
        model_config_text(
            {"default": TWO_VERSIONS},
            "model_version_policy { specific { versions: 123 versions: 124 } }",
        )
    )
    running = serve(model_config_file=str(config))
    # Start-up waits for the latest version; the older one loads right after it.
    wait_for(lambda: statuses(running) == {124: (AVAILABLE, 0, ""), 123: (AVAILABLE, 0, "")})
    assert served_version(running) == 124
    assert served_version(running, version=123) == 123
    reload(running, model_config_text({"default": TWO_VERSIONS}, "model_version_policy { all {} }"))
    assert set(statuses(running)) == {123, 124}
    reload(running, model_config_text({"default": TWO_VERSIONS}))  # back to latest 1
    wait_for(lambda: statuses(running)[123][0] == END, what="v123 to unload under latest 1")
    assert served_version(running) == 124


def test_version_labels(serve, tmp_path) -> None:
    config = tmp_path / "models.config"
    config.write_text(
        model_config_text({"default": TWO_VERSIONS}, "model_version_policy { all {} }")
    )
    running = serve(model_config_file=str(config))
    wait_for(lambda: all(s[0] == AVAILABLE for s in statuses(running).values()))
    labelled = model_config_text(
        {"default": TWO_VERSIONS},
        'model_version_policy { all {} } version_labels { key: "stable" value: 123 } '
        'version_labels { key: "canary" value: 124 }',
    )
    reload(running, labelled)
    assert served_version(running, label="stable") == 123
    assert served_version(running, label="canary") == 124
    # A label for a version that is not available is refused, and nothing changes.
    with pytest.raises(grpc.RpcError) as info:
        reload(running, labelled.replace("value: 124", "value: 999"))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert info.value.details() == (
        "Request to assign label to version 999 of model default, which is not currently "
        "available for inference"
    )
    assert served_version(running, label="canary") == 124
    # GetModelStatus ignores version_label.
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "default"
    request.model_spec.version_label = "stable"
    assert len(running.models.GetModelStatus(request).model_version_status) == 2


def test_labels_for_unavailable_versions_need_the_flag(serve, tmp_path) -> None:
    text = model_config_text({"default": TWO_VERSIONS}, 'version_labels { key: "next" value: 125 }')
    config = tmp_path / "models.config"
    config.write_text(text)
    running = serve(model_config_file=str(config), allow_version_labels_for_unavailable_models=True)
    assert served_version(running) == 124
    with pytest.raises(grpc.RpcError) as info:
        served_version(running, label="next")
    assert info.value.details() == "Servable not found for request: Specific(default, 125)"


def test_reload_config_adds_and_removes_models(serve, tmp_path) -> None:
    base = copy_model(TWO_VERSIONS, tmp_path / "m", versions=["00000123"])
    running = serve(model_name="default", model_base_path=str(base))
    reload(running, model_config_text({"default": base, "three": HALF_PLUS_THREE}))
    response = running.predict.Predict(predict_request("three", x=[2.0]))
    assert list(response.outputs["y"].float_val) == [4.0]
    reload(running, model_config_text({"three": HALF_PLUS_THREE}))
    wait_for(lambda: statuses(running)[123][0] == END, what="the removed model to unload")
    with pytest.raises(grpc.RpcError) as info:
        served_version(running)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


NAME_RULE = "a model name may not be empty, '.', '..', or contain '/', '\\' or control characters"


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            'model_config_list { config { name: "a" base_path: "relative/path" '
            'model_platform: "tensorflow" } }',
            "Expected model a to have an absolute path or URI; got base_path()=relative/path",
        ),
        (
            'model_config_list { config { name: "a" base_path: "/x" model_platform: "tensorflow" }'
            ' config { name: "a" base_path: "/y" model_platform: "tensorflow" } }',
            "Illegal to list model a multiple times in config list",
        ),
        (
            'model_config_list { config { name: "a" base_path: "/x" } }',
            "Illegal setting neither ModelServerConfig::model_type (deprecated) nor "
            "ModelServerConfig::model_platform, model name is a",
        ),
        (
            'model_config_list { config { name: "a" base_path: "/x" model_platform: "onnx" } }',
            "Model a requests unsupported platform onnx",
        ),
        (
            "",
            "ServerModelConfig type not supported by HandleReloadConfigRequest. Only "
            "ModelConfigList is currently supported",
        ),
        (
            'model_config_list { config { name: "../escape/pwn" base_path: "/x" '
            'model_platform: "tensorflow" } }',
            "Invalid model name '../escape/pwn': it contains '/'; " + NAME_RULE,
        ),
        (
            'model_config_list { config { name: "a\\nINFO forged" base_path: "/x" '
            'model_platform: "tensorflow" } }',
            "Invalid model name 'a\\nINFO forged': it contains '\\n'; " + NAME_RULE,
        ),
        (
            'model_config_list { config { name: ".." base_path: "/x" '
            'model_platform: "tensorflow" } }',
            "Invalid model name '..': it is a path; " + NAME_RULE,
        ),
    ],
)
def test_bad_reload_configs_change_nothing(serve, config: str, message: str, tmp_path) -> None:
    running = serve(model_name="default", model_base_path=str(TWO_VERSIONS))
    with pytest.raises(grpc.RpcError) as info:
        reload(running, config)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == message
    assert served_version(running) == 124


def test_reload_of_a_model_that_fails_to_load(serve, tmp_path) -> None:
    running = serve(model_name="default", model_base_path=str(TWO_VERSIONS))
    broken = tmp_path / "broken"
    (broken / "1").mkdir(parents=True)
    (broken / "1" / "saved_model.pb").write_bytes(b"garbage")
    with pytest.raises(grpc.RpcError) as info:
        reload(running, model_config_text({"default": TWO_VERSIONS, "broken": broken}))
    assert info.value.code() == grpc.StatusCode.UNKNOWN
    assert info.value.details().startswith(
        "1 model(s) did not become available: {{{name: broken version: 1} due to error: UNKNOWN: "
    )
    assert served_version(running) == 124


def test_unload_waits_for_requests_in_flight(serve, tmp_path) -> None:
    base = copy_model(TWO_VERSIONS, tmp_path / "m", versions=["00000123"])
    running = serve(model_name="default", model_base_path=str(base))
    manager = running.manager
    held = threading.Event()
    release = threading.Event()

    def request_in_flight() -> None:
        with manager.lease(model_pb2.ModelSpec(name="default")) as servable:
            assert servable.version == 123
            held.set()
            release.wait(30)

    worker = threading.Thread(target=request_in_flight)
    worker.start()
    held.wait(10)
    shutil.copytree(TWO_VERSIONS / "00000124", base / "00000124")
    wait_for(lambda: served_version(running) == 124, what="v124 to serve")
    # v124 serves new requests while v123 waits for its last request before unloading.
    (v123,) = manager.status("default", 123)
    assert v123.state == State.UNLOADING
    release.set()
    worker.join(10)
    wait_for(lambda: manager.status("default", 123)[0].state == State.END)


def test_config_file_is_re_read_when_polling_is_on(serve, tmp_path) -> None:
    config = tmp_path / "models.config"
    config.write_text(model_config_text({"default": TWO_VERSIONS}))
    running = serve(model_config_file=str(config), model_config_file_poll_wait_seconds=1)
    config.write_text(model_config_text({"default": TWO_VERSIONS, "three": HALF_PLUS_THREE}))
    wait_for(lambda: "three" in running.manager.model_names(), what="the new config")
    wait_for(lambda: statuses(running, "three").get(123, (0,))[0] == AVAILABLE)
    config.write_text("this does not parse")  # logged and ignored; models keep serving
    assert served_version(running) == 124


def test_reload_of_a_model_without_versions_ends_and_the_server_keeps_serving(
    serve, tmp_path, monkeypatch
) -> None:
    """A reload adding a model whose base path holds no versions (`/etc`) used to wait
    forever: eight of them took every gRPC worker, and the server could not stop."""
    monkeypatch.setattr(manager_lib, "RELOAD_LOCK_WAIT_S", 1.0)
    running = serve(model_name="default", model_base_path=str(TWO_VERSIONS), grpc_max_threads=4)

    def adding(name: str) -> model_management_pb2.ReloadConfigRequest:
        request = model_management_pb2.ReloadConfigRequest()
        models = {"default": TWO_VERSIONS, name: tmp_path}
        text_format.Parse(model_config_text(models), request.config)
        return request

    # The call's deadline ends the wait (the model stays configured, as in TF-Serving: it
    # loads when a version appears).
    with pytest.raises(grpc.RpcError) as info:
        running.models.HandleReloadConfigRequest(adding("empty1"), timeout=1.0)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # A caller without a deadline holds one worker while it waits; later reloads give up with
    # UNAVAILABLE instead of queueing behind it, and Predict is still served.
    waiting = running.models.HandleReloadConfigRequest.future(adding("empty2"))
    wait_for(lambda: "empty2" in running.manager.model_names(), what="the reload to wait")
    others = [running.models.HandleReloadConfigRequest.future(adding("x")) for _ in range(6)]
    for other in others:
        assert other.exception(timeout=30).code() == grpc.StatusCode.UNAVAILABLE
    assert not waiting.done()
    assert served_version(running) == 124
    # The caller gives up: the server stops waiting.
    waiting.cancel()
    wait_for(lambda: not running.manager._config_lock.locked(), what="the reload to end")
    assert served_version(running) == 124
    # And a server stop while a reload waits ends it.
    waiting = running.models.HandleReloadConfigRequest.future(adding("empty3"))
    wait_for(lambda: "empty3" in running.manager.model_names(), what="the reload to wait")
    stopper = threading.Thread(target=running.server.stop)
    stopper.start()
    stopper.join(30)
    assert not stopper.is_alive(), "the server did not stop while a reload waited"


def test_model_name_flag_that_is_a_path_stops_start_up(tmp_path) -> None:
    with pytest.raises(StartupError, match=r"INVALID_ARGUMENT: Invalid model name '/abs'"):
        start(model_name="/abs", model_base_path=str(TWO_VERSIONS))


def test_schedule_cache_stays_inside_its_directory(serve, tmp_path) -> None:
    """Names are one quoted path component under --scheduler_cache_dir."""
    cache = tmp_path / "cache"
    running = serve(model_name="a%b c", model_base_path=str(TWO_VERSIONS),
                    scheduler="on", scheduler_cache_dir=str(cache))  # fmt: skip
    for _ in range(40):
        served_version(running, "a%b c")
    wait_for(lambda: any(cache.rglob("tfrec_schedule.json")), what="the schedule cache")
    [written] = list(cache.rglob("tfrec_schedule.json"))
    assert written.relative_to(cache).parts[0] == "a%25b%20c"
