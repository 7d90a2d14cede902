"""Rules for ops that move data around: concat, stack, split, reshape, transpose, expand,
squeeze, tile, fill, broadcast, slice, pad, one-hot. They track where the batch axis goes and
how many rows one user's block has along it (a Reshape may merge the batch with the dims after
it: N blocks of `size` rows). See `rules` for the contract.
"""

from __future__ import annotations

from saved_model_tools import symbolic
from saved_model_tools.ann import Ann, Kind, is_n_free, row
from saved_model_tools.graphs import attr
from saved_model_tools.oprules import Ctx, norm, only_row


def concat(ctx: Ctx) -> list[Ann] | None:
    if ctx.op == "ConcatV2":
        values, axis = ctx.ins[:-1], ctx.value(len(ctx.ins) - 1)
    else:
        values, axis = ctx.ins[1:], ctx.value(0)
    rank = ctx.out_rank()
    if axis is None or rank is None or any(not a.is_row for a in values):
        return None
    if len({a.axis for a in values}) != 1 or values[0].axis == norm(axis, rank):
        return None
    return [ctx.out(values[0].axis, values[0].size)]


def pack(ctx: Ctx) -> list[Ann] | None:
    rank = ctx.in_rank(0)
    if rank is None or any(not a.is_row for a in ctx.ins) or len({a.axis for a in ctx.ins}) != 1:
        return None
    k = ctx.ins[0].axis
    axis = norm(ctx.attr_i("axis"), rank + 1)
    return [ctx.out(k + 1 if axis <= k else k, ctx.ins[0].size)]


def unpack(ctx: Ctx) -> list[Ann] | None:
    a, rank = only_row(ctx), ctx.in_rank(0)
    if a is None or rank is None:
        return None
    axis = norm(ctx.attr_i("axis"), rank)
    if axis == a.axis:
        return None
    return [ctx.out(a.axis - (axis < a.axis), a.size)] * ctx.num_outputs


def split(ctx: Ctx) -> list[Ann] | None:
    value, axis_at = (1, 0) if ctx.op == "Split" else (0, 2)
    a, axis, rank = only_row(ctx, value), ctx.value(axis_at), ctx.in_rank(value)
    if a is None or axis is None or rank is None or norm(axis, rank) == a.axis:
        return None
    return [ctx.out(a.axis, a.size)] * ctx.num_outputs


def reshape(ctx: Ctx) -> list[Ann] | None:
    """Merging or splitting dims after the batch axis keeps N row blocks along it; so does
    merging the batch axis with the dims after it when the target says N*m or -1 there."""
    a, t = ctx.ins
    dims = ctx.in_dims(0)
    if not a.is_row or t.kind not in (Kind.SAME, Kind.SHAPE) or t.sym is None or dims is None:
        return None
    elems, k = t.sym.elems, a.axis
    if len(elems) <= k or any(dims[j] is None or elems[j] != ("c", dims[j]) for j in range(k)):
        return None
    if any(not is_n_free(e) for e in elems[k + 1 :]):
        return None
    head = elems[k]
    if head[0] == "n" and head[1] != 0:
        return [ctx.out(k, head[1])]
    if head == ("c", -1):
        inner = [e[1] for e in elems[k + 1 :] if e[0] == "c"]
        block = [dims[j] for j in range(k + 1, len(dims))] + [a.size]
        if len(inner) == len(elems) - k - 1 and None not in block:
            per_user, width = 1, 1
            for d in block:
                per_user *= d
            for d in inner:
                width *= d
            if width == 0 or per_user % width:
                return None
            return [ctx.out(k, per_user // width)]
        return [ctx.out(k, None)]
    return None


def expand_dims(ctx: Ctx) -> list[Ann] | None:
    a, dim, rank = only_row(ctx), ctx.value(1), ctx.in_rank(0)
    if a is None or dim is None or rank is None:
        return None
    return [ctx.out(a.axis + (norm(dim, rank + 1) <= a.axis), a.size)]


def squeeze(ctx: Ctx) -> list[Ann] | None:
    a, rank = only_row(ctx), ctx.in_rank(0)
    dims = list(attr(ctx.node, "squeeze_dims").list.i)
    if a is None or rank is None or not dims:  # squeezing "all size-1 dims" would drop N=1
        return None
    dims = [norm(d, rank) for d in dims]
    if a.axis in dims:
        return None
    return [ctx.out(a.axis - sum(d < a.axis for d in dims), a.size)]


def transpose(ctx: Ctx) -> list[Ann] | None:
    a, perm = only_row(ctx), ctx.values(1)
    if a is None or perm is None or a.axis not in perm:
        return None
    return [ctx.out(perm.index(a.axis), a.size)]


def tile(ctx: Ctx) -> list[Ann] | None:
    a, m = ctx.ins
    if a.is_row:
        if m.kind != Kind.SAME or m.sym is None or len(m.sym.elems) <= a.axis:
            return None
        e = m.sym.elems[a.axis]
        size = a.size * e[1] if e[0] == "c" and a.size is not None else None
        return [ctx.out(a.axis, size)]
    dims = ctx.in_dims(0)
    p = _single_n(m)
    if a.kind != Kind.SAME or p is None or dims is None or len(dims) != len(m.sym.elems):
        return None
    m_p = m.sym.elems[p][1]
    size = m_p * dims[p] if m_p is not None and dims[p] is not None else None
    return [row(m.item, p, size)]


def _single_n(a: Ann) -> int | None:
    """The position of the only N*m element of a SHAPE whose other elements are N-free."""
    if a.kind != Kind.SHAPE or a.sym is None or a.sym.scalar:
        return None
    at = [i for i, e in enumerate(a.sym.elems) if not is_n_free(e)]
    if len(at) != 1 or a.sym.elems[at[0]][0] != "n" or a.sym.elems[at[0]][1] == 0:
        return None
    return at[0]


def fill(ctx: Ctx) -> list[Ann] | None:
    dims, value = ctx.ins
    p = _single_n(dims)
    if p is None or value.kind != Kind.SAME:
        return None
    return [row(dims.item, p, dims.sym.elems[p][1])]


def broadcast_to(ctx: Ctx) -> list[Ann] | None:
    a, s = ctx.ins
    p, dims = _single_n(s), ctx.in_dims(0)
    if p is None or dims is None:
        return None
    pos = p - (len(s.sym.elems) - len(dims))
    if a.kind == Kind.SAME and (pos < 0 or dims[pos] == 1):
        return [row(s.item, p, s.sym.elems[p][1])]
    if a.is_row and pos == a.axis:
        return [row(a.in_item_world or s.item, p, s.sym.elems[p][1])]
    return None


def slice_(ctx: Ctx) -> list[Ann] | None:
    a, _, size = ctx.ins
    b = ctx.values(1)
    if not a.is_row or b is None or size.sym is None or size.kind not in (Kind.SAME, Kind.SHAPE):
        return None
    if len(b) <= a.axis or b[a.axis] != 0 or size.sym.elems[a.axis] != ("c", -1):
        return None
    if any(not is_n_free(e) for e in size.sym.elems):
        return None
    return [ctx.out(a.axis, a.size)]


def slice_plan(rank: int, begin, end, strides, node) -> list[tuple[int | None, bool]] | None:
    """For each input dim of a StridedSlice: (its output dim or None if shrunk, kept whole)."""
    masks = {k: attr(node, k).i for k in ("begin_mask", "end_mask", "ellipsis_mask")}
    new_axis, shrink = attr(node, "new_axis_mask").i, attr(node, "shrink_axis_mask").i
    count = len(begin)
    real = sum(1 for i in range(count) if not (masks["ellipsis_mask"] | new_axis) >> i & 1)
    plan: list[tuple[int | None, bool]] = []
    out = 0
    for i in range(count):
        if masks["ellipsis_mask"] >> i & 1:
            for _ in range(rank - real):
                plan.append((out, True))
                out += 1
        elif new_axis >> i & 1:
            out += 1
        elif shrink >> i & 1:
            plan.append((None, False))
        else:
            whole = strides[i] == 1 and (masks["begin_mask"] >> i & 1 or begin[i] == 0)
            whole = whole and (masks["end_mask"] >> i & 1 or end[i] >= symbolic.BIG_END)
            plan.append((out, bool(whole)))
            out += 1
    while len(plan) < rank:
        plan.append((out, True))
        out += 1
    return plan if len(plan) == rank else None


def strided_slice(ctx: Ctx) -> list[Ann] | None:
    a, rank = only_row(ctx), ctx.in_rank(0)
    spec = [ctx.values(i) for i in (1, 2, 3)]
    if a is None or rank is None or None in spec:
        return None
    plan = slice_plan(rank, *spec, ctx.node)
    if plan is None or plan[a.axis][0] is None or not plan[a.axis][1]:
        return None
    return [ctx.out(plan[a.axis][0], a.size)]


def pad(ctx: Ctx) -> list[Ann] | None:
    a, paddings = only_row(ctx), ctx.values(1)
    if a is None or paddings is None or paddings[2 * a.axis : 2 * a.axis + 2] != [0, 0]:
        return None
    return [ctx.out(a.axis, a.size)]


def one_hot(ctx: Ctx) -> list[Ann] | None:
    a, rank = only_row(ctx), ctx.in_rank(0)
    if a is None or rank is None:
        return None
    axis = ctx.attr_i("axis")
    axis = rank if axis == -1 else axis
    return [ctx.out(a.axis + (axis <= a.axis), a.size)]
