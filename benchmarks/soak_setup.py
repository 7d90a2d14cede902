"""The soak benchmark's models and server: a converted demo ranker (flat `serving_default` plus
its `serving_default_structured` twin), TF-Serving's half_plus_two (whose versions the soak
copies in and removes) and half_plus_three (added and dropped by config reloads), served by a
real `tfrec_model_server` subprocess on loopback, gRPC and REST."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tensorflow_serving.config import model_server_config_pb2

from benchmarks.report import free_port
from benchmarks.servers import ROOT, Process

TESTDATA = ROOT / "tests" / "testdata" / "tfserving"
HALF_PLUS_TWO = TESTDATA / "saved_model_half_plus_two_cpu" / "00000123"
HALF_PLUS_THREE = TESTDATA / "saved_model_half_plus_three" / "00000123"
VENV_BIN = Path(sys.executable).parent

DEMO, HPT, EXTRA = "demo", "hpt", "hp3"  # model names
USER_INPUTS = "user_id,user_dense"


class Models:
    """Base paths under a temporary directory: demo/1 (converted), hpt/1, hp3/1."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="tfrec-soak-"))
        self.demo = self.root / DEMO
        self.hpt = self.root / HPT
        self.extra = self.root / EXTRA
        original = self.root / ".demo-original"
        python = str(sys.executable)
        _run([python, "-m", "tfrec_tools.demo_model", str(original)])
        _run(
            [
                str(VENV_BIN / "tfrec-convert"),
                str(original / "1"),
                str(self.demo / "1"),
                "--user-inputs",
                USER_INPUTS,
            ]
        )
        shutil.copytree(HALF_PLUS_TWO, self.hpt / "1")
        shutil.copytree(HALF_PLUS_THREE, self.extra / "1")

    def config(self, extra: bool = False) -> model_server_config_pb2.ModelServerConfig:
        """demo and hpt; with `extra`, hp3 too (the 'changed' config of a reload)."""
        config = model_server_config_pb2.ModelServerConfig()
        models = [(DEMO, self.demo), (HPT, self.hpt)] + ([(EXTRA, self.extra)] if extra else [])
        for name, path in models:
            entry = config.model_config_list.config.add()
            entry.name, entry.base_path, entry.model_platform = name, str(path), "tensorflow"
        return config

    def hpt_versions(self) -> list[int]:
        return sorted(int(p.name) for p in self.hpt.iterdir() if p.name.isdigit())

    def add_hpt_version(self, version: int) -> None:
        """Copies `version` of half_plus_two in (under a hidden name, then renamed, so the
        server never sees half a directory)."""
        staging = self.hpt / f".staging-{version}"
        shutil.copytree(HALF_PLUS_TWO, staging)
        staging.rename(self.hpt / str(version))

    def remove_hpt_version(self, version: int) -> None:
        shutil.rmtree(self.hpt / str(version), ignore_errors=True)

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def _run(args: list[str]) -> None:
    """Runs a build step quietly; its output is shown only when it fails."""
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")


def config_text(config: model_server_config_pb2.ModelServerConfig) -> str:
    from google.protobuf import text_format

    return text_format.MessageToString(config)


class SoakServer(Process):
    """`tfrec_model_server` with gRPC on `grpc_port` and REST on `rest_port`, serving the
    models' config from a file and polling base paths every second."""

    def __init__(self, models: Models, port_base: int = 0, flags: tuple[str, ...] = ()) -> None:
        self.grpc_port = port_base or free_port()
        self.rest_port = port_base + 1 if port_base else free_port()
        self._config = models.root / "models.config"
        self._config.write_text(config_text(models.config()))
        args = [
            str(VENV_BIN / "tfrec_model_server"),
            f"--port={self.grpc_port}",
            f"--rest_api_port={self.rest_port}",
            f"--model_config_file={self._config}",
            "--file_system_poll_wait_seconds=1",
            *flags,
        ]
        self.args = args
        super().__init__(args, [self.grpc_port, self.rest_port])

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def rest_address(self) -> str:
        return f"127.0.0.1:{self.rest_port}"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""
