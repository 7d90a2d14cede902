"""Servers in subprocesses, started as a user starts them, for the harness and the tests.

    with TfrecServer({"din": base_dir}) as server:    # tfrec_model_server on a free port
        server.address                                  # "127.0.0.1:PORT"

The process logs to a file (a full pipe would block it); if it dies or does not open its
port in time, the error carries the end of that log. Ports open only once every model
serves a version (TF-Serving's start-up order), so an open port means ready.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from benchmarks.report import free_port

ROOT = Path(__file__).resolve().parents[1]


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def model_config(models: dict[str, Path]) -> str:
    """A ModelServerConfig text serving each base path under its name."""
    entries = "".join(
        f'  config {{ name: "{name}" base_path: "{Path(path).resolve()}" '
        'model_platform: "tensorflow" }\n'
        for name, path in models.items()
    )
    return f"model_config_list {{\n{entries}}}\n"


class Process:
    """A server subprocess whose ports opened; `close` stops it with SIGTERM."""

    def __init__(self, args: list[str], ports: list[int], timeout_s: float = 300.0) -> None:
        self.port = ports[0]
        self._dir = Path(tempfile.mkdtemp(prefix="tfrec-server-"))
        self.log = self._dir / "server.log"
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(args, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while not all(port_open(p) for p in ports):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = self.log_tail()
                self.close()
                raise RuntimeError(f"{' '.join(args)} did not start:\n{tail}")
            time.sleep(0.1)

    @property
    def address(self) -> str:
        """HOST:PORT of the first (gRPC) port."""
        return f"127.0.0.1:{self.port}"

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def rest_available() -> bool:
    """Whether this checkout's server has its REST API (`server/rest.py`) yet."""
    import importlib.util

    return importlib.util.find_spec("server.rest") is not None


class TfrecServer(Process):
    """`tfrec_model_server` serving `models` (name -> base path) with extra TF-Serving flags;
    with `rest`, also its REST API on `rest_address`."""

    def __init__(
        self,
        models: dict[str, Path],
        flags: tuple[str, ...] = (),
        *,
        rest: bool = False,
        timeout_s: float = 300.0,
    ) -> None:
        config = Path(tempfile.mkdtemp(prefix="tfrec-config-"))
        self._config = config / "models.config"
        self._config.write_text(model_config(models))
        port = free_port()
        ports = [port, free_port()] if rest else [port]
        self.rest_address = f"127.0.0.1:{ports[-1]}" if rest else ""
        args = [
            sys.executable,
            "-m",
            "server.main",
            f"--port={port}",
            f"--model_config_file={self._config}",
            "--file_system_poll_wait_seconds=0",
            *flags,
        ]
        if rest:
            args.append(f"--rest_api_port={ports[1]}")
        super().__init__(args, ports, timeout_s)

    def close(self) -> None:
        super().close()
        shutil.rmtree(self._config.parent, ignore_errors=True)
