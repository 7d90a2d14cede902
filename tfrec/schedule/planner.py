"""The critical-path policy: rank ops by measured cost, list-schedule them onto execution slots,
and rewrite the executed graph so that TensorFlow's executor follows the schedule.

Input: the graph TensorFlow executed for a signature (`costmodel.Trace`: after Grappler, so
node names match the step stats) and the costs of one bucket. Output: a `Plan` and, from it,
an importable GraphDef (`rewrite`).

- **Units.** Every op is a unit, except that a while-loop frame (its Enter ... Exit nodes and
  everything nested) is one unit: control edges may not cross a frame boundary, and its
  iterations run one after another anyway. Ops downstream of a `Switch` (before its `Merge`)
  may be *dead*; a control edge from one would kill its target, so they are never ordered.
  Ops that take a variable or table handle are *pinned* to slot 0, where the placer puts them
  anyway (next to the one restored copy of the state). Constants follow their first consumer.
- **Rank** (DeepRec's `acc_cost`, the upward rank of list scheduling): a unit's cost (kernel
  time plus the executor's per-node overhead) plus the largest rank among its successors; the
  largest rank is the critical path's length.
- **List scheduling** (HEFT): repeatedly take the ready unit with the largest rank and put it
  on the slot where it finishes first, counting `hop_us` for every input produced on another
  slot. Slots are a lane's inter-op threads; the prediction is the simulated makespan.
- **Enforcement.** Placement: `place` realisations put slot s's ops on logical device s (one
  partition, and so one executor, per slot; TensorFlow adds the Send/Recv pairs). Order: on
  each slot, consecutive ops of at least `order_us` get a control edge, so a slot runs its
  critical work first. `order` realisations add only the edges (one device; TensorFlow's
  threads take the slots' chains).
"""

from __future__ import annotations

import collections
import dataclasses
import heapq
from collections.abc import Callable, Iterable
from typing import Any

from tensorflow.core.framework import graph_pb2

from tfrec.schedule.costmodel import Bucket
from tfrec.schedule.graph import (
    _DROPPED_ATTRS,
    _FEEDS,
    CHEAP_US,
    HOP_US,
    ORDER_US,
    REALISATIONS,
    Graph,
    ScheduleError,
    StateWriters,
    _source,
    state_writers,
)

__all__ = ["Graph", "Plan", "ScheduleError", "StateWriters", "plan", "rewrite", "state_writers"]


@dataclasses.dataclass
class Step:
    """One unit on its slot: predicted start and finish (us from the run's start)."""

    unit: str
    op: str
    cost_us: float
    start_us: float
    finish_us: float


@dataclasses.dataclass
class Plan:
    """A schedule of one bucket onto `slots` slots and how it is enforced."""

    slots: int
    realisation: str
    hop_us: float
    rank: dict[str, float]
    slot_of: dict[str, int]  # node -> slot (every node of the graph)
    order: list[list[Step]]  # per slot, in order
    edges: list[tuple[str, str]]  # control edges added (node names)
    critical_path: list[Step]  # the chain of largest ranks, as scheduled
    serial_us: float  # every unit one after another
    predicted_us: float  # the simulated makespan

    @property
    def key(self) -> tuple:
        """Plans with equal keys give the same graph."""
        return (self.realisation, tuple(sorted(self.slot_of.items())), tuple(self.edges))

    def to_json(self) -> dict[str, Any]:
        def steps(items: Iterable[Step]) -> list[dict[str, Any]]:
            return [
                {"unit": s.unit, "op": s.op, "us": round(s.cost_us, 1),
                 "start_us": round(s.start_us, 1), "finish_us": round(s.finish_us, 1)}
                for s in items
            ]  # fmt: skip

        return {
            "slots": self.slots,
            "realisation": self.realisation,
            "hop_us": self.hop_us,
            "serial_us": round(self.serial_us, 1),
            "critical_path_us": round(self.critical_path_length, 1),
            "predicted_us": round(self.predicted_us, 1),
            "critical_path": steps(self.critical_path),
            "order": [steps(slot) for slot in self.order],
            "control_edges": [list(e) for e in self.edges],
        }

    @property
    def critical_path_length(self) -> float:
        return max(self.rank.values(), default=0.0)


def plan(
    graph: Graph,
    costs: Bucket,
    slots: int,
    realisation: str = "place",
    *,
    hop_us: float | None = None,
    order_us: float = ORDER_US,
) -> Plan:
    """Ranks the units of `graph` by `costs` and list-schedules them onto `slots` slots."""
    if realisation not in REALISATIONS:
        raise ValueError(f"realisation must be one of {REALISATIONS}, not {realisation!r}")
    hop = HOP_US[realisation] if hop_us is None else hop_us
    free = {n for n in graph.nodes if graph.free(n)}
    members: dict[str, list[str]] = collections.defaultdict(list)
    for name, unit in graph.unit.items():
        if name not in graph.state:
            members[unit].append(name)
    cost = {
        u: 0.0 if u in free else sum(costs.us(n) + costs.overhead_us * (n in costs.nodes)
                                     for n in names)
        for u, names in members.items()
    }  # fmt: skip
    preds: dict[str, set[str]] = {u: set() for u in members}
    succs: dict[str, set[str]] = {u: set() for u in members}
    for name in members_of(members):
        for src in graph.preds[name]:
            a, b = graph.unit[src], graph.unit[name]
            if a != b and a in members:
                preds[b].add(a)
                succs[a].add(b)
    topo = _topological(members, preds, succs)
    rank: dict[str, float] = {}
    for u in reversed(topo):
        rank[u] = cost[u] + max((rank[v] for v in succs[u]), default=0.0)
    slot_unit, start, finish = _list_schedule(graph, topo, cost, preds, succs, rank, slots, hop)
    order: list[list[Step]] = [[] for _ in range(slots)]
    for u in slot_unit:  # in the order units were taken: edges along it cannot close a cycle
        if u not in free:
            order[slot_unit[u]].append(
                Step(u, _op(graph, members[u]), cost[u], start[u], finish[u])
            )
    slot_of = {n: slot_unit[graph.unit[n]] for n in members_of(members) if n not in free}
    _place_free(graph, free, slot_of, start)
    edges = _edges(graph, order, members, order_us)
    path = _critical(rank, succs, start, finish, cost, slot_unit, graph, members)
    return Plan(
        slots, realisation, hop, rank, slot_of, order, edges, path,
        sum(cost.values()), max(finish.values(), default=0.0),
    )  # fmt: skip


def _list_schedule(
    graph: Graph,
    topo: list[str],
    cost: dict[str, float],
    preds: dict[str, set[str]],
    succs: dict[str, set[str]],
    rank: dict[str, float],
    slots: int,
    hop: float,
) -> tuple[dict[str, int], dict[str, float], dict[str, float]]:
    """HEFT without insertion: the ready unit of largest rank goes to the slot where it
    finishes first (ties: the slot of its latest input). Cheap units take no slot time."""
    index = {u: i for i, u in enumerate(topo)}
    slot_unit: dict[str, int] = {}
    start: dict[str, float] = {}
    finish: dict[str, float] = {}
    ready_at = [0.0] * slots
    waiting = {u: len(preds[u]) for u in topo}
    heap = [(-rank[u], index[u], u) for u in topo if not waiting[u]]
    heapq.heapify(heap)
    while heap:
        _, _, u = heapq.heappop(heap)
        home = max(preds[u], key=lambda p: finish[p], default=None)
        best = (float("inf"), 2, 0.0, 0)  # (finish, not home, start, slot)
        for s in [0] if u in graph.pinned else range(slots):
            arrive = max((finish[p] + hop * (slot_unit[p] != s) for p in preds[u]), default=0.0)
            begin = arrive if cost[u] < CHEAP_US else max(ready_at[s], arrive)
            away = 0 if home is not None and slot_unit[home] == s else 1
            best = min(best, (begin + cost[u], away, begin, s))
        slot_unit[u], start[u], finish[u] = best[3], best[2], best[0]
        if cost[u] >= CHEAP_US:
            ready_at[best[3]] = finish[u]
        for v in succs[u]:
            waiting[v] -= 1
            if not waiting[v]:
                heapq.heappush(heap, (-rank[v], index[v], v))
    return slot_unit, start, finish


def _place_free(
    graph: Graph, free: set[str], slot_of: dict[str, int], start: dict[str, float]
) -> None:
    """Constants (and the like) go to the slot of their earliest-starting consumer."""

    def first_use(name: str, seen: set[str]) -> tuple[float, int]:
        best = (float("inf"), 0)
        for c in graph.succs[name]:
            if c in free:
                if c not in seen:
                    seen.add(c)
                    best = min(best, first_use(c, seen))
            elif c in slot_of:
                best = min(best, (start[graph.unit[c]], slot_of[c]))
        return best

    for name in sorted(free):
        slot_of[name] = first_use(name, {name})[1]


def members_of(members: dict[str, list[str]]) -> list[str]:
    return [n for names in members.values() for n in names]


def _op(graph: Graph, names: list[str]) -> str:
    return graph.nodes[names[0]].op if len(names) == 1 else f"while loop ({len(names)} ops)"


def _topological(
    members: dict[str, list[str]], preds: dict[str, set[str]], succs: dict[str, set[str]]
) -> list[str]:
    waiting = {u: len(preds[u]) for u in members}
    queue = collections.deque(sorted(u for u, k in waiting.items() if not k))
    out = []
    while queue:
        u = queue.popleft()
        out.append(u)
        for v in sorted(succs[u]):
            waiting[v] -= 1
            if not waiting[v]:
                queue.append(v)
    if len(out) != len(members):
        raise ScheduleError("the graph has a cycle outside while-loop frames")
    return out


def _edges(
    graph: Graph, order: list[list[Step]], members: dict[str, list[str]], order_us: float
) -> list[tuple[str, str]]:
    """Control edges between consecutive costly single-op units of each slot."""
    edges = []
    for steps in order:
        last: str | None = None
        for step in steps:
            u = step.unit
            if len(members[u]) != 1 or u in graph.dead or step.cost_us < order_us:
                continue
            if graph.nodes[u].op in _FEEDS or graph.nodes[u].op == "_Retval":
                continue
            if last is not None and last not in graph.preds[u]:
                edges.append((last, u))
            last = u
    return edges


def _critical(rank, succs, start, finish, cost, slot_unit, graph, members) -> list[Step]:  # type: ignore[no-untyped-def]
    if not rank:
        return []
    u: str | None = max(rank, key=lambda k: rank[k])
    path = []
    while u is not None:
        path.append(Step(u, _op(graph, members[u]), cost[u], start[u], finish[u]))
        u = max(succs[u], key=lambda v: rank[v], default=None)
    return path


@dataclasses.dataclass(frozen=True)
class Copy:
    """An importable GraphDef of a plan, and which of its tensors to feed and fetch."""

    graph: graph_pb2.GraphDef
    feeds: list[str]  # tensor names, in the traced callable's feed order
    fetches: list[str]  # tensor names, in its fetch order
    state: list[str]  # node names to input-map onto the session's restored state


def rewrite(graph: Graph, plan_: Plan, device: Callable[[int], str]) -> Copy:
    """The executed graph with the plan's placement and control edges, importable with
    `tf.graph_util.import_graph_def` (feeds become Placeholders, fetches Identities, names
    that TensorFlow reserves lose their leading underscore)."""

    def name(n: str) -> str:
        return f"tfrec{n}" if n.startswith("_") else n

    def ref(r: str) -> str:
        return f"^{name(r[1:])}" if r.startswith("^") else name(r)

    added: dict[str, list[str]] = collections.defaultdict(list)
    for a, b in plan_.edges:
        added[b].append(a)
    out = graph_pb2.GraphDef()
    out.versions.CopyFrom(graph.graph.versions)
    out.library.CopyFrom(graph.graph.library)
    feeds: dict[int, str] = {}
    fetches: dict[int, str] = {}
    for node in graph.graph.node:
        if node.name in graph.state:
            continue
        copy = out.node.add()
        copy.CopyFrom(node)
        copy.name = name(node.name)
        del copy.input[:]
        copy.input.extend(
            ref(r) for r in node.input if not (r.startswith("^") and _source(r) in graph.state)
        )
        copy.input.extend(f"^{name(a)}" for a in added.get(node.name, ()))
        for attr in _DROPPED_ATTRS:
            if attr in copy.attr:
                del copy.attr[attr]
        copy.device = device(plan_.slot_of.get(node.name, 0))
        if node.op == "_Arg":
            copy.op = "Placeholder"
            copy.attr["dtype"].CopyFrom(node.attr["T"])
            del copy.attr["T"], copy.attr["index"]
            feeds[node.attr["index"].i] = f"{copy.name}:0"
        elif node.op == "_Retval":
            copy.op = "Identity"
            del copy.attr["index"]
            fetches[node.attr["index"].i] = f"{copy.name}:0"
    return Copy(
        out,
        [feeds[i] for i in sorted(feeds)],
        [fetches[i] for i in sorted(fetches)],
        sorted(graph.state),
    )
