"""Shared fixtures: TF-Serving's test models, free ports, an in-process server with real stubs.

Fixtures stack as settings -> model dir -> Server (manager + core + gRPC) -> stock client stubs.
"""

from __future__ import annotations

import shutil
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from tensorflow_serving.apis import (
    model_service_pb2_grpc,
    prediction_service_pb2_grpc,
)

from server.main import Server
from tfrec.base.settings import Settings

TESTDATA = Path(__file__).parent / "testdata" / "tfserving"
HALF_PLUS_TWO = TESTDATA / "saved_model_half_plus_two_cpu"
HALF_PLUS_THREE = TESTDATA / "saved_model_half_plus_three"
TWO_VERSIONS = TESTDATA / "saved_model_half_plus_two_2_versions"
TF2 = TESTDATA / "saved_model_half_plus_two_tf2_cpu"
COUNTER = TESTDATA / "saved_model_counter"
EXPECTED = TESTDATA / "_expected"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Running:
    """A started Server plus a channel and the stock TF-Serving stubs."""

    def __init__(self, server: Server, port: int) -> None:
        self.server = server
        self.port = port
        self.channel = grpc.insecure_channel(
            f"127.0.0.1:{port}",
            options=[("grpc.max_receive_message_length", 2**31 - 1)],
        )
        self.predict = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.models = model_service_pb2_grpc.ModelServiceStub(self.channel)

    @property
    def manager(self):  # type: ignore[no-untyped-def]
        return self.server.manager

    def close(self) -> None:
        self.channel.close()
        self.server.stop()


def start(**flags: object) -> Running:
    """Starts an in-process server on a free port with TF-Serving flag values."""
    flags.setdefault("port", free_port())
    flags.setdefault("max_num_load_retries", 0)
    server = Server(Settings(**flags))  # type: ignore[arg-type]
    server.start()
    return Running(server, int(flags["port"]))  # type: ignore[call-overload]


@pytest.fixture
def serve() -> Iterator[Callable[..., Running]]:
    """Factory fixture: start(**flags) servers that are stopped after the test."""
    started: list[Running] = []

    def factory(**flags: object) -> Running:
        running = start(**flags)
        started.append(running)
        return running

    yield factory
    for running in started:
        running.close()


def copy_model(src: Path, dst: Path, versions: list[str] | None = None) -> Path:
    """Copies a model base path (optionally only some version dirs) to dst."""
    dst.mkdir(parents=True, exist_ok=True)
    for child in sorted(src.iterdir()):
        if versions is None or child.name in versions:
            shutil.copytree(child, dst / child.name)
    return dst


def wait_for(condition: Callable[[], bool], timeout: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what or condition}")


def model_config_text(models: dict[str, Path], extra: str = "") -> str:
    entries = "".join(
        f'  config {{ name: "{name}" base_path: "{path}" model_platform: "tensorflow" {extra} }}\n'
        for name, path in models.items()
    )
    return f"model_config_list {{\n{entries}}}\n"
