"""REST routes: TF-Serving's URL grammar and one function per endpoint over the core Service.

`parse_route` reads a request line as TF-Serving's `ParseModelInfo` does: the method picks one
case-insensitive regex, which must match the whole raw, still percent-encoded target (query
string included: TF-Serving's `uri_path()` carries it), then the model name and label are
URL-decoded (`+` stays `+`). `handle` turns a Route and its body into a Reply: the same
ModelSpec a gRPC request carries, one core Service call, the JSON from `json_codec`, and
TF-Serving's `{ "error": ... }` body on failure. Blocking; the REST server runs it on a worker
thread. Nothing here knows aiohttp.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable
from urllib.parse import unquote_to_bytes

from tensorflow_serving.apis import model_pb2

from server import json_codec
from tfrec.base.errors import Code, InvalidArgument, ResourceExhausted, ServingError
from tfrec.serving.request import Request
from tfrec.serving.service import Service
from tfrec.serving.signature import DEFAULT_SIGNATURE

log = logging.getLogger(__name__)

_FLAGS = re.IGNORECASE | re.ASCII
_VERSION_OR_LABEL = r"(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?"
PREDICT_PATH = re.compile(
    r"/v1/models/([^/:]+)" + _VERSION_OR_LABEL + r":(classify|regress|predict)", _FLAGS
)
STATUS_PATH = re.compile(
    r"/v1/models(?:/([^/:]+))?" + _VERSION_OR_LABEL + r"(?:/(metadata))?", _FLAGS
)
_INT64_MAX = 2**63 - 1

Body = Callable[[], bytes]


@dataclasses.dataclass(frozen=True)
class Route:
    """A parsed request line. `matched` is False when no regex matched (a malformed URL)."""

    http_method: str
    path: str
    matched: bool = False
    model: str = ""
    version: str = ""  # the digits as written; converted when the ModelSpec is built
    label: str | None = None
    method: str = ""  # classify|regress|predict in the case it was written; "" for GETs
    subresource: str = ""

    def model_spec(self) -> model_pb2.ModelSpec:
        spec = model_pb2.ModelSpec(name=self.model)
        if self.version:
            version = int(self.version)
            if version > _INT64_MAX:
                raise InvalidArgument(f"Failed to convert version: {self.version} to numeric.")
            spec.version.value = version
        if self.label is not None:
            spec.version_label = self.label
        return spec


@dataclasses.dataclass(frozen=True)
class Reply:
    """What a REST request answers: its code (HTTP status via http_status unless `http` says
    otherwise), body, and the model and API it is counted under in the request metrics."""

    code: Code
    body: bytes
    model: str = ""
    api: str = ""
    http: int = 0


class TooLarge(ResourceExhausted):
    """A request body past --rest_api_max_body_bytes: HTTP 413, not RESOURCE_EXHAUSTED's 429."""

    HTTP_STATUS = 413


def _unescape(text: str) -> str:
    """curl_easy_unescape: %XX decoded, anything else (`+`, stray `%`) kept."""
    raw = unquote_to_bytes(text.encode("utf-8", "surrogateescape"))
    return raw.decode("utf-8", "replace")


def parse_route(http_method: str, path: str) -> Route:
    """Matches `path` (the raw request target) as ParseModelInfo does."""
    if http_method == "POST":
        match = PREDICT_PATH.fullmatch(path)
    elif http_method == "GET":
        match = STATUS_PATH.fullmatch(path)
    else:
        return Route(http_method, path)
    if match is None:
        return Route(http_method, path)
    name, version, label, last = match.groups()
    method, subresource = (last, "") if http_method == "POST" else ("", last or "")
    return Route(
        http_method,
        path,
        matched=True,
        model=_unescape(name) if name else "",
        version=version or "",
        label=_unescape(label) if label else None,
        method=method,
        subresource=subresource,
    )


def handle(service: Service, route: Route, body: Body, deadline: float | None = None) -> Reply:
    """Answers one request; `body()` gives the (decompressed) request body when needed.
    A Predict still waiting to run at `deadline` (time.monotonic()) is dropped."""
    try:
        spec = route.model_spec()
    except ServingError as err:  # TF-Serving returns before it builds the JSON error
        return Reply(err.code, b"", route.model, route.method)
    try:
        reply = _dispatch(service, route, spec, body, deadline)
        return Reply(Code.OK, reply, route.model, route.method)
    except ServingError as err:
        http = TooLarge.HTTP_STATUS if isinstance(err, TooLarge) else 0
        return Reply(err.code, json_codec.error_body(err.message), route.model, route.method, http)
    except Exception as err:
        log.exception("REST %r %r failed", route.http_method, route.path)
        message = f"{type(err).__name__}: {err}"
        return Reply(Code.INTERNAL, json_codec.error_body(message), route.model, route.method)


def _dispatch(
    service: Service,
    route: Route,
    spec: model_pb2.ModelSpec,
    body: Body,
    deadline: float | None,
) -> bytes:
    if route.matched and route.http_method == "POST":
        endpoint = _POST_ENDPOINTS.get(route.method)  # the suffix is compared case-sensitively
        if endpoint is not None:
            return endpoint(service, spec, body(), deadline)
    elif route.matched and route.http_method == "GET":
        if not route.model:
            raise InvalidArgument("Missing model name in request.")
        if route.subresource == "metadata":
            return metadata(service, spec)
        return status(service, spec)
    raise InvalidArgument(f"Malformed request: {route.http_method} {route.path}")


# ----------------------------------------------------------------------------- endpoints


def predict(
    service: Service, spec: model_pb2.ModelSpec, body: bytes, deadline: float | None = None
) -> bytes:
    doc = json_codec.parse_body(body)
    spec.signature_name = json_codec.predict_signature_name(doc)
    with service.lease(spec) as servable:  # one lease: the signature's dtypes, then the run
        name = spec.signature_name or DEFAULT_SIGNATURE
        signature = servable.signatures.get(name)
        if signature is None:
            raise InvalidArgument(f'Serving signature name: "{name}" not found in signature def')
        dtypes = {alias: info.dtype for alias, info in signature.definition.inputs.items()}
        inputs, row_format = json_codec.predict_inputs(doc, dtypes)
        request = Request(spec, inputs, deadline=deadline)
        _, outputs = service.handlers.predict_on(servable, request)
    return json_codec.predict_response(outputs, row_format)


def classify(
    service: Service, spec: model_pb2.ModelSpec, body: bytes, deadline: float | None = None
) -> bytes:
    spec.signature_name, data = json_codec.classify_regress_request(json_codec.parse_body(body))
    _, result = service.classify(spec, data, deadline)
    return json_codec.classify_response(result)


def regress(
    service: Service, spec: model_pb2.ModelSpec, body: bytes, deadline: float | None = None
) -> bytes:
    spec.signature_name, data = json_codec.classify_regress_request(json_codec.parse_body(body))
    _, result = service.regress(spec, data, deadline)
    return json_codec.regress_response(result)


def status(service: Service, spec: model_pb2.ModelSpec) -> bytes:
    """GetModelStatus; a version label is ignored (all versions are listed)."""
    return json_codec.status_json(service.model_status(spec))


def metadata(service: Service, spec: model_pb2.ModelSpec) -> bytes:
    out_spec, signature_defs = service.model_metadata(spec, ["signature_def"])
    return json_codec.metadata_json(out_spec, signature_defs)


Endpoint = Callable[[Service, model_pb2.ModelSpec, bytes, float | None], bytes]
_POST_ENDPOINTS: dict[str, Endpoint] = {
    "predict": predict,
    "classify": classify,
    "regress": regress,
}
