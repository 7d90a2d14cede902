"""`convert`: SavedModel in, SavedModel out with a structured twin per converted signature.

Stages: read and load SRC (refusing what cannot be loaded); settle the user inputs (named, or
proposed from sample requests); for each signature flatten, classify, decompose and build the
twin (`partition`); write the output under a staging name; load it like TF-Serving does and
verify every twin against its original; count FLOPs; publish by renaming into DST.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2

from saved_model_tools import infer, requests, verify
from saved_model_tools.errors import ConversionError
from saved_model_tools.flopcount import FlopCounter
from saved_model_tools.graphs import read_saved_model, serve_meta_graph
from saved_model_tools.partition import Partition, partition
from saved_model_tools.report import write_report
from saved_model_tools.rewrite import node_prefix
from saved_model_tools.savedmodel import (
    SIDECAR_FORMAT,
    STRUCTURED_SIDECAR,
    Loaded,
    json_text,
    publish,
    read_structured_sidecar,
    staging_dir,
    write,
)
from saved_model_tools.signatures import DEFAULT, Target, candidates, select

FLOP_SIZES = (100, 1000)
MAX_SAMPLES = 8
Progress = Callable[[str, float], None]  # (what is being done, fraction done)


@dataclasses.dataclass
class SignatureStats:
    """What the conversion did to one signature."""

    signature: str
    structured: str
    user_inputs: list[str]
    item_inputs: list[str]
    outputs: list[str]
    ops: int  # ops of the original signature once its functions are inlined
    user_ops: int  # ops of the twin run once per request (batch 1)
    item_ops: int  # ops of the twin run on the N candidates
    const_ops: int  # ops that depend on no input (weights, constants)
    broadcasts: list[str]  # user tensors broadcast to N rows with a Tile
    implicit_broadcasts: list[str]  # user tensors an elementwise op broadcasts by itself
    recomputed_shape_ops: int  # shape ops the item world recomputes from N
    loop_frames: dict[str, int]  # "user"/"item" -> while-loop frames moved there
    decompositions: list[str]
    max_rel_diff: float = 0.0
    flops: dict[int, tuple[int, int]] = dataclasses.field(
        default_factory=dict
    )  # N -> (before, after)

    def flop_ratio(self, n: int) -> float:
        before, after = self.flops[n]
        return before / after if after else float("inf")

    def to_json(self) -> dict:
        doc = dataclasses.asdict(self)
        doc["max_rel_diff"] = float(self.max_rel_diff)
        doc["flops"] = {
            str(n): {"original": b, "structured": a, "ratio": self.flop_ratio(n)}
            for n, (b, a) in self.flops.items()
        }
        return doc


@dataclasses.dataclass
class ConversionResult:
    src: Path
    dst: Path
    user_inputs: list[str]
    proposed_user_inputs: list[str] | None  # from --infer-user-inputs
    signatures: dict[str, SignatureStats]
    seconds: float
    report: Path | None = None  # the HTML page, with --report
    # With --schedule: `tfrec-schedule explain` of the new version (tfrec_tools.schedule_cli).
    schedule: dict | None = None

    def to_json(self) -> dict:
        doc = {
            "src": str(self.src),
            "dst": str(self.dst),
            "user_inputs": self.user_inputs,
            "proposed_user_inputs": self.proposed_user_inputs,
            "seconds": self.seconds,
            "signatures": {k: v.to_json() for k, v in self.signatures.items()},
        }
        if self.schedule is not None:
            doc["schedule"] = self.schedule
        return doc


def convert(
    src: Path | str,
    dst: Path | str,
    user_inputs: list[str] | None = None,
    *,
    signatures: list[str] | None = None,
    infer_from: Path | str | None = None,
    decompose: bool = True,
    report: bool = False,
    schedule: bool = False,
    progress: Progress | None = None,
) -> ConversionResult:
    """Writes DST: SRC plus a `<sig>_structured` twin of each converted signature, verified.
    Raises ConversionError (one line) for bad input or a twin that differs.

    With `schedule`, the new version's operator schedules are explained (critical path,
    per-slot order, predicted against measured time: `tfrec-schedule explain`) into the result
    and, with `report`, into the report."""
    start = time.perf_counter()
    src, dst = Path(src), Path(dst)
    tell = progress or (lambda what, fraction: None)
    tell("loading", 0.0)
    model = read_saved_model(src)
    index = serve_meta_graph(model, src)
    meta = model.meta_graphs[index]
    proposal: list[str] | None = None
    samples: list = []
    sampled = None
    if infer_from is not None:
        sampled = _infer_signature(meta, signatures, src)
        proposal, samples = infer.propose(Path(infer_from), meta, sampled)
    user = _user_inputs(user_inputs, proposal, infer_from)
    targets = select(meta, src, user, signatures)
    Loaded(src).close()  # refuse early, with the loader's reason, what cannot be loaded
    out = saved_model_pb2.SavedModel()
    out.CopyFrom(model)
    parts = []
    for i, target in enumerate(targets):
        tell(f"rewriting {target.name}", 0.05 + 0.25 * i / len(targets))
        part = partition(meta, target, node_prefix(target.twin), decompose)
        _add_twin(out.meta_graphs[index], part)
        parts.append(part)
    stats = {p.target.name: _stats(p) for p in parts}
    sidecar = _sidecar(src, parts)
    staged = staging_dir(dst)
    try:
        tell("writing", 0.3)
        write(src, staged, out, {str(STRUCTURED_SIDECAR): json_text(sidecar)})
        _verify(staged, src, parts, {sampled: samples}, stats, tell)
        _count_flops(staged, parts, stats, tell)
        result = ConversionResult(src, dst, user, proposal, stats, time.perf_counter() - start)
        if schedule:
            tell("profiling operator schedules", 0.9)
            from tfrec_tools.schedule_cli import explain

            result.schedule = explain(staged, rounds=5)
            result.schedule["version_dir"] = str(dst)
        if report:
            result.report = dst / write_report(staged, result, parts)
        publish(staged, dst)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    result.seconds = time.perf_counter() - start
    tell("done", 1.0)
    return result


def _infer_signature(meta: meta_graph_pb2.MetaGraphDef, names: list[str] | None, src: Path) -> str:
    available = candidates(meta)
    name = names[0] if names else (DEFAULT if DEFAULT in available else None)
    if name is None and len(available) == 1:
        name = available[0]
    if name not in available:
        raise ConversionError(
            f"name the signature to infer user inputs for (--signatures); {src} has: "
            f"{', '.join(available)}"
        )
    return name


def _user_inputs(named: list[str] | None, proposal: list[str] | None, infer_from) -> list[str]:
    if named:
        return list(named)
    if proposal is None:
        raise ConversionError(
            "name the per-user inputs (--user-inputs) or give sample requests to infer them "
            "from (--infer-user-inputs)"
        )
    if not proposal:
        raise ConversionError(f"no input repeats one row within every request of {infer_from}")
    return proposal


def _add_twin(meta: meta_graph_pb2.MetaGraphDef, part: Partition) -> None:
    target, twin = part.target, part.twin
    existing = {n.name for n in meta.graph_def.node}
    clash = next((n.name for n in twin.nodes if n.name in existing), None)
    if clash is not None:
        raise ConversionError(f"the graph already has a node named {clash}")
    meta.graph_def.node.extend(twin.nodes)
    sig = meta.signature_def[target.twin]
    sig.method_name = target.signature.method_name
    for key, tensor in twin.inputs.items():
        sig.inputs[key].CopyFrom(target.signature.inputs[key])
        sig.inputs[key].name = tensor
        if key in target.user:
            sig.inputs[key].tensor_shape.dim[0].size = 1
    for key, tensor in twin.outputs.items():
        sig.outputs[key].CopyFrom(target.signature.outputs[key])
        sig.outputs[key].name = tensor


def _sidecar(src: Path, parts: list[Partition]) -> dict:
    entries = read_structured_sidecar(src)
    for part in parts:
        t = part.target
        entries[t.twin] = {
            "original": t.name,
            "user_inputs": t.user,
            "item_inputs": t.item,
            "outputs": sorted(t.signature.outputs),
        }
    return {"format": SIDECAR_FORMAT, "signatures": entries}


def _stats(part: Partition) -> SignatureStats:
    t, twin = part.target, part.twin
    worlds = list(twin.worlds.values())
    frames = {"user": 0, "item": 0}
    for frame in part.classification.frames:
        frames["item" if any(twin.worlds.get(n) == "item" for n in frame) else "user"] += 1
    return SignatureStats(
        signature=t.name,
        structured=t.twin,
        user_inputs=t.user,
        item_inputs=t.item,
        outputs=sorted(t.signature.outputs),
        ops=part.original_ops,
        user_ops=worlds.count("user"),
        item_ops=worlds.count("item"),
        const_ops=worlds.count("const") + worlds.count("shared"),
        broadcasts=twin.broadcasts,
        implicit_broadcasts=twin.implicit,
        recomputed_shape_ops=len(twin.recomputed),
        loop_frames=frames,
        decompositions=[d.describe() for d in part.decompositions],
    )


def _verify(staged: Path, src: Path, parts, samples, stats, tell: Progress) -> None:
    with Loaded(staged) as loaded:
        for i, part in enumerate(parts):
            t: Target = part.target
            tell(f"verifying {t.twin}", 0.35 + 0.35 * i / len(parts))
            mine = list(samples.get(t.name, []))
            if (src / requests.WARMUP).is_file():
                mine = mine + requests.read_samples(src / requests.WARMUP, t.name, 50)
            domains = requests.Domains(
                requests.inputs_of(t.signature),
                src,
                mine,
                requests.graph_strings(part.graph.graph_def),
            )
            checks = list(requests.from_samples(mine, t.user, MAX_SAMPLES))
            start, width = 0.35 + 0.35 * i / len(parts), 0.35 / len(parts)
            stats[t.name].max_rel_diff = verify.verify(
                loaded,
                t.name,
                t.twin,
                t.user,
                domains,
                checks,
                lambda done, t=t, a=start, w=width: tell(f"verifying {t.twin}", a + w * done),
            )


def _count_flops(staged: Path, parts, stats, tell: Progress) -> None:
    names = [p.target.name for p in parts]
    with FlopCounter(staged, names) as counter:
        for i, name in enumerate(names):
            for j, n in enumerate(FLOP_SIZES):
                done = (i + j / len(FLOP_SIZES)) / len(names)
                tell(f"counting FLOPs of {name} at N={n}", 0.7 + 0.25 * done)
                stats[name].flops[n] = (counter.count(name, n, False), counter.count(name, n, True))
