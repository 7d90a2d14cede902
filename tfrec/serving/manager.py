"""The model manager: which versions are aspired, loaded, served, and what GetModelStatus sees.

TF-Serving's lifecycle at Python scale (core/loader_harness, aspired_versions_manager,
availability_preserving_policy, server_core):
- one poller lists each model's base path and applies its version policy (the aspired set);
- new aspired versions load highest first, on a loader pool, with retries;
- an unaspired version unloads only once an aspired version is AVAILABLE (or none is
  aspired, or it is not the only unaspired one serving): load-before-unload, no downtime;
- requests hold a *lease* on the version they run on; unloading waits for leases to end;
- every version ever seen keeps its last state (END, with the error of a failed load).

Thread-safety: all state lives under one condition variable `_cond`. Slow work (listing
directories, loading, closing sessions) runs outside it.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tensorflow_serving.apis import model_pb2

from tfrec.base.errors import (
    Code,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ServingError,
)
from tfrec.serving import config as config_lib
from tfrec.serving.servable import Servable
from tfrec.serving.versions import (
    State,
    VersionStatus,
    _Model,
    _Version,
    unloadable,
    wait_available,
)

log = logging.getLogger(__name__)

# How long a reload waits for another reload (still waiting for its models) before UNAVAILABLE.
RELOAD_LOCK_WAIT_S = 5.0


# Loads a servable for (name, version, path); raises ServingError on failure.
Loader = Callable[[str, int, Path], Servable]


class Manager:
    """Owns every model version. Built once in main(); `close()` unloads everything."""

    def __init__(
        self,
        loader: Loader,
        *,
        max_load_retries: int = 5,
        load_retry_interval_s: float = 60.0,
        load_threads: int = 1,
        allow_labels_for_unavailable: bool = False,
    ) -> None:
        self._loader = loader
        self._retries = max(0, max_load_retries)
        self._retry_interval = max(0.0, load_retry_interval_s)
        self._allow_unavailable_labels = allow_labels_for_unavailable
        self._models: dict[str, _Model] = {}
        self._cond = threading.Condition()
        self._config_lock = threading.Lock()
        self._stop = threading.Event()
        self._labels_initialised = False
        self._load_pool = concurrent.futures.ThreadPoolExecutor(
            max(1, load_threads), thread_name_prefix="tfrec-load"
        )
        self._unload_pool = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="tfrec-unload"
        )
        self._poller: threading.Thread | None = None

    # ------------------------------------------------------------------ requests

    @contextmanager
    def lease(self, spec: model_pb2.ModelSpec) -> Iterator[Servable]:
        """Holds the servable `spec` names for the duration of a request."""
        harness = self._acquire(spec)
        try:
            assert harness.servable is not None
            yield harness.servable
        finally:
            with self._cond:
                harness.leases -= 1
                if harness.leases == 0 and harness.state == State.UNLOADING:
                    self._cond.notify_all()

    def _acquire(self, spec: model_pb2.ModelSpec) -> _Version:
        name = spec.name
        if not name:
            raise InvalidArgument("ModelSpec has no name specified.")
        choice = spec.WhichOneof("version_choice")
        with self._cond:
            model = self._models.get(name)
            if choice == "version_label":
                version = self._label_version(name, spec.version_label)
            elif choice == "version":
                version = spec.version.value
            else:
                harness = model.latest() if model else None
                if harness is None:
                    raise NotFound(f"Servable not found for request: Latest({name})")
                harness.leases += 1
                return harness
            harness = model.versions.get(version) if model else None
            if harness is None or harness.state != State.AVAILABLE:
                raise NotFound(f"Servable not found for request: Specific({name}, {version})")
            harness.leases += 1
            return harness

    def _label_version(self, name: str, label: str) -> int:
        if not self._labels_initialised:
            raise ServingError(f"Model labels does not init yet.{label}", Code.UNAVAILABLE)
        model = self._models.get(name)
        if model is None or label not in model.labels:
            raise InvalidArgument(f"Unrecognized servable version label: {label}")
        return model.labels[label]

    # ------------------------------------------------------------------ status

    def status(self, name: str, version: int | None = None) -> list[VersionStatus]:
        """Every version ever seen for `name`, highest first (GetModelStatus)."""
        with self._cond:
            model = self._models.get(name)
            versions = model.versions if model else {}
            if version is not None:
                harness = versions.get(version)
                if harness is None:
                    raise NotFound(f"Could not find version {version} of model {name}")
                return [VersionStatus(harness.version, harness.state, harness.error)]
            if not versions:
                raise NotFound(f"Could not find any versions of model {name}")
            return [
                VersionStatus(h.version, h.state, h.error)
                for h in sorted(versions.values(), key=lambda h: -h.version)
            ]

    def servables(self) -> list[Servable]:
        """The AVAILABLE servables (for metrics and logs)."""
        with self._cond:
            return [
                h.servable
                for m in self._models.values()
                for h in m.versions.values()
                if h.state == State.AVAILABLE and h.servable is not None
            ]

    # ------------------------------------------------------------------ configuration

    def reload_config(
        self,
        config: config_lib.ModelServerConfig,
        *,
        initial: bool = False,
        timeout_s: float | None = None,
        abort: Callable[[], bool] | None = None,
    ) -> None:
        """Replaces the model list (ServerCore::ReloadConfig) and waits for new models.

        Validation happens before anything changes: a bad config leaves the server as it was.
        The initial config waits for its models without limit, as TF-Serving's start-up does;
        a reload waits at most `timeout_s` (the caller's deadline) and stops waiting when
        `abort()` says the caller has gone or the server stops. Reloads run one at a time: one
        that finds another still waiting gives up after `RELOAD_LOCK_WAIT_S` with UNAVAILABLE,
        so reloads of models that never load cannot take every worker thread.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        if not self._lock_config(deadline, abort, wait_s=None if initial else RELOAD_LOCK_WAIT_S):
            raise ServingError(
                "Another model config reload is still waiting for its models; retry later",
                Code.UNAVAILABLE,
            )
        try:
            if config.WhichOneof("config") is None:
                log.info("Taking no action for empty config.")
                return
            configs = config_lib.validate(config)
            labels = self._check_labels(configs)
            added = self._install(configs, labels)
            self.poll()
            if added:
                noun = "servable(s)" if initial else "model(s)"
                stopped = (
                    self._stop.is_set if abort is None else (lambda: self._stop.is_set() or abort())
                )
                wait_available(self._cond, self._models, added, noun, deadline, stopped)
        finally:
            self._config_lock.release()

    def _lock_config(
        self, deadline: float | None, abort: Callable[[], bool] | None, wait_s: float | None
    ) -> bool:
        """Takes the config lock; False if the wait ran out (deadline, `wait_s`, abort, stop)."""
        give_up = time.monotonic() + wait_s if wait_s is not None else None
        if deadline is not None:
            give_up = deadline if give_up is None else min(give_up, deadline)
        while not self._config_lock.acquire(timeout=0.2):
            if self._stop.is_set() or (abort is not None and abort()):
                return False
            if give_up is not None and time.monotonic() >= give_up:
                return False
        return True

    def _check_labels(self, configs: list[config_lib.ModelConfig]) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        with self._cond:
            for mc in configs:
                model = self._models.get(mc.name)
                for label, version in sorted(mc.version_labels.items()):
                    old = model.labels.get(label) if model else None
                    allowed = self._allow_unavailable_labels and old in (None, version)
                    harness = model.versions.get(version) if model else None
                    available = harness is not None and harness.state == State.AVAILABLE
                    if not (available or allowed):
                        raise FailedPrecondition(
                            f"Request to assign label to version {version} of model {mc.name}, "
                            "which is not currently available for inference"
                        )
                    out.setdefault(mc.name, {})[label] = version
        return out

    def _install(
        self, configs: list[config_lib.ModelConfig], labels: dict[str, dict[str, int]]
    ) -> list[str]:
        wanted = {mc.name: mc for mc in configs}
        added = []
        with self._cond:
            for name, mc in wanted.items():
                model = self._models.get(name)
                if model is None or model.config is None:
                    added.append(name)
                    if model is None:
                        model = self._models[name] = _Model(name, mc)
                model.config = mc
                model.labels = labels.get(name, {})
            removed = [m for n, m in self._models.items() if n not in wanted and m.config]
            for model in removed:
                log.info("Removing model %s: it is no longer in the config", model.name)
                model.config = None
                model.labels = {}
            self._labels_initialised = True
        for model in removed:
            self._reconcile(model, {})
        return added

    def model_names(self) -> list[str]:
        with self._cond:
            return [n for n, m in self._models.items() if m.config is not None]

    # ------------------------------------------------------------------ polling

    def start_polling(self, interval_s: float) -> None:
        """Polls every interval_s seconds (TF-Serving's file_system_poll_wait_seconds > 0)."""
        if interval_s <= 0 or self._poller is not None:
            return

        def loop() -> None:
            while not self._stop.wait(interval_s):
                try:
                    self.poll()
                except Exception:
                    log.exception("Polling the model base paths failed")

        self._poller = threading.Thread(target=loop, name="tfrec-poll", daemon=True)
        self._poller.start()

    def poll(self) -> None:
        """Lists every model's base path once and acts on what changed."""
        with self._cond:
            models = [(m, m.config) for m in self._models.values() if m.config is not None]
        for model, mc in models:
            assert mc is not None
            found = config_lib.list_versions(mc.name, mc.base_path)
            self._reconcile(model, config_lib.aspired(mc, found))

    def _reconcile(self, model: _Model, aspired: dict[int, Path]) -> None:
        """Starts the loads and unloads that the aspired set and the policy call for."""
        to_load: list[_Version] = []
        with self._cond:
            was_aspired = {n for n, h in model.versions.items() if h.aspired}
            for number, harness in model.versions.items():
                # A version still unloading is re-loaded on a later poll, once it is END.
                harness.aspired = number in aspired and harness.state != State.UNLOADING
            for number in sorted(aspired, reverse=True):
                existing = model.versions.get(number)
                # A failed load is not retried while it stays aspired (TF-Serving neither).
                if existing is None or (existing.state == State.END and number not in was_aspired):
                    harness = model.versions[number] = _Version(number, aspired[number])
                    to_load.append(harness)
            unload = unloadable(model)
            for harness in unload:
                harness.state = State.UNLOADING
            self._cond.notify_all()
        for harness in to_load:
            self._load_pool.submit(self._load, model, harness)
        for harness in unload:
            self._unload_pool.submit(self._unload, harness)

    def _load(self, model: _Model, harness: _Version) -> None:
        """Loads one version with retries; publishes it or records the last error."""
        error: ServingError | None = None
        for attempt in range(self._retries + 1):
            if attempt and self._stop.wait(self._retry_interval):
                break
            with self._cond:
                if not harness.aspired or self._stop.is_set():
                    break
                harness.state = State.LOADING
                self._cond.notify_all()
            try:
                servable = self._loader(model.name, harness.version, harness.path)
            except ServingError as err:
                error = err
            except Exception as err:
                log.exception("Loading %s version %d crashed", model.name, harness.version)
                error = ServingError(f"{type(err).__name__}: {err}")
            else:
                self._publish(model, harness, servable)
                return
            log.error(
                "Loading servable {name: %s version: %d} failed (attempt %d of %d): %s",
                model.name,
                harness.version,
                attempt + 1,
                self._retries + 1,
                error,
            )
        with self._cond:
            harness.state, harness.error = State.END, error
            self._cond.notify_all()

    def _publish(self, model: _Model, harness: _Version, servable: Servable) -> None:
        with self._cond:
            harness.servable, harness.state, harness.error = servable, State.AVAILABLE, None
            unload = unloadable(model)
            for old in unload:
                old.state = State.UNLOADING
            self._cond.notify_all()
        log.info(
            "Successfully loaded servable version {name: %s version: %d}",
            model.name,
            harness.version,
        )
        for old in unload:
            self._unload_pool.submit(self._unload, old)

    def _unload(self, harness: _Version) -> None:
        """Waits for the version's leases to end, then closes its session."""
        with self._cond:
            while harness.leases:
                self._cond.wait()
            servable, harness.servable = harness.servable, None
            version = harness.version
        if servable is not None:
            log.info("Unloading servable version {name: %s version: %d}", servable.name, version)
            servable.close()
        with self._cond:
            harness.state = State.END
            self._cond.notify_all()

    def stop_waiting(self) -> None:
        """The server is stopping: polling, load retries and reloads waiting for models end
        now (CANCELLED), before the ports' grace period runs."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()

    def close(self) -> None:
        """Stops polling and loading, waits for requests in flight, unloads every version."""
        self.stop_waiting()
        self._load_pool.shutdown(wait=True, cancel_futures=True)
        with self._cond:
            serving = [
                h
                for m in self._models.values()
                for h in m.versions.values()
                if h.state == State.AVAILABLE
            ]
            for harness in serving:
                harness.state = State.UNLOADING
        for harness in serving:
            self._unload(harness)
        self._unload_pool.shutdown(wait=True)
