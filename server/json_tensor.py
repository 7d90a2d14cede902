"""JSON values -> numpy arrays with the rules of TF-Serving's `util/json_tensor.cc`.

numpy builds numeric arrays from the parsed nested lists in one call; the inferred dtype and
one min/max then prove every element valid (kind, range, density). Only when that proof fails
does the exact walk (TF-Serving's FillTensorProto / AddInstanceItem) run, which reports
TF-Serving's first error, in its order, with its text. Both paths give the same arrays.

Dtypes are DataType enums (`TensorInfo.dtype`). String tensors are object arrays of bytes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from tensorflow.core.framework import types_pb2

from server.json_text import b64decode, debug_string, is_b64, json_type, members
from tfrec.base.codecs import BY_ENUM
from tfrec.base.errors import InvalidArgument, ServingError, Unimplemented

# numpy arrays have at most 64 dimensions (TensorFlow allows 254).
_MAX_RANK = 64


def dtype_name(enum: int) -> str:
    """TensorFlow's DataTypeString for any DataType enum value."""
    try:
        return types_pb2.DataType.Name(enum)[3:].lower()
    except ValueError:
        return f"unknown dtype enum ({enum})"


_INT32 = (-(2**31), 2**31 - 1)
# Inclusive value range of the JSON integers each integer dtype accepts (rapidjson IsInt & co).
_INT_RANGE = {
    types_pb2.DT_INT32: _INT32,
    types_pb2.DT_INT16: _INT32,
    types_pb2.DT_INT8: _INT32,
    types_pb2.DT_UINT8: _INT32,
    types_pb2.DT_INT64: (-(2**63), 2**63 - 1),
    types_pb2.DT_UINT32: (0, 2**32 - 1),
    types_pb2.DT_UINT64: (0, 2**64 - 1),
}
_FLOATS = (types_pb2.DT_FLOAT, types_pb2.DT_DOUBLE)


def _type_error(value: Any, dtype: int) -> InvalidArgument:
    return InvalidArgument(
        f"JSON Value: {debug_string(value)} Type: {json_type(value)} "
        f"is not of expected type: {dtype_name(dtype)}"
    )


def _leaf(value: Any, dtype: int) -> Any:
    """One element, checked as AddValueToTensor does; strings come back as bytes."""
    if isinstance(value, dict):
        if dtype == types_pb2.DT_STRING:
            return b64decode(value)
        raise _type_error(value, dtype)
    kind = type(value)
    if dtype in _FLOATS:
        ok = kind is float or kind is int
    elif dtype in _INT_RANGE:
        low, high = _INT_RANGE[dtype]
        ok = kind is int and low <= value <= high
    elif dtype == types_pb2.DT_BOOL:
        ok = kind is bool
    elif dtype == types_pb2.DT_STRING:
        if kind is str:
            return value.encode()
        ok = False
    else:
        raise Unimplemented(
            f"Conversion of JSON Value: {debug_string(value)} to type: {dtype_name(dtype)}"
        )
    if not ok:
        raise _type_error(value, dtype)
    return value


def dense_shape(value: Any) -> list[int]:
    """The shape read along first elements (GetDenseTensorShape); a scalar has shape []."""
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _fill(value: Any, level: int, shape: list[int], dtype: int, out: list[Any]) -> None:
    """Appends the elements of `value` to `out`, checking it is dense (FillTensorProto)."""
    rank = len(shape)
    if not isinstance(value, list):
        if level != rank:
            raise InvalidArgument(
                f"JSON Value: {debug_string(value)} found at incorrect level: {level + 1} "
                f"in the JSON DOM. Expected at level: {rank}"
            )
        out.append(_leaf(value, dtype))
        return
    if level >= rank:
        raise InvalidArgument(f"Encountered list at unexpected level: {level} expected < {rank}")
    if len(value) != shape[level]:
        raise InvalidArgument(
            f"Encountered list at unexpected size: {len(value)} at level: {level} "
            f"expected size: {shape[level]}"
        )
    for item in value:
        _fill(item, level + 1, shape, dtype, out)


def _checked_shape(value: Any) -> list[int]:
    shape = dense_shape(value)
    if len(shape) > _MAX_RANK:
        raise InvalidArgument(
            f"JSON Value: {debug_string(value)} has {len(shape)} dimensions; "
            f"at most {_MAX_RANK} are supported"
        )
    return shape


def build_array(values: list[Any], shape: list[int], dtype: int) -> np.ndarray:
    """An ndarray from checked element values (the first prod(shape) of them)."""
    values = values[: math.prod(shape)]
    if dtype == types_pb2.DT_STRING:
        out = np.empty(len(values), dtype=object)
        out[:] = values
        return out.reshape(shape)
    target = BY_ENUM[dtype].numpy
    source = np.int32 if dtype in _INT_RANGE and _INT_RANGE[dtype] == _INT32 else None
    with np.errstate(over="ignore"):
        return np.array(values, dtype=source or target).astype(target).reshape(shape)


def _fast_numeric(value: Any, dtype: int, may_hold_bools: bool) -> np.ndarray | None:
    """numpy's own conversion when its inferred dtype proves every element valid."""
    if may_hold_bools and dtype != types_pb2.DT_BOOL:
        return None  # numpy would silently turn true/false into 1/0
    try:
        array = np.array(value)
    except (ValueError, TypeError, OverflowError):
        return None
    kind = array.dtype.kind
    if array.size == 0 or kind not in "biuf":
        return None
    if dtype == types_pb2.DT_BOOL:
        ok = kind == "b"
    elif dtype in _FLOATS:
        ok = kind in "iuf"
    else:
        low, high = _INT_RANGE[dtype]
        ok = kind in "iu" and low <= array.min() and array.max() <= high
    if not ok:
        return None
    target = BY_ENUM[dtype].numpy
    with np.errstate(over="ignore"):
        return array.astype(target) if array.dtype != target else array


def _fast_strings(value: Any) -> np.ndarray | None:
    """Plain JSON strings in a dense nesting, encoded as UTF-8, in one pass."""
    try:
        array = np.array(value, dtype=object)
    except (ValueError, TypeError):
        return None
    flat = array.ravel().tolist()
    if list(array.shape) != dense_shape(value) or not all(type(s) is str for s in flat):
        return None
    array.ravel()[:] = [s.encode() for s in flat]
    return array


def fast_array(value: Any, dtype: int, may_hold_bools: bool) -> np.ndarray | None:
    """The array for a JSON value when a vectorised check can accept it, else None."""
    if dtype == types_pb2.DT_STRING:
        return _fast_strings(value)
    if dtype in _FLOATS or dtype in _INT_RANGE or dtype == types_pb2.DT_BOOL:
        return _fast_numeric(value, dtype, may_hold_bools)
    return None


def array_from_json(value: Any, dtype: int, may_hold_bools: bool = True) -> np.ndarray:
    """One tensor from a JSON value; its shape is the nesting (a scalar gives shape ()).

    `dtype` is a DataType enum. `may_hold_bools=False` promises that the document has no JSON
    booleans, which lets numeric tensors skip the element-by-element check.
    Raises InvalidArgument, or Unimplemented for dtypes JSON cannot express.
    """
    array = fast_array(value, dtype, may_hold_bools)
    if array is not None:
        return array
    shape = _checked_shape(value)
    values: list[Any] = []
    _fill(value, 0, shape, dtype, values)
    return build_array(values, shape, dtype)


def error_status_text(err: ServingError) -> str:
    """absl::Status::ToString of an error: `INVALID_ARGUMENT: message`."""
    return f"{err.code.name}: {err.message}"


# ----------------------------------------------------------------------------- tensor maps


def _is_named(value: Any) -> bool:
    """An element of named tensors: an object that is not a b64 value (IsElementObject)."""
    return isinstance(value, dict) and not is_b64(value)


class _Batch:
    """TF-Serving's AddInstanceItem state: per input, the elements and the first item's shape."""

    def __init__(self, inputs: dict[str, int]) -> None:
        self.inputs = inputs
        self.values: dict[str, list[Any]] = {}
        self.shapes: dict[str, list[int]] = {}

    def add(self, item: Any, name: str) -> None:
        if name not in self.inputs:
            raise InvalidArgument(f"JSON object: does not have named input: {name}")
        shape = _checked_shape(item)
        if len(shape) >= _MAX_RANK:  # the items are stacked along one more dimension
            raise InvalidArgument(
                f"JSON Value: {debug_string(item)} has {len(shape)} dimensions; an item of "
                f"'instances' has at most {_MAX_RANK - 1}"
            )
        values = self.values.setdefault(name, [])
        start = len(values)
        _fill(item, 0, shape, self.inputs[name], values)
        first = self.shapes.setdefault(name, shape)
        if math.prod(first) != len(values) - start:
            raise InvalidArgument(
                f"Expecting tensor size: {math.prod(first)} but got: {len(values) - start}"
            )
        if first != shape:
            raise InvalidArgument(f"Expecting shape {_dims(first)} but got: {_dims(shape)}")

    def arrays(self, count: int) -> dict[str, np.ndarray]:
        return {
            name: build_array(values, [count, *self.shapes[name]], self.inputs[name])
            for name, values in self.values.items()
        }


def _dims(shape: list[int]) -> str:
    return "[" + ",".join(map(str, shape)) + "]"


def _walk_instances(
    instances: list[Any], inputs: dict[str, int], named: bool
) -> dict[str, np.ndarray]:
    """FillTensorMapFromInstancesList, element by element, with its exact errors."""
    names = sorted(inputs)
    batch = _Batch(inputs)
    for i, item in enumerate(instances):
        if named != _is_named(item):
            kinds = ("object", "list") if named else ("value/list", "object")
            raise InvalidArgument(
                f"Expecting {kinds[0]} but got {kinds[1]} at item {i} of input list"
            )
        for name, value in members(item) if named else [(names[0], item)]:
            try:
                batch.add(value, name)
            except ServingError as err:
                key = f" key: {name}" if named else ""
                raise InvalidArgument(
                    f"Failed to process element: {i}{key} of 'instances' list. "
                    f"Error: {error_status_text(err)}"
                ) from None
        if named and {name for name, _ in members(item)} != set(names):
            raise InvalidArgument(
                f"Failed to process element: {i} of 'instances' list. JSON object: "
                f"{debug_string(item)} keys must be equal to: {','.join(names)}"
            )
    return batch.arrays(len(instances))


def _fast_instances(
    instances: list[Any], inputs: dict[str, int], named: bool, may_hold_bools: bool
) -> dict[str, np.ndarray] | None:
    if not named:
        columns = {min(inputs): instances}
    elif all(
        type(item) is dict and item.keys() == inputs.keys() and not is_b64(item)
        for item in instances
    ):
        columns = {name: [item[name] for item in instances] for name in inputs}
    else:
        return None
    arrays = {}
    for name, column in columns.items():
        array = fast_array(column, inputs[name], may_hold_bools)
        if array is None:
            return None
        arrays[name] = array
    return arrays


def tensors_from_instances(
    instances: list[Any], inputs: Mapping[str, int], may_hold_bools: bool = True
) -> dict[str, np.ndarray]:
    """The row format: a non-empty list of values (one input) or of objects keyed by input
    name, stacked along a new first dimension. `inputs` maps names to DataType enums."""
    inputs = dict(inputs)
    if len(inputs) > 1 and not isinstance(instances[0], dict):
        raise InvalidArgument(
            "instances is a plain list, but expecting list of objects as multiple input "
            "tensors required as per tensorinfo_map"
        )
    named = _is_named(instances[0])
    fast = _fast_instances(instances, inputs, named, may_hold_bools)
    return fast if fast is not None else _walk_instances(instances, inputs, named)


def tensors_from_inputs(
    value: Any, inputs: Mapping[str, int], may_hold_bools: bool = True
) -> dict[str, np.ndarray]:
    """The columnar format: one value (one input) or an object keyed by input name; extra
    keys are ignored."""
    inputs = dict(inputs)
    if not isinstance(value, dict) or is_b64(value):
        if len(inputs) > 1:
            raise InvalidArgument(
                "inputs is a plain value/list, but expecting an object as multiple input "
                "tensors required as per tensorinfo_map"
            )
        name = min(inputs)
        return {name: array_from_json(value, inputs[name], may_hold_bools)}
    arrays = {}
    for name in sorted(inputs):
        if name not in value:
            raise InvalidArgument(f"Missing named input: {name} in 'inputs' object.")
        arrays[name] = array_from_json(value[name], inputs[name], may_hold_bools)
    return arrays
