"""The protocol-free serving core: every RPC of PredictionService and ModelService.

Transports decode their wire format once into the core's request types (`Request` for
Predict; TF-Serving's own `Input`, ModelSpec and ModelServerConfig messages otherwise), call
one method here, and encode what it returns. Each request takes one lease on the version it
names (`Manager.lease`), then `Handlers` validates it once and runs it down the version's
stages. Every failure is a ServingError. Nothing here knows gRPC or HTTP.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    input_pb2,
    regression_pb2,
)
from tensorflow_serving.apis.model_pb2 import ModelSpec

from tfrec.base.errors import InvalidArgument
from tfrec.base.metrics import Metrics
from tfrec.runtime.stage import Dropped
from tfrec.serving.config import ModelServerConfig
from tfrec.serving.handlers import Handlers, response_spec
from tfrec.serving.manager import Manager
from tfrec.serving.request import Request
from tfrec.serving.servable import Servable


class Service:
    """One instance per server, shared by every transport; thread-safe."""

    def __init__(
        self, manager: Manager, handlers: Handlers, metrics: Metrics | None = None
    ) -> None:
        self.manager = manager
        self.handlers = handlers
        self._metrics = metrics

    @contextmanager
    def lease(self, spec: ModelSpec | None) -> Iterator[Servable]:
        """The version `spec` names, held for one request (REST reads its signature first);
        work its deadline stopped is counted."""
        if spec is None:
            raise InvalidArgument("Missing ModelSpec")
        with self.manager.lease(spec) as servable:
            try:
                yield servable
            except Dropped as err:  # its deadline stopped the work: tfrec_cancelled_work
                if self._metrics is not None:
                    self._metrics.cancelled_work.labels(servable.name, err.stage).inc()
                raise

    def predict(self, request: Request) -> tuple[ModelSpec, dict[str, np.ndarray]]:
        """Runs a Predict; returns the response ModelSpec and the outputs by alias."""
        with self.lease(request.spec) as servable:
            return self.handlers.predict_on(servable, request)

    def classify(
        self, spec: ModelSpec | None, data: input_pb2.Input, deadline: float | None = None
    ) -> tuple[ModelSpec, classification_pb2.ClassificationResult]:
        with self.lease(spec) as servable:
            assert spec is not None
            return self.handlers.classify_on(servable, spec, data, deadline)

    def regress(
        self, spec: ModelSpec | None, data: input_pb2.Input, deadline: float | None = None
    ) -> tuple[ModelSpec, regression_pb2.RegressionResult]:
        with self.lease(spec) as servable:
            assert spec is not None
            return self.handlers.regress_on(servable, spec, data, deadline)

    def multi_inference(
        self, request: inference_pb2.MultiInferenceRequest
    ) -> inference_pb2.MultiInferenceResponse:
        first = request.tasks[0].model_spec if request.tasks else ModelSpec()
        with self.manager.lease(first) as servable:
            return self.handlers.multi_inference_on(servable, request)

    # ------------------------------------------------------------------ metadata and status

    def model_metadata(
        self, spec: ModelSpec | None, fields: Sequence[str]
    ) -> tuple[ModelSpec, get_model_metadata_pb2.SignatureDefMap]:
        if spec is None:
            raise InvalidArgument("Missing ModelSpec")
        if not fields:
            raise InvalidArgument(
                "GetModelMetadataRequest must specify at least one metadata_field"
            )
        for field in fields:
            if field != "signature_def":
                raise InvalidArgument(f"Metadata field {field} is not supported")
        with self.manager.lease(spec) as servable:
            signature_map = get_model_metadata_pb2.SignatureDefMap()
            for key, signature in servable.meta_graph.signature_def.items():
                signature_map.signature_def[key].CopyFrom(signature)
            return response_spec(spec.name, None, servable.version), signature_map

    def model_status(self, spec: ModelSpec | None) -> get_model_status_pb2.GetModelStatusResponse:
        if spec is None:
            raise InvalidArgument("Missing ModelSpec")
        version = spec.version.value if spec.HasField("version") else None
        response = get_model_status_pb2.GetModelStatusResponse()
        for status in self.manager.status(spec.name, version):
            entry = response.model_version_status.add(
                version=status.version, state=int(status.state)
            )
            entry.status.SetInParent()
            if status.error is not None:
                entry.status.error_code = int(status.error.code)
                entry.status.error_message = status.error.message
        return response

    def reload_config(
        self,
        config: ModelServerConfig,
        timeout_s: float | None = None,
        abort: Callable[[], bool] | None = None,
    ) -> None:
        """HandleReloadConfigRequest: only a ModelConfigList is accepted. New models are awaited
        until `timeout_s` (the call's deadline) or `abort()` (the caller has gone)."""
        if config.WhichOneof("config") != "model_config_list":
            raise InvalidArgument(
                "ServerModelConfig type not supported by HandleReloadConfigRequest. Only "
                "ModelConfigList is currently supported"
            )
        self.manager.reload_config(config, timeout_s=timeout_s, abort=abort)
