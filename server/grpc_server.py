"""gRPC transport: tensorflow.serving.PredictionService and ModelService over the core Service.

Each RPC decodes, calls the core, encodes. Errors leave as the ServingError's code with its
message, cut at 1024 bytes plus `...TRUNCATED` as TF-Serving does; anything unexpected is
logged with its traceback and becomes INTERNAL. Message size limits are INT32_MAX both ways.
"""

from __future__ import annotations

import logging
import ssl
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import text_format
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from server.threads import LifoThreadPool
from tfrec.base import codecs
from tfrec.base.affinity import name_os_thread
from tfrec.base.errors import Code, ServingError
from tfrec.base.metrics import Metrics
from tfrec.protos.ssl_config_pb2 import SSLConfig
from tfrec.runtime.stage import WAITING, Dropped
from tfrec.serving.request import Request
from tfrec.serving.service import Service

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 2**31 - 1
_MAX_ERROR_BYTES = 1024
_INT32 = (-(2**31), 2**31 - 1)

_PREDICTION_SERVICE = prediction_service_pb2.DESCRIPTOR.services_by_name["PredictionService"]
_MODEL_SERVICE = model_service_pb2.DESCRIPTOR.services_by_name["ModelService"]


def grpc_message(message: str) -> str:
    """TF-Serving's ToGRPCStatus: messages over 1024 bytes are cut and marked."""
    raw = message.encode()
    if len(raw) <= _MAX_ERROR_BYTES:
        return message
    return raw[:_MAX_ERROR_BYTES].decode(errors="ignore") + "...TRUNCATED"


def _status_code(error: ServingError) -> grpc.StatusCode:
    for code in grpc.StatusCode:
        if code.value[0] == int(error.code):
            return code
    return grpc.StatusCode.UNKNOWN


def _translated(name: str, method: Callable[..., Any], metrics: Metrics | None) -> Any:
    """One RPC with ServingErrors (and crashes) turned into gRPC statuses.

    Predict, Classify and Regress are also counted in the request metrics, as TF-Serving
    counts them (request_count by status; request_latency when they succeed).
    """
    counted = metrics is not None and name in ("Predict", "Classify", "Regress")

    def rpc(request: Any, context: grpc.ServicerContext) -> Any:
        start = time.perf_counter()
        code = Code.OK
        try:
            if counted:
                remaining = context.time_remaining()
                if remaining is not None and remaining <= 0:  # it waited for a worker too long
                    assert metrics is not None
                    metrics.cancelled_work.labels(request.model_spec.name, WAITING).inc()
                    raise Dropped("Deadline exceeded before the request was read", WAITING)
            return method(request, context)
        except ServingError as err:
            code = err.code
            context.abort(_status_code(err), grpc_message(err.message))
        except Exception as err:
            code = Code.INTERNAL
            log.exception("%s failed", name)
            context.abort(grpc.StatusCode.INTERNAL, grpc_message(f"{type(err).__name__}: {err}"))
        finally:
            if counted:
                assert metrics is not None
                elapsed = time.perf_counter() - start
                metrics.observe_request(request.model_spec.name, name, "GRPC", code, elapsed)

    return rpc


def _install(servicer: Any, service: Any, metrics: Metrics | None) -> Any:
    """Wraps every RPC of `servicer` once, at registration (`service`: its descriptor)."""
    for method in service.methods:
        setattr(servicer, method.name, _translated(method.name, getattr(servicer, method.name),
                                                   metrics))  # fmt: skip
    return servicer


def _deadline(context: grpc.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


def _spec(request: Any) -> Any:
    return request.model_spec if request.HasField("model_spec") else None


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, service: Service, tensor_content: bool = False) -> None:
        self._service = service
        self._tensor_content = tensor_content

    def Predict(self, request: predict_pb2.PredictRequest, context: Any) -> Any:
        spec, outputs = self._service.predict(
            Request(_spec(request), request.inputs, request.output_filter, _deadline(context))
        )
        response = predict_pb2.PredictResponse(model_spec=spec)
        for alias, array in outputs.items():
            codecs.from_ndarray(array, self._tensor_content, response.outputs[alias])
        return response

    def Classify(self, request: classification_pb2.ClassificationRequest, context: Any) -> Any:
        spec, result = self._service.classify(_spec(request), request.input, _deadline(context))
        return classification_pb2.ClassificationResponse(model_spec=spec, result=result)

    def Regress(self, request: regression_pb2.RegressionRequest, context: Any) -> Any:
        spec, result = self._service.regress(_spec(request), request.input, _deadline(context))
        return regression_pb2.RegressionResponse(model_spec=spec, result=result)

    def MultiInference(self, request: Any, context: Any) -> Any:
        return self._service.multi_inference(request)

    def GetModelMetadata(
        self, request: get_model_metadata_pb2.GetModelMetadataRequest, context: Any
    ) -> Any:
        spec, signatures = self._service.model_metadata(_spec(request), request.metadata_field)
        response = get_model_metadata_pb2.GetModelMetadataResponse(model_spec=spec)
        response.metadata["signature_def"].Pack(signatures)
        return response


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, service: Service) -> None:
        self._service = service

    def GetModelStatus(
        self, request: get_model_status_pb2.GetModelStatusRequest, context: Any
    ) -> Any:
        return self._service.model_status(_spec(request))

    def HandleReloadConfigRequest(
        self, request: model_management_pb2.ReloadConfigRequest, context: Any
    ) -> Any:
        self._service.reload_config(
            request.config, context.time_remaining(), lambda: not context.is_active()
        )
        response = model_management_pb2.ReloadConfigResponse()
        response.status.SetInParent()
        return response


def channel_arguments(text: str) -> list[tuple[str, int | str]]:
    """`--grpc_channel_arguments=k=v,k2=v2`: values that parse as int32 are passed as ints."""
    out: list[tuple[str, int | str]] = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, _, value = item.partition("=")
        try:
            number = int(value)
            out.append((key, number) if _INT32[0] <= number <= _INT32[1] else (key, value))
        except ValueError:
            out.append((key, value))
    return out


def ssl_credentials(config_file: str) -> grpc.ServerCredentials:
    """Server credentials from TF-Serving's text SSLConfig (PEM contents, not paths)."""
    try:
        config = text_format.Parse(Path(config_file).read_text(), SSLConfig())
    except (OSError, text_format.ParseError) as err:
        raise ServingError(
            f"Invalid SSL config file {config_file}: {err}", Code.INVALID_ARGUMENT
        ) from err
    if not config.server_key or not config.server_cert:
        raise ServingError(
            f"SSL config file {config_file} needs both server_key and server_cert",
            Code.INVALID_ARGUMENT,
        )
    _check_pem(config_file, config.server_key, config.server_cert, config.custom_ca)
    return grpc.ssl_server_credentials(
        [(config.server_key.encode(), config.server_cert.encode())],
        root_certificates=config.custom_ca.encode() or None,
        require_client_auth=config.client_verify,
    )


def _check_pem(config_file: str, key: str, cert: str, custom_ca: str) -> None:
    """gRPC reports a bad key or certificate only as a port that cannot be bound: check the
    PEM contents with OpenSSL first, for an error that says what is wrong."""
    with tempfile.TemporaryDirectory() as tmp:
        key_file, cert_file = Path(tmp, "key.pem"), Path(tmp, "cert.pem")
        key_file.write_text(key)
        cert_file.write_text(cert)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        for what, check in (
            ("server_key and server_cert", lambda: context.load_cert_chain(cert_file, key_file)),
            ("custom_ca", lambda: custom_ca and context.load_verify_locations(cadata=custom_ca)),
        ):
            try:
                check()
            except (ssl.SSLError, ValueError) as err:
                raise ServingError(
                    f"Invalid SSL config file {config_file}: its {what} are not valid PEM ({err})",
                    Code.INVALID_ARGUMENT,
                ) from None


def health_servicer(server: grpc.Server) -> health.HealthServicer:
    """grpc.health.v1.Health with the overall, ModelService and PredictionService statuses
    SERVING, as TF-Serving's --enable_grpc_healthcheck_service sets them."""
    servicer = health.HealthServicer()
    for name in ("", "ModelService", "PredictionService"):
        servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    return servicer


def build_server(
    service: Service,
    *,
    max_threads: int,
    tensor_content: bool = False,
    channel_args: Sequence[tuple[str, int | str]] = (),
    metrics: Metrics | None = None,
    extra_servicers: Sequence[Callable[[grpc.Server], None]] = (),
    max_queued: int = -1,
) -> grpc.Server:
    """A gRPC server with both services registered; the caller adds ports and starts it.

    `max_queued` >= 0 bounds the calls waiting for one of the `max_threads` workers: gRPC
    refuses the calls beyond with RESOURCE_EXHAUSTED ("Concurrent RPC limit exceeded!") before
    reading them, so an overloaded server sheds instead of queueing without bound."""
    options = [
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        *channel_args,
    ]
    server = grpc.server(
        LifoThreadPool(max_threads, thread_name_prefix="tfrec-grpc", initializer=name_os_thread),
        options=options,
        maximum_concurrent_rpcs=max_threads + max_queued if max_queued >= 0 else None,
    )
    prediction = PredictionServicer(service, tensor_content)
    _install(prediction, _PREDICTION_SERVICE, metrics)
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(prediction, server)
    models = _install(ModelServicer(service), _MODEL_SERVICE, None)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(models, server)
    for add in extra_servicers:
        add(server)
    return server
