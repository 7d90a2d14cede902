"""The soak's traffic: paced client threads sending the catalogue's requests, and the tally.

Each `Worker` thread sends `rate` requests a second (a paced loop: it sleeps until the next
send is due and never bursts to catch up), choosing kinds at random by weight, over one shared
gRPC channel (generic bytes calls of the stock methods: no client-side protobuf work but the
reply's check) and its own keep-alive HTTP connection. Every outcome goes to `Stats`:

- ok: a normal request answered with the right values (latency kept per minute and per kind);
- expected: an invalid request refused with its expected code;
- shed: RESOURCE_EXHAUSTED, HTTP 429 or 503 (the server shedding load by design);
- unexpected: anything else (INTERNAL and HTTP 500 also listed apart; WRONG_RESULT when a
  reply's values differ from the reference; TRANSPORT_ERROR when HTTP failed twice).
"""

from __future__ import annotations

import http.client
import random
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Sequence

import grpc
import numpy as np

from benchmarks.soak_requests import Kind

SHED = frozenset({"RESOURCE_EXHAUSTED", "HTTP_429", "HTTP_503"})
INTERNAL = frozenset({"INTERNAL", "HTTP_500"})
TIMEOUT_S = 30.0  # a normal request not answered in this time counts as a hang
GRPC_OPTIONS = [
    ("grpc.max_send_message_length", 2**31 - 1),
    ("grpc.max_receive_message_length", 2**31 - 1),
]
MAX_EXAMPLES = 30


class Stats:
    """Thread-safe tally of every request's outcome."""

    def __init__(self, start: float) -> None:
        self.start = start
        self._lock = threading.Lock()
        self.total = 0
        self.by_category: Counter[str] = Counter()
        self.codes: dict[str, Counter[str]] = defaultdict(Counter)  # category -> code -> n
        self.by_kind: dict[str, Counter[str]] = defaultdict(Counter)  # kind -> code -> n
        self.accepted: list[tuple[float, float]] = []  # (seconds from start, latency ms)
        self.kind_latency: dict[str, list[float]] = defaultdict(list)
        self.examples: list[dict[str, object]] = []  # the first unexpected outcomes
        self.swap_active = False  # set by the hot swapper while a version changes
        self.swap_requests: Counter[str] = Counter()  # model -> requests started in a swap
        self.swap_failures: Counter[str] = Counter()  # model -> of them, not as expected

    def category(self, kind: Kind, code: str) -> str:
        if code in kind.expect:
            return "ok" if kind.normal else "expected"
        return "shed" if code in SHED else "unexpected"

    def record(
        self,
        kind: Kind,
        code: str,
        sent: float,
        ms: float,
        detail: str = "",
        during_swap: bool = False,
    ) -> str:
        category = self.category(kind, code)
        with self._lock:
            self.total += 1
            self.by_category[category] += 1
            self.codes[category][code] += 1
            self.by_kind[kind.name][code] += 1
            if category == "ok":
                self.accepted.append((sent - self.start, ms))
                self.kind_latency[kind.name].append(ms)
            if during_swap:
                self.swap_requests[kind.model] += 1
                self.swap_failures[kind.model] += category not in ("ok", "expected")
            if category == "unexpected" and len(self.examples) < MAX_EXAMPLES:
                self.examples.append(
                    {
                        "t_s": round(sent - self.start, 3),
                        "kind": kind.name,
                        "code": code,
                        "detail": detail[:300],
                    }
                )
        return category

    def internal(self) -> dict[str, int]:
        with self._lock:
            return {c: n for c, n in self.codes["unexpected"].items() if c in INTERNAL}

    def snapshot(self) -> tuple[int, Counter[str]]:
        with self._lock:
            return self.total, Counter(self.by_category)


class HttpClient:
    """One keep-alive connection; a request on a connection the server closed is retried once
    on a new one (counted in `reconnects`)."""

    def __init__(self, address: str) -> None:
        host, port = address.rsplit(":", 1)
        self._host, self._port = host, int(port)
        self._conn: http.client.HTTPConnection | None = None
        self.reconnects = 0

    def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        for attempt in (0, 1):
            if self._conn is None:
                self._conn = http.client.HTTPConnection(self._host, self._port, timeout=TIMEOUT_S)
            try:
                self._conn.request("POST", path, body, {"Content-Type": "application/json"})
                response = self._conn.getresponse()
                return response.status, response.read()
            except (http.client.RemoteDisconnected, ConnectionError, BrokenPipeError):
                self.close()
                if attempt:
                    raise
                self.reconnects += 1
            except Exception:
                self.close()
                raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def send(
    kind: Kind,
    channel: grpc.Channel,
    http_client: HttpClient,
    timeout_s: float = TIMEOUT_S,
) -> tuple[str, str, bytes]:
    """Sends one request: (code, detail, reply body)."""
    if kind.protocol == "grpc":
        try:
            reply = channel.unary_unary(kind.target)(kind.body, timeout=timeout_s)
        except grpc.RpcError as err:
            return err.code().name, str(err.details() or ""), b""
        return "OK", "", reply
    try:
        status, reply = http_client.post(kind.target, kind.body)
    except TimeoutError as err:
        return "DEADLINE_EXCEEDED", repr(err), b""
    except (OSError, http.client.HTTPException) as err:
        return "TRANSPORT_ERROR", repr(err), b""
    if status == 200:
        return "OK", "", reply
    return f"HTTP_{status}", reply[:300].decode(errors="replace"), b""


def send_and_record(
    kind: Kind, channel: grpc.Channel, http_client: HttpClient, stats: Stats
) -> str:
    during_swap = stats.swap_active
    sent = time.monotonic()
    code, detail, reply = send(kind, channel, http_client)
    ms = (time.monotonic() - sent) * 1e3
    if code == "OK" and kind.check is not None:
        try:
            good = kind.check(reply)
        except Exception as err:  # an unparsable reply is a wrong one
            good, detail = False, repr(err)
        if not good:
            code = "WRONG_RESULT"
    return stats.record(kind, code, sent, ms, detail, during_swap)


class Traffic:
    """`workers` paced threads sharing `rate` requests a second; `pause()` holds them all
    between requests (for the abandoned-burst measurements), `resume()` lets them go."""

    def __init__(
        self,
        kinds: Sequence[Kind],
        grpc_address: str,
        rest_address: str,
        stats: Stats,
        rate: float,
        workers: int,
        seed: int = 0,
    ) -> None:
        self.kinds = list(kinds)
        self.weights = [k.weight for k in kinds]
        self.channel = grpc.insecure_channel(grpc_address, options=GRPC_OPTIONS)
        self.rest_address = rest_address
        self.stats = stats
        self.interval = workers / rate
        self._stop = threading.Event()
        self._running = threading.Event()
        self._running.set()
        self._idle = [threading.Event() for _ in range(workers)]
        self.reconnects = 0
        self._threads = [
            threading.Thread(target=self._work, args=(i, seed + i), name=f"soak-{i}", daemon=True)
            for i in range(workers)
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def pause(self, timeout_s: float = TIMEOUT_S + 5) -> None:
        """Returns once no worker has a request in flight."""
        self._running.clear()
        for idle in self._idle:
            idle.wait(timeout_s)

    def resume(self) -> None:
        for idle in self._idle:
            idle.clear()
        self._running.set()

    def stop(self) -> None:
        self._stop.set()
        self._running.set()
        for thread in self._threads:
            thread.join(TIMEOUT_S + 5)
        self.channel.close()

    def _work(self, index: int, seed: int) -> None:
        rng = random.Random(seed)
        client = HttpClient(self.rest_address)
        due = time.monotonic() + rng.random() * self.interval
        try:
            while not self._stop.is_set():
                if not self._running.is_set():
                    self._idle[index].set()
                    self._running.wait()
                    due = time.monotonic()
                    continue
                self._idle[index].clear()
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                due = max(due + self.interval, time.monotonic() - self.interval)
                kind = rng.choices(self.kinds, self.weights)[0]
                send_and_record(kind, self.channel, client, self.stats)
        finally:
            self.reconnects += client.reconnects
            client.close()
            self._idle[index].set()


def by_period(accepted: Sequence[tuple[float, float]], seconds: float) -> dict[int, dict]:
    """p50/p99 of accepted latencies per period of `seconds` (keyed by the period's index)."""
    periods: dict[int, list[float]] = defaultdict(list)
    for t, ms in accepted:
        periods[int(t // seconds)].append(ms)
    return {i: percentiles(v) for i, v in sorted(periods.items())}


def percentiles(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    p50, p99 = np.percentile(np.asarray(values), [50, 99])
    return {"n": len(values), "p50_ms": round(float(p50), 3), "p99_ms": round(float(p99), 3)}
