"""What a conversion did, as text (`summary`) and as an HTML page with an SVG picture of each
partitioned graph (`write_report`, with --report).

The picture groups the flat graph's ops by name scope (a Keras layer, a TF1 variable scope;
function-call wrappers stripped), colours each group by where its ops run (user world blue,
item world orange, mixed striped), and draws the edges between groups: red where a user tensor
is broadcast to N rows by a Tile, green where the consuming op broadcasts it by itself.
Groups of constants and weights are left out.
"""

from __future__ import annotations

import collections
import html
import re
from pathlib import Path
from typing import TYPE_CHECKING

from saved_model_tools.savedmodel import json_text, write_text

if TYPE_CHECKING:
    from saved_model_tools.conversion import ConversionResult, SignatureStats
    from saved_model_tools.partition import Partition

REPORT = Path("assets.extra") / "tfrec_convert_report.html"
REPORT_JSON = Path("assets.extra") / "tfrec_convert_report.json"
CALL = re.compile(r"^(Func|(Stateful)?PartitionedCall(_\d+)?|input(_control_node)?|output)$")
COLORS = {"user": "#4e79a7", "item": "#f28e2b", "mixed": "url(#mixed)"}
BOX_W, BOX_H, GAP_X, GAP_Y = 170, 34, 60, 14


def _count(n: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(int(n))


def summary(result: ConversionResult) -> str:
    lines = [
        f"{result.src} -> {result.dst} in {result.seconds:.1f} s",
        f"user inputs: {', '.join(result.user_inputs)}",
    ]
    if result.proposed_user_inputs is not None:
        lines.append(f"proposed from samples: {', '.join(result.proposed_user_inputs) or '-'}")
    for stats in result.signatures.values():
        lines += _signature_lines(stats)
    if result.schedule is not None:
        from tfrec_tools.schedule_cli import render

        lines += ["", render(result.schedule)]
    if result.report is not None:
        lines.append(f"report: {result.report}")
    return "\n".join(lines)


def _signature_lines(s: SignatureStats) -> list[str]:
    lines = [
        f"{s.signature} -> {s.structured}",
        f"  ops: {s.ops} in the original; twin: {s.user_ops} per user, {s.item_ops} per item, "
        f"{s.const_ops} constant",
        f"  broadcasts: {len(s.broadcasts)} Tile, {len(s.implicit_broadcasts)} implicit; "
        f"shape ops recomputed at N: {s.recomputed_shape_ops}; loop frames: "
        f"{s.loop_frames['user']} per user, {s.loop_frames['item']} per item",
        f"  decompositions: {len(s.decompositions)}",
        *(f"    {d}" for d in s.decompositions),
    ]
    flops = "   ".join(
        f"N={n}: {_count(b)} -> {_count(a)} ({s.flop_ratio(n):.2f}x)"
        for n, (b, a) in sorted(s.flops.items())
    )
    if flops:
        lines.append(f"  FLOPs per request  {flops}")
    lines.append(f"  verified: max relative difference {s.max_rel_diff:.2g}")
    return lines


def write_report(staged: Path, result: ConversionResult, parts: list[Partition]) -> Path:
    """Writes the HTML page (and the result as JSON) into the version's assets.extra."""
    sections = []
    for part in parts:
        stats = result.signatures[part.target.name]
        sections.append(
            f"<h2>{html.escape(stats.signature)} &rarr; {html.escape(stats.structured)}</h2>"
            f"<pre>{html.escape(chr(10).join(_signature_lines(stats)[1:]))}</pre>"
            f"{_broadcast_list(stats)}{svg(part)}"
        )
    if result.schedule is not None:
        from tfrec_tools.schedule_cli import render

        sections.append(
            "<h2>Operator schedules (tfrec-schedule explain)</h2>"
            f"<pre>{html.escape(render(result.schedule))}</pre>"
        )
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>tfrec-convert report</title>"
        "<style>body{font-family:sans-serif;margin:2em}pre{background:#f6f6f6;padding:1em}"
        "svg{border:1px solid #ddd}</style></head><body>"
        f"<h1>tfrec-convert</h1><pre>{html.escape(summary(result))}</pre>"
        f"{''.join(sections)}</body></html>\n"
    )
    write_text(staged / REPORT, page)
    write_text(staged / REPORT_JSON, json_text(result.to_json()))
    return REPORT


def _broadcast_list(stats: SignatureStats) -> str:
    items = [f"<li>Tile: {html.escape(t)}</li>" for t in stats.broadcasts]
    items += [f"<li>implicit: {html.escape(t)}</li>" for t in stats.implicit_broadcasts]
    return f"<details><summary>broadcasts</summary><ul>{''.join(items)}</ul></details>"


def group_of(name: str) -> str:
    """A name scope of depth 2, function-call wrappers and decomposition suffixes left out."""
    name = name.split("/tfrec_split")[0]
    scopes = name.split("/")[:-1]
    parts = [p for p in scopes if not CALL.match(p)]
    if not parts:
        return "outputs" if "output" in scopes else ("inputs" if "input" in scopes else name)
    return "/".join(parts[:3])


def _strip_model_scope(groups: list[str]) -> dict[str, str]:
    """Drops a first scope most groups share (a Keras model's name) and keeps depth 2."""
    firsts = [g.split("/")[0] for g in groups if "/" in g]
    common = max(set(firsts), key=firsts.count) if firsts else None
    strip = common is not None and firsts.count(common) * 2 > len(groups)
    out = {}
    for g in groups:
        parts = g.split("/")
        if strip and parts[0] == common and len(parts) > 1:
            parts = parts[1:]
        out[g] = "/".join(parts[:2])
    return out


def svg(part: Partition) -> str:
    worlds = part.twin.worlds
    graph = part.graph
    scoped = {name: group_of(name) for name in worlds}
    short = _strip_model_scope(sorted(set(scoped.values())))
    group = {name: short[g] for name, g in scoped.items()}
    groups: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for name, world in worlds.items():
        groups[group[name]][world] += 1
    shown = {g for g, c in groups.items() if c["user"] or c["item"]}
    edges: dict[tuple[str, str], str] = {}
    tiled = {t.rsplit(":", 1)[0] for t in part.twin.broadcasts}
    implicit = {t.rsplit(":", 1)[0] for t in part.twin.implicit}
    for name in worlds:
        for src, _ in graph.data_inputs(name):
            if src not in group:
                continue  # a signature input
            a, b = group[src], group[name]
            if a == b or a not in shown or b not in shown:
                continue
            kind = (
                "tile"
                if src in tiled and worlds[name] == "item"
                else ("implicit" if src in implicit and worlds[name] == "item" else "plain")
            )
            if edges.get((a, b)) in (None, "plain"):
                edges[(a, b)] = kind
    layer = _layers(shown, edges)
    columns: dict[int, list[str]] = collections.defaultdict(list)
    for g in sorted(shown, key=lambda g: (layer[g], g)):
        columns[layer[g]].append(g)
    pos = {
        g: (20 + col * (BOX_W + GAP_X), 40 + row * (BOX_H + GAP_Y))
        for col, names in columns.items()
        for row, g in enumerate(names)
    }
    width = 40 + (max(columns, default=0) + 1) * (BOX_W + GAP_X)
    height = 60 + max((len(v) for v in columns.values()), default=1) * (BOX_H + GAP_Y)
    out = [
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' "
        "font-size='10'><defs><pattern id='mixed' width='8' height='8' "
        "patternUnits='userSpaceOnUse' patternTransform='rotate(45)'><rect width='4' height='8' "
        f"fill='{COLORS['user']}'/><rect x='4' width='4' height='8' fill='{COLORS['item']}'/>"
        "</pattern></defs>",
        _legend(),
    ]
    for (a, b), kind in edges.items():
        (x1, y1), (x2, y2) = pos[a], pos[b]
        color = {"tile": "#d62728", "implicit": "#2ca02c"}.get(kind, "#999")
        dash = "" if kind == "plain" else " stroke-dasharray='5,3' stroke-width='2'"
        out.append(
            f"<path d='M{x1 + BOX_W},{y1 + BOX_H / 2} C{x1 + BOX_W + GAP_X / 2},{y1 + BOX_H / 2} "
            f"{x2 - GAP_X / 2},{y2 + BOX_H / 2} {x2},{y2 + BOX_H / 2}' fill='none' "
            f"stroke='{color}'{dash}/>"
        )
    for g, (x, y) in pos.items():
        c = groups[g]
        world = "mixed" if c["user"] and c["item"] else ("user" if c["user"] else "item")
        label = html.escape(g if len(g) <= 30 else "…" + g[-29:])
        out.append(
            f"<g><title>{html.escape(g)}: {c['user']} per-user, {c['item']} per-item ops</title>"
            f"<rect x='{x}' y='{y}' width='{BOX_W}' height='{BOX_H}' rx='5' "
            f"fill='{COLORS[world]}' opacity='0.85'/><text x='{x + 5}' y='{y + 14}' "
            f"fill='white'>{label}</text><text x='{x + 5}' y='{y + 27}' fill='white'>"
            f"user {c['user']} · item {c['item']}</text></g>"
        )
    out.append("</svg>")
    return "".join(out)


def _legend() -> str:
    entries = [
        ("rect", COLORS["user"], "per user (batch 1)"),
        ("rect", COLORS["item"], "per item (N rows)"),
        ("line", "#d62728", "broadcast (Tile)"),
        ("line", "#2ca02c", "implicit broadcast"),
    ]
    out = []
    for i, (shape, color, text) in enumerate(entries):
        x = 20 + i * 150
        mark = (
            f"<rect x='{x}' y='8' width='14' height='14' fill='{color}'/>"
            if shape == "rect"
            else f"<line x1='{x}' y1='15' x2='{x + 14}' y2='15' stroke='{color}' "
            "stroke-width='2' stroke-dasharray='5,3'/>"
        )
        out.append(f"{mark}<text x='{x + 18}' y='19'>{text}</text>")
    return "".join(out)


def _layers(nodes: set[str], edges: dict[tuple[str, str], str]) -> dict[str, int]:
    """Longest-path layering; edges closing a cycle (loops across scopes) are ignored."""
    succ: dict[str, list[str]] = collections.defaultdict(list)
    for a, b in edges:
        succ[a].append(b)
    order: list[str] = []
    state: dict[str, int] = {}
    back: set[tuple[str, str]] = set()
    for root in sorted(nodes):
        stack = [(root, iter(sorted(succ[root])))]
        if root in state:
            continue
        state[root] = 1
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                state[node] = 2
                order.append(node)
                stack.pop()
            elif state.get(nxt) == 1:
                back.add((node, nxt))
            elif nxt not in state:
                state[nxt] = 1
                stack.append((nxt, iter(sorted(succ[nxt]))))
    layer = dict.fromkeys(nodes, 0)
    for node in reversed(order):
        for nxt in succ[node]:
            if (node, nxt) not in back:
                layer[nxt] = max(layer[nxt], layer[node] + 1)
    return layer
