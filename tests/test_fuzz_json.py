"""Property-based fuzzing of the REST JSON codec (`server.json_codec`, `json_tensor`).

Whatever the body (random bytes, random JSON documents, valid requests with one byte
changed), decoding a predict, classify or regress request ends in a tensor map or a
`ServingError`, never another exception. Valid tensors decode to what TensorFlow's
`tf.make_tensor_proto` / `tf.make_ndarray` make of the same values, and the JSON tfrec writes
for an output reads back as that output. Derandomized and bounded for CI.
"""

from __future__ import annotations

import base64
import json
import math
from typing import Any

import numpy as np
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from tensorflow.core.framework import types_pb2

from server import json_codec
from tests.rest_decode import decode_rest

FUZZ = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
D = types_pb2
JSON_DTYPES = [D.DT_FLOAT, D.DT_DOUBLE, D.DT_INT8, D.DT_UINT8, D.DT_INT16, D.DT_INT32,
               D.DT_INT64, D.DT_UINT32, D.DT_UINT64, D.DT_BOOL, D.DT_STRING]  # fmt: skip
ANY_DTYPES = [*JSON_DTYPES, D.DT_HALF, D.DT_COMPLEX64, D.DT_BFLOAT16, D.DT_UINT16, D.DT_VARIANT]

# Text with lone surrogates too (JSON's \udXXX escapes make them).
TEXT = st.text(st.characters(min_codepoint=0, max_codepoint=0x10FFFF, exclude_categories=()))
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**65), 2**65)
    | st.floats()
    | TEXT
    | st.builds(lambda b: {"b64": base64.b64encode(b).decode()}, st.binary(max_size=8))
    | st.builds(lambda s: {"b64": s}, TEXT)
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=20,
)


def dumps(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


ENDPOINTS = st.sampled_from(["predict", "classify"])
INPUT_MAPS = st.dictionaries(
    st.sampled_from(["x", "y", "inputs"]), st.sampled_from(ANY_DTYPES), min_size=0, max_size=3
)


@FUZZ
@given(st.binary(max_size=200), INPUT_MAPS, ENDPOINTS)
def test_random_bytes(body: bytes, inputs: dict[str, int], endpoint: str) -> None:
    decode_rest(body, inputs, endpoint == "predict")


@st.composite
def documents(draw: st.DrawFn) -> dict[str, Any]:
    keys = st.sampled_from(["inputs", "instances", "signature_name", "examples", "context"])
    return draw(st.dictionaries(keys | TEXT, VALUES, max_size=4))


@FUZZ
@given(documents(), INPUT_MAPS, ENDPOINTS)
def test_random_documents(doc: dict[str, Any], inputs: dict[str, int], endpoint: str) -> None:
    decode_rest(dumps(doc), inputs, endpoint == "predict")


@FUZZ
@given(documents(), INPUT_MAPS, ENDPOINTS, st.integers(0, 10**6), st.binary(min_size=1,
       max_size=3))  # fmt: skip
def test_documents_with_a_byte_changed(
    doc: dict[str, Any], inputs: dict[str, int], endpoint: str, at: int, junk: bytes
) -> None:
    body = dumps(doc)
    at %= len(body) + 1
    decode_rest(body[:at] + junk + body[at + 1 :], inputs, endpoint == "predict")


# ----------------------------------------------------------------------------- vs TensorFlow

_NUMPY = {
    D.DT_FLOAT: np.float32,
    D.DT_DOUBLE: np.float64,
    D.DT_INT8: np.int8,
    D.DT_UINT8: np.uint8,
    D.DT_INT16: np.int16,
    D.DT_INT32: np.int32,
    D.DT_INT64: np.int64,
    D.DT_UINT32: np.uint32,
    D.DT_UINT64: np.uint64,
    D.DT_BOOL: np.bool_,
}


@st.composite
def tensors(draw: st.DrawFn) -> tuple[int, np.ndarray]:
    dtype = draw(st.sampled_from(JSON_DTYPES))
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=4))
    if dtype == D.DT_STRING:
        items = draw(st.lists(st.binary(max_size=10), min_size=math.prod(shape),
                              max_size=math.prod(shape)))  # fmt: skip
        array = np.empty(len(items), dtype=object)
        array[:] = items
        return dtype, array.reshape(shape)
    elements = st.floats(width=32, allow_nan=False) if dtype == D.DT_FLOAT else None
    if dtype == D.DT_DOUBLE:
        elements = st.floats(allow_nan=False)
    return dtype, draw(hnp.arrays(_NUMPY[dtype], shape, elements=elements))


def json_of(array: np.ndarray) -> Any:
    if array.dtype != object:
        return array.tolist()
    if not array.ndim:
        return {"b64": base64.b64encode(array.item()).decode()}
    return [json_of(np.asarray(item, dtype=object)) for item in array]


def tensorflow_of(values: Any, dtype: int, shape: tuple[int, ...]) -> np.ndarray:
    """What TensorFlow makes of the same values: make_tensor_proto, then make_ndarray."""
    if dtype == D.DT_STRING:
        flat = [base64.b64decode(v["b64"]) for v in np.asarray(values, dtype=object).ravel()]
        proto = tf.make_tensor_proto(flat, dtype=tf.string, shape=shape)
    else:  # through numpy: make_tensor_proto reads a list of big uint64s as floats
        array = np.asarray(values, dtype=_NUMPY[dtype])
        proto = tf.make_tensor_proto(array, dtype=tf.dtypes.as_dtype(dtype), shape=shape)
    return tf.make_ndarray(proto)


@FUZZ
@given(tensors(), st.booleans())
def test_tensors_decode_as_tensorflow_makes_them(
    tensor: tuple[int, np.ndarray], row_format: bool
) -> None:
    dtype, array = tensor
    values = json_of(array)
    key = "instances" if row_format else "inputs"
    doc = json_codec.parse_body(dumps({key: values}))
    decoded, _ = json_codec.predict_inputs(doc, {"x": dtype})
    expected = tensorflow_of(values, dtype, array.shape)
    assert decoded["x"].shape == expected.shape
    if dtype == D.DT_DOUBLE:  # rapidjson's default (not full-precision) parse, as TF-Serving's
        np.testing.assert_array_max_ulp(decoded["x"], expected, maxulp=1)
    else:
        assert decoded["x"].tolist() == expected.tolist()
    # And the JSON written for an output reads back as that output (strings are written as
    # TF-Serving writes them, raw: not compared).
    written = json_codec.predict_response({"x": expected}, row_format)
    if dtype != D.DT_STRING:
        again = json.loads(written)["predictions" if row_format else "outputs"]
        assert np.asarray(again, dtype=expected.dtype).tolist() == expected.tolist()
