"""The protocol-free handlers of one request on one leased model version.

`Handlers` validates a request once, in TF-Serving's order and with its messages
(reference: TF-Serving's predict_util, classifier, regressor), and hands the version's stages
one run. The `Service` leases versions and calls these; warmup calls them on a version that is
still loading. Nothing here knows gRPC or HTTP.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from tensorflow.core.framework import types_pb2
from tensorflow.core.framework.tensor_pb2 import TensorProto
from tensorflow_serving.apis import classification_pb2, inference_pb2, input_pb2, regression_pb2
from tensorflow_serving.apis.model_pb2 import ModelSpec

from tfrec.base import codecs, wire
from tfrec.base.errors import (
    FailedPrecondition,
    Internal,
    InvalidArgument,
    Unimplemented,
    from_tf_error,
)
from tfrec.base.metrics import Metrics
from tfrec.serving import inference, structured
from tfrec.serving.request import Budget, Limits, Request, array_nbytes
from tfrec.serving.servable import Servable
from tfrec.serving.signature import DEFAULT_SIGNATURE, Signature


def response_spec(name: str, signature: str | None, version: int) -> ModelSpec:
    spec = ModelSpec(name=name)
    if signature is not None:
        spec.signature_name = signature or DEFAULT_SIGNATURE
    spec.version.value = version
    return spec


def _sorted_set(keys: Any) -> str:
    return ",".join(sorted(keys))


class Handlers:
    """Predict, Classify, Regress and MultiInference on a given version; thread-safe."""

    def __init__(
        self,
        *,
        method_check: bool = False,
        metrics: Metrics | None = None,
        limits: Limits | None = None,
    ) -> None:
        self._method_check = method_check
        self._metrics = metrics
        self._limits = limits or Limits()

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

    def predict_on(
        self, servable: Servable, request: Request
    ) -> tuple[ModelSpec, dict[str, np.ndarray]]:
        """Validates the request against its signature once, then runs it down the stages.

        Returns the response ModelSpec and the outputs by alias."""
        spec = request.spec
        assert spec is not None
        name = spec.signature_name or DEFAULT_SIGNATURE
        signature = servable.signatures.get(name)
        if signature is None:
            raise FailedPrecondition(f'Serving signature key "{name}" not found.')
        out_spec = response_spec(spec.name, name, servable.version)
        self._check_predict_method(signature)
        wired = servable.wire_inputs.get(name, {})
        twin = servable.structured.get(name)
        arrays, on_wire = self._inputs(signature, request.inputs, wired, twin)
        aliases, fetches = self._fetches(signature, request.output_filter)
        if twin is not None:
            structured.check_request(twin, arrays)
        feeds = {
            wired[alias] if alias in on_wire else signature.inputs[alias]: array
            for alias, array in arrays.items()
        }
        rows = None
        if on_wire:  # a wire value's own shape is not the tensor's
            dims = [on_wire[a] if a in on_wire else arrays[a].shape[:1] for a in arrays]
            rows = max((d[0] for d in dims if d), default=1) or 1
        start = time.perf_counter()
        try:
            values = servable.run(feeds, fetches, name, tuple(arrays), tuple(aliases),
                                  request.deadline, rows)  # fmt: skip
        except UnicodeDecodeError as err:  # TensorFlow's message quotes the client's bytes
            raise from_tf_error(err) from None
        self._observe(servable, "Predict", name, start)
        return out_spec, dict(zip(aliases, values, strict=True))

    def _check_predict_method(self, signature: Signature) -> None:
        allowed = (inference.PREDICT, inference.CLASSIFY, inference.REGRESS)
        if self._method_check and signature.method_name not in allowed:
            raise Internal(
                "Expected prediction signature method_name to be one of {"
                + ", ".join(allowed)
                + f"}}. Was: {signature.method_name}"
            )

    def _inputs(
        self,
        signature: Signature,
        inputs: Mapping[str, Any],
        wired: Mapping[str, str],
        twin: structured.Twin | None = None,
    ) -> tuple[dict[str, np.ndarray], dict[str, tuple[int, ...]]]:
        """The request's arrays by alias (defaults filled in), checked as TF-Serving checks,
        and the shapes of those fed on the wire (`wired` aliases sent as TensorProtos that
        `wire.wire_value` takes: their array is the serialized proto). Each input is admitted
        against the limits (rows, items of `twin`, decoded bytes) before it is decoded."""
        expected = signature.inputs
        if len(inputs) > len(expected) or (len(inputs) < len(expected) and not signature.defaults):
            raise InvalidArgument(
                f"input size does not match signature: {len(inputs)}!={len(expected)} "
                f"len({{{_sorted_set(inputs)}}}) != len({{{_sorted_set(expected)}}}). "
                f"Sent extra: {{{_sorted_set(set(inputs) - set(expected))}}}. "
                f"Missing but required: {{{_sorted_set(set(expected) - set(inputs))}}}."
            )
        plans = self._admit(expected, inputs, twin)
        arrays: dict[str, np.ndarray] = {}
        on_wire: dict[str, tuple[int, ...]] = {}
        used = []
        for alias, tensor_name in expected.items():
            if alias in inputs:
                used.append(alias)
                value = inputs[alias]
                planned = plans.get(alias)
                if planned is None:
                    arrays[alias] = np.asarray(value)
                    continue
                try:
                    if alias in wired and len(value.string_val) >= wire.MIN_STRINGS:
                        try:
                            arrays[alias] = wire.wire_value(value, types_pb2.DT_STRING)
                            on_wire[alias] = planned.shape
                            continue
                        except wire.WireMismatch:
                            pass  # decoded below, which words any error
                    arrays[alias] = codecs.decode(value, planned)
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
        return arrays, on_wire

    def _admit(
        self, expected: Mapping[str, str], inputs: Mapping[str, Any], twin: structured.Twin | None
    ) -> dict[str, codecs.Plan]:
        """Admits every input against the limits before any is decoded: the Plans of the
        TensorProtos by alias (arrays, decoded already by their transport, are measured)."""
        budget = Budget(self._limits)
        items = twin.item_inputs if twin is not None else ()
        plans = {}
        for alias in expected:
            value = inputs.get(alias)
            if value is None:
                continue
            of = twin.name if twin is not None and alias in items else None
            if isinstance(value, TensorProto):
                try:
                    plans[alias] = planned = codecs.plan(value)
                except codecs.UnsupportedShape as err:
                    raise InvalidArgument(f"Input '{alias}' {err}") from None
                except codecs.TensorParseError:
                    raise InvalidArgument(f"tensor parsing error: {alias}") from None
                budget.admit(alias, planned.shape, planned.nbytes, of)
            else:
                array = np.asarray(value)
                budget.admit(alias, array.shape, array_nbytes(array), of)
        return plans

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

    def classify_on(
        self,
        servable: Servable,
        spec: ModelSpec,
        data: input_pb2.Input,
        deadline: float | None = None,
    ) -> tuple[ModelSpec, classification_pb2.ClassificationResult]:
        return self._examples_on(servable, spec, data, inference.CLASSIFY, deadline)

    def regress_on(
        self,
        servable: Servable,
        spec: ModelSpec,
        data: input_pb2.Input,
        deadline: float | None = None,
    ) -> tuple[ModelSpec, regression_pb2.RegressionResult]:
        return self._examples_on(servable, spec, data, inference.REGRESS, deadline)

    def _examples_on(
        self,
        servable: Servable,
        spec: ModelSpec,
        data: input_pb2.Input,
        method: str,
        deadline: float | None,
    ) -> tuple[ModelSpec, Any]:
        """Classify or Regress: the examples fed to the signature's input tensor, its outputs
        turned into TF-Serving's result message."""
        signature = self._example_signature(servable, spec)
        classify = method == inference.CLASSIFY
        tensors = inference.classification_tensors if classify else inference.regression_tensors
        input_tensor, outputs = tensors(signature, self._method_check)
        out_spec = response_spec(spec.name, spec.signature_name, servable.version)
        examples = inference.serialized_examples(data, self._limits)
        self._count_examples(spec.name, len(examples))
        start = time.perf_counter()
        fetched = inference.run_examples(
            servable, [input_tensor], outputs, examples, signature.name, deadline
        )
        self._observe(servable, "Classify" if classify else "Regress", signature.name, start)
        result = inference.classification_result if classify else inference.regression_result
        return out_spec, result(signature, len(examples), fetched)

    @staticmethod
    def _example_signature(servable: Servable, spec: ModelSpec) -> Signature:
        name = spec.signature_name or DEFAULT_SIGNATURE
        signature = servable.signatures.get(name)
        if signature is None:
            raise InvalidArgument(f"No signature was found with the name: {name}")
        return signature

    def multi_inference_on(
        self, servable: Servable, request: inference_pb2.MultiInferenceRequest
    ) -> inference_pb2.MultiInferenceResponse:
        plans = self._plan_tasks(servable, request.tasks)
        examples = inference.serialized_examples(request.input, self._limits)
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
                response_spec(
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
