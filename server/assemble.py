"""The server's composition, read from its flags: validation, and how versions are loaded.

`validate` checks the flags as TF-Serving's server.cc does (and tfrec's own); `load_options`
resolves batching, lanes, run mode and the operator scheduler into the Loader's options. It is
imported after `main` has set the environment TensorFlow reads when it starts.
"""

from __future__ import annotations

import logging
import os

import tensorflow as tf

from server import flags
from server.flags import StartupError
from tfrec.base import affinity
from tfrec.base.errors import ServingError
from tfrec.base.metrics import Metrics
from tfrec.runtime.batching import SERVER_THREAD_POOL_NAME, BatchingOptions, ServerBatching
from tfrec.runtime.lanes import ServerLanes
from tfrec.runtime.runner import INLINE, POOLED
from tfrec.runtime.session_group import OVERRIDE_ENV, GroupOptions
from tfrec.schedule.scheduled import SchedulerOptions, ServerScheduling
from tfrec.serving.loader import LoadOptions
from tfrec.serving.servable import session_config

log = logging.getLogger("tfrec")

# Per-request limits: `tfrec.serving.request.Limits.of(settings)` for Handlers; the REST body
# limit is read by `server.rest`.
_LIMITS = (
    "max_request_bytes",
    "max_request_rows",
    "max_structured_items",
    "rest_api_max_body_bytes",
)


def load_options(settings: flags.Settings, metrics: Metrics) -> LoadOptions:
    """Every version's LoadOptions; StartupError for a bad batching parameters file."""
    s = settings
    intra, inter = s.session_threads()
    config = session_config(intra, inter, s.tensorflow_session_config_file)
    lanes = _lanes(s, metrics) if s.session_group() else None
    if s.use_per_session_threads and lanes is None:
        config.use_per_session_threads = True
    return LoadOptions(
        tags=s.tags,
        session_config=config,
        batching=_batching(s, metrics) if s.enable_batching else None,
        lanes=lanes,
        run_mode={"auto": None, "pool": POOLED, "inline": INLINE}[s.session_run_mode],
        scheduling=_scheduling(s, metrics) if s.scheduler != "off" else None,
        dedup=s.structured_dedup != "off",
        warmup=s.enable_model_warmup,
        warmup_iterations=s.num_request_iterations_for_warmup,
    )


def validate(settings: flags.Settings) -> None:
    def invalid(message: str) -> StartupError:
        return StartupError(f"INVALID_ARGUMENT: {message}")

    if not settings.port and not settings.grpc_socket_path:
        raise invalid(
            "At least one of server_options.grpc_port or server_options.grpc_socket_path must "
            "be set."
        )
    if settings.use_alts_credentials and settings.ssl_config_file:
        raise invalid("Either use_alts_credentials must be false or ssl_config_file must be empty.")
    if not settings.model_base_path and not settings.model_config_file:
        raise invalid(
            "Both server_options.model_base_path and server_options.model_config_file are empty!"
        )
    if settings.batching_parameters_file and not settings.enable_batching:
        raise invalid(
            "server_options.batching_parameters_file is set without setting "
            "server_options.enable_batching to true."
        )
    if settings.structured_dedup not in ("auto", "off"):
        raise invalid(f"--structured_dedup must be auto or off, got {settings.structured_dedup}")
    if settings.scheduler not in ("auto", "on", "off"):
        raise invalid(f"--scheduler must be auto, on or off, got {settings.scheduler}")
    _validate_lanes(settings)
    for limit in _LIMITS:
        if getattr(settings, limit) < 0:
            raise invalid(f"--{limit} must be >= 0 (0: no limit), got {getattr(settings, limit)}")
    if (
        settings.tensorflow_session_parallelism > 0
        and settings.tensorflow_intra_op_parallelism > 0
        and settings.tensorflow_inter_op_parallelism > 0
    ):
        raise invalid(
            "Either configure server_options.tensorflow_session_parallelism or "
            "(server_options.tensorflow_intra_op_parallelism, "
            "server_options.tensorflow_inter_op_parallelism) separately. You cannot configure all."
        )


def _validate_lanes(settings: flags.Settings) -> None:
    if settings.session_run_mode not in ("auto", "pool", "inline"):
        raise StartupError(
            "INVALID_ARGUMENT: --session_run_mode must be auto, pool or inline, got "
            f"{settings.session_run_mode}"
        )
    k = settings.session_num_per_group
    if k < 1:
        raise StartupError(f"INVALID_ARGUMENT: --session_num_per_group must be >= 1, got {k}")
    if settings.select_session_policy not in ("reserve", "least_work"):
        raise StartupError(
            "INVALID_ARGUMENT: --select_session_policy must be reserve or least_work, got "
            f"{settings.select_session_policy}"
        )
    if settings.session_group_queue_capacity < 1:
        raise StartupError("INVALID_ARGUMENT: --session_group_queue_capacity must be >= 1")
    if settings.session_group_cpusets:
        if not affinity.supported():
            raise StartupError("UNIMPLEMENTED: --session_group_cpusets needs Linux")
        try:
            affinity.parse_cpusets(settings.session_group_cpusets, k)
        except affinity.CpusetError as err:
            raise StartupError(f"INVALID_ARGUMENT: --session_group_cpusets: {err}") from err


def _batching(settings: flags.Settings, metrics: Metrics) -> ServerBatching:
    """--enable_batching: the parameters file (or server.cc's defaults) and batch threads."""

    path = settings.batching_parameters_file
    try:
        if path:
            options = BatchingOptions.read(path)
        else:
            options = BatchingOptions(thread_pool_name=SERVER_THREAD_POOL_NAME)
    except ServingError as err:
        raise StartupError(f"{err.code.name}: {err.message}") from err
    log.info("Batching requests with %s", options)
    return ServerBatching(options, metrics)


def _scheduling(settings: flags.Settings, metrics: Metrics) -> ServerScheduling:
    """--scheduler auto/on: how every model version's signatures get schedules."""

    s = settings
    options = SchedulerOptions(mode=s.scheduler, cache_dir=s.scheduler_cache_dir)
    scheduling = ServerScheduling(options, metrics)
    log.info("Operator scheduler: %s", scheduling.describe())
    return scheduling


def _lanes(settings: flags.Settings, metrics: Metrics) -> ServerLanes:
    """--session_num_per_group and friends: how every model version's lanes are built."""

    s = settings
    gpu = s.use_multi_stream and bool(tf.config.list_physical_devices("GPU"))
    if s.use_multi_stream and not gpu:
        log.warning(
            "--use_multi_stream: no GPU is visible; lanes run on logical CPU devices "
            "through the same code (replicas, dense variables copied per lane)"
        )
    if os.environ.get(OVERRIDE_ENV) != "1":
        log.warning("%s is not 1: lanes may share TensorFlow's intra-op pool", OVERRIDE_ENV)
    intra, inter = s.session_threads()
    options = GroupOptions.resolve(
        s.session_num_per_group,
        intra,
        inter,
        per_session_threads=s.use_per_session_threads,
        cpusets=s.session_group_cpusets,
        multi_stream=s.use_multi_stream,
        gpu=gpu,
    )
    lanes = ServerLanes(
        options,
        capacity=s.session_group_queue_capacity,
        policy=s.select_session_policy,
        metrics=metrics,
    )
    log.info("SessionGroup: %s", lanes.describe())
    return lanes
