"""Symbolic evaluation of small int tensors (shapes, axes, batch sizes) for the classifier.

Only ops whose inputs are SAME or SHAPE come here; the result says, element by element, which
values are known, which are N-independent, and which are exactly N*m (see `ann.Sym`). Anything
not understood gives None: the tensor is still classified correctly, only less precisely.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from tensorflow.core.framework import node_def_pb2
from tensorflow.python.framework import tensor_util

from saved_model_tools.ann import ANY_N, UNKNOWN, Elem, Sym, const, e_add, e_mul, is_n_free
from saved_model_tools.graphs import attr

MAX_ELEMENTS = 64
BIG_END = 2**31 - 1


def from_const(node: node_def_pb2.NodeDef) -> Sym | None:
    tensor = attr(node, "value").tensor
    if tensor.dtype not in (3, 9):  # DT_INT32, DT_INT64
        return None
    if len(tensor.tensor_shape.dim) > 1:
        return None
    value = tensor_util.MakeNdarray(tensor)
    if value.size > MAX_ELEMENTS:
        return None
    return Sym(tuple(const(v) for v in value.reshape(-1)), scalar=value.ndim == 0)


def from_dims(dims: list[int | None], batch_axis: int | None = None, size: int | None = None):
    """The symbolic shape of a tensor with static `dims` whose `batch_axis` has N*size rows."""
    elems = []
    for i, d in enumerate(dims):
        if i == batch_axis:
            elems.append(("n", size))
        else:
            elems.append(UNKNOWN if d is None else const(d))
    return Sym(tuple(elems))


def _elementwise(fn: Callable[[Elem, Elem], Elem]) -> Callable[..., Sym | None]:
    def apply(node, syms):
        a, b = syms
        if a is None or b is None:
            return None
        if a.scalar and b.scalar:
            return Sym((fn(a.elems[0], b.elems[0]),), scalar=True)
        if a.scalar:
            return Sym(tuple(fn(a.elems[0], e) for e in b.elems))
        if b.scalar:
            return Sym(tuple(fn(e, b.elems[0]) for e in a.elems))
        if len(a.elems) == len(b.elems):
            return Sym(tuple(fn(x, y) for x, y in zip(a.elems, b.elems, strict=True)))
        if len(a.elems) == 1:
            return Sym(tuple(fn(a.elems[0], e) for e in b.elems))
        if len(b.elems) == 1:
            return Sym(tuple(fn(e, b.elems[0]) for e in a.elems))
        return None

    return apply


def _minmax(pick: Callable[[int, int], int]) -> Callable[[Elem, Elem], Elem]:
    def fn(a: Elem, b: Elem) -> Elem:
        if a[0] == "c" and b[0] == "c":
            return const(pick(a[1], b[1]))
        return UNKNOWN if is_n_free(a) and is_n_free(b) else ANY_N

    return fn


def _floordiv(a: Elem, b: Elem) -> Elem:
    if a[0] == "c" and b[0] == "c" and b[1] != 0:
        return const(a[1] // b[1])
    if a[0] == "n" and b[0] == "c" and a[1] is not None and b[1] > 0 and a[1] % b[1] == 0:
        return ("n", a[1] // b[1])
    return UNKNOWN if is_n_free(a) and is_n_free(b) else ANY_N


def _pass(node, syms):
    return syms[0]


def _cast(node, syms):
    return syms[0] if attr(node, "DstT").type in (3, 9) else None


def _neg(node, syms):
    s = syms[0]
    return None if s is None else Sym(tuple(e_mul(e, const(-1)) for e in s.elems), s.scalar)


def _pack(node, syms):
    if any(s is None or not s.scalar for s in syms) or attr(node, "axis").i not in (0, -1):
        return None
    return Sym(tuple(s.elems[0] for s in syms))


def _concat(node, syms):
    values, axis = syms[:-1], syms[-1]
    if axis is None or axis.values() not in ([0], [-1]) or any(s is None for s in values):
        return None
    return Sym(tuple(e for s in values for e in s.elems))


def _reduce(fn: Callable[[Elem, Elem], Elem], unit: int) -> Callable[..., Sym | None]:
    def apply(node, syms):
        x, axes = syms
        if x is None or x.scalar or axes is None or axes.values() not in ([0], [-1]):
            return None
        out = const(unit)
        for e in x.elems:
            out = fn(out, e)
        return Sym((out,), scalar=not attr(node, "keep_dims").b)

    return apply


def _strided_slice(node, syms):
    x, begin, end, strides = syms
    if x is None or x.scalar or begin is None or end is None or strides is None:
        return None
    b, e, s = begin.values(), end.values(), strides.values()
    a = node.attr
    if b is None or e is None or s is None or len(b) != 1:
        return None
    if a["ellipsis_mask"].i or a["new_axis_mask"].i:
        return None
    elems = list(x.elems)
    if a["shrink_axis_mask"].i & 1:
        i = b[0] + len(elems) if b[0] < 0 else b[0]
        return Sym((elems[i],), scalar=True) if 0 <= i < len(elems) else None
    start = None if a["begin_mask"].i & 1 else b[0]
    stop = None if a["end_mask"].i & 1 or e[0] >= BIG_END else e[0]
    return Sym(tuple(elems[start : stop : s[0]]))


def _slice(node, syms):
    x, begin, size = syms
    if x is None or x.scalar or begin is None or size is None:
        return None
    b, n = begin.values(), size.values()
    if b is None or n is None:
        return None
    return Sym(x.elems[b[0] :] if n[0] == -1 else x.elems[b[0] : b[0] + n[0]])


def _gather(node, syms):
    x, indices = syms[0], syms[1]
    if len(syms) > 2 and (syms[2] is None or syms[2].values() != [0]):
        return None
    if x is None or x.scalar or indices is None or indices.values() is None:
        return None
    picked = tuple(x.elems[i] for i in indices.values())
    return Sym(picked, scalar=indices.scalar)


def _reshape(node, syms):
    x, shape = syms
    if x is None or shape is None or shape.values() is None:
        return None
    target = shape.values()
    if target == [] and len(x.elems) == 1:
        return Sym(x.elems, scalar=True)
    if target in ([-1], [len(x.elems)]):
        return Sym(x.elems)
    return None


def _expand_dims(node, syms):
    x = syms[0]
    return Sym(x.elems) if x is not None and x.scalar else None


def _squeeze(node, syms):
    x = syms[0]
    return Sym(x.elems, scalar=True) if x is not None and len(x.elems) == 1 else None


def _fill(node, syms):
    dims, value = syms
    if dims is None or value is None or dims.values() is None or len(dims.values()) != 1:
        return None
    count = dims.values()[0]
    return Sym(value.elems * count) if count <= MAX_ELEMENTS else None


def _range(node, syms):
    if any(s is None or s.values() is None for s in syms):
        return None
    start, limit, delta = (s.values()[0] for s in syms)
    values = np.arange(start, limit, delta)
    return Sym(tuple(const(v) for v in values)) if values.size <= MAX_ELEMENTS else None


RULES: dict[str, Callable[[node_def_pb2.NodeDef, list[Sym | None]], Sym | None]] = {
    "Identity": _pass,
    "Snapshot": _pass,
    "StopGradient": _pass,
    "PlaceholderWithDefault": _pass,
    "EnsureShape": _pass,
    "Cast": _cast,
    "Neg": _neg,
    "Pack": _pack,
    "ConcatV2": _concat,
    "Prod": _reduce(e_mul, 1),
    "Sum": _reduce(e_add, 0),
    "Mul": _elementwise(e_mul),
    "AddV2": _elementwise(e_add),
    "Add": _elementwise(e_add),
    "Sub": _elementwise(lambda a, b: e_add(a, b, -1)),
    "FloorDiv": _elementwise(_floordiv),
    "Maximum": _elementwise(_minmax(max)),
    "Minimum": _elementwise(_minmax(min)),
    "StridedSlice": _strided_slice,
    "Slice": _slice,
    "GatherV2": _gather,
    "Gather": _gather,
    "Reshape": _reshape,
    "ExpandDims": _expand_dims,
    "Squeeze": _squeeze,
    "Fill": _fill,
    "Range": _range,
}


def evaluate(node: node_def_pb2.NodeDef, syms: list[Sym | None]) -> Sym | None:
    rule = RULES.get(node.op)
    if rule is None:
        return None
    try:
        return rule(node, syms)
    except (IndexError, ValueError, TypeError):
        return None
