"""Property-based fuzzing of the TensorProto codec against TensorFlow's own conversions.

Encoding is checked against `tf.make_ndarray`, decoding against `tf.make_tensor_proto` and
against TensorFlow's C++ `Tensor::FromProto` (the `ParseTensor` op, what TF-Serving runs):
every dtype, random shapes, typed fields and tensor_content, padding, and malformed protos
(random bytes parsed as a TensorProto, wrong lengths, bad dims and dtypes). Whatever the
input, decoding returns what FromProto returns or raises `TensorParseError`, never anything
else. Derandomized and bounded for CI (`deadline=None`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import tensorflow as tf
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from ml_dtypes import bfloat16
from tensorflow.core.framework import tensor_pb2, types_pb2

from tfrec.base import codecs

FUZZ = settings(
    max_examples=400,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
DTYPES = sorted(codecs.BY_ENUM.values(), key=lambda d: d.enum)
# Decodes larger than this are planned, not run (the fuzz must not allocate gigabytes).
DECODE_BOUND = 1 << 20
# Dimensions a hostile client would send.
NASTY_DIMS = [-1, 0, 1, 2, 3, 7, 2**31, 2**32, 2**62, 2**63 - 1]


def same(ours: np.ndarray, theirs: np.ndarray) -> bool:
    """Equal shape, dtype and values (NaNs equal, the sign of zero compared)."""
    if ours.shape != theirs.shape or ours.dtype != theirs.dtype:
        return False
    if ours.dtype.kind == "O":
        return ours.tolist() == theirs.tolist()
    if ours.dtype.kind in "biu":
        return bool(np.array_equal(ours, theirs))
    with np.errstate(invalid="ignore"):
        x = ours.astype(np.complex128).reshape(-1).view(np.float64)
        y = theirs.astype(np.complex128).reshape(-1).view(np.float64)
    nan = np.isnan(x)
    if not np.array_equal(nan, np.isnan(y)):
        return False
    return np.where(nan, 0, x).tobytes() == np.where(nan, 0, y).tobytes()


def from_proto(proto: tensor_pb2.TensorProto) -> np.ndarray | None:
    """TensorFlow's Tensor::FromProto of `proto` (None when it refuses it)."""
    try:
        dtype = tf.dtypes.as_dtype(proto.dtype)
        value = tf.io.parse_tensor(proto.SerializeToString(), dtype).numpy()
    except (tf.errors.InvalidArgumentError, TypeError, ValueError):
        return None
    return np.asarray(value, dtype=object) if dtype == tf.string else np.asarray(value)


def check(proto: tensor_pb2.TensorProto) -> None:
    """Decodes `proto` both ways: only TensorParseError may escape ours, and where both
    decode, the values agree. Large decodes are only planned."""
    try:
        planned = codecs.plan(proto)
    except codecs.TensorParseError:
        return
    if planned.nbytes > DECODE_BOUND:
        return
    try:
        ours: np.ndarray | None = codecs.decode(proto, planned)
    except codecs.TensorParseError:
        ours = None
    theirs = from_proto(proto)
    if ours is not None:
        assert theirs is not None, f"TensorFlow refuses what tfrec decodes: {proto}"
        assert same(ours, theirs), f"{proto}\nours {ours!r}\ntheirs {theirs!r}"
    else:
        assert theirs is None, f"tfrec refuses what TensorFlow decodes: {proto}"


# ----------------------------------------------------------------------------- arrays


@st.composite
def arrays(draw: st.DrawFn) -> np.ndarray:
    dtype = draw(st.sampled_from(DTYPES))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=4))
    if dtype.is_string:
        items = draw(st.lists(st.binary(max_size=12), min_size=math.prod(shape),
                              max_size=math.prod(shape)))  # fmt: skip
        out = np.empty(len(items), dtype=object)
        out[:] = items
        return out.reshape(shape)
    if dtype.numpy == np.dtype(bfloat16):
        return draw(hnp.arrays(np.float32, shape)).astype(bfloat16)
    return draw(hnp.arrays(dtype.numpy, shape))


@FUZZ
@given(arrays(), st.booleans())
def test_encoding_is_what_tensorflow_reads(array: np.ndarray, tensor_content: bool) -> None:
    proto = codecs.from_ndarray(array, tensor_content)
    if not (tensor_content and array.dtype.kind == "O"):  # make_ndarray cannot read those
        assert same(tf.make_ndarray(proto), array)
    assert same(codecs.to_ndarray(proto), array)
    check(proto)


@FUZZ
@given(arrays())
def test_decoding_what_tensorflow_writes(array: np.ndarray) -> None:
    proto = tf.make_tensor_proto(array)
    assert same(codecs.to_ndarray(proto), array)
    check(proto)


# ----------------------------------------------------------------------------- typed fields

_INT32 = st.integers(-(2**31), 2**31 - 1)
_FLOATS = st.floats(width=32) | st.sampled_from([math.nan, -0.0, math.inf])
_FIELD_VALUES = {
    "float_val": _FLOATS,
    "double_val": st.floats() | st.sampled_from([math.nan, -0.0]),
    "int_val": _INT32,  # int8/uint8/int16/uint16 truncate it, as C++ does
    "half_val": _INT32,  # the bits of a half or bfloat16, in an int32
    "int64_val": st.integers(-(2**63), 2**63 - 1),
    "uint32_val": st.integers(0, 2**32 - 1),
    "uint64_val": st.integers(0, 2**64 - 1),
    "bool_val": st.booleans(),
    "scomplex_val": _FLOATS,
    "dcomplex_val": st.floats(),
    "string_val": st.binary(max_size=8),
}


@st.composite
def typed_protos(draw: st.DrawFn) -> tensor_pb2.TensorProto:
    """Typed fields of random length against a small shape: padding, truncation, extras."""
    dtype = draw(st.sampled_from(DTYPES))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4))
    n = math.prod(shape)
    proto = tensor_pb2.TensorProto(dtype=dtype.enum, tensor_shape=codecs.shape_proto(shape))
    values = draw(st.lists(_FIELD_VALUES[dtype.field], max_size=2 * n + 3))
    getattr(proto, dtype.field).extend(values)
    if draw(st.booleans()):  # a value in another type's field is ignored
        other = draw(st.sampled_from(sorted(_FIELD_VALUES)))
        if other != dtype.field:
            getattr(proto, other).extend(draw(st.lists(_FIELD_VALUES[other], max_size=3)))
    return proto


@FUZZ
@given(typed_protos())
def test_typed_fields_pad_and_truncate_as_fromproto(proto: tensor_pb2.TensorProto) -> None:
    check(proto)


@st.composite
def content_protos(draw: st.DrawFn) -> tensor_pb2.TensorProto:
    """tensor_content of the right length, or not; string lists well-formed or not."""
    dtype = draw(st.sampled_from(DTYPES))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4))
    n = math.prod(shape)
    proto = tensor_pb2.TensorProto(dtype=dtype.enum, tensor_shape=codecs.shape_proto(shape))
    if dtype.is_string and draw(st.booleans()):
        items = draw(st.lists(st.binary(max_size=200), min_size=n, max_size=n))
        content = codecs._encode_string_list(items)
        cut = draw(st.integers(0, 2))  # maybe truncated or with a byte too many
        proto.tensor_content = content[: len(content) - cut] if cut < 2 else content + b"\x00"
    else:
        exact = n * (1 if dtype.is_string else dtype.numpy.itemsize)
        size = draw(st.sampled_from([exact, exact, max(exact - 1, 0), exact + 1, 3]))
        if dtype.numpy == np.dtype(np.bool_):  # TensorFlow's bools are bytes 0 and 1
            proto.tensor_content = bytes(draw(st.lists(st.sampled_from([0, 1]), min_size=size,
                                                       max_size=size)))  # fmt: skip
        else:
            proto.tensor_content = draw(st.binary(min_size=size, max_size=size))
    return proto


@FUZZ
@given(content_protos())
def test_tensor_content_as_fromproto(proto: tensor_pb2.TensorProto) -> None:
    check(proto)


# ----------------------------------------------------------------------------- malformed


@st.composite
def malformed_protos(draw: st.DrawFn) -> tensor_pb2.TensorProto:
    """Any dtype enum (valid, reference, unsupported or unknown), nasty dims, any fields."""
    proto = tensor_pb2.TensorProto()
    enums = sorted(types_pb2.DataType.values())
    proto.dtype = draw(st.sampled_from(enums) | st.integers(0, 300))
    rank = draw(st.sampled_from([0, 1, 2, 3, 64, 65, 254, 255]))
    for _ in range(rank):
        proto.tensor_shape.dim.add(size=draw(st.sampled_from(NASTY_DIMS)))
    proto.tensor_shape.unknown_rank = draw(st.booleans()) and draw(st.booleans())
    if draw(st.booleans()):
        proto.tensor_content = draw(st.binary(max_size=64))
    field = draw(st.sampled_from(sorted(_FIELD_VALUES)))
    getattr(proto, field).extend(draw(st.lists(_FIELD_VALUES[field], max_size=6)))
    return proto


@FUZZ
@given(malformed_protos())
def test_malformed_protos_are_refused_cleanly(proto: tensor_pb2.TensorProto) -> None:
    check(proto)


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes_as_a_tensor_proto(data: bytes) -> None:
    try:
        proto = tensor_pb2.TensorProto.FromString(data)
    except DecodeError:
        return  # the transport refuses it before any decode
    check(proto)


def test_plan_counts_padding_and_string_objects() -> None:
    strings = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, string_val=[b"ab", b"c"])
    strings.tensor_shape.dim.add(size=2**30)
    planned = codecs.plan(strings)
    assert planned.size == 2**30
    assert planned.nbytes == 8 * 2**30 + 2 * codecs.BYTES_OVERHEAD
    floats = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[1.0])
    floats.tensor_shape.dim.add(size=2**28)
    assert codecs.plan(floats).nbytes == 2**30
    extra: Any = tensor_pb2.TensorProto(dtype=types_pb2.DT_INT64, int64_val=[1] * 10)
    assert codecs.plan(extra).nbytes == 80  # a scalar, but every value is read
