"""ModelServerConfig: reading, validating and listing version directories, as TF-Serving does."""

from __future__ import annotations

import logging
import os
import unicodedata
from pathlib import Path

from google.protobuf import text_format
from tensorflow_serving.config.model_server_config_pb2 import ModelConfig, ModelServerConfig

from tfrec.base.errors import Code, InvalidArgument, ServingError

log = logging.getLogger(__name__)

_TENSORFLOW_MODEL_TYPE = 1  # ModelType.TENSORFLOW (deprecated field)


def single_model(name: str, base_path: str) -> ModelServerConfig:
    """The config `--model_name` + `--model_base_path` stand for."""
    config = ModelServerConfig()
    model = config.model_config_list.config.add()
    model.name = name
    model.base_path = base_path
    model.model_platform = "tensorflow"
    return config


def read_file(path: str) -> ModelServerConfig:
    """Parses a text ModelServerConfig; the message names the file and the parse error."""
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise InvalidArgument(f"Could not read model config file {path}: {err.strerror}") from err
    try:
        return text_format.Parse(text, ModelServerConfig())
    except text_format.ParseError as err:
        raise InvalidArgument(
            f"Error parsing text-format tensorflow.serving.ModelServerConfig: {err}"
        ) from err


def _is_uri(path: str) -> bool:
    return "://" in path


def validate(config: ModelServerConfig) -> list[ModelConfig]:
    """The model configs of a ModelConfigList, checked as ServerCore::ReloadConfig checks them."""
    if config.WhichOneof("config") != "model_config_list":
        raise InvalidArgument(
            "ServerModelConfig type not supported by HandleReloadConfigRequest. Only "
            "ModelConfigList is currently supported"
        )
    seen: set[str] = set()
    models = list(config.model_config_list.config)
    for model in models:
        check_model_name(model.name)
        if model.name in seen:
            raise InvalidArgument(
                f"Illegal to list model {model.name} multiple times in config list"
            )
        seen.add(model.name)
        if not (os.path.isabs(model.base_path) or _is_uri(model.base_path)):
            raise InvalidArgument(
                f"Expected model {model.name} to have an absolute path or URI; "
                f"got base_path()={model.base_path}"
            )
        platform = _platform(model)
        if platform != "tensorflow":
            raise InvalidArgument(f"Model {model.name} requests unsupported platform {platform}")
    return models


def check_model_name(name: str) -> None:
    """Model names become REST paths, cache directories and log lines: no path separators, no
    control characters, not `.` or `..` (TF-Serving's REST paths cannot address such names
    either: `/v1/models/<name>` matches `[^/:]+`)."""
    bad = [c for c in name if c in "/\\" or unicodedata.category(c) == "Cc"]
    if not name or bad or name in (".", ".."):
        why = "is empty" if not name else f"contains {bad[0]!r}" if bad else "is a path"
        raise InvalidArgument(
            f"Invalid model name {name!r}: it {why}; a model name may not be empty, '.', '..', "
            "or contain '/', '\\' or control characters"
        )


def _platform(model: ModelConfig) -> str:
    if model.model_type and model.model_platform:
        raise InvalidArgument(
            "Illegal setting both ModelServerConfig::model_type (deprecated) and "
            f"ModelServerConfig::model_platform, model name is {model.name}"
        )
    if model.model_type == _TENSORFLOW_MODEL_TYPE:
        return "tensorflow"
    if model.model_type:
        raise InvalidArgument(
            f"ModelServerConfig::model_type choice {model.model_type} not supported."
        )
    if not model.model_platform:
        raise InvalidArgument(
            "Illegal setting neither ModelServerConfig::model_type (deprecated) nor "
            f"ModelServerConfig::model_platform, model name is {model.name}"
        )
    return model.model_platform


def list_versions(name: str, base_path: str) -> dict[int, Path]:
    """Numeric children of base_path (`00000123` is 123); errors are logged, not raised."""
    root = Path(base_path)
    try:
        children = sorted(os.listdir(root))
    except OSError as err:
        log.error(
            "%s",
            ServingError(
                f"Could not find base path {base_path} for servable {name} with error "
                f"{err.strerror}",
                Code.INVALID_ARGUMENT,
            ),
        )
        return {}
    versions: dict[int, Path] = {}
    for child in children:
        if not child.lstrip("+-").isdigit() or not (root / child).is_dir():
            continue
        number = int(child)
        if not -(2**63) <= number < 2**63:
            continue
        if number in versions:
            log.warning(
                "Duplicate version directories %s and %s for servable %s",
                versions[number].name,
                child,
                name,
            )
        versions[number] = root / child
    if not versions:
        log.warning(
            "No versions of servable %s found under base path %s. Did you forget to name your "
            "leaf directory as a number (eg. '/1/')?",
            name,
            base_path,
        )
    return versions


def aspired(model: ModelConfig, available: dict[int, Path]) -> dict[int, Path]:
    """The versions the model's version policy wants served (default: latest 1)."""
    policy = model.model_version_policy
    kind = policy.WhichOneof("policy_choice")
    if kind == "all":
        return dict(available)
    if kind == "specific":
        wanted = set(policy.specific.versions)
        for missing in sorted(wanted - set(available)):
            log.warning("Version %d of model %s is not under its base path", missing, model.name)
        return {v: p for v, p in available.items() if v in wanted}
    count = max(policy.latest.num_versions, 1) if kind == "latest" else 1
    return {v: available[v] for v in sorted(available, reverse=True)[:count]}
