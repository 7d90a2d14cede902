"""One typed settings object, named after TF-Serving's command-line flags.

`server.flags` fills it from argv in `main()`; nothing here reads the environment or argv.
Each field's `help` is the one-line description printed by `--help`. Fields marked
`accepted` are parsed for compatibility with `tensorflow_model_server` and have no effect
(the server says so at start-up when they are set).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any


def _cpus() -> int:
    return os.cpu_count() or 1


def flag(default: Any, help: str, *, accepted: bool = False, factory: Any = None) -> Any:
    metadata = {"help": help, "accepted": accepted}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass
class Settings:
    """Every flag of `tensorflow_model_server` (TF-Serving 2.21 defaults), plus tfrec's own."""

    port: int = flag(8500, "gRPC port, bound as 0.0.0.0:<port>; 0 disables TCP gRPC")
    grpc_socket_path: str = flag("", "additionally serve gRPC on the UNIX socket unix:<path>")
    rest_api_port: int = flag(0, "REST port; 0 disables the REST API")
    rest_api_num_threads: int = flag(0, "REST worker threads", factory=lambda: 4 * _cpus())
    rest_api_timeout_in_ms: int = flag(30000, "TensorFlow run timeout for REST requests")
    rest_api_enable_cors_support: bool = flag(False, "add CORS headers, answer OPTIONS")
    enable_batching: bool = flag(False, "server-side request batching")
    allow_version_labels_for_unavailable_models: bool = flag(
        False, "allow new version labels to point to versions that are not loaded yet"
    )
    batching_parameters_file: str = flag("", "text BatchingParameters; needs enable_batching")
    enable_per_model_batching_parameters: bool = flag(
        False, "read batching_params.pbtxt from each SavedModel", accepted=True
    )
    model_config_file: str = flag("", "text ModelServerConfig; overrides model_name/base_path")
    model_config_file_poll_wait_seconds: int = flag(
        0, "re-read model_config_file every N seconds; 0 reads it once"
    )
    model_name: str = flag("default", "name of the single model (with model_base_path)")
    model_base_path: str = flag("", "absolute base path of the single model's version dirs")
    num_load_threads: int = flag(0, "threads loading model versions; 0 loads serially")
    num_unload_threads: int = flag(0, "threads unloading model versions", accepted=True)
    max_num_load_retries: int = flag(5, "retries after a failed model version load")
    load_retry_interval_micros: int = flag(60_000_000, "delay between load retries (us)")
    file_system_poll_wait_seconds: int = flag(
        1, "poll version dirs every N seconds; 0 polls once; negative never polls"
    )
    flush_filesystem_caches: bool = flag(True, "flush file caches after loads", accepted=True)
    tensorflow_session_parallelism: int = flag(0, "intra- and inter-op threads; 0 means auto")
    tensorflow_session_config_file: str = flag("", "text ConfigProto for every session")
    tensorflow_intra_op_parallelism: int = flag(0, "intra-op threads; 0 means auto")
    tensorflow_inter_op_parallelism: int = flag(0, "inter-op threads; 0 means auto")
    use_alts_credentials: bool = flag(False, "use ALTS credentials for gRPC", accepted=True)
    ssl_config_file: str = flag("", "text SSLConfig for gRPC")
    platform_config_file: str = flag("", "text PlatformConfigMap", accepted=True)
    per_process_gpu_memory_fraction: float = flag(0.0, "GPU memory fraction", accepted=True)
    saved_model_tags: str = flag("serve", "comma-separated MetaGraph tags to load")
    grpc_channel_arguments: str = flag("", "extra gRPC server arguments: k=v,k2=v2")
    grpc_max_threads: int = flag(0, "gRPC server worker threads", factory=lambda: 4 * _cpus())
    enable_model_warmup: bool = flag(True, "replay assets.extra/tf_serving_warmup_requests")
    num_request_iterations_for_warmup: int = flag(0, "replays per warmup record; 0 means 1")
    version: bool = flag(False, "print the version and exit")
    monitoring_config_file: str = flag("", "text MonitoringConfig (Prometheus)")
    remove_unused_fields_from_bundle_metagraph: bool = flag(
        True, "drop unused MetaGraph fields", accepted=True
    )
    prefer_tflite_model: bool = flag(False, "serve model.tflite when present", accepted=True)
    num_tflite_pools: int = flag(0, "TFLite pools", accepted=True, factory=_cpus)
    num_tflite_interpreters_per_pool: int = flag(1, "TFLite interpreters", accepted=True)
    enable_signature_method_name_check: bool = flag(False, "strict SignatureDef method_name checks")
    xla_cpu_compilation_enabled: bool = flag(False, "XLA on CPU", accepted=True)
    xla_gpu_compilation_enabled: bool = flag(False, "XLA on GPU", accepted=True)
    enable_profiler: bool = flag(True, "register the profiler service", accepted=True)
    thread_pool_factory_config_file: str = flag("", "thread pool factory", accepted=True)
    mixed_precision: str = flag("", "mixed precision mode", accepted=True)
    skip_initialize_tpu: bool = flag(False, "skip TPU initialisation", accepted=True)
    enable_grpc_healthcheck_service: bool = flag(False, "serve grpc.health.v1.Health")
    enable_serialization_as_tensor_content: bool = flag(
        False, "Predict outputs as tensor_content instead of typed fields"
    )

    # ------------------------------------------------------------------ tfrec's own flags
    structured_dedup: str = flag(
        "auto",
        "auto: run flat requests whose user inputs repeat one row on the structured twin; off",
    )
    session_run_mode: str = flag(
        "auto", "auto: per signature, the faster of TF's inter-op pool and inline; pool; inline"
    )
    session_num_per_group: int = flag(
        1, "lanes per model version: one session, K thread pools, one copy of the weights"
    )
    use_per_session_threads: bool = flag(
        False, "each model version owns its pools (lane pools are otherwise shared by models)"
    )
    session_group_cpusets: str = flag(
        "", "pin each lane's threads to a CPU set, one per lane: '0-3;4-7'"
    )
    use_multi_stream: bool = flag(
        False, "GPU: one virtual GPU (own stream) per lane; tables stay on the host"
    )
    select_session_policy: str = flag(
        "reserve", "lane choice: reserve (keep a lane free of heavy runs) or least_work"
    )
    session_group_queue_capacity: int = flag(
        16, "runs one lane may hold in flight; beyond it on every lane: RESOURCE_EXHAUSTED"
    )

    # Limits: a request past one is refused (RESOURCE_EXHAUSTED / HTTP 429 for load, the limit
    # named), before anything is allocated for it.
    max_request_bytes: int = flag(
        1 << 30, "decoded bytes per request, all inputs (strings at their object cost); 0: none"
    )
    max_request_rows: int = flag(1_000_000, "rows (dim 0) per request input; 0: no limit")
    max_structured_items: int = flag(
        100_000, "items (N) per structured request or ELWC example list; 0: no limit"
    )
    rest_api_max_body_bytes: int = flag(
        100 << 20, "REST request body bytes (after gzip inflation); 0: no limit"
    )
    max_queued_requests: int = flag(
        0,
        "calls waiting for a gRPC or REST worker before new ones get RESOURCE_EXHAUSTED / "
        "429; 0: 4 x the worker threads; negative: unbounded",
    )

    scheduler: str = flag(
        "auto",
        "operator schedules per signature: auto (kept where measured faster), on, off",
    )
    scheduler_cache_dir: str = flag(
        "", "write each version's cost models and schedule decisions under this directory"
    )

    def session_threads(self) -> tuple[int, int]:
        """(intra_op, inter_op) threads as TF-Serving derives them; 0 means TF's default."""
        if self.tensorflow_session_parallelism > 0:
            return self.tensorflow_session_parallelism, self.tensorflow_session_parallelism
        return self.tensorflow_intra_op_parallelism, self.tensorflow_inter_op_parallelism

    def queue_bound(self, workers: int) -> int:
        """Calls that may wait for one of `workers` busy workers (--max_queued_requests);
        -1: no bound."""
        if self.max_queued_requests < 0:
            return -1
        return self.max_queued_requests or 4 * max(1, workers)

    def session_group(self) -> bool:
        """Whether model versions load as SessionGroups (lanes) rather than plain sessions."""
        return (
            self.session_num_per_group > 1
            or bool(self.session_group_cpusets)
            or self.use_multi_stream
        )

    def own_intra_pools(self) -> bool:
        """Whether TF must give every device its own intra-op pool (set before TF starts)."""
        return self.session_group() or self.use_per_session_threads

    @property
    def tags(self) -> list[str]:
        return [t.strip() for t in self.saved_model_tags.split(",") if t.strip()]


def fields() -> list[dataclasses.Field]:
    return list(dataclasses.fields(Settings))
