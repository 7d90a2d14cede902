"""`tfrec_model_server`: TF-Serving's command line, start-up order and shutdown.

Start-up as in TF-Serving's server.cc: validate flags, load every configured model (ports stay
closed until each model serves a version), then open gRPC, then block until SIGTERM/SIGINT.
Shutdown: stop accepting, let requests in flight finish, unload, exit 0.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from server import flags
from server.flags import StartupError
from server.memory import IdleTrim, tune_malloc
from server.threads import calls_submitted

log = logging.getLogger("tfrec")

# Seconds a shutdown waits for requests in flight before cancelling them.
SHUTDOWN_GRACE_S = 30.0


def _prometheus_path(config_file: str) -> str | None:
    """The Prometheus path of a --monitoring_config_file, None when metrics are not exported."""
    if not config_file:
        return None
    from google.protobuf import text_format

    from tfrec.protos.monitoring_config_pb2 import MonitoringConfig

    try:
        config = text_format.Parse(Path(config_file).read_text(), MonitoringConfig())
    except (OSError, text_format.ParseError) as err:
        raise StartupError(
            f"INVALID_ARGUMENT: Invalid monitoring config file {config_file}: {err}"
        ) from err
    prometheus = config.prometheus_config
    if not prometheus.enable:
        return None
    return prometheus.path or "/monitoring/prometheus/metrics"


def _version_text() -> str:
    import tensorflow as tf

    server_version = f"tfrec-{metadata.version('tfrec')}"
    return f"TensorFlow ModelServer: {server_version}\nTensorFlow Library: {tf.__version__}"


def main(argv: list[str] | None = None) -> int:
    settings, explicit = flags.parse(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname).1s %(name)s] %(message)s"
    )
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    if settings.own_intra_pools():
        # TF reads it once, when it creates its first device: a pool per device, not one global.
        os.environ["TF_OVERRIDE_GLOBAL_THREADPOOL"] = "1"
    if settings.use_multi_stream:
        os.environ.setdefault("TF_GPU_THREAD_MODE", "gpu_private")  # launch threads per GPU
    if settings.version:
        print(_version_text())
        return 0
    for name in explicit:
        if flags.field(name).metadata.get("accepted"):
            log.warning("--%s is accepted for compatibility and has no effect in tfrec", name)
    from server.assemble import validate

    signals = _Signals()
    server: Server | None = None
    try:
        validate(settings)
        tune_malloc()
        server = Server(settings)
        server.start(stop_requested=signals.received)
        trim = IdleTrim(calls_submitted)  # memory back to the OS after a spike, when idle
        trim.start()
        signals.wait()
        trim.stop()
        log.info("Received a shutdown signal: draining requests in flight")
    except StartupError as err:
        if not signals.received():
            print(f"Failed to start server. Error: {err}", file=sys.stderr)
            return 255
        log.info("Received a shutdown signal while starting: stopping")
    if server is not None:
        server.stop()
    return 0


class _Signals:
    """SIGTERM and SIGINT, from the first moment. The handler only sets a flag (no locks: it
    runs in the main thread, which may hold any of them); start-up polls it, `wait` blocks on it.
    """

    def __init__(self) -> None:
        self._received = False
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: object) -> None:
        self._received = True

    def received(self) -> bool:
        return self._received

    def wait(self) -> None:
        """Blocks the main thread until SIGTERM or SIGINT."""
        while not self._received:
            time.sleep(0.2)


class Server:
    """Everything `main` builds, in start-up order; `stop` undoes it in reverse."""

    def __init__(self, settings: flags.Settings) -> None:
        self.settings = settings
        self.grpc_ports: list[int] = []
        self.rest_port: int | None = None
        self._stopped = threading.Event()
        self._grpc = None
        self._rest = None
        self._health = None
        self.manager: Any = None
        self._watcher: threading.Thread | None = None

    def start(self, stop_requested: Callable[[], bool] = lambda: False) -> None:
        """Loads every model, then opens the ports; `stop_requested` aborts a long start-up."""
        # Imported here: TensorFlow reads its environment when it is first imported.
        from server.assemble import load_options
        from tfrec.base.errors import ServingError
        from tfrec.base.metrics import Metrics
        from tfrec.serving import config as config_lib
        from tfrec.serving.handlers import Handlers
        from tfrec.serving.loader import Loader
        from tfrec.serving.manager import Manager
        from tfrec.serving.request import Limits
        from tfrec.serving.service import Service

        s = self.settings
        self.metrics = Metrics()
        self.prometheus_path = _prometheus_path(s.monitoring_config_file)
        handlers = Handlers(method_check=s.enable_signature_method_name_check,
                            metrics=self.metrics, limits=Limits.of(s))  # fmt: skip
        self.manager = Manager(
            Loader(load_options(s, self.metrics), handlers, self.metrics),
            max_load_retries=s.max_num_load_retries,
            load_retry_interval_s=s.load_retry_interval_micros / 1e6,
            load_threads=s.num_load_threads,
            allow_labels_for_unavailable=s.allow_version_labels_for_unavailable_models,
        )
        self.service = Service(self.manager, handlers, self.metrics)
        if s.file_system_poll_wait_seconds < 0:
            log.warning("--file_system_poll_wait_seconds < 0: version directories are not polled")
        # Polling starts first: start-up may wait for a version directory to appear.
        self.manager.start_polling(s.file_system_poll_wait_seconds)
        try:
            if s.model_config_file:
                model_config = config_lib.read_file(s.model_config_file)
            else:
                model_config = config_lib.single_model(s.model_name, s.model_base_path)
            self.manager.reload_config(model_config, initial=True, abort=stop_requested)
        except ServingError as err:
            self.manager.close()
            raise StartupError(f"{err.code.name}: {err.message}") from err
        try:
            self._start_grpc()
            self._start_rest()
        except BaseException:
            self.stop()
            raise
        if s.model_config_file and s.model_config_file_poll_wait_seconds > 0:
            self._watch_config_file()

    def _start_grpc(self) -> None:
        from server.grpc_server import (
            build_server,
            channel_arguments,
            health_servicer,
            ssl_credentials,
        )
        from tfrec.base.errors import ServingError

        s = self.settings
        try:
            credentials = ssl_credentials(s.ssl_config_file) if s.ssl_config_file else None
        except ServingError as err:
            raise StartupError(f"{err.code.name}: {err.message}") from err
        server = build_server(
            self.service,
            max_threads=s.grpc_max_threads,
            tensor_content=s.enable_serialization_as_tensor_content,
            channel_args=channel_arguments(s.grpc_channel_arguments),
            metrics=self.metrics,
            max_queued=s.queue_bound(s.grpc_max_threads),
        )
        if s.enable_grpc_healthcheck_service:
            self._health = health_servicer(server)

        def listen(address: str) -> int:
            try:
                if credentials is None:
                    return server.add_insecure_port(address)
                return server.add_secure_port(address, credentials)
            except RuntimeError as err:  # grpc: "Failed to bind to address ..."
                raise StartupError(f"UNAVAILABLE: could not bind gRPC to {address}") from err

        if s.port:
            bound = listen(f"0.0.0.0:{s.port}")
            if not bound:
                raise StartupError(f"UNAVAILABLE: could not bind gRPC to 0.0.0.0:{s.port}")
            self.grpc_ports.append(bound)
            log.info("Running gRPC ModelServer at 0.0.0.0:%d ...", bound)
        if s.grpc_socket_path:
            listen(f"unix:{s.grpc_socket_path}")
            log.info("Running gRPC ModelServer at UNIX socket %s ...", s.grpc_socket_path)
        if credentials is not None:
            log.info("Using SSL credentials")
        server.start()
        self._grpc = server

    def _start_rest(self) -> None:
        s = self.settings
        if not s.rest_api_port:
            return
        if s.rest_api_port == s.port:
            log.error("--rest_api_port equals --port (%d): the REST API is not started", s.port)
            return
        from server.rest import RestServer

        rest = RestServer(self.service, self.metrics, s, self.prometheus_path)
        try:
            self.rest_port = rest.start()
        except OSError as err:  # as TF-Serving: logged, gRPC keeps serving
            log.error("Failed to start HTTP Server at localhost:%d: %s", s.rest_api_port, err)
            return
        self._rest = rest
        log.info("Exporting HTTP/REST API at:localhost:%d ...", self.rest_port)

    def _watch_config_file(self) -> None:
        from tfrec.base.errors import ServingError
        from tfrec.serving import config as config_lib

        path = self.settings.model_config_file
        period = self.settings.model_config_file_poll_wait_seconds

        def loop() -> None:
            while not self._stopped.wait(period):
                try:
                    self.manager.reload_config(config_lib.read_file(path))
                except ServingError as err:
                    log.error("Reloading %s failed, keeping the current config: %s", path, err)

        self._watcher = threading.Thread(target=loop, name="tfrec-config-poll", daemon=True)
        self._watcher.start()

    def stop(self) -> None:
        """Stops accepting, finishes requests in flight, unloads every model."""
        self._stopped.set()
        if self.manager is not None:
            self.manager.stop_waiting()
        if self._health is not None:
            self._health.enter_graceful_shutdown()  # every status NOT_SERVING
        if self._rest is not None:
            self._rest.stop(SHUTDOWN_GRACE_S)
        if self._grpc is not None:
            self._grpc.stop(SHUTDOWN_GRACE_S).wait()
        if self.manager is not None:
            self.manager.close()
        log.info("Server stopped")


if __name__ == "__main__":
    sys.exit(main())
