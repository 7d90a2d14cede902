"""tfrec-ab: parity, structured B requests, reports, and one-line failures.

Servers are in-process tfrec servers on free ports (a pure client cannot tell). The structured
tests use a tiny ranker saved with both `serving_default` and `serving_default_structured`
(user inputs at batch 1), as saved_model_tools will write them.
"""

from __future__ import annotations

import importlib.util
import io
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2

from benchmarks.workloads import write_tfrecord
from tests.conftest import HALF_PLUS_THREE, HALF_PLUS_TWO, Running, free_port
from tfrec_tools import ab

ROOT = Path(__file__).resolve().parents[1]
USER = tf.TensorSpec([None, 3], tf.float32, name="user_x")
ITEM = tf.TensorSpec([None, 2], tf.float32, name="item_x")


class Ranker(tf.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w_user = tf.Variable([[0.5], [1.0], [-1.0]])
        self.w_item = tf.Variable([[2.0], [0.25]])

    def score(self, user_x: tf.Tensor, item_x: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"score": tf.matmul(user_x, self.w_user) + tf.matmul(item_x, self.w_item)}

    @tf.function(input_signature=[USER, ITEM])
    def flat(self, user_x: tf.Tensor, item_x: tf.Tensor) -> dict[str, tf.Tensor]:
        return self.score(user_x, item_x)

    @tf.function(input_signature=[USER, ITEM])
    def structured(self, user_x: tf.Tensor, item_x: tf.Tensor) -> dict[str, tf.Tensor]:
        return self.score(tf.tile(user_x, [tf.shape(item_x)[0], 1]), item_x)


@pytest.fixture(scope="module")
def ranker(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Base dir of the ranker (version 1, with a zoo-style sidecar naming user_x)."""
    base = tmp_path_factory.mktemp("ranker")
    module = Ranker()
    signatures = {
        "serving_default": module.flat.get_concrete_function(),
        "serving_default_structured": module.structured.get_concrete_function(),
    }
    tf.saved_model.save(module, str(base / "1"), signatures=signatures)
    sidecar = base / "1" / ab.SIDECAR
    sidecar.parent.mkdir()
    sidecar.write_text(json.dumps({"user_inputs": ["user_x"], "item_inputs": ["item_x"]}))
    return base


def flat_request(n: int, seed: int) -> predict_pb2.PredictRequest:
    rng = np.random.default_rng(seed)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "ranker"
    user = np.repeat(rng.standard_normal((1, 3), dtype=np.float32), n, axis=0)
    request.inputs["user_x"].CopyFrom(tf.make_tensor_proto(user))
    request.inputs["item_x"].CopyFrom(tf.make_tensor_proto(rng.standard_normal((n, 2), np.float32)))
    return request


@pytest.fixture(scope="module")
def requests_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("requests") / "ranker.tfrecord"
    write_tfrecord(path, [flat_request(n, i) for i, n in enumerate([4, 7, 5])])
    return path


def half_requests(path: Path) -> Path:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "m"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([[1.0], [2.0]], np.float32)))
    write_tfrecord(path, [request])
    return path


def address(running: Running) -> str:
    return f"127.0.0.1:{running.port}"


FAST = ["--duration", "0.4", "--rounds", "2"]


def test_structured_b_agrees_and_writes_json_markdown_and_cdf(
    serve: Callable[..., Running], ranker: Path, requests_file: Path, tmp_path: Path, capsys
) -> None:
    a = serve(model_name="ranker", model_base_path=str(ranker))
    b = serve(model_name="ranker", model_base_path=str(ranker))
    argv = ["--a", address(a), "--b", address(b), "--model", "ranker", "--b-structured"]
    argv += ["--requests", str(requests_file), "--out", str(tmp_path), *FAST]
    assert ab.main(argv) == 0
    doc = json.loads((tmp_path / "ab.json").read_text())
    assert doc["parity"]["ok"] and doc["parity"]["requests"] == 3
    assert doc["parity"]["outputs"]["score"]["max_abs"] < 1e-5
    assert doc["config"]["user_inputs"] == ["user_x"]  # inferred: its rows repeat
    arms = doc["arms"]
    assert arms["A"]["signature"] == "serving_default"
    assert (arms["B"]["signature"], arms["B"]["form"]) == (
        "serving_default_structured",
        "structured",
    )
    for arm in arms.values():
        assert arm["ok"] > 0 and arm["errors"] == {} and len(arm["rounds"]) == 2 and arm["cdf"]
    assert arms["B"]["bytes_per_request"] < arms["A"]["bytes_per_request"]
    assert np.isfinite(list(doc["ratios"].values())).all()
    table = (tmp_path / "ab.md").read_text()
    assert "| A |" in table and "| B |" in table and "B / A: p50" in table
    assert (tmp_path / "ab-latency-cdf.png").read_bytes()[:4] == b"\x89PNG"
    assert "| B |" in capsys.readouterr().out


def test_user_inputs_from_the_sidecar(
    serve: Callable[..., Running], ranker: Path, requests_file: Path, tmp_path: Path
) -> None:
    a = serve(model_name="ranker", model_base_path=str(ranker))
    argv = ["--a", address(a), "--b", address(a), "--model", "ranker", "--b-structured"]
    argv += ["--b-model-dir", str(ranker), "--requests", str(requests_file)]
    assert ab.main([*argv, "--out", str(tmp_path), "--duration", "0.2", "--rounds", "1"]) == 0
    assert json.loads((tmp_path / "ab.json").read_text())["config"]["user_inputs"] == ["user_x"]
    assert ab.sidecar_user_inputs(str(ranker / "1")) == {"user_x"}
    with pytest.raises(ab.SetupError, match="not a directory"):
        ab.sidecar_user_inputs(str(tmp_path / "nope"))
    with pytest.raises(ab.SetupError, match=r"no assets\.extra/tfrec_features\.json"):
        ab.sidecar_user_inputs(str(tmp_path))


def test_disagreement_stops_before_speed(
    serve: Callable[..., Running], tmp_path: Path, capsys
) -> None:
    a = serve(model_name="m", model_base_path=str(HALF_PLUS_TWO))
    b = serve(model_name="m", model_base_path=str(HALF_PLUS_THREE))
    requests = half_requests(tmp_path / "half.tfrecord")
    argv = ["--a", address(a), "--b", address(b), "--model", "m", "--requests", str(requests)]
    assert ab.main([*argv, "--out", str(tmp_path / "out")]) == ab.EXIT_MISMATCH
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("tfrec-ab: parity FAILED on request 0, output 'y': values differ")
    assert "max abs diff 1.000e+00" in err and "No speed measured" in err
    assert not (tmp_path / "out").exists()


def test_setup_failures_are_one_line_and_exit_2(
    serve: Callable[..., Running], tmp_path: Path, capsys
) -> None:
    running = serve(model_name="m", model_base_path=str(HALF_PLUS_TWO))
    good, down = address(running), f"127.0.0.1:{free_port()}"
    requests = str(half_requests(tmp_path / "half.tfrecord"))
    garbage = tmp_path / "garbage.tfrecord"
    garbage.write_bytes(bytes(range(256)) * 8)
    cases = [
        (["--a", down, "--b", good, "--model", "m", "--requests", requests], "cannot reach"),
        (["--a", good, "--b", good, "--model", "x", "--requests", requests], "NOT_FOUND"),
        (["--a", good, "--b", good, "--model", "m", "--requests", str(tmp_path / "no")],
         "no such file"),
        (["--a", good, "--b", good, "--model", "m", "--requests", str(garbage)],
         "not a PredictionLog TFRecord"),
        (["--a", good, "--b", good, "--model", "m", "--requests", requests, "--b-structured"],
         "has no signature 'serving_default_structured' (it has: classify_x_to_y"),
    ]  # fmt: skip
    for argv, message in cases:
        assert ab.main(argv) == ab.EXIT_SETUP, message
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("tfrec-ab: ") and message in err[-1], err


def test_console_script_reports_an_unreadable_file(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "tfrec-ab"
    argv = ["--a", "127.0.0.1:1", "--b", "127.0.0.1:2", "--model", "m"]
    result = subprocess.run(
        [str(script), *argv, "--requests", str(tmp_path / "missing")],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"tfrec-ab: cannot read requests: {tmp_path / 'missing'}: no such file"
    )
    assert result.stdout == ""


def test_inferring_user_inputs_needs_repeating_rows() -> None:
    repeated = np.ones((3, 2), np.float32)
    varied = np.arange(6, dtype=np.float32).reshape(3, 2)
    assert ab.inferred_user_inputs([{"u": repeated, "i": varied}]) == {"u"}
    with pytest.raises(ab.SetupError, match="every request has one row"):
        ab.inferred_user_inputs([{"u": repeated[:1], "i": varied[:1]}])
    with pytest.raises(ab.SetupError, match="no input repeats"):
        ab.inferred_user_inputs([{"i": varied}])
    with pytest.raises(ab.SetupError, match="every input repeats"):
        ab.inferred_user_inputs([{"u": repeated}])
    strings = np.array([[b"a"], [b"a"]], dtype=object)
    request = flat_request(4, 0)
    request.inputs["user_s"].CopyFrom(tf.make_tensor_proto(strings))
    out = ab.structured(request, {"user_x", "user_s"}, "sig")
    got = ab.arrays(out)
    assert out.model_spec.signature_name == "sig" and out.model_spec.name == "ranker"
    assert got["user_x"].shape == (1, 3) and got["item_x"].shape == (4, 2)
    assert got["user_s"].tolist() == [[b"a"]]


def test_compare_tolerances_shapes_and_missing_outputs() -> None:
    a = {"y": np.array([1.0, 2.0, np.nan]), "s": np.array([b"x"], dtype=object)}
    close = {"y": np.array([1.0 + 1e-7, 2.0, np.nan]), "s": np.array([b"x"], dtype=object)}
    assert all(d.ok for d in ab.compare(a, close, 1e-5, 1e-4))
    far = ab.compare({"y": a["y"]}, {"y": np.array([1.1, 2.0, np.nan])}, 1e-5, 1e-4)[0]
    assert (
        not far.ok and far.max_abs == pytest.approx(0.1) and far.max_rel == pytest.approx(0.1 / 1.1)
    )
    shape = ab.compare({"y": np.zeros(2)}, {"y": np.zeros(3)}, 1, 1)[0]
    assert not shape.ok and "shape" in shape.note
    missing = ab.compare({"y": np.zeros(2)}, {}, 1, 1)[0]
    assert not missing.ok and missing.note == "missing from B"
    assert not ab.compare(a, {**close, "s": np.array([b"z"], dtype=object)}, 1, 1)[0].ok


def test_addresses_and_progress_bar() -> None:
    assert ab.address("localhost:8500") == "localhost:8500"
    for bad in ["8500", "host:", "host:70000", ":1"]:
        with pytest.raises(Exception, match="HOST:PORT"):
            ab.address(bad)
    stream = io.StringIO()
    bar = ab.ProgressBar(stream)
    for fraction in (0.0, 0.5, 1.0):
        bar.update("parity: 3 requests", fraction)
    bar.update("speed", 0.1)
    bar.close()
    assert stream.getvalue() == "parity: 3 requests ...\nspeed ...\n"  # not a terminal


@pytest.mark.skipif(
    importlib.util.find_spec("server.rest") is None, reason="tfrec's REST API has not landed"
)
def test_structured_over_rest(
    serve: Callable[..., Running], ranker: Path, requests_file: Path, tmp_path: Path
) -> None:
    port = free_port()
    serve(model_name="ranker", model_base_path=str(ranker), rest_api_port=port)
    rest = f"127.0.0.1:{port}"
    argv = ["--a", rest, "--b", rest, "--model", "ranker", "--b-structured", "--protocol", "rest"]
    argv += ["--requests", str(requests_file), "--out", str(tmp_path), "--rounds", "1"]
    assert ab.main([*argv, "--duration", "0.2"]) == 0
    doc = json.loads((tmp_path / "ab.json").read_text())
    assert doc["parity"]["ok"] and doc["arms"]["B"]["ok"] > 0 and doc["arms"]["A"]["ok"] > 0
    assert doc["arms"]["B"]["bytes_per_request"] < doc["arms"]["A"]["bytes_per_request"]
