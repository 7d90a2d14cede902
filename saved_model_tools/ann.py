"""What the classifier knows about each tensor: how its value at N rows relates to its value
for the one user.

The structured graph computes two worlds. The *user world* is the original graph evaluated on
a batch of one row: the user's inputs, no items. The *item world* is the original graph at N
rows. A tensor annotated

- SAME is equal in both worlds (weights, constants, static shape parts): computed once.
- USER(axis, size) lives in the user world; its value at N rows is N copies of its user-world
  value concatenated along `axis` (`size` is its extent on that axis for one user, 1 for an
  input row). It reaches the item world through a broadcast (Tile), or for free where the
  consuming op broadcasts.
- SHAPE is a small int tensor whose value depends on N (a shape, a batch size). Its user-world
  copy holds the value at N = 1; the item world recomputes it from N. `sym` describes it.
  With `item` set it comes from item tensors and exists in the item world only.
- ITEM(axis, size) lives in the item world and has N row blocks along `axis`.
- FULL lives in the item world and nothing is known about its rows.
- LIST is a TensorList handle whose elements have annotation `elem`.
- BOTTOM is "not known yet" while the fixpoint over loops runs.

Symbolic values (`Sym`) describe small int vectors and scalars element by element:
('c', v) a known int, ('s',) unknown but the same at any N, ('n', m) exactly N*m (m an int or
None when unknown but N-independent), ('*',) depends on N in some other way.
"""

from __future__ import annotations

import dataclasses
import enum

Elem = tuple  # ('c', int) | ('s',) | ('n', int | None) | ('*',)
UNKNOWN: Elem = ("s",)
ANY_N: Elem = ("*",)


class Kind(enum.Enum):
    BOTTOM = "bottom"
    SAME = "same"
    USER = "user"
    SHAPE = "shape"
    ITEM = "item"
    FULL = "full"
    LIST = "list"


@dataclasses.dataclass(frozen=True)
class Sym:
    """A symbolic int scalar (`scalar`) or vector, one Elem per element."""

    elems: tuple[Elem, ...]
    scalar: bool = False

    @property
    def n_dependent(self) -> bool:
        return any(e[0] in ("n", "*") for e in self.elems)

    def values(self) -> list[int] | None:
        """The known int values, or None if any element is not a known int."""
        if all(e[0] == "c" for e in self.elems):
            return [e[1] for e in self.elems]
        return None


@dataclasses.dataclass(frozen=True)
class Ann:
    kind: Kind
    axis: int = -1
    size: int | None = None
    sym: Sym | None = None
    item: bool = False
    elem: Ann | None = None

    @property
    def is_row(self) -> bool:
        return self.kind in (Kind.USER, Kind.ITEM)

    @property
    def in_item_world(self) -> bool:
        """Computed in the item world only (no user-world copy)."""
        if self.kind == Kind.LIST:
            return self.elem is not None and self.elem.in_item_world
        return self.kind in (Kind.ITEM, Kind.FULL) or (self.kind == Kind.SHAPE and self.item)

    def __str__(self) -> str:
        if self.is_row:
            return f"{self.kind.value}(axis={self.axis}, size={self.size})"
        if self.kind == Kind.LIST:
            return f"list({self.elem})"
        return self.kind.value


BOTTOM = Ann(Kind.BOTTOM)
FULL = Ann(Kind.FULL)
SAME = Ann(Kind.SAME)


def same(sym: Sym | None = None) -> Ann:
    return Ann(Kind.SAME, sym=sym)


def shape(sym: Sym | None, item: bool) -> Ann:
    return Ann(Kind.SHAPE, sym=sym, item=item)


def row(item: bool, axis: int, size: int | None) -> Ann:
    return Ann(Kind.ITEM if item else Kind.USER, axis=axis, size=size)


def const(value: int) -> Elem:
    return ("c", int(value))


def join(a: Ann, b: Ann) -> Ann:
    """The least annotation covering both (used where loop values merge)."""
    if a.kind == Kind.BOTTOM:
        return b
    if b.kind == Kind.BOTTOM or a == b:
        return a
    if a.kind != b.kind:
        return FULL
    if a.kind in (Kind.SAME, Kind.SHAPE):
        return Ann(a.kind, item=a.item or b.item)
    if a.is_row and a.axis == b.axis:
        return Ann(a.kind, axis=a.axis, size=a.size if a.size == b.size else None)
    if a.kind == Kind.LIST:
        elem = join(a.elem or BOTTOM, b.elem or BOTTOM)
        return FULL if elem.kind == Kind.FULL else Ann(Kind.LIST, elem=elem)
    return FULL


# Element arithmetic for symbolic shapes.


def is_n_free(e: Elem) -> bool:
    return e[0] in ("c", "s")


def e_mul(a: Elem, b: Elem) -> Elem:
    if a[0] == "c" and b[0] == "c":
        return const(a[1] * b[1])
    if (a[0] == "c" and a[1] == 0) or (b[0] == "c" and b[1] == 0):
        return const(0)
    if is_n_free(a) and is_n_free(b):
        return UNKNOWN
    if a[0] == "n" and is_n_free(b):
        return ("n", a[1] * b[1] if a[1] is not None and b[0] == "c" else None)
    if b[0] == "n" and is_n_free(a):
        return e_mul(b, a)
    return ANY_N


def e_add(a: Elem, b: Elem, sign: int = 1) -> Elem:
    if a[0] == "c" and b[0] == "c":
        return const(a[1] + sign * b[1])
    if b == const(0):
        return a
    if a == const(0) and sign == 1:
        return b
    if is_n_free(a) and is_n_free(b):
        return UNKNOWN
    if a[0] == "n" and b[0] == "n":
        if a[1] is not None and b[1] is not None:
            return ("n", a[1] + sign * b[1])
        return ("n", None)
    return ANY_N
