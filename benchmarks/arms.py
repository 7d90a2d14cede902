"""The bench's arms and cases: one zoo model at N candidates, five ways, alternating rounds.

An arm runs request i of a fixed set of requests and times it: in process through a session
callable (`Floor`), or end to end through `tfrec_tools.loadgen` (`Remote`). Before any timing,
every arm's outputs are compared with the TF-Serving floor's on the same request.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from benchmarks import report
from benchmarks.models import Sidecar
from benchmarks.models.session import ServingSession
from benchmarks.workloads import SIGNATURES, Workload, predict_request, read_signature
from tfrec.runtime.runner import POOLED, Runner
from tfrec_tools import loadgen
from tfrec_tools.ab import compare

FLAT, STRUCTURED = SIGNATURES["flat"], SIGNATURES["structured"]
REQUESTS = 4  # distinct requests per case, cycled
MAX_PER_ROUND = 200
ATOL, RTOL = 1e-4, 1e-3
Arrays = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class Converted:
    path: Path  # version dir of the converted model (original + structured signatures)
    seconds: float  # what saved_model_tools.convert took


@dataclasses.dataclass(frozen=True)
class Budget:
    """How long a case may take: its rounds share `seconds_per_case` between the arms."""

    rounds: int
    seconds_per_case: float
    min_requests: int  # per arm and round, whatever the budget


def _tools(attribute: str) -> Any:
    try:
        import saved_model_tools
    except ImportError:
        return None
    return getattr(saved_model_tools, attribute, None)


def convert(src: Path, dst: Path, notes: list[str]) -> Converted | None:
    """Converts `src` with saved_model_tools if it exists and yields a structured signature."""
    converter = _tools("convert")
    if converter is None:
        notes.append("arms (c) and (d) skipped: saved_model_tools.convert does not exist yet")
        return None
    start = time.perf_counter()
    converter(src, dst, Sidecar.read(src).user_inputs)
    try:
        read_signature(dst, STRUCTURED)
    except (OSError, ValueError):
        notes.append(f"{src.parent.name}: no {STRUCTURED} after conversion; (c), (d) skipped")
        return None
    return Converted(dst, time.perf_counter() - start)


def flop_ratio(src: Path, converted: Converted | None, n: int, notes: list[str]) -> float | None:
    flops = _tools("flops")
    if flops is None:
        notes.append("FLOP ratio skipped: saved_model_tools.flops does not exist yet")
        return None
    if converted is None:
        return None
    # `flops` names the original signature; structured=True counts its `_structured` twin
    return flops(src, FLAT, n, False) / flops(converted.path, FLAT, n, True)


class Arm(Protocol):
    def outputs(self, i: int) -> Arrays: ...
    def measure(self, start: int, count: int) -> list[float]: ...


class Floor:
    """A signature run in this process as TF-Serving runs it (see bench.py's docstring)."""

    def __init__(self, session: ServingSession, signature: str, batches: list[Arrays]) -> None:
        sig = session.signatures[signature]
        names = list(batches[0])
        self._aliases = list(sig.outputs)
        fetches = [sig.outputs[a].name for a in self._aliases]
        feeds = [sig.inputs[k].name for k in names]
        self._run = Runner(session.session, feeds, fetches, mode=POOLED)
        self._args = [[b[k] for k in names] for b in batches]

    def outputs(self, i: int) -> Arrays:
        return dict(zip(self._aliases, self._run(*self._args[i]), strict=True))

    def measure(self, start: int, count: int) -> list[float]:
        out = []
        for i in range(start, start + count):
            args = self._args[i % len(self._args)]
            begin = time.perf_counter_ns()
            self._run(*args)
            out.append((time.perf_counter_ns() - begin) / 1e3)
        return out


class Remote:
    """Predict over gRPC through tfrec_tools.loadgen, one request at a time."""

    def __init__(self, address: str, model: str, signature: str, batches: list[Arrays]) -> None:
        self.target = loadgen.Target(address, model)
        self.requests = [predict_request(b, model, signature) for b in batches]
        self.bodies = [loadgen.encode(self.target, r) for r in self.requests]
        self.errors: dict[str, int] = {}

    def outputs(self, i: int) -> Arrays:
        with loadgen.Endpoint(self.target) as endpoint:
            return endpoint.predict(self.requests[i])

    def measure(self, start: int, count: int) -> list[float]:
        k = start % len(self.bodies)
        bodies = self.bodies[k:] + self.bodies[:k]
        # warmup=1: each run opens a fresh channel; its handshake is not the server's time
        result = loadgen.run_closed(self.target, bodies, 1, 3600.0, max_requests=count, warmup=1)
        for code, n in result.errors.items():
            self.errors[code] = self.errors.get(code, 0) + n
        return result.latencies_us.tolist()


@dataclasses.dataclass
class Case:
    model: str
    n: int
    request_bytes: dict[str, int]
    samples: dict[str, list[list[float]]]  # arm -> latencies (us) of each round
    errors: dict[str, dict[str, int]]
    max_abs_diff: dict[str, float]  # arm -> against floor_flat on request 0
    flop_ratio: float | None
    per_round: int

    def latencies(self, arm: str) -> list[float]:
        return [x for values in self.samples.get(arm, []) for x in values]

    def ratios(self) -> dict[str, float | None]:
        p50 = {a: statistics.median(self.latencies(a)) for a in self.samples if self.latencies(a)}
        floor = p50.get("floor_flat")

        def over(arm: str) -> float | None:
            return floor / p50[arm] if floor and arm in p50 else None

        structured = over("tfrec_structured")
        return {
            "floor_over_tfrec_flat": over("tfrec_flat"),
            "floor_over_tfrec_structured": structured,
            "floor_over_floor_structured": over("floor_structured"),
            "floor_over_tfrec_dedup": over("tfrec_dedup"),
            "flop_ratio": self.flop_ratio,
            "share_of_ideal": structured / self.flop_ratio
            if structured and self.flop_ratio
            else None,
        }

    def to_json(self) -> dict[str, Any]:
        arms: dict[str, dict[str, Any]] = {}
        for arm, rounds in self.samples.items():
            # per-round medians show the drift the alternation spreads over all arms
            values = self.latencies(arm)
            arms[arm] = report.summarize(values) if values else {"n": 0}
            arms[arm]["round_p50_us"] = [statistics.median(r) for r in rounds if r]
        for arm, errors in self.errors.items():
            arms.setdefault(arm, {})["errors"] = errors
        return {
            "model": self.model,
            "n": self.n,
            "request_bytes": self.request_bytes,
            "requests_per_arm_and_round": self.per_round,
            "arms": arms,
            "max_abs_diff_vs_floor_flat": self.max_abs_diff,
            "ratios": self.ratios(),
        }


def model_arms(
    session: ServingSession,
    structured: ServingSession | None,
    workload: Workload,
    n: int,
    address: str,
) -> tuple[dict[str, Arm], dict[str, int]]:
    """The arms of one case, in measuring order, and the request sizes of each form."""
    flat = [workload.request(n, (n, i), "flat") for i in range(REQUESTS)]
    remote = Remote(address, workload.model, FLAT, flat)
    arms: dict[str, Arm] = {"floor_flat": Floor(session, FLAT, flat), "tfrec_flat": remote}
    sizes = {"flat": len(remote.bodies[0])}
    if structured is not None:
        batches = [workload.request(n, (n, i), "structured") for i in range(REQUESTS)]
        model = f"{workload.model}_structured"
        remote = Remote(address, model, STRUCTURED, batches)
        arms["tfrec_structured"] = remote
        arms["floor_structured"] = Floor(structured, STRUCTURED, batches)
        sizes["structured"] = len(remote.bodies[0])
        # (e) an unchanged client: flat requests to the converted model, which tfrec's
        # --structured_dedup (on by default) runs on the structured twin.
        arms["tfrec_dedup"] = Remote(address, model, FLAT, flat)
    return arms, sizes


def parity(arms: dict[str, Arm]) -> dict[str, float]:
    """Max abs difference of each arm's outputs from floor_flat's (request 0); raises if any
    exceeds the tolerance: speeds of wrong answers are not worth reporting."""
    expected = arms["floor_flat"].outputs(0)
    diffs = {}
    for arm, runner in arms.items():
        found = compare(expected, runner.outputs(0), ATOL, RTOL)
        bad = [d for d in found if not d.ok]
        if bad:
            raise AssertionError(f"{arm} disagrees with floor_flat: {bad}")
        diffs[arm] = max((d.max_abs for d in found), default=0.0)
    return diffs


def rounds(
    arms: dict[str, Arm], budget: Budget, warmup: int
) -> tuple[dict[str, list[list[float]]], int]:
    """Warms every arm, sizes the rounds to the budget, runs them rotating the arm order."""
    per_request = 0.0
    for runner in arms.values():
        runner.measure(0, warmup)
        per_request += statistics.median(runner.measure(0, 3)) / 1e6
    count = int(budget.seconds_per_case / budget.rounds / max(per_request, 1e-6))
    count = max(budget.min_requests, min(MAX_PER_ROUND, count))
    samples: dict[str, list[list[float]]] = {arm: [] for arm in arms}
    order = list(arms)
    for r in range(budget.rounds):
        for arm in order[r % len(order) :] + order[: r % len(order)]:
            samples[arm].append(arms[arm].measure(r * count, count))
    return samples, count


def run_model(
    name: str,
    version_dir: Path,
    converted: Converted | None,
    address: str,
    sizes: Sequence[int],
    budget: Budget,
    notes: list[str],
    log: Callable[[str], None],
) -> list[Case]:
    """Every N of one model; the in-process sessions are loaded once for all of them."""
    workload = Workload.load(version_dir)
    session = ServingSession(version_dir)
    structured = ServingSession(converted.path) if converted else None
    cases = []
    try:
        for i, n in enumerate(sorted(sizes)):
            log(f"{name} N={n}")
            arms, request_bytes = model_arms(session, structured, workload, n, address)
            diffs = parity(arms)
            # The server times its two execution modes on a signature's first 32 calls.
            warmup = 40 if i == 0 else 3
            samples, count = rounds(arms, budget, warmup)
            errors = {a: r.errors for a, r in arms.items() if isinstance(r, Remote) and r.errors}
            ratio = flop_ratio(version_dir, converted, n, notes)
            cases.append(Case(name, n, request_bytes, samples, errors, diffs, ratio, count))
    finally:
        session.close()
        if structured is not None:
            structured.close()
    return cases
