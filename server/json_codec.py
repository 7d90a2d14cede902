"""REST request and response bodies, as TF-Serving's `http_rest_api_handler.cc` builds them.

Pure functions over bytes, parsed bodies, numpy arrays and protos; the HTTP routes call them:

    doc = parse_body(body)
    signature = predict_signature_name(doc)      # "" means serving_default
    tensors, row_format = predict_inputs(doc, {name: info.dtype for name, info in inputs.items()})
    ...run the signature...
    return predict_response(outputs, row_format)

Every failure is a `tfrec.base.errors.ServingError` whose message is TF-Serving's exact text; a
route answers `error_body(err.message)` with status `tfrec.base.errors.http_status(err.code)`.
The rules for JSON values and tensors live in `json_text`, `json_tensor` and `json_output`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np
import orjson
from google.protobuf import json_format
from tensorflow.core.example import example_pb2, feature_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    input_pb2,
    model_pb2,
    regression_pb2,
)

from server.json_output import columns, json_value, predictions
from server.json_tensor import tensors_from_inputs, tensors_from_instances
from server.json_text import (
    b64decode,
    debug_string,
    is_b64,
    json_type,
    members,
    parse_json,
    quote,
)
from tfrec.base.errors import InvalidArgument

_NUMPY = orjson.OPT_SERIALIZE_NUMPY
_INT64_MAX = 2**63 - 1


@dataclasses.dataclass(frozen=True)
class JsonBody:
    """A parsed request body: its top-level object, and whether the text holds a `true` or
    `false` token anywhere (if not, numeric tensors need no per-element type check)."""

    root: dict[str, Any]
    may_hold_bools: bool


def parse_body(body: bytes) -> JsonBody:
    """Parses a request body; raises InvalidArgument (`JSON Parse error: ...`, `... Is not
    object`)."""
    root = parse_json(body)
    if not isinstance(root, dict):
        raise InvalidArgument(f"JSON Value: {debug_string(root)} Is not object")
    return JsonBody(root, b"true" in body or b"false" in body)


def _format_error(root: dict[str, Any], text: str) -> InvalidArgument:
    return InvalidArgument(f"JSON Value: {debug_string(root)} {text}")


def _signature_name(root: dict[str, Any]) -> str:
    name = root.get("signature_name", "")
    if not isinstance(name, str):
        raise _format_error(
            root, "not formatted correctly. 'signature_name' key must be a string value."
        )
    return name


# ----------------------------------------------------------------------------- predict


def predict_signature_name(doc: JsonBody) -> str:
    """The optional `signature_name` ("" when absent); InvalidArgument if not a string."""
    return _signature_name(doc.root)


def predict_inputs(doc: JsonBody, inputs: Mapping[str, int]) -> tuple[dict[str, np.ndarray], bool]:
    """The input tensors of a predict body and whether it used the row (`instances`) format.

    `inputs` maps the signature's input names to their DataType enums (`TensorInfo.dtype`).
    Raises InvalidArgument with TF-Serving's texts, or Unimplemented for input dtypes that
    JSON cannot express (half, complex, ...).
    """
    if not inputs:
        name = predict_signature_name(doc) or "DEFAULT"
        raise InvalidArgument(f"Failed to get input map for signature: {name}")
    root = doc.root
    if "instances" in root:
        if "inputs" in root:
            raise _format_error(
                root,
                "Not formatted correctly expecting only one of 'inputs' or 'instances' keys "
                "to exist ",
            )
        instances = root["instances"]
        if not isinstance(instances, list):
            raise _format_error(root, "Expecting 'instances' to be an list/array")
        if not instances:
            raise _format_error(root, "No values in 'instances' array")
        return tensors_from_instances(instances, inputs, doc.may_hold_bools), True
    if "inputs" in root:
        return tensors_from_inputs(root["inputs"], inputs, doc.may_hold_bools), False
    raise InvalidArgument("Missing 'inputs' or 'instances' key")


def predict_response(outputs: Mapping[str, np.ndarray], row_format: bool) -> bytes:
    """`{"predictions": ...}` (row format) or `{"outputs": ...}` (columnar) for the output
    tensors, keyed by alias. Raises InvalidArgument (empty map, scalar or inconsistent batch
    in row format, dtypes JSON cannot express)."""
    if not outputs:
        raise InvalidArgument("Cannot convert empty tensor map to JSON")
    if row_format:
        return orjson.dumps({"predictions": predictions(outputs)}, option=_NUMPY)
    return orjson.dumps({"outputs": columns(outputs)}, option=_NUMPY)


# ----------------------------------------------------------------------------- classify/regress


def _feature_kind(item: Any, name: str) -> str:
    """The Feature list a JSON element goes to (AddValueToFeature's type switch)."""
    if isinstance(item, bool):
        return "int64"
    if isinstance(item, str) or is_b64(item):
        return "bytes"
    if isinstance(item, float):
        return "float"
    if isinstance(item, int):
        return "int64"
    raise InvalidArgument(
        f"Feature: {name} has element with unexpected JSON type: {json_type(item)}"
    )


def _feature_value(item: Any, kind: str, name: str) -> Any:
    if kind == "bytes":
        return item.encode() if isinstance(item, str) else b64decode(item)
    if kind == "int64" and item > _INT64_MAX:
        raise InvalidArgument(f"Feature: {name} has uint64_t element. Only int64_t is supported.")
    return int(item) if kind == "int64" else item


def _feature(content: Any, name: str) -> feature_pb2.Feature:
    """One Feature from a value or a list of values, all of one kind."""
    kind = ""
    values = []
    for item in content if isinstance(content, list) else [content]:
        item_kind = _feature_kind(item, name)
        if kind and item_kind != kind:
            raise InvalidArgument(
                f"Unexpected element type in feature: {name} expecting type: {kind}"
            )
        kind = item_kind
        values.append(_feature_value(item, kind, name))
    feature = feature_pb2.Feature()
    if kind == "float":
        with np.errstate(over="ignore"):
            values = np.asarray(values, dtype=np.float32).tolist()
    if kind:
        getattr(feature, f"{kind}_list").value.extend(values)
    return feature


def _fill_example(value: Any, example: example_pb2.Example) -> None:
    if not isinstance(value, dict):
        raise InvalidArgument(f"Example must be JSON object but got JSON {json_type(value)}")
    for name, content in members(value):  # a repeated key: the last one wins
        example.features.feature[name].CopyFrom(_feature(content, name))


def classify_regress_request(doc: JsonBody) -> tuple[str, input_pb2.Input]:
    """The signature name ("" when absent) and the `Input` of a classify or regress body:
    `example_list`, or `example_list_with_context` when `context` is present."""
    root = doc.root
    signature_name = _signature_name(root)
    request_input = input_pb2.Input()
    has_context = "context" in root
    if has_context:
        _fill_example(root["context"], request_input.example_list_with_context.context)
    if "examples" not in root:
        raise _format_error(
            root, "When method is classify, key 'examples' is expected and was not found"
        )
    examples = root["examples"]
    if not isinstance(examples, list):
        raise _format_error(root, "Expecting 'examples' value to be an list/array")
    if not examples:
        raise _format_error(root, "'examples' value is an empty array")
    if has_context:
        target = request_input.example_list_with_context.examples
    else:
        target = request_input.example_list.examples
    for value in examples:
        _fill_example(value, target.add())
    return signature_name, request_input


def classify_response(result: classification_pb2.ClassificationResult) -> bytes:
    """`{"results": [[[label, score], ...] per example]}`."""
    if not result.classifications:
        raise InvalidArgument("Cannot convert empty ClassificationResults to JSON")
    flat = [c.score for classes in result.classifications for c in classes.classes]
    scores = iter(json_value(np.asarray(flat, dtype=np.float32)))
    results = [[[c.label, next(scores)] for c in cls.classes] for cls in result.classifications]
    return orjson.dumps({"results": results}, option=_NUMPY)


def regress_response(result: regression_pb2.RegressionResult) -> bytes:
    """`{"results": [value, ...]}`."""
    if not result.regressions:
        raise InvalidArgument("Cannot convert empty RegressionResults to JSON")
    values = np.asarray([r.value for r in result.regressions], dtype=np.float32)
    return orjson.dumps({"results": json_value(values)}, option=_NUMPY)


# ----------------------------------------------------------------------------- errors, status


def error_body(message: str) -> bytes:
    """`{ "error": "<message>" }` as TF-Serving's MakeJsonFromStatus pretty-prints it."""
    return ('{\n    "error": ' + quote(message) + "\n}").encode("utf-8", "replace")


def status_json(response: get_model_status_pb2.GetModelStatusResponse) -> bytes:
    """GetModelStatusResponse as proto JSON, `status` printed even when OK."""
    copy = get_model_status_pb2.GetModelStatusResponse()
    copy.CopyFrom(response)
    for version in copy.model_version_status:
        version.status.SetInParent()
    text = json_format.MessageToJson(copy, always_print_fields_with_no_presence=True)
    return text.encode()


def metadata_json(
    model_spec: model_pb2.ModelSpec, signature_defs: get_model_metadata_pb2.SignatureDefMap
) -> bytes:
    """The GetModelMetadata reply TF-Serving assembles by hand from two proto JSON prints."""
    options = {"preserving_proto_field_name": True, "always_print_fields_with_no_presence": True}
    spec = json_format.MessageToJson(model_spec, **options)
    signatures = json_format.MessageToJson(signature_defs, **options)
    text = f'{{\n"model_spec":{spec},\n"metadata": {{"signature_def": {signatures}}}\n}}\n'
    return text.encode()
