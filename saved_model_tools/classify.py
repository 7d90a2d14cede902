"""Classify every op of a flat signature graph: user world (batch 1), item world (N rows), or
shared (independent of the inputs).

A worklist fixpoint propagates annotations (`ann`) from the inputs through the op rules
(`rules`); it converges on loops too, where a value merges with its next iteration. Then three
checks force ops into the item world (FULL) and the fixpoint runs again, until nothing changes:
- a loop frame is one unit: if any op inside it is not user/shared, all of it is FULL;
- a TensorList handle cannot be broadcast: its producer joins any item-world consumer;
- an op left unclassified (dead code inside a loop) is FULL.
"""

from __future__ import annotations

import collections
import dataclasses

from saved_model_tools import rules
from saved_model_tools.ann import BOTTOM, FULL, Ann, Kind, row
from saved_model_tools.graphs import Graph, loop_frames

MAX_ROUNDS = 20


@dataclasses.dataclass
class Classification:
    anns: dict[str, list[Ann]]  # node -> annotation of each output
    frames: list[set[str]]  # loop frames (each moved as one unit)
    forced: set[str]  # nodes forced into the item world

    def in_item_world(self, name: str) -> bool:
        """Whether the node runs (only) in the item world."""
        return name in self.forced or any(a.in_item_world for a in self.anns[name])

    def frame_of(self, name: str) -> int | None:
        for i, frame in enumerate(self.frames):
            if name in frame:
                return i
        return None


def classify(graph: Graph, user: list[str], item: list[str]) -> Classification:
    """`user`/`item`: the signature's input placeholder nodes (each input has batch axis 0)."""
    seeds = {name: [row(False, 0, 1)] for name in user}
    seeds.update({name: [row(True, 0, 1)] for name in item})
    frames = loop_frames(graph)
    forced: set[str] = set()
    for _ in range(MAX_ROUNDS):
        anns = _fixpoint(graph, seeds, forced)
        more = _to_force(graph, Classification(anns, frames, forced))
        if more <= forced:
            return Classification(anns, frames, forced)
        forced |= more
    return Classification(_fixpoint(graph, seeds, set(graph.nodes)), frames, set(graph.nodes))


def _order(graph: Graph) -> list[str]:
    """Topological order, ignoring loop back edges (NextIteration -> Merge)."""
    pending = {}
    for name in graph.nodes:
        inputs = graph.data_inputs(name)
        if graph.op(name) in ("Merge", "RefMerge"):
            inputs = [
                i for i in inputs if graph.op(i[0]) not in ("NextIteration", "RefNextIteration")
            ]
        pending[name] = len(inputs)
    ready = collections.deque(n for n, c in pending.items() if c == 0)
    order = []
    while ready:
        name = ready.popleft()
        order.append(name)
        for consumer in graph.consumers[name]:
            if graph.op(name) in ("NextIteration", "RefNextIteration") and graph.op(consumer) in (
                "Merge",
                "RefMerge",
            ):
                continue
            pending[consumer] -= 1
            if pending[consumer] == 0:
                ready.append(consumer)
    seen = set(order)
    return order + [n for n in graph.nodes if n not in seen]


def _fixpoint(graph: Graph, seeds: dict[str, list[Ann]], forced: set[str]) -> dict[str, list[Ann]]:
    anns = {name: [BOTTOM] * graph.num_outputs(name) for name in graph.nodes}
    order = _order(graph)
    queue = collections.deque(order)
    queued = set(order)
    budget = 50 * len(order) + 1000
    while queue:
        name = queue.popleft()
        queued.discard(name)
        if name in seeds:
            new = seeds[name]
        elif name in forced:
            new = [FULL] * len(anns[name])
        else:
            ins = [anns[src][i] for src, i in graph.data_inputs(name)]
            new = rules.evaluate(graph, name, ins)
        if new == anns[name]:
            continue
        anns[name] = new
        budget -= 1
        if budget < 0:  # a rule that does not settle: give up on precision, never on safety
            return {n: [FULL] * len(a) for n, a in anns.items()}
        for consumer in graph.consumers[name]:
            if consumer not in queued:
                queue.append(consumer)
                queued.add(consumer)
    return anns


def _frame_ok(graph: Graph, name: str, anns: list[Ann]) -> bool:
    """Whether a loop op may run in the user world: its values are per user or shared; shapes
    seen at N = 1 are fine inside the loop but cannot leave it (the item world could not
    recompute them)."""
    for a in anns:
        if a.kind == Kind.LIST:
            elem = a.elem or BOTTOM
            if elem.kind not in (Kind.SAME, Kind.USER, Kind.BOTTOM):
                return False
        elif a.kind == Kind.SHAPE:
            if a.item or graph.op(name) in ("Exit", "RefExit"):
                return False
        elif a.kind not in (Kind.SAME, Kind.USER):
            return False
    return True


def _to_force(graph: Graph, c: Classification) -> set[str]:
    more = set()
    for frame in c.frames:
        if not all(_frame_ok(graph, n, c.anns[n]) for n in frame):
            more |= frame
    for name, outs in c.anns.items():
        if any(a.kind == Kind.BOTTOM for a in outs):
            more.add(name)
        if c.in_item_world(name) or not any(a.kind == Kind.LIST for a in outs):
            continue
        if any(c.in_item_world(consumer) or consumer in more for consumer in graph.consumers[name]):
            more.add(name)
    return more | c.forced
