"""Classify, Regress and MultiInference over tf.Example inputs (TF-Serving's classifier.cc,
regressor.cc, multi_inference.cc, util.cc), as pure functions over a Servable."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from google.protobuf import text_format
from tensorflow_serving.apis import classification_pb2, input_pb2, regression_pb2

from tfrec.base import codecs
from tfrec.base.errors import InvalidArgument, from_tf_error
from tfrec.serving.request import Limits
from tfrec.serving.servable import Servable
from tfrec.serving.signature import Signature

CLASSIFY = "tensorflow/serving/classify"
REGRESS = "tensorflow/serving/regress"
PREDICT = "tensorflow/serving/predict"


def _debug_string(signature: Signature) -> str:
    return text_format.MessageToString(signature.definition)


def _shape_string(array: np.ndarray) -> str:
    return "[" + ",".join(str(d) for d in array.shape) + "]"


def _dtype_name(array: np.ndarray) -> str:
    return "DT_" + codecs.dtype_of_array(array).name.upper()


def classification_tensors(signature: Signature, method_check: bool) -> tuple[str, list[str]]:
    """The input tensor and the (classes, scores) output tensors; validates the signature."""
    definition = signature.definition
    if method_check and signature.method_name != CLASSIFY:
        raise InvalidArgument(
            f"Expected classification signature method_name to be {CLASSIFY}. "
            f"Was: {signature.method_name}"
        )
    if len(definition.inputs) != 1:
        raise InvalidArgument("Expected one input Tensor.")
    if len(definition.outputs) not in (1, 2):
        raise InvalidArgument(
            f"Expected one or two output Tensors, found {len(definition.outputs)}"
        )
    if "inputs" not in definition.inputs:
        raise InvalidArgument(
            f"No classification inputs found in SignatureDef: {_debug_string(signature)}"
        )
    outputs = [signature.outputs[k] for k in ("classes", "scores") if k in signature.outputs]
    if not outputs:
        raise InvalidArgument(
            'Expected classification signature outputs to contain at least one of "classes" or '
            f'"scores". Signature was: {_debug_string(signature)}'
        )
    return signature.inputs["inputs"], outputs


def regression_tensors(signature: Signature, method_check: bool) -> tuple[str, list[str]]:
    """The input tensor and the `outputs` tensor; validates the signature."""
    definition = signature.definition
    if method_check and signature.method_name != REGRESS:
        raise InvalidArgument(
            f"Expected regression signature method_name to be {REGRESS}. "
            f"Was: {signature.method_name}"
        )
    if len(definition.inputs) != 1:
        raise InvalidArgument("Expected one input Tensor.")
    if len(definition.outputs) != 1:
        raise InvalidArgument("Expected one output Tensor.")
    if "inputs" not in definition.inputs:
        raise InvalidArgument(
            f"No regression inputs found in SignatureDef: {_debug_string(signature)}"
        )
    if "outputs" not in definition.outputs:
        raise InvalidArgument(
            f"No regression outputs found in SignatureDef: {_debug_string(signature)}"
        )
    return signature.inputs["inputs"], [signature.outputs["outputs"]]


def serialized_examples(data: input_pb2.Input, limits: Limits | None = None) -> np.ndarray:
    """The 1-D string tensor of serialized tf.Examples (context prepended when present).

    `limits` bound the count, and the bytes the context copies add, before any is built."""
    kind = data.WhichOneof("kind")
    context = b""
    if kind == "example_list":
        examples = data.example_list.examples
    elif kind == "example_list_with_context":
        examples = data.example_list_with_context.examples
        context = data.example_list_with_context.context.SerializeToString()
    else:
        examples = []
    if not examples:
        raise InvalidArgument("Input is empty.")
    if limits is not None:
        each = codecs.POINTER_BYTES + codecs.BYTES_OVERHEAD + len(context)
        limits.check_examples(len(examples), len(examples) * each)
    out = np.empty(len(examples), dtype=object)
    out[:] = [context + e.SerializeToString() for e in examples]
    return out


def classification_result(
    signature: Signature, num_examples: int, fetched: dict[str, np.ndarray]
) -> classification_pb2.ClassificationResult:
    classes = fetched.get(signature.outputs.get("classes", ""))
    scores = fetched.get(signature.outputs.get("scores", ""))
    for kind, tensor in (("classes", classes), ("scores", scores)):
        if tensor is None:
            continue
        if tensor.ndim != 2:
            raise InvalidArgument(
                f"Expected Tensor shape: [batch_size num_classes] but got {_shape_string(tensor)}"
            )
        wanted = "DT_STRING" if kind == "classes" else "DT_FLOAT"
        if _dtype_name(tensor) != wanted:
            raise InvalidArgument(f"Expected {kind} Tensor of {wanted}. Got: {_dtype_name(tensor)}")
        if tensor.shape[0] != num_examples:
            raise InvalidArgument(
                f"Expected {kind} output batch size of {num_examples}. Got: {tensor.shape[0]}"
            )
    if classes is not None and scores is not None and classes.shape[1] != scores.shape[1]:
        raise InvalidArgument(
            "Tensors class and score should match in dim_size(1). Got "
            f"{classes.shape[1]} vs. {scores.shape[1]}"
        )
    num_classes = (classes if classes is not None else scores).shape[1]  # type: ignore[union-attr]
    result = classification_pb2.ClassificationResult()
    labels = classes.tolist() if classes is not None else None
    values = scores.tolist() if scores is not None else None
    for i in range(num_examples):
        row = result.classifications.add()
        for c in range(num_classes):
            cls = row.classes.add()
            if labels is not None:
                cls.label = labels[i][c].decode("utf-8", "replace")
            if values is not None:
                cls.score = values[i][c]
    return result


def regression_result(
    signature: Signature, num_examples: int, fetched: dict[str, np.ndarray]
) -> regression_pb2.RegressionResult:
    tensor = fetched[signature.outputs["outputs"]]
    if not (tensor.ndim == 1 or (tensor.ndim == 2 and tensor.shape[1] == 1)):
        raise InvalidArgument(
            "Expected output Tensor shape to be either [batch_size] or [batch_size, 1] but got "
            f"{_shape_string(tensor)}"
        )
    if tensor.shape[0] != num_examples:
        raise InvalidArgument(
            "Input batch size did not match output batch size: "
            f"{num_examples} vs. {tensor.shape[0]}"
        )
    if _dtype_name(tensor) != "DT_FLOAT":
        raise InvalidArgument(f"Expected output Tensor of DT_FLOAT.  Got: {_dtype_name(tensor)}")
    result = regression_pb2.RegressionResult()
    for value in tensor.reshape(-1).tolist():
        result.regressions.add(value=value)
    return result


def run_examples(
    servable: Servable,
    input_tensors: Sequence[str],
    outputs: Sequence[str],
    examples: np.ndarray,
    signature: str = "",
    deadline: float | None = None,
) -> dict[str, np.ndarray]:
    """Feeds the example tensor to every input tensor, fetches each output once."""
    fetches = sorted(set(outputs))
    feeds = dict.fromkeys(sorted(set(input_tensors)), examples)
    try:
        values = servable.run(feeds, fetches, signature, deadline=deadline)
    except UnicodeDecodeError as err:  # TensorFlow's message quotes the client's bytes
        raise from_tf_error(err) from None
    return dict(zip(fetches, values, strict=True))
