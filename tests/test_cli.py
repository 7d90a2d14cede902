"""End-to-end: the real `tfrec_model_server` process, as a user runs it.

Kept few (each starts TensorFlow in a subprocess). The process is polled for readiness and
the test fails fast if it dies.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import EXPECTED, HALF_PLUS_THREE, HALF_PLUS_TWO, TWO_VERSIONS, free_port

ROOT = Path(__file__).resolve().parents[1]
SERVER = [sys.executable, "-m", "server.main"]
pytestmark = pytest.mark.slow


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class Process:
    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [*SERVER, *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._seen: list[str] = []

    def wait_port(self, port: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited {self.proc.returncode}:\n{self.output()}")
            if port_open(port):
                return
            time.sleep(0.1)
        raise AssertionError(f"port {port} did not open:\n{self.stop()}")

    def wait_output(self, text: str, timeout: float = 60) -> None:
        """Reads the server's output until a line contains `text`."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self._seen.append(line)
            if text in line:
                return
        raise AssertionError(f"no {text!r} in the output:\n{''.join(self._seen)}")

    def output(self) -> str:
        assert self.proc.stdout is not None
        return "".join(self._seen) + self.proc.stdout.read()

    def wait_exit(self, timeout: float = 60) -> str:
        """Waits for the process to exit on its own (after a signal the test sent)."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"the server did not exit:\n{self.output()}") from None
        return self.output()

    def stop(self, sig: int = signal.SIGTERM) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        return self.output()


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SERVER, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def test_good_config_unknown_flag_and_clean_shutdown(tmp_path: Path) -> None:
    config = tmp_path / "models.config"
    config.write_text(
        (EXPECTED / "good_model_config.txt")
        .read_text()
        .replace("${TEST_HALF_PLUS_TWO_DIR}", str(HALF_PLUS_TWO))
        .replace("${TEST_HALF_PLUS_THREE_DIR}", str(HALF_PLUS_THREE))
    )
    port = free_port()
    server = Process(f"--port={port}", f"--model_config_file={config}", "--no_such_flag=1")
    server.wait_port(port)
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    with grpc.insecure_channel(f"localhost:{port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        for name, expected in [("half_plus_two", 3.0), ("half_plus_three", 4.0)]:
            request = predict_pb2.PredictRequest()
            request.model_spec.name = name
            request.inputs["x"].CopyFrom(tf.make_tensor_proto([2.0], dtype=tf.float32))
            assert list(stub.Predict(request, timeout=10).outputs["y"].float_val) == [expected]
    output = server.stop(signal.SIGTERM)
    assert server.proc.returncode == 0, output
    assert "unknown argument: --no_such_flag=1" in output
    assert "Server stopped" in output


def test_port_opens_only_after_the_first_version_loads(tmp_path: Path) -> None:
    base = tmp_path / "model"
    base.mkdir()
    port = free_port()
    server = Process(
        f"--port={port}",
        "--model_name=m",
        f"--model_base_path={base}",
        "--file_system_poll_wait_seconds=1",
    )
    try:
        server.wait_output("No versions of servable m found under base path")
        time.sleep(1)
        assert server.proc.poll() is None
        assert not port_open(port)
        shutil.copytree(TWO_VERSIONS / "00000123", base / "00000123")
        server.wait_port(port)
    finally:
        output = server.stop(signal.SIGINT)
    assert server.proc.returncode == 0, output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--port=0"],
            "Failed to start server. Error: INVALID_ARGUMENT: At least one of "
            "server_options.grpc_port or server_options.grpc_socket_path must be set.",
        ),
        (
            [],
            "Failed to start server. Error: INVALID_ARGUMENT: Both server_options.model_base_path "
            "and server_options.model_config_file are empty!",
        ),
        (
            [
                "--model_base_path=/x",
                "--tensorflow_session_parallelism=1",
                "--tensorflow_intra_op_parallelism=1",
                "--tensorflow_inter_op_parallelism=1",
            ],
            "You cannot configure all.",
        ),
        (["--port=abc"], "Illegal value for flag --port: abc"),
    ],
)
def test_start_up_errors(args: list[str], message: str) -> None:
    result = run(*args)
    assert result.returncode == 255
    assert message in result.stderr


def test_bad_config_file_and_failed_initial_load(tmp_path: Path) -> None:
    result = run("--model_config_file=" + str(EXPECTED / "bad_model_config.txt"))
    assert result.returncode == 255
    assert "Error parsing text-format tensorflow.serving.ModelServerConfig" in result.stderr
    broken = tmp_path / "broken"
    (broken / "7").mkdir(parents=True)
    (broken / "7" / "saved_model.pb").write_bytes(b"garbage")
    result = run(
        f"--port={free_port()}",
        "--model_name=b",
        f"--model_base_path={broken}",
        "--max_num_load_retries=0",
    )
    assert result.returncode == 255
    assert re.search(
        r"Failed to start server\. Error: UNKNOWN: 1 servable\(s\) did not become available: "
        r"\{\{\{name: b version: 7\} due to error: ",
        result.stderr,
    ), result.stderr


def test_version_and_help() -> None:
    result = run("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("TensorFlow ModelServer: tfrec-")
    assert "TensorFlow Library: 2.21" in result.stdout
    result = run("--help")
    assert result.returncode == 255
    for name in ("--port=8500", "--model_config_file", "--enable_batching", "--grpc_socket_path"):
        assert name in result.stderr


def test_readme_quick_start_snippets(tmp_path: Path) -> None:
    """The README's client snippets return scores from the converted demo model that
    `make serve` serves: flat (stock client) and structured (tfrec.client), equal."""
    from saved_model_tools import convert

    subprocess.run(
        [sys.executable, "-m", "tfrec_tools.demo_model", str(tmp_path / "original")],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    convert(tmp_path / "original" / "1", tmp_path / "demo" / "1", ["user_id", "user_dense"])
    port = free_port()
    server = Process(
        f"--port={port}", "--model_name=demo", f"--model_base_path={tmp_path / 'demo'}"
    )
    try:
        server.wait_port(port)
        readme = (ROOT / "README.md").read_text()
        snippets = re.findall(r"```python\n(.*?)```", readme, re.S)
        assert len(snippets) == 2
        code = "\n".join(snippets).replace("localhost:8500", f"localhost:{port}")
        result = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        )
    finally:
        server.stop()
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    flat = [float(v) for v in lines[0].strip("[]").split()]
    structured = [float(v) for v in lines[-1].strip("[]").split()]
    assert len(flat) == 5 and all(0.0 < s < 1.0 for s in flat)
    assert structured == pytest.approx(flat, rel=1e-5)
    assert 'name: "demo"' in result.stdout and "value: 1" in result.stdout
