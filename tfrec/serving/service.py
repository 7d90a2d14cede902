"""The protocol-free serving core: every RPC of PredictionService and ModelService.

Transports decode their wire format into TF-Serving's own messages (ModelSpec, Input,
ModelServerConfig) or plain arrays, call one method here, and encode what it returns.
Checks run in TF-Serving's order with its messages (reference/tfserving.md §1.3, §2); every
failure is a ServingError. Nothing here knows gRPC or HTTP.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    input_pb2,
    regression_pb2,
)
from tensorflow_serving.apis.model_pb2 import ModelSpec

from tfrec.base import codecs
from tfrec.base.errors import FailedPrecondition, Internal, InvalidArgument, Unimplemented
from tfrec.base.metrics import Metrics
from tfrec.serving import inference, structured
from tfrec.serving.config import ModelServerConfig
from tfrec.serving.manager import Manager
from tfrec.serving.servable import Servable, Signature

DEFAULT_SIGNATURE = "serving_default"
Decode = Callable[[Any], np.ndarray]


def _response_spec(name: str, signature: str | None, version: int) -> ModelSpec:
    spec = ModelSpec(name=name)
    if signature is not None:
        spec.signature_name = signature or DEFAULT_SIGNATURE
    spec.version.value = version
    return spec


def _sorted_set(keys: Any) -> str:
    return ",".join(sorted(keys))


class Service:
    """One instance per server, shared by every transport; thread-safe."""

    def __init__(
        self,
        manager: Manager,
        *,
        method_check: bool = False,
        metrics: Metrics | None = None,
        structured_dedup: bool = True,
    ) -> None:
        self.manager = manager
        self._method_check = method_check
        self._metrics = metrics
        self._structured_dedup = structured_dedup

    def _observe(self, servable: Servable, api: str, signature: str, start: float) -> None:
        """Runtime latency (TF-Serving's runtime_latency) and tfrec's per-signature latency."""
        if self._metrics is not None:
            elapsed_us = (time.perf_counter() - start) * 1e6
            self._metrics.runtime_latency.labels(servable.name, api, "TF1").observe(elapsed_us)
            self._metrics.signature_latency.labels(servable.name, signature).observe(elapsed_us)

    def _count_examples(self, model: str, count: int) -> None:
        if self._metrics is not None:
            self._metrics.example_counts.labels(model).observe(count)
            self._metrics.example_count_total.labels(model).inc(count)

    # ------------------------------------------------------------------ Predict

    def predict(
        self,
        spec: ModelSpec | None,
        inputs: Mapping[str, Any],
        output_filter: Sequence[str] = (),
        decode: Decode = np.asarray,
    ) -> tuple[ModelSpec, dict[str, np.ndarray]]:
        """Runs a Predict; `decode` turns each request input into an array (lazily, in order).

        Returns the response ModelSpec and the outputs by alias.
        """
        if spec is None:
            raise InvalidArgument("Missing ModelSpec")
        with self.manager.lease(spec) as servable:
            return self.predict_on(servable, spec, inputs, output_filter, decode)

    def predict_on(
        self,
        servable: Servable,
        spec: ModelSpec,
        inputs: Mapping[str, Any],
        output_filter: Sequence[str] = (),
        decode: Decode = np.asarray,
    ) -> tuple[ModelSpec, dict[str, np.ndarray]]:
        """Predict on a given servable (the request's lease, or a version warming up)."""
        name = spec.signature_name or DEFAULT_SIGNATURE
        signature = servable.signatures.get(name)
        if signature is None:
            raise FailedPrecondition(f'Serving signature key "{name}" not found.')
        out_spec = _response_spec(spec.name, name, servable.version)
        self._check_predict_method(signature)
        arrays = self._inputs(signature, inputs, decode)
        aliases, fetches = self._fetches(signature, output_filter)
        twin = servable.structured.get(name)
        if twin is not None:
            structured.check_request(twin, arrays)
        run_signature = signature
        deduped = self._dedup(servable, signature, arrays, aliases)
        if deduped is not None:
            run_signature, arrays = deduped
            fetches = [run_signature.outputs[a] for a in aliases]
        feeds = {run_signature.inputs[alias]: array for alias, array in arrays.items()}
        start = time.perf_counter()
        values = servable.run(feeds, fetches)
        self._observe(servable, "Predict", run_signature.name, start)
        return out_spec, dict(zip(aliases, values, strict=True))

    def _dedup(
        self,
        servable: Servable,
        signature: Signature,
        arrays: dict[str, np.ndarray],
        aliases: list[str],
    ) -> tuple[Signature, dict[str, np.ndarray]] | None:
        """The structured twin and its inputs to run a flat request on instead, if it can."""
        twin = servable.twin_of.get(signature.name) if self._structured_dedup else None
        if twin is None:
            return None
        target = servable.signatures[twin.name]
        usable = all(a in target.outputs for a in aliases) and all(
            (dtype := servable.feed_dtype(signature.inputs[a])) is None
            or dtype.numpy == array.dtype
            for a, array in arrays.items()
        )
        deduped = structured.dedup(twin, arrays) if usable else None
        if self._metrics is not None:
            result = "miss" if deduped is None else "hit"
            self._metrics.structured_dedup.labels(servable.name, signature.name, result).inc()
        return None if deduped is None else (target, deduped)

    def predict_signature(self, spec: ModelSpec) -> Signature:
        """The signature a Predict would run (REST needs input dtypes before parsing JSON)."""
        with self.manager.lease(spec) as servable:
            name = spec.signature_name or DEFAULT_SIGNATURE
            signature = servable.signatures.get(name)
        if signature is None:
            raise InvalidArgument(f'Serving signature name: "{name}" not found in signature def')
        return signature

    def _check_predict_method(self, signature: Signature) -> None:
        allowed = (inference.PREDICT, inference.CLASSIFY, inference.REGRESS)
        if self._method_check and signature.method_name not in allowed:
            raise Internal(
                "Expected prediction signature method_name to be one of {"
                + ", ".join(allowed)
                + f"}}. Was: {signature.method_name}"
            )

    @staticmethod
    def _inputs(
        signature: Signature, inputs: Mapping[str, Any], decode: Decode
    ) -> dict[str, np.ndarray]:
        """The request's arrays by alias (defaults filled in), checked as TF-Serving checks."""
        expected = signature.inputs
        if len(inputs) > len(expected) or (len(inputs) < len(expected) and not signature.defaults):
            raise InvalidArgument(
                f"input size does not match signature: {len(inputs)}!={len(expected)} "
                f"len({{{_sorted_set(inputs)}}}) != len({{{_sorted_set(expected)}}}). "
                f"Sent extra: {{{_sorted_set(set(inputs) - set(expected))}}}. "
                f"Missing but required: {{{_sorted_set(set(expected) - set(inputs))}}}."
            )
        arrays: dict[str, np.ndarray] = {}
        used = []
        for alias, tensor_name in expected.items():
            if alias in inputs:
                used.append(alias)
                try:
                    arrays[alias] = decode(inputs[alias])
                except codecs.TensorParseError:
                    raise InvalidArgument(f"tensor parsing error: {alias}") from None
            elif alias in signature.defaults:
                arrays[alias] = signature.defaults[alias]
            else:
                raise InvalidArgument(
                    f"Signature input alias: {alias}(feed name: {tensor_name}) not found in "
                    f"request and no default value provided. Inputs expected to be in the "
                    f"request {{{_sorted_set(inputs)}}}, or default input alias set: "
                    f"{_sorted_set(signature.defaults)}"
                )
        if inputs and len(used) != len(inputs):
            raise InvalidArgument(
                f"Inputs contains invalid name. Used request inputs: {','.join(sorted(used))}, "
                f"request input: {_sorted_set(inputs)}"
            )
        return arrays

    @staticmethod
    def _fetches(signature: Signature, output_filter: Sequence[str]) -> tuple[list[str], list[str]]:
        if not output_filter:
            return list(signature.outputs), list(signature.outputs.values())
        seen: set[str] = set()
        for alias in output_filter:
            if alias not in signature.outputs:
                raise InvalidArgument(
                    f"output tensor alias not found in signature: {alias} Outputs expected to be "
                    f"in the set {{{_sorted_set(signature.outputs)}}}."
                )
            if alias in seen:
                raise InvalidArgument(f"duplicate output tensor alias: {alias}")
            seen.add(alias)
        return list(output_filter), [signature.outputs[a] for a in output_filter]

    # ------------------------------------------------------------------ Classify / Regress

    def classify(
        self, spec: ModelSpec | None, data: input_pb2.Input
    ) -> tuple[ModelSpec, classification_pb2.ClassificationResult]:
        if spec is None:
            raise InvalidArgument("Missing ModelSpec")
        with self.manager.lease(spec) as servable:
            return self.classify_on(servable, spec, data)

    def classify_on(
        self, servable: Servable, spec: ModelSpec, data: input_pb2.Input
    ) -> tuple[ModelSpec, classification_pb2.ClassificationResult]:
        signature = self._example_signature(servable, spec)
        input_tensor, outputs = inference.classification_tensors(signature, self._method_check)
        out_spec = _response_spec(spec.name, spec.signature_name, servable.version)
        examples = inference.serialized_examples(data)
        self._count_examples(spec.name, len(examples))
        start = time.perf_counter()
        fetched = inference.run_examples(servable, [input_tensor], outputs, examples)
        self._observe(servable, "Classify", signature.name, start)
        return out_spec, inference.classification_result(signature, len(examples), fetched)

    def regress(
        self, spec: ModelSpec | None, data: input_pb2.Input
    ) -> tuple[ModelSpec, regression_pb2.RegressionResult]:
        if spec is None:
            raise InvalidArgument("Missing ModelSpec")
        with self.manager.lease(spec) as servable:
            return self.regress_on(servable, spec, data)

    def regress_on(
        self, servable: Servable, spec: ModelSpec, data: input_pb2.Input
    ) -> tuple[ModelSpec, regression_pb2.RegressionResult]:
        signature = self._example_signature(servable, spec)
        input_tensor, outputs = inference.regression_tensors(signature, self._method_check)
        out_spec = _response_spec(spec.name, spec.signature_name, servable.version)
        examples = inference.serialized_examples(data)
        self._count_examples(spec.name, len(examples))
        start = time.perf_counter()
        fetched = inference.run_examples(servable, [input_tensor], outputs, examples)
        self._observe(servable, "Regress", signature.name, start)
        return out_spec, inference.regression_result(signature, len(examples), fetched)

    @staticmethod
    def _example_signature(servable: Servable, spec: ModelSpec) -> Signature:
        name = spec.signature_name or DEFAULT_SIGNATURE
        signature = servable.signatures.get(name)
        if signature is None:
            raise InvalidArgument(f"No signature was found with the name: {name}")
        return signature

    def multi_inference(
        self, request: inference_pb2.MultiInferenceRequest
    ) -> inference_pb2.MultiInferenceResponse:
        first = request.tasks[0].model_spec if request.tasks else ModelSpec()
        with self.manager.lease(first) as servable:
            return self.multi_inference_on(servable, request)

    def multi_inference_on(
        self, servable: Servable, request: inference_pb2.MultiInferenceRequest
    ) -> inference_pb2.MultiInferenceResponse:
        plans = self._plan_tasks(servable, request.tasks)
        examples = inference.serialized_examples(request.input)
        inputs = [p[2] for p in plans]
        outputs = [o for p in plans for o in p[3]]
        fetched = inference.run_examples(servable, inputs, outputs, examples)
        response = inference_pb2.MultiInferenceResponse()
        for task, (signature, method, _, _) in zip(request.tasks, plans, strict=True):
            result = response.results.add()
            if method == inference.CLASSIFY:
                result.classification_result.CopyFrom(
                    inference.classification_result(signature, len(examples), fetched)
                )
            else:
                result.regression_result.CopyFrom(
                    inference.regression_result(signature, len(examples), fetched)
                )
            result.model_spec.CopyFrom(
                _response_spec(
                    task.model_spec.name, task.model_spec.signature_name, servable.version
                )
            )
        return response

    def _plan_tasks(
        self, servable: Servable, tasks: Sequence[inference_pb2.InferenceTask]
    ) -> list[tuple[Signature, str, str, list[str]]]:
        plans = []
        model_name = ""
        seen: set[str] = set()
        for task in tasks:
            if not task.model_spec.name:
                raise InvalidArgument("Found ModelSpec with an empty model name.")
            if model_name and task.model_spec.name != model_name:
                raise InvalidArgument(
                    "All ModelSpecs in a MultiInferenceRequest must access the same model name."
                )
            model_name = task.model_spec.name
            name = task.model_spec.signature_name or DEFAULT_SIGNATURE
            if name in seen:
                raise InvalidArgument(f"Duplicate evaluation of signature: {name}")
            seen.add(name)
            signature = servable.signatures.get(name)
            if signature is None:
                raise InvalidArgument(f"Requested signature not found in model graph: {name}")
            if task.method_name == inference.CLASSIFY:
                tensors = inference.classification_tensors(signature, self._method_check)
            elif task.method_name == inference.REGRESS:
                tensors = inference.regression_tensors(signature, self._method_check)
            else:
                raise Unimplemented(f"Unsupported signature method_name: {task.method_name}")
            plans.append((signature, task.method_name, tensors[0], tensors[1]))
        return plans

    # ------------------------------------------------------------------ metadata and status

    def model_metadata(
        self, spec: ModelSpec | None, fields: Sequence[str]
    ) -> tuple[ModelSpec, get_model_metadata_pb2.SignatureDefMap]:
        if spec is None:
            raise InvalidArgument("Missing ModelSpec")
        if not fields:
            raise InvalidArgument(
                "GetModelMetadataRequest must specify at least one metadata_field"
            )
        for field in fields:
            if field != "signature_def":
                raise InvalidArgument(f"Metadata field {field} is not supported")
        with self.manager.lease(spec) as servable:
            signature_map = get_model_metadata_pb2.SignatureDefMap()
            for key, signature in servable.meta_graph.signature_def.items():
                signature_map.signature_def[key].CopyFrom(signature)
            return _response_spec(spec.name, None, servable.version), signature_map

    def model_status(self, spec: ModelSpec | None) -> get_model_status_pb2.GetModelStatusResponse:
        if spec is None:
            raise InvalidArgument("Missing ModelSpec")
        version = spec.version.value if spec.HasField("version") else None
        response = get_model_status_pb2.GetModelStatusResponse()
        for status in self.manager.status(spec.name, version):
            entry = response.model_version_status.add(
                version=status.version, state=int(status.state)
            )
            entry.status.SetInParent()
            if status.error is not None:
                entry.status.error_code = int(status.error.code)
                entry.status.error_message = status.error.message
        return response

    def reload_config(self, config: ModelServerConfig) -> None:
        """HandleReloadConfigRequest: only a ModelConfigList is accepted."""
        if config.WhichOneof("config") != "model_config_list":
            raise InvalidArgument(
                "ServerModelConfig type not supported by HandleReloadConfigRequest. Only "
                "ModelConfigList is currently supported"
            )
        self.manager.reload_config(config)
