"""TensorProto <-> numpy, with TensorFlow's `Tensor::FromProto` / `AsProtoField` semantics.

Pure functions over one dtype table. Hot paths avoid per-element Python work:
- decoding `tensor_content` is `np.frombuffer` (no copy); typed fields go through
  `np.array(repeated_field)`, which reads upb's buffer directly;
- encoding float/double/complex/bool typed fields writes the packed wire bytes and lets upb
  parse them (a memcpy), instead of `RepeatedField.extend`, which is 70x slower.

Decoding never trusts the proto. `plan` reads what a decode would allocate from the header
alone (O(rank), no element touched): padding included, strings at their object cost; a caller
with limits checks it before `decode` allocates anything. Whatever the limits, a decoded tensor
is bounded by `MAX_TENSOR_BYTES`. Every failure raises `TensorParseError` (`UnsupportedShape`
for shapes TensorFlow accepts but numpy cannot hold); the caller names the input alias.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from typing import NamedTuple

import numpy as np
from ml_dtypes import bfloat16
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

# A decoded tensor may not exceed what one gRPC message may carry.
MAX_TENSOR_BYTES = 2**31 - 1
# TensorFlow's TensorShape limit (kMaxRank = 254).
MAX_RANK = 254
# numpy's: at most 64 dimensions, and the product of the nonzero dimensions times the item
# size within intp, even when another dimension is 0 (TensorFlow accepts [0, 2**62, 2**62]).
NUMPY_MAX_RANK = 64
_NUMPY_MAX_BYTES = int(np.iinfo(np.intp).max)
# A decoded string costs its slot in the object array plus, per distinct `bytes` object, its
# characters and CPython's bytes header (sys.getsizeof(b"") == 33).
POINTER_BYTES = np.dtype(object).itemsize
BYTES_OVERHEAD = sys.getsizeof(b"")


class TensorParseError(ValueError):
    """The TensorProto cannot be turned into a tensor (TF-Serving: `tensor parsing error`)."""


class UnsupportedShape(TensorParseError):
    """A shape TensorFlow accepts that numpy cannot hold; the message says why."""


@dataclasses.dataclass(frozen=True)
class DType:
    """How one TensorFlow dtype maps to numpy and to TensorProto's typed fields."""

    enum: int
    name: str  # TensorFlow's DataTypeString, used in error messages.
    numpy: np.dtype
    field: str  # TensorProto typed field (`float_val`, ...).
    wire: str | None = None  # numpy dtype of the packed little-endian wire form, if raw bytes.

    @property
    def is_string(self) -> bool:
        return self.numpy.kind == "O"


def _dt(enum: int, name: str, np_type: object, field: str, wire: str | None = None) -> DType:
    return DType(enum, name, np.dtype(np_type), field, wire)  # type: ignore[call-overload]


_DTYPES = [
    _dt(types_pb2.DT_FLOAT, "float", np.float32, "float_val", "<f4"),
    _dt(types_pb2.DT_DOUBLE, "double", np.float64, "double_val", "<f8"),
    _dt(types_pb2.DT_INT32, "int32", np.int32, "int_val"),
    _dt(types_pb2.DT_UINT8, "uint8", np.uint8, "int_val"),
    _dt(types_pb2.DT_INT16, "int16", np.int16, "int_val"),
    _dt(types_pb2.DT_INT8, "int8", np.int8, "int_val"),
    _dt(types_pb2.DT_UINT16, "uint16", np.uint16, "int_val"),
    _dt(types_pb2.DT_STRING, "string", object, "string_val"),
    _dt(types_pb2.DT_COMPLEX64, "complex64", np.complex64, "scomplex_val", "<f4"),
    _dt(types_pb2.DT_COMPLEX128, "complex128", np.complex128, "dcomplex_val", "<f8"),
    _dt(types_pb2.DT_INT64, "int64", np.int64, "int64_val"),
    _dt(types_pb2.DT_BOOL, "bool", np.bool_, "bool_val", "u1"),
    _dt(types_pb2.DT_HALF, "half", np.float16, "half_val"),
    _dt(types_pb2.DT_BFLOAT16, "bfloat16", bfloat16, "half_val"),
    _dt(types_pb2.DT_UINT32, "uint32", np.uint32, "uint32_val"),
    _dt(types_pb2.DT_UINT64, "uint64", np.uint64, "uint64_val"),
]
BY_ENUM: dict[int, DType] = {d.enum: d for d in _DTYPES}
BY_NUMPY: dict[np.dtype, DType] = {d.numpy: d for d in _DTYPES}
# Reference dtypes (DT_FLOAT_REF = DT_FLOAT + 100) serve as their base type.
_REF_OFFSET = 100


def dtype_of_enum(enum: int) -> DType | None:
    """The DType for a DataType enum value (ref types map to their base), or None."""
    return BY_ENUM.get(enum - _REF_OFFSET if enum > _REF_OFFSET else enum)


def dtype_of_array(array: np.ndarray) -> DType:
    """The DType for a numpy array; `str`/`bytes`/object arrays are DT_STRING."""
    kind = array.dtype.kind
    if kind in "OSU":
        return BY_ENUM[types_pb2.DT_STRING]
    dtype = BY_NUMPY.get(array.dtype)
    if dtype is None:
        raise TensorParseError(f"unsupported numpy dtype {array.dtype}")
    return dtype


# ----------------------------------------------------------------------------- decoding


def _shape_of(proto: tensor_shape_pb2.TensorShapeProto) -> tuple[int, ...]:
    if proto.unknown_rank:
        raise TensorParseError("tensor shape has unknown rank")
    dims = tuple(d.size for d in proto.dim)
    if len(dims) > MAX_RANK:
        raise TensorParseError(f"tensor rank {len(dims)} exceeds {MAX_RANK}")
    if dims and min(dims) < 0:
        raise TensorParseError(f"tensor shape has a negative dimension {min(dims)}")
    if len(dims) > NUMPY_MAX_RANK:
        raise UnsupportedShape(
            f"has {len(dims)} dimensions; at most {NUMPY_MAX_RANK} are supported"
        )
    return dims


class Plan(NamedTuple):
    """What decoding a TensorProto gives, read from its header: dtype, shape, element count,
    the bytes the decode allocates (padding included; strings at their object cost), and its
    tensor_content (read once: each read of the field copies it)."""

    dtype: DType
    shape: tuple[int, ...]
    size: int
    nbytes: int
    content: bytes


def plan(proto: tensor_pb2.TensorProto) -> Plan:
    """The Plan of a decode, in O(rank) without touching an element; TensorParseError if the
    dtype or shape is invalid, UnsupportedShape if numpy cannot hold the shape."""
    dtype = dtype_of_enum(proto.dtype) if proto.dtype < _REF_OFFSET else None
    if dtype is None:
        raise TensorParseError(f"unsupported dtype {proto.dtype}")
    shape = _shape_of(proto.tensor_shape)
    n = math.prod(shape)
    itemsize = dtype.numpy.itemsize
    if not n and shape and math.prod(d for d in shape if d) > _NUMPY_MAX_BYTES // itemsize:
        raise UnsupportedShape(f"has shape {list(shape)}, which numpy cannot hold")
    content = proto.tensor_content
    if not n:  # FromProto reads no field of an empty tensor
        nbytes = 0
    elif dtype.is_string:
        # tensor_content: n new objects; typed: the values kept (padding repeats the last).
        objects = n if content else min(len(getattr(proto, dtype.field)), n)
        nbytes = n * POINTER_BYTES + objects * BYTES_OVERHEAD + len(content)
    elif content:
        nbytes = n * itemsize
        if len(content) != nbytes:
            raise TensorParseError(
                f"tensor_content has {len(content)} bytes, shape {list(shape)} needs {nbytes}"
            )
    else:  # every typed value is read, extra ones too; complex values come in pairs
        values = len(getattr(proto, dtype.field))
        nbytes = max(n, values // 2 if dtype.numpy.kind == "c" else values) * itemsize
    return Plan(dtype, shape, n, nbytes, content)


def _decode_string_list(content: bytes, n: int) -> np.ndarray:
    """TF's port::DecodeStringList: n varint32 lengths (GetVarint32: at most 5 bytes, bits
    past 32 dropped), then the bytes back to back."""
    lengths = []
    pos = 0
    for _ in range(n):
        value, shift = 0, 0
        while True:
            if pos >= len(content) or shift > 28:
                raise TensorParseError("truncated string tensor_content")
            byte = content[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
        lengths.append(value & 0xFFFFFFFF)
    if pos + sum(lengths) != len(content):
        raise TensorParseError("string tensor_content size does not match its lengths")
    out = np.empty(n, dtype=object)
    for i, length in enumerate(lengths):
        out[i] = content[pos : pos + length]
        pos += length
    return out


def _typed_values(proto: tensor_pb2.TensorProto, dtype: DType, n: int) -> np.ndarray:
    values = getattr(proto, dtype.field)
    if dtype.is_string:  # no object for a value past the n used
        items = values[:n] if len(values) > n else list(values)
        out = np.empty(len(items), dtype=object)
        out[:] = items
        return out
    if dtype.field == "half_val":
        return np.array(values, dtype=np.uint16).view(dtype.numpy)
    if dtype.wire is not None and dtype.numpy.kind == "c":
        flat = np.array(values, dtype=dtype.wire)
        return flat[: len(flat) // 2 * 2].view(dtype.numpy)
    return np.array(values, dtype=dtype.numpy)


def to_ndarray(proto: tensor_pb2.TensorProto) -> np.ndarray:
    """Decodes a TensorProto as `Tensor::FromProto` does, or raises TensorParseError."""
    return decode(proto, plan(proto))


def decode(proto: tensor_pb2.TensorProto, planned: Plan) -> np.ndarray:
    """Decodes `proto` by its `plan(proto)` (which checked a numeric tensor_content's size),
    or raises TensorParseError.

    Typed-field lists shorter than the shape are padded with their last value (zeros when
    empty); extra values are ignored. `tensor_content` must match the shape exactly.
    """
    dtype, shape, n, nbytes, content = planned
    if nbytes > MAX_TENSOR_BYTES:
        raise TensorParseError(f"shape {list(shape)} decodes to more than {MAX_TENSOR_BYTES} bytes")
    if not n:
        return np.empty(shape, dtype=dtype.numpy)
    if content:
        if dtype.is_string:
            return _decode_string_list(content, n).reshape(shape)
        return np.frombuffer(content, dtype=dtype.numpy.newbyteorder("<")).reshape(shape)
    values = _typed_values(proto, dtype, n)
    if len(values) == n:
        return values.reshape(shape)
    if len(values) > n:
        return values[:n].reshape(shape)
    if len(values) == 0:
        filler = b"" if dtype.is_string else 0
        out = np.full(n, filler, dtype=dtype.numpy)
    else:
        out = np.empty(n, dtype=dtype.numpy)
        out[: len(values)] = values
        out[len(values) :] = values[-1]
    return out.reshape(shape)


# ----------------------------------------------------------------------------- encoding


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _shape_bytes(shape: tuple[int, ...]) -> bytes:
    """Serialized TensorShapeProto (field 2 of TensorProto), dims as `dim { size: d }`."""
    dims = b"".join(
        b"\x12" + _varint(len(d)) + d for d in ((b"\x08" + _varint(s)) if s else b"" for s in shape)
    )
    return b"\x12" + _varint(len(dims)) + dims


def _header(dtype: DType, shape: tuple[int, ...]) -> bytes:
    return b"\x08" + _varint(dtype.enum) + _shape_bytes(shape)


_FIELD_NUMBER = {
    f.name: f.number
    for f in tensor_pb2.TensorProto.DESCRIPTOR.fields  # type: ignore[attr-defined]
}


_CONTENT_FIELD = _FIELD_NUMBER["tensor_content"]


def _as_bytes_array(array: np.ndarray) -> list[bytes]:
    return [v if isinstance(v, bytes) else str(v).encode() for v in array.ravel().tolist()]


def _encode_string_list(items: list[bytes]) -> bytes:
    return b"".join(_varint(len(s)) for s in items) + b"".join(items)


def _packed(field_number: int, data: memoryview) -> list[bytes | memoryview]:
    """A length-delimited field (a packed repeated field or `tensor_content`)."""
    if not data.nbytes:
        return []
    return [_varint(field_number << 3 | 2), _varint(data.nbytes), data]


def from_ndarray(
    array: np.ndarray,
    tensor_content: bool = False,
    proto: tensor_pb2.TensorProto | None = None,
) -> tensor_pb2.TensorProto:
    """Encodes an array as `Tensor::AsProtoField` (typed fields) or `AsProtoTensorContent`.

    Writes into `proto` when given (it must be empty: a map entry of a response, say), which
    saves a copy. Numeric wire bytes are assembled with one `join` straight from the array's
    buffer: each extra large temporary costs fresh pages from the OS.
    """
    array = np.asarray(array)
    dtype = dtype_of_array(array)
    shape = tuple(int(s) for s in array.shape)
    if proto is None:
        proto = tensor_pb2.TensorProto()
    header = _header(dtype, shape)
    if dtype.is_string:
        items = _as_bytes_array(array)
        if tensor_content:
            body = memoryview(_encode_string_list(items))
            proto.MergeFromString(b"".join([header, *_packed(_CONTENT_FIELD, body)]))
        else:
            proto.MergeFromString(header)
            proto.string_val.extend(items)
        return proto
    if tensor_content or dtype.wire is not None:
        # Packed float/double/complex/bool fields hold exactly the little-endian array bytes.
        if array.dtype.byteorder == ">":
            array = array.astype(array.dtype.newbyteorder("<"))
        raw = memoryview(np.ascontiguousarray(array).reshape(-1).view(np.uint8))  # type: ignore[arg-type]
        field = _CONTENT_FIELD if tensor_content else _FIELD_NUMBER[dtype.field]
        proto.MergeFromString(b"".join([header, *_packed(field, raw)]))
        return proto
    proto.MergeFromString(header)
    flat = array.ravel()
    if dtype.field == "half_val":
        flat = flat.view(np.uint16)
    getattr(proto, dtype.field).extend(flat.tolist())
    return proto


def shape_proto(shape: tuple[int, ...] | list[int]) -> tensor_shape_pb2.TensorShapeProto:
    """A TensorShapeProto for a concrete shape."""
    return tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=int(s)) for s in shape]
    )
