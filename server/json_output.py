"""numpy arrays -> JSON values as TF-Serving writes them (`MakeJsonFromTensors`).

The values returned are for `orjson.dumps(..., option=orjson.OPT_SERIALIZE_NUMPY)`: numeric
tensors stay numpy arrays (serialised in C), strings and non-finite floats become nested lists
with `orjson.Fragment` tokens for bare `NaN`/`Infinity`/`-Infinity` and undecodable bytes.

float32 values are replaced by the doubles that TF-Serving's text parses back to (it prints
`%.6g` when that reads back as the same float, else `%.9g`), so a client reading our JSON gets
bit-identical doubles; only the notation may differ (`9000000.0` for `9e+06`). float64 needs
nothing: TF-Serving's `%.6g`-else-`%.17g` always reads back as the value itself.
"""

from __future__ import annotations

import binascii
from collections.abc import Mapping
from typing import Any

import numpy as np
import orjson

from server.json_text import quote
from tfrec.base.codecs import TensorParseError, dtype_of_array
from tfrec.base.errors import InvalidArgument

_POW10 = 10.0 ** np.arange(23)  # the powers of ten a double holds exactly
# The dtypes AddSingleValueAndAdvance can write (not half, bfloat16, uint16, complex).
_SUPPORTED_OUTPUTS = frozenset(
    {"float", "double", "int8", "int16", "int32", "uint8", "int64", "uint32", "uint64"}
    | {"bool", "string"}
)


def _round_digits(ax: np.ndarray, exp10: np.ndarray, digits: int) -> tuple[np.ndarray, np.ndarray]:
    """The double nearest to `ax` rounded to `digits` significant digits, and where that is
    certain: |scale exponent| <= 22 keeps every operation exact but one rounding, and values
    within 1e-6 of a rounding tie or a decade boundary are left to exact formatting."""
    k = (digits - 1) - exp10
    mul = _POW10.take(np.clip(k, 0, 22))
    div = _POW10.take(np.clip(-k, 0, 22))
    scaled = ax * mul / div
    rounded = np.rint(scaled)
    ok = (np.abs(scaled - rounded) < 0.5 - 1e-6) & (np.abs(k) <= 22)
    ok &= (rounded >= 10.0 ** (digits - 1)) & (rounded <= 10.0**digits)
    return rounded / mul * div, ok


def _tf_float_text(x: float) -> str:
    text = f"{x:.6g}"
    return text if float(np.float32(float(text))) == x else f"{x:.9g}"


def float32_values(array: np.ndarray) -> np.ndarray:
    """float64 values of what TF-Serving prints for float32 (WriteDecimal): `%.6g` when that
    reads back as the same float, else `%.9g`. Exact for every input; vectorised."""
    x = np.asarray(array, dtype=np.float32).ravel()
    ax32 = np.abs(x)
    ax = ax32.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        exp10 = np.nan_to_num(np.floor(np.log10(ax)), posinf=0, neginf=0).astype(np.intp)
        six, ok6 = _round_digits(ax, exp10, 6)
        nine, ok9 = _round_digits(ax, exp10, 9)
        use6 = six.astype(np.float32) == ax32
    out = np.copysign(np.where(use6, six, nine), x)
    special = ~np.isfinite(ax) | (ax == 0)
    out[special] = x[special]
    unsure = np.flatnonzero(~(ok6 & (use6 | ok9)) & ~special)
    if unsure.size:
        out[unsure] = [float(_tf_float_text(v)) for v in x[unsure].tolist()]
    return out.reshape(np.shape(array))


_NON_FINITE = {
    "nan": orjson.Fragment(b"NaN"),
    "inf": orjson.Fragment(b"Infinity"),
    "-inf": orjson.Fragment(b"-Infinity"),
}


def _with_tokens(values: np.ndarray) -> Any:
    """Nested lists with bare NaN/Infinity/-Infinity tokens where values are not finite."""
    flat = values.astype(object).ravel()
    for i in np.flatnonzero(~np.isfinite(values.ravel())).tolist():
        flat[i] = _NON_FINITE[str(flat[i])]
    return flat.reshape(values.shape).tolist()


def _string_value(item: Any, as_b64: bool) -> Any:
    raw = item if isinstance(item, bytes) else str(item).encode()
    if as_b64:
        return {"b64": binascii.b2a_base64(raw, newline=False).decode()}
    try:
        return raw.decode()
    except UnicodeDecodeError:  # TF-Serving writes the bytes unchecked
        return orjson.Fragment(
            quote(raw.decode("utf-8", "surrogateescape")).encode("utf-8", "surrogateescape")
        )


def json_value(array: np.ndarray, as_b64: bool = False) -> Any:
    """What orjson (OPT_SERIALIZE_NUMPY) writes for a tensor as TF-Serving writes it: nested
    lists, a bare value for a scalar; `as_b64` writes strings as `{"b64": ...}`.
    Raises InvalidArgument for dtypes JSON cannot express (when the tensor has elements)."""
    array = np.asarray(array)
    try:
        name = dtype_of_array(array).name
    except TensorParseError:
        name = str(array.dtype)
    if name not in _SUPPORTED_OUTPUTS:
        if array.size == 0:  # TF-Serving only fails when it writes an element
            return np.zeros(array.shape, dtype=np.int8).tolist()
        raise InvalidArgument(f"Failed to write JSON value for tensor type: {name}")
    if name == "string":
        flat = [_string_value(item, as_b64) for item in array.ravel().tolist()]
        holder = np.empty(len(flat), dtype=object)
        holder[:] = flat
        return holder.reshape(array.shape).tolist()
    values = float32_values(array) if name == "float" else np.require(array, requirements="C")
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        return _with_tokens(values)
    return values[()] if values.ndim == 0 else values


def _json_values(outputs: Mapping[str, np.ndarray]) -> dict[str, Any]:
    # IsNamedTensorBytes: string tensors whose alias ends with `_bytes` are written as b64.
    return {name: json_value(array, name.endswith("_bytes")) for name, array in outputs.items()}


def predictions(outputs: Mapping[str, np.ndarray]) -> Any:
    """The row format of a non-empty output map: one entry per batch item, the name dropped
    when there is one output (MakeRowFormatJsonFromTensors)."""
    batch = -1
    for name, array in outputs.items():
        if np.ndim(array) == 0:
            raise InvalidArgument(f"Tensor name: {name} has no shape information ")
        size = np.shape(array)[0]
        if batch >= 0 and size != batch:
            raise InvalidArgument(
                f"Tensor name: {name} has inconsistent batch size: {size} expecting: {batch}"
            )
        batch = size
    values = _json_values(outputs)
    if len(values) == 1:
        return next(iter(values.values()))
    return [{name: value[i] for name, value in values.items()} for i in range(batch)]


def columns(outputs: Mapping[str, np.ndarray]) -> Any:
    """The columnar format of a non-empty output map: the tensor itself when there is one
    output, else an object of tensors (MakeColumnarFormatJsonFromTensors)."""
    values = _json_values(outputs)
    return next(iter(values.values())) if len(values) == 1 else values
