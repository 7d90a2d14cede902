"""The executed graph a schedule is planned on: units, state, and which fetches change state.

`Graph` turns the GraphDef TensorFlow executed for a signature into a DAG of schedulable units
(while-loop frames are one unit; ops that take a variable or table handle are pinned; dead
branches are never ordered). `state_writers` tells which fetches change state: those graphs
are never scheduled nor replayed. The policy that orders the units is `tfrec.schedule.planner`.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Iterable
from typing import Any

from tensorflow.core.framework import graph_pb2, node_def_pb2, types_pb2
from tensorflow.python.framework import op_def_registry

REALISATIONS = ("place", "order")
HOP_US = {"place": 20.0, "order": 2.0}  # a cross-slot edge: Send/Recv and an executor hand-off
ORDER_US = 20.0  # ops at least this costly are ordered on their slot by control edges
CHEAP_US = 5.0  # ops below this run inline between others: they take no slot time
_LOOP_ENTER = frozenset({"Enter", "RefEnter"})
_LOOP_EXIT = frozenset({"Exit", "RefExit"})
_FEEDS = frozenset({"_Arg", "Placeholder", "PlaceholderWithDefault"})
_STATE_OPS = frozenset({
    "VarHandleOp", "VariableV2", "Variable", "HashTable", "HashTableV2", "MutableHashTable",
    "MutableHashTableV2", "MutableHashTableOfTensors", "MutableHashTableOfTensorsV2",
    "MutableDenseHashTable", "MutableDenseHashTableV2",
})  # fmt: skip
_DROPPED_ATTRS = ("_class", "_output_shapes", "_input_shapes")
# Stateful ops that only read (or create) variables and tables, and function calls (whose
# bodies are checked): a graph with any other stateful op is never replayed nor scheduled.
_READS = _STATE_OPS | {
    "ReadVariableOp", "ResourceGather", "ResourceGatherNd", "VarIsInitializedOp",
    "LookupTableFind", "LookupTableFindV2", "LookupTableSize", "LookupTableSizeV2",
    "_Arg", "_Retval", "Placeholder", "PartitionedCall", "StatefulPartitionedCall",
    "While", "If", "Case",  # control flow over functions: their bodies are checked
}  # fmt: skip


class ScheduleError(ValueError):
    """The executed graph cannot be scheduled (the reason is the message)."""


def _source(ref: str) -> str:
    return ref.lstrip("^").split(":", 1)[0]


def _makes_state(node: node_def_pb2.NodeDef) -> bool:
    """Whether the node outputs a variable or table handle (or a ref)."""
    if node.op in _STATE_OPS:
        return True
    op_def = op_def_registry.get(node.op)
    if op_def is None:
        return False
    for arg in op_def.output_arg:
        if arg.is_ref or arg.type == types_pb2.DT_RESOURCE:
            return True
        if arg.type_attr and node.attr[arg.type_attr].type == types_pb2.DT_RESOURCE:
            return True
        if arg.type_list_attr and types_pb2.DT_RESOURCE in node.attr[arg.type_list_attr].list.type:
            return True
    return False


def state_writers(graph: graph_pb2.GraphDef, fetches: Iterable[str]) -> list[str]:
    """Ops computing `fetches` (tensor names) that may change state (assignments, table
    inserts, random numbers...), function bodies included: replaying or reordering them would
    change what requests see."""
    nodes = {node.name: node for node in graph.node}
    functions = {f.signature.name: f for f in graph.library.function}
    found: set[str] = set()
    seen_functions: set[str] = set()

    def check(node: node_def_pb2.NodeDef) -> None:
        called = [node.op] if node.op in functions else []
        called += [v.func.name for v in node.attr.values() if v.func.name in functions]
        for name in called:
            if name not in seen_functions:
                seen_functions.add(name)
                for inner in functions[name].node_def:
                    check(inner)
        op_def = op_def_registry.get(node.op)
        if op_def is None or node.op in _READS:
            return
        if op_def.is_stateful or any(arg.is_ref for arg in op_def.input_arg):  # ref: Assign*
            found.add(node.op)

    stack = [_source(f) for f in fetches]
    seen: set[str] = set()
    while stack:
        name = stack.pop()
        if name in seen or name not in nodes:
            continue
        seen.add(name)
        check(nodes[name])
        stack.extend(_source(r) for r in nodes[name].input)
    return sorted(found)


class StateWriters:
    """`state_writers` over one session's graph, read once on first use (at load, before any
    scheduled copy is imported); shared by the version's Runners and its OpScheduler."""

    def __init__(self, graph: Any) -> None:  # a tf.Graph
        self._graph = graph
        self._graph_def: graph_pb2.GraphDef | None = None
        self._lock = threading.Lock()

    def __call__(self, fetches: Iterable[str]) -> list[str]:
        with self._lock:
            if self._graph_def is None:
                self._graph_def = self._graph.as_graph_def()
        return state_writers(self._graph_def, fetches)


class Graph:
    """An executed graph as a DAG of units, with what constrains each unit."""

    def __init__(self, graph: graph_pb2.GraphDef) -> None:
        self.graph = graph
        self.nodes = {node.name: node for node in graph.node}
        unsupported = sorted({n.op for n in graph.node if n.op in ("_Send", "_Recv")})
        if unsupported:
            raise ScheduleError(f"the graph already spans devices ({', '.join(unsupported)})")
        self.preds: dict[str, list[str]] = {n: [] for n in self.nodes}
        self.succs: dict[str, list[str]] = {n: [] for n in self.nodes}
        for node in graph.node:
            for ref in node.input:
                src = _source(ref)
                if src in self.nodes:
                    self.preds[node.name].append(src)
                    self.succs[src].append(node.name)
        self.state = {n for n, node in self.nodes.items() if node.op in _STATE_OPS}
        self.unit = self._units()
        self.dead = self._conditional()
        handles = {n for n, node in self.nodes.items() if _makes_state(node)}
        self.pinned = {
            self.unit[n]
            for n, node in self.nodes.items()
            if node.op in _FEEDS or node.op == "_Retval" or n in handles
            or any(_source(r) in handles for r in node.input if not r.startswith("^"))
        }  # fmt: skip

    def _frames(self) -> dict[str, str]:
        """Node -> the outermost while-loop frame it belongs to ('' outside loops), found by
        propagation from the roots as TensorFlow's executor does (Enter: into the child frame,
        Exit: back to the parent)."""
        frame: dict[str, tuple[str, ...]] = {}
        queue = collections.deque(n for n, p in self.preds.items() if not p)
        for n in queue:
            frame[n] = ()
        while queue:
            name = queue.popleft()
            node = self.nodes[name]
            here = frame[name]
            if node.op in _LOOP_ENTER:
                out = (*here, node.attr["frame_name"].s.decode())
            elif node.op in _LOOP_EXIT:
                out = here[:-1]
            else:
                out = here
            for succ in self.succs[name]:
                if succ not in frame:
                    frame[succ] = out
                    queue.append(succ)
        outer = {n: f[0] if f else "" for n, f in frame.items()}
        for name, node in self.nodes.items():  # an Enter belongs to the frame it enters
            if node.op in _LOOP_ENTER and not outer.get(name):
                outer[name] = node.attr["frame_name"].s.decode()
        return outer

    def _units(self) -> dict[str, str]:
        frames = self._frames()
        return {n: f"loop:{frames[n]}" if frames.get(n) else n for n in self.nodes}

    def _conditional(self) -> set[str]:
        """Units that may be dead: downstream of a Switch outside loops, before a Merge."""
        dead: set[str] = set()
        stack = [
            s
            for n, node in self.nodes.items()
            if node.op in ("Switch", "RefSwitch") and self.unit[n] == n
            for s in self.succs[n]
        ]
        while stack:
            name = stack.pop()
            if name in dead or self.nodes[name].op in ("Merge", "RefMerge"):
                continue
            dead.add(self.unit[name])
            stack.extend(self.succs[name])
        return dead

    def free(self, name: str) -> bool:
        """A node with no data inputs that is neither a feed nor state: placed with its
        first consumer, never scheduled on its own."""
        node = self.nodes[name]
        return (
            self.unit[name] == name
            and node.op not in _FEEDS
            and name not in self.state
            and all(r.startswith("^") for r in node.input)
        )
