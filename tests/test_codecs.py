"""TensorProto <-> ndarray: round trips over every dtype, FromProto padding, malformed protos."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from ml_dtypes import bfloat16
from tensorflow.core.framework import tensor_pb2, types_pb2

from tfrec.base import codecs

ARRAYS = [
    np.arange(6, dtype=np.float32).reshape(2, 3),
    np.array(3.5, dtype=np.float32),
    np.array([1.25, -2.0], dtype=np.float64),
    np.array([[1, -2], [3, 4]], dtype=np.int32),
    np.array([0, 255], dtype=np.uint8),
    np.array([-3, 3], dtype=np.int16),
    np.array([-128, 127], dtype=np.int8),
    np.array([65535], dtype=np.uint16),
    np.array([2**40, -(2**40)], dtype=np.int64),
    np.array([2**32 - 1], dtype=np.uint32),
    np.array([2**64 - 1], dtype=np.uint64),
    np.array([True, False, True]),
    np.array([1 + 2j, -3j], dtype=np.complex64),
    np.array([1 + 2j], dtype=np.complex128),
    np.array([1.5, -0.25], dtype=np.float16),
    np.array([1.5, 2.0], dtype=bfloat16),
    np.array([b"a", b"", b"\xff\x00"], dtype=object),
    np.zeros((0, 3), dtype=np.float32),
]


@pytest.mark.parametrize("array", ARRAYS, ids=lambda a: f"{a.dtype}{list(a.shape)}")
@pytest.mark.parametrize("tensor_content", [False, True])
def test_round_trip_every_dtype(array: np.ndarray, tensor_content: bool) -> None:
    proto = codecs.from_ndarray(array, tensor_content=tensor_content)
    back = codecs.to_ndarray(proto)
    assert back.dtype == array.dtype and back.shape == array.shape
    np.testing.assert_array_equal(back, array)
    # TensorFlow itself reads what we wrote identically.
    parsed = tf.io.parse_tensor(proto.SerializeToString(), out_type=tf.as_dtype(proto.dtype))
    np.testing.assert_array_equal(parsed.numpy(), array)


@pytest.mark.parametrize("array", ARRAYS[:-2], ids=lambda a: str(a.dtype))
def test_decodes_what_tensorflow_encodes(array: np.ndarray) -> None:
    proto = tf.make_tensor_proto(array)
    np.testing.assert_array_equal(codecs.to_ndarray(proto), array)


def test_typed_fields_by_default_tensor_content_on_request() -> None:
    array = np.array([[1.0], [2.0]], dtype=np.float32)
    typed = codecs.from_ndarray(array)
    assert list(typed.float_val) == [1.0, 2.0] and not typed.tensor_content
    content = codecs.from_ndarray(array, tensor_content=True)
    assert content.tensor_content == array.tobytes() and not content.float_val
    scalar = codecs.from_ndarray(np.array(3.0, dtype=np.float32))
    assert scalar == tensor_pb2.TensorProto(
        dtype=types_pb2.DT_FLOAT, tensor_shape={}, float_val=[3.0]
    )


def _proto(dtype: int, shape: list[int], **fields: object) -> tensor_pb2.TensorProto:
    proto = tensor_pb2.TensorProto(dtype=dtype, **fields)  # type: ignore[arg-type]
    for size in shape:
        proto.tensor_shape.dim.add(size=size)
    return proto


def test_short_typed_lists_pad_with_the_last_value() -> None:
    out = codecs.to_ndarray(_proto(types_pb2.DT_FLOAT, [3], float_val=[2.0]))
    np.testing.assert_array_equal(out, [2.0, 2.0, 2.0])
    out = codecs.to_ndarray(_proto(types_pb2.DT_INT64, [2, 2], int64_val=[1, 5]))
    np.testing.assert_array_equal(out, [[1, 5], [5, 5]])
    out = codecs.to_ndarray(_proto(types_pb2.DT_STRING, [2], string_val=[b"a"]))
    assert out.tolist() == [b"a", b"a"]


def test_empty_typed_list_gives_zeros_and_extra_values_are_ignored() -> None:
    np.testing.assert_array_equal(codecs.to_ndarray(_proto(types_pb2.DT_INT32, [2])), [0, 0])
    out = codecs.to_ndarray(_proto(types_pb2.DT_FLOAT, [2], float_val=[1, 2, 3, 4]))
    np.testing.assert_array_equal(out, [1.0, 2.0])


@pytest.mark.parametrize(
    "proto",
    [
        _proto(types_pb2.DT_FLOAT, [2], tensor_content=b"\x00" * 7),
        _proto(types_pb2.DT_FLOAT, [-1], float_val=[1.0]),
        _proto(types_pb2.DT_FLOAT, [2**40, 2**40], float_val=[1.0]),
        _proto(types_pb2.DT_FLOAT, [2**31], float_val=[1.0]),
        _proto(types_pb2.DT_RESOURCE, [1]),
        _proto(types_pb2.DT_VARIANT, [1]),
        _proto(types_pb2.DT_QINT8, [1]),
        _proto(types_pb2.DT_INVALID, [1]),
        _proto(999, [1]),
        _proto(types_pb2.DT_FLOAT_REF, [1], float_val=[1.0]),
        _proto(types_pb2.DT_STRING, [2], tensor_content=b"\x05ab"),
        tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape={"unknown_rank": True}),
    ],
    ids=[
        "content-size",
        "negative-dim",
        "overflowing-dims",
        "over-2GiB",
        "resource",
        "variant",
        "qint8",
        "invalid",
        "unknown-enum",
        "ref-dtype",
        "string-content",
        "unknown-rank",
    ],
)
def test_malformed_tensors_raise_without_allocating(proto: tensor_pb2.TensorProto) -> None:
    with pytest.raises(codecs.TensorParseError):
        codecs.to_ndarray(proto)


def test_string_tensor_content_is_tensorflows_encoding() -> None:
    array = np.array([b"hello", b"", b"x" * 300], dtype=object)
    proto = codecs.from_ndarray(array, tensor_content=True)
    assert proto.tensor_content and not proto.string_val
    np.testing.assert_array_equal(codecs.to_ndarray(proto), array)
    parsed = tf.io.parse_tensor(proto.SerializeToString(), out_type=tf.string).numpy()
    assert parsed.tolist() == array.tolist()


def test_str_arrays_encode_as_utf8_strings() -> None:
    proto = codecs.from_ndarray(np.array(["é", "b"]))
    assert proto.dtype == types_pb2.DT_STRING and list(proto.string_val) == ["é".encode(), b"b"]


# ----------------------------------------------------------------------------- fuzz findings


def _from_proto(proto: tensor_pb2.TensorProto) -> np.ndarray:
    """TensorFlow's own Tensor::FromProto (the ParseTensor op)."""
    dtype = tf.dtypes.as_dtype(proto.dtype)
    return tf.io.parse_tensor(proto.SerializeToString(), dtype).numpy()


@pytest.mark.parametrize(
    "proto",
    [
        _proto(types_pb2.DT_STRING, [0], tensor_content=b"\x00"),
        _proto(types_pb2.DT_FLOAT, [3, 0], tensor_content=b"\x00" * 7),
        _proto(types_pb2.DT_INT32, [0, 2**40], tensor_content=b"junk"),
    ],
    ids=["string", "float", "int32-huge-dim"],
)
def test_empty_tensors_ignore_their_fields_as_fromproto(proto: tensor_pb2.TensorProto) -> None:
    ours = codecs.to_ndarray(proto)
    assert ours.shape == _from_proto(proto).shape
    assert ours.size == 0


def test_string_lengths_are_varint32_as_fromproto() -> None:
    # GetVarint32: 5 bytes at most, bits past 32 dropped (1 + 2**32 reads as 1).
    proto = _proto(types_pb2.DT_STRING, [1], tensor_content=b"\x81\x80\x80\x80\x10a")
    assert _from_proto(proto).tolist() == [b"a"]
    assert codecs.to_ndarray(proto).tolist() == [b"a"]
    # A sixth byte: FromProto refuses it.
    proto = _proto(types_pb2.DT_STRING, [1], tensor_content=b"\x81\x80\x80\x80\x80\x00a")
    with pytest.raises(tf.errors.InvalidArgumentError):
        _from_proto(proto)
    with pytest.raises(codecs.TensorParseError):
        codecs.to_ndarray(proto)
