"""The soak's faults and probes: hot swaps, config reloads, abandoned bursts, RSS samples.

All fault operations take `lock`, so a burst's CPU-idle measurement never overlaps a version
load. The server's CPU and memory are read from `/proc/<pid>/stat` (utime + stime, in clock
ticks: 10 ms each at the usual 100 Hz) and `/proc/<pid>/status` (VmRSS, Threads).
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

import grpc
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
)

from benchmarks.soak_requests import PREDICT, Kind
from benchmarks.soak_setup import DEMO, EXTRA, HPT, Models
from benchmarks.soak_traffic import GRPC_OPTIONS, HttpClient, Stats, Traffic, send

TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")
State = get_model_status_pb2.ModelVersionStatus.State


def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process (every thread), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * TICK_S


def memory(pid: int) -> tuple[float, int]:
    """(RSS in MB, threads) of the process."""
    rss_kb, threads = 0, 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss_kb = int(line.split()[1])
            elif line.startswith("Threads:"):
                threads = int(line.split()[1])
    return rss_kb / 1024, threads


def time_to_idle(
    pid: int, since: float, timeout_s: float = 60.0, window_s: float = 0.05, busy: float = 0.10
) -> float | None:
    """Seconds from `since` (a monotonic time) to the start of the first `window_s` window in
    which the process used less than `busy` of one core, sampling every 10 ms; None if it
    never idles within `timeout_s`."""
    samples: list[tuple[float, float]] = []
    span = round(window_s / 0.01)
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        samples.append((time.monotonic(), cpu_seconds(pid)))
        if len(samples) > span:
            (t0, c0), (t1, c1) = samples[-span - 1], samples[-1]
            if t1 - t0 >= window_s * 0.9 and (c1 - c0) / (t1 - t0) < busy:
                return max(0.0, t0 - since)
        time.sleep(0.01)
    return None


def code_name(number: int) -> str:
    """The canonical (gRPC) name of a status code number."""
    return next((c.name for c in grpc.StatusCode if c.value[0] == number), str(number))


class Periodic(threading.Thread):
    """Calls `action` every `every_s` seconds (first after `first_s`) until stopped."""

    def __init__(
        self,
        name: str,
        action: Callable[[], None],
        every_s: float,
        first_s: float,
        stop: threading.Event,
    ) -> None:
        super().__init__(name=name, daemon=True)
        self.action, self.every_s, self.first_s, self._stop_event = action, every_s, first_s, stop
        self.errors: list[str] = []

    def run(self) -> None:
        delay = self.first_s
        while not self._stop_event.wait(delay):
            try:
                self.action()
            except Exception as err:  # a fault step that fails is reported, not fatal
                self.errors.append(f"{self.name}: {err!r}")
            delay = self.every_s


class Faults:
    """Hot swaps of hpt's versions, config reloads and abandoned bursts against one server."""

    def __init__(
        self,
        models: Models,
        address: str,
        pid: int,
        stats: Stats,
        traffic: Traffic,
        probe: Kind,
        heavy: bytes,
    ) -> None:
        self.models, self.pid, self.stats, self.traffic = models, pid, stats, traffic
        self.probe, self.heavy = probe, heavy
        self.channel = grpc.insecure_channel(address, options=GRPC_OPTIONS)
        self.heavy_channel = grpc.insecure_channel(address, options=GRPC_OPTIONS)
        self.models_stub = model_service_pb2_grpc.ModelServiceStub(self.channel)
        self.lock = threading.Lock()
        self.swaps: list[dict[str, Any]] = []
        self.reloads: list[dict[str, Any]] = []
        self.bursts: list[dict[str, Any]] = []
        self._next_version = 2
        self._extra = False

    def close(self) -> None:
        self.channel.close()
        self.heavy_channel.close()

    # ------------------------------------------------------------------ hot swaps

    def _status(self, model: str) -> dict[int, int]:
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = model
        reply = self.models_stub.GetModelStatus(request, timeout=10)
        return {s.version: s.state for s in reply.model_version_status}

    def _settle(self, model: str, version: int, timeout_s: float = 60.0) -> float | None:
        """Seconds until `version` is the only AVAILABLE (nor loading, unloading) one."""
        start = time.monotonic()
        while time.monotonic() - start < timeout_s:
            try:
                states = self._status(model)
            except grpc.RpcError:
                states = {}
            live = {v for v, s in states.items() if s not in (State.END, State.UNKNOWN)}
            if live == {version} and states[version] == State.AVAILABLE:
                return time.monotonic() - start
            time.sleep(0.1)
        return None

    def swap(self) -> None:
        """Every third swap rolls back (removes the served newest version: the server goes
        back to the one before it); the others copy a new version in and remove the oldest
        beyond two on disk. Requests started from the change until 1 s after the server
        settles count as during the swap."""
        with self.lock:
            self.stats.swap_active = True
            start = time.monotonic()
            on_disk = self.models.hpt_versions()
            rollback = len(self.swaps) % 3 == 2 and len(on_disk) >= 2
            if rollback:
                self.models.remove_hpt_version(on_disk[-1])
                want, action = on_disk[-2], f"rollback {on_disk[-1]} -> {on_disk[-2]}"
            else:
                want = self._next_version
                self.models.add_hpt_version(want)
                self._next_version += 1
                removed = on_disk[:-1]  # keep the served one and the new one
                for version in removed:
                    self.models.remove_hpt_version(version)
                action = f"add {want}, remove {removed}"
            settled = self._settle(HPT, want)
            time.sleep(1.0)
            self.stats.swap_active = False
            self.swaps.append(
                {
                    "t_s": round(start - self.stats.start, 1),
                    "action": action,
                    "settle_s": None if settled is None else round(settled, 2),
                }
            )

    # ------------------------------------------------------------------ config reloads

    def reload(self) -> None:
        """Alternates: the same config, then a changed one (hp3 added or dropped)."""
        with self.lock:
            change = len(self.reloads) % 2 == 1
            if change:
                self._extra = not self._extra
            request = model_management_pb2.ReloadConfigRequest()
            request.config.CopyFrom(self.models.config(extra=self._extra))
            start = time.monotonic()
            entry: dict[str, Any] = {
                "t_s": round(start - self.stats.start, 1),
                "config": "changed" if change else "same",
                "models": [c.name for c in request.config.model_config_list.config],
            }
            try:
                reply = self.models_stub.HandleReloadConfigRequest(request, timeout=120)
                entry["code"] = code_name(reply.status.error_code)
                entry["message"] = reply.status.error_message
            except grpc.RpcError as err:
                entry["code"], entry["message"] = err.code().name, str(err.details())
            entry["seconds"] = round(time.monotonic() - start, 2)
            if entry["code"] == "OK" and self._extra:
                entry["hp3_available"] = self._settle(EXTRA, 1, timeout_s=30) is not None
            self.reloads.append(entry)

    # ------------------------------------------------------------------ abandoned bursts

    def _probe_ms(self, client: HttpClient) -> float:
        start = time.monotonic()
        code, detail, _ = send(self.probe, self.channel, client)
        if code != "OK":
            raise RuntimeError(f"probe request failed: {code} {detail}")
        return (time.monotonic() - start) * 1e3

    def burst(self, count: int = 100, timeout_s: float = 0.03) -> None:
        """Pauses traffic; baseline latency of the probe (median of 20); `count` heavy requests
        at once with a `timeout_s` deadline; then the time from the last one's end until the
        server's CPU idles, the server CPU the burst cost (start to idle, one probe included),
        the probe's latency right after, and its median of 10 once idle."""
        with self.lock:
            self.traffic.pause()
            client = HttpClient("127.0.0.1:0")  # unused: the probe is gRPC
            entry: dict[str, Any] = {
                "t_s": round(time.monotonic() - self.stats.start, 1),
                "requests": count,
                "timeout_ms": timeout_s * 1e3,
            }
            try:
                entry["idle_before_s"] = time_to_idle(self.pid, time.monotonic(), 10.0)
                probes = [self._probe_ms(client) for _ in range(21)]
                # The first probe after the pause: the same cold start the first probe after
                # the burst meets (compare `after_idle_first_ms` with it).
                entry["baseline_first_ms"] = round(probes[0], 3)
                entry["baseline_ms"] = round(statistics.median(probes[1:]), 3)
                heavy = Kind(
                    "heavy_abandoned",
                    "grpc",
                    PREDICT,
                    self.heavy,
                    DEMO,
                    frozenset({"DEADLINE_EXCEEDED", "OK"}),
                )
                call = self.heavy_channel.unary_unary(PREDICT)  # the probe's channel stays clear
                sent, cpu = time.monotonic(), cpu_seconds(self.pid)
                futures = [call.future(self.heavy, timeout=timeout_s) for _ in range(count)]
                errors = [future.exception() for future in futures]  # waits for each
                done = time.monotonic()
                idle: list[float | None] = []
                sampler = threading.Thread(target=lambda: idle.append(time_to_idle(self.pid, done)))
                sampler.start()
                entry["after_ms"] = round(self._probe_ms(client), 3)
                sampler.join()
                entry["server_cpu_s"] = round(cpu_seconds(self.pid) - cpu, 3)
                codes: dict[str, int] = {}
                for err in errors:
                    code = "OK" if err is None else err.code().name  # type: ignore[attr-defined]
                    codes[code] = codes.get(code, 0) + 1
                    self.stats.record(heavy, code, sent, 0.0, "" if err is None else str(err))
                entry["codes"] = codes
                entry["burst_s"] = round(done - sent, 3)
                entry["idle_after_s"] = None if idle[0] is None else round(idle[0], 3)
                after = [self._probe_ms(client) for _ in range(10)]
                entry["after_idle_first_ms"] = round(after[0], 3)  # the first once idle
                entry["after_idle_ms"] = round(statistics.median(after), 3)
                entry["after_idle_max_ms"] = round(max(after), 3)
                entry["after_over_baseline"] = round(entry["after_ms"] / entry["baseline_ms"], 2)
            finally:
                self.traffic.resume()
                self.bursts.append(entry)
