"""Load generator for PredictionService servers (tfrec or stock TF-Serving), gRPC or REST.

    target = Target("127.0.0.1:8500", "din")                 # protocol "grpc" or "rest"
    bodies = [encode(target, r) for r in requests]           # encode once, before timing
    result = run_closed(target, bodies, concurrency=4, duration_s=10)
    result = run_open(target, bodies, rate=200, duration_s=10)
    result.summary()  # p50/p90/p99 us, throughput, errors by code, bytes/request, client CPU

One asyncio loop drives every request: gRPC through `grpc.aio` calling the stock
`/tensorflow.serving.PredictionService/Predict` method with pre-serialized bodies (no
client-side protobuf work while timing), REST through one keep-alive aiohttp session posting
pre-encoded columnar JSON (`{"signature_name": ..., "inputs": {...}}`) to
`/v1/models/<model>:predict`. Latencies of successful requests are kept raw (numpy, us).

- Closed loop: C workers, each sends its next request when the previous one returns.
- Open loop: requests are due at fixed intervals whatever the server does (they do not wait
  for earlier replies). Latency counts from the moment a request leaves; how late it left
  against its due time is kept apart (`send_lag_us`): asyncio's timers wake up to ~1 ms
  late, which would otherwise be charged to the server, and a lag that grows means the
  client, not the server, is saturated. More than `max_in_flight` outstanding requests are
  dropped and counted as `DROPPED`.

The generator's own ceiling: it spends CPU on the machine it measures, so every result carries
`client_cpu_us_per_request` (this process's CPU time over requests sent). Measured on the
2-vCPU VM with `benchmarks/ceiling.py` (bare servers that do no work): gRPC costs 185-250 us of
client CPU per small request in a closed loop (one client core: ~4,000-5,400 requests/s), and
client plus a bare grpcio server top out near 3,300 requests/s; REST (aiohttp) costs 86-154 us
(~6,800 requests/s with a bare aiohttp server). Throughput near those figures measures the
client and the machine, not the server under test.

Thread-safety: each `run_*` call owns its event loop and connections; call from one thread.
`Endpoint` is a blocking helper for setup and parity checks, not for load.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import aiohttp
import grpc
import numpy as np
import orjson
from google.protobuf import json_format
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from tfrec.base import codecs

PROTOCOLS = ("grpc", "rest")
PREDICT_METHOD = "/tensorflow.serving.PredictionService/Predict"
MAX_MESSAGE_BYTES = 2**31 - 1
_GRPC_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]
_AVAILABLE = get_model_status_pb2.ModelVersionStatus.AVAILABLE
Progress = Callable[[float], None]  # called ~10 times a second with the fraction done


class LoadError(Exception):
    """A target that cannot be used: unreachable, unknown model, no such signature."""


@dataclasses.dataclass(frozen=True)
class Target:
    address: str  # HOST:PORT of the gRPC or REST port
    model: str
    protocol: str = "grpc"

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, not {self.protocol!r}")

    @property
    def url(self) -> str:
        return f"http://{self.address}/v1/models/{self.model}"


# ----------------------------------------------------------------------------- encoding


def _json_string(value: Any) -> Any:
    raw = value if isinstance(value, bytes) else str(value).encode()
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return {"b64": base64.b64encode(raw).decode()}


def _json_value(array: np.ndarray) -> Any:
    if array.dtype != object and array.dtype.kind not in "SU":
        return array
    if not array.size:
        return np.zeros(array.shape).tolist()
    return np.vectorize(_json_string, otypes=[object])(array).tolist()


def rest_body(request: predict_pb2.PredictRequest) -> bytes:
    """The columnar REST body TF-Serving accepts for a PredictRequest."""
    inputs = {name: _json_value(codecs.to_ndarray(t)) for name, t in request.inputs.items()}
    doc: dict[str, Any] = {"inputs": inputs}
    if request.model_spec.signature_name:
        doc["signature_name"] = request.model_spec.signature_name
    return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)


def encode(target: Target, request: predict_pb2.PredictRequest) -> bytes:
    """The wire body of one request for `target`'s protocol (the model name set to its)."""
    if request.model_spec.name != target.model:
        request = _renamed(request, target.model)
    if target.protocol == "grpc":
        return request.SerializeToString()
    return rest_body(request)


def _renamed(request: predict_pb2.PredictRequest, model: str) -> predict_pb2.PredictRequest:
    copy = predict_pb2.PredictRequest()
    copy.CopyFrom(request)
    copy.model_spec.name = model
    return copy


# ----------------------------------------------------------------------------- results


@dataclasses.dataclass
class LoadResult:
    """One run against one target. Latencies are of successful requests, in microseconds."""

    protocol: str
    mode: str  # "closed" or "open"
    concurrency: int  # closed loop: workers; open loop: peak requests in flight
    rate: float  # open loop: offered requests/s; closed loop: 0
    duration_s: float  # wall time of the measured phase
    latencies_us: np.ndarray
    send_lag_us: np.ndarray  # open loop: how late each request left (client saturation)
    errors: dict[str, int]  # gRPC code name, HTTP_<status> or DROPPED -> count
    sent: int  # requests sent, successful or not
    bytes_sent: int  # request bodies, summed (gRPC framing and HTTP headers excluded)
    client_cpu_s: float  # CPU time of this whole process during the measured phase

    @property
    def ok(self) -> int:
        return int(self.latencies_us.size)

    @property
    def throughput(self) -> float:
        return self.ok / self.duration_s if self.duration_s > 0 else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_us, q)) if self.ok else float("nan")

    def summary(self) -> dict[str, Any]:
        """The JSON-able figures of the run (no raw samples)."""
        sent = max(self.sent, 1)
        lag = self.send_lag_us
        return {
            "mode": self.mode,
            "protocol": self.protocol,
            "concurrency": self.concurrency,
            "rate": self.rate,
            "ok": self.ok,
            "sent": self.sent,
            "errors": dict(self.errors),
            "duration_s": self.duration_s,
            "throughput_rps": self.throughput,
            "p50_us": self.percentile(50),
            "p90_us": self.percentile(90),
            "p99_us": self.percentile(99),
            "mean_us": float(self.latencies_us.mean()) if self.ok else float("nan"),
            "bytes_per_request": self.bytes_sent / sent,
            "client_cpu_us_per_request": self.client_cpu_s / sent * 1e6,
            "send_lag_p50_us": float(np.percentile(lag, 50)) if lag.size else 0.0,
            "send_lag_p99_us": float(np.percentile(lag, 99)) if lag.size else 0.0,
        }

    @classmethod
    def merge(cls, results: Sequence[LoadResult]) -> LoadResult:
        """Several runs (rounds) of one arm as one result."""
        errors: Counter[str] = Counter()
        for r in results:
            errors.update(r.errors)
        return dataclasses.replace(
            results[0],
            concurrency=max(r.concurrency for r in results),
            duration_s=sum(r.duration_s for r in results),
            latencies_us=np.concatenate([r.latencies_us for r in results]),
            send_lag_us=np.concatenate([r.send_lag_us for r in results]),
            errors=dict(errors),
            sent=sum(r.sent for r in results),
            bytes_sent=sum(r.bytes_sent for r in results),
            client_cpu_s=sum(r.client_cpu_s for r in results),
        )


# ----------------------------------------------------------------------------- clients


class _GrpcClient:
    def __init__(self, target: Target, timeout_s: float, connections: int) -> None:
        self._channel = grpc.aio.insecure_channel(target.address, options=_GRPC_OPTIONS)
        self._call = self._channel.unary_unary(PREDICT_METHOD)  # bytes in, bytes out
        self._timeout = timeout_s

    async def send(self, body: bytes) -> str:
        try:
            await self._call(body, timeout=self._timeout)
        except grpc.aio.AioRpcError as err:
            return err.code().name
        return "OK"

    async def close(self) -> None:
        await self._channel.close()


class _RestClient:
    def __init__(self, target: Target, timeout_s: float, connections: int) -> None:
        self._url = f"{target.url}:predict"
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=connections),  # keep-alive pool
            timeout=aiohttp.ClientTimeout(total=timeout_s),
            headers={"Content-Type": "application/json"},
        )

    async def send(self, body: bytes) -> str:
        try:
            async with self._session.post(self._url, data=body) as response:
                await response.read()
                return "OK" if response.status == 200 else f"HTTP_{response.status}"
        except TimeoutError:
            return "DEADLINE_EXCEEDED"
        except aiohttp.ClientError:
            return "UNAVAILABLE"

    async def close(self) -> None:
        await self._session.close()


# ----------------------------------------------------------------------------- runs

Client = _GrpcClient | _RestClient


class _Run:
    """One measured run on its own event loop (single-threaded: no locks)."""

    def __init__(self, target: Target, bodies: Sequence[bytes], timeout_s: float) -> None:
        if not bodies:
            raise ValueError("no request bodies")
        self.target = target
        self.bodies = bodies
        self.timeout_s = timeout_s
        self.latencies: list[float] = []
        self.lags: list[float] = []
        self.errors: Counter[str] = Counter()
        self.sent = self.bytes = self.in_flight = self.peak = 0
        self.progress: Callable[[], float] = lambda: 0.0

    def _next(self) -> bytes:
        body = self.bodies[self.sent % len(self.bodies)]
        self.sent += 1
        self.bytes += len(body)
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        return body

    async def _call(self, client: Client, body: bytes, sent_ns: int) -> None:
        code = await client.send(body)
        self.in_flight -= 1
        if code == "OK":
            self.latencies.append((time.perf_counter_ns() - sent_ns) / 1e3)
        else:
            self.errors[code] += 1

    async def closed(self, client: Client, c: int, seconds: float, cap: int) -> None:
        deadline = time.perf_counter() + seconds
        start = time.perf_counter()
        self.progress = lambda: max(
            (time.perf_counter() - start) / seconds, self.sent / cap if cap else 0.0
        )

        async def worker() -> None:
            while time.perf_counter() < deadline and (not cap or self.sent < cap):
                await self._call(client, self._next(), time.perf_counter_ns())

        await asyncio.gather(*(worker() for _ in range(c)))

    async def open(self, client: Client, rate: float, seconds: float, limit: int) -> None:
        total = max(1, int(rate * seconds))
        self.progress = lambda: self.sent / total
        tasks: set[asyncio.Task[None]] = set()
        start = time.perf_counter_ns()
        for i in range(total):
            due = start + int(i * 1e9 / rate)
            wait = (due - time.perf_counter_ns()) / 1e9
            await asyncio.sleep(max(wait, 0.0))  # yields even when behind schedule
            if self.in_flight >= limit:
                self.errors["DROPPED"] += 1
                continue
            sent_ns = time.perf_counter_ns()
            self.lags.append((sent_ns - due) / 1e3)
            task = asyncio.create_task(self._call(client, self._next(), sent_ns))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(tasks)

    async def measure(
        self,
        mode: str,
        warmup: int,
        connections: int,
        load: Callable[..., Any],
        progress: Progress | None,
    ) -> LoadResult:
        kind = _GrpcClient if self.target.protocol == "grpc" else _RestClient
        client = kind(self.target, self.timeout_s, connections)
        try:
            for i in range(warmup):
                await client.send(self.bodies[i % len(self.bodies)])
            ticker = asyncio.create_task(self._tick(progress))
            start, cpu = time.perf_counter(), time.process_time()
            await load(client)
            elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
            ticker.cancel()
        finally:
            await client.close()
        return LoadResult(
            self.target.protocol, mode, self.peak, 0.0, elapsed,
            np.asarray(self.latencies), np.asarray(self.lags), dict(self.errors), self.sent,
            self.bytes, cpu,
        )  # fmt: skip

    async def _tick(self, progress: Progress | None) -> None:
        while progress is not None:
            progress(min(1.0, self.progress()))
            await asyncio.sleep(0.1)


def run_closed(
    target: Target,
    bodies: Sequence[bytes],
    concurrency: int = 1,
    duration_s: float = 10.0,
    *,
    max_requests: int = 0,
    warmup: int = 0,
    timeout_s: float = 60.0,
    progress: Progress | None = None,
) -> LoadResult:
    """Closed loop: `concurrency` workers cycle through `bodies` (from `encode`) until
    `duration_s` has passed or `max_requests` (if > 0) have been sent. `warmup` requests go
    first, one at a time, unrecorded."""
    if concurrency < 1 or duration_s <= 0:
        raise ValueError("need concurrency >= 1 and duration_s > 0")
    run = _Run(target, bodies, timeout_s)

    async def load(client: Client) -> None:
        await run.closed(client, concurrency, duration_s, max_requests)

    return asyncio.run(run.measure("closed", warmup, concurrency, load, progress))


def run_open(
    target: Target,
    bodies: Sequence[bytes],
    rate: float,
    duration_s: float = 10.0,
    *,
    warmup: int = 0,
    timeout_s: float = 60.0,
    max_in_flight: int = 1000,
    connections: int = 64,
    progress: Progress | None = None,
) -> LoadResult:
    """Open loop: `rate` requests per second for `duration_s`, whatever the latency.
    REST uses at most `connections` keep-alive connections (requests queue for one)."""
    if rate <= 0 or duration_s <= 0:
        raise ValueError("need rate > 0 and duration_s > 0")
    run = _Run(target, bodies, timeout_s)

    async def load(client: Client) -> None:
        await run.open(client, rate, duration_s, max_in_flight)

    result = asyncio.run(run.measure("open", warmup, connections, load, progress))
    return dataclasses.replace(result, rate=rate)


# ----------------------------------------------------------------------------- blocking calls


class Endpoint:
    """Blocking calls to one target for setup and parity checks: model status, signatures,
    single predicts with decoded outputs. Not thread-safe; not for load."""

    def __init__(self, target: Target, timeout_s: float = 30.0) -> None:
        self.target = target
        self._timeout = timeout_s
        self._channel: grpc.Channel | None = None
        if target.protocol == "grpc":
            self._channel = grpc.insecure_channel(target.address, options=_GRPC_OPTIONS)

    def __enter__(self) -> Endpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()

    def _grpc_error(self, err: grpc.RpcError) -> LoadError:
        code, details = err.code(), err.details()  # type: ignore[attr-defined]
        where = f"{self.target.address} (gRPC)"
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            return LoadError(f"cannot reach {where}: {code.name}: {details}")
        return LoadError(f"{where}, model {self.target.model!r}: {code.name}: {details}")

    def _http(self, path: str, body: bytes | None = None) -> Any:
        url = self.target.url + path
        request = urllib.request.Request(url, data=body, method="POST" if body else "GET")
        request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as err:
            text = err.read().decode(errors="replace")
            with contextlib.suppress(ValueError, AttributeError):
                text = json.loads(text).get("error", text)
            message = f"{self.target.address} (REST), model {self.target.model!r}: HTTP {err.code}"
            raise LoadError(f"{message}: {' '.join(str(text).split())}") from None
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise LoadError(f"cannot reach {self.target.address} (REST): {reason}") from None

    def check_model(self) -> None:
        """Raises LoadError unless the model has an AVAILABLE version."""
        if self._channel is None:
            states = self._http("").get("model_version_status", [])
            available = any(s.get("state") == "AVAILABLE" for s in states)
        else:
            stub = model_service_pb2_grpc.ModelServiceStub(self._channel)
            request = get_model_status_pb2.GetModelStatusRequest()
            request.model_spec.name = self.target.model
            try:
                response = stub.GetModelStatus(request, timeout=self._timeout)
            except grpc.RpcError as err:
                raise self._grpc_error(err) from None
            available = any(s.state == _AVAILABLE for s in response.model_version_status)
        if not available:
            raise LoadError(f"{self.target.address}: model {self.target.model!r} has no version")

    def signatures(self) -> dict[str, meta_graph_pb2.SignatureDef]:
        """The model's SignatureDefs (GetModelMetadata)."""
        defs = get_model_metadata_pb2.SignatureDefMap()
        if self._channel is None:
            doc = self._http("/metadata")["metadata"]["signature_def"]
            json_format.ParseDict(doc, defs, ignore_unknown_fields=True)
        else:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
            request = get_model_metadata_pb2.GetModelMetadataRequest(
                metadata_field=["signature_def"]
            )
            request.model_spec.name = self.target.model
            try:
                response = stub.GetModelMetadata(request, timeout=self._timeout)
            except grpc.RpcError as err:
                raise self._grpc_error(err) from None
            response.metadata["signature_def"].Unpack(defs)
        return dict(defs.signature_def)

    def predict(self, request: predict_pb2.PredictRequest) -> dict[str, np.ndarray]:
        """One Predict; outputs by alias. REST answers a single output without its name:
        it comes back under the key "outputs"."""
        if self._channel is None:
            doc = self._http(":predict", encode(self.target, request))["outputs"]
            items: Iterable[tuple[str, Any]] = (
                doc.items() if isinstance(doc, dict) else [("outputs", doc)]
            )
            return {k: np.asarray(v) for k, v in items}
        stub = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        if request.model_spec.name != self.target.model:
            request = _renamed(request, self.target.model)
        try:
            response = stub.Predict(request, timeout=self._timeout)
        except grpc.RpcError as err:
            raise self._grpc_error(err) from None
        return {k: codecs.to_ndarray(v) for k, v in response.outputs.items()}
