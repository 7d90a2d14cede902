"""Client-side helper: build the structured `PredictRequest` for stock TF-Serving stubs.

    from tfrec.client import structured_request
    request = structured_request(
        "ranker",
        user={"user_id": 42, "user_hist": history},          # one row each, no batch dim
        items={"item_id": candidate_ids, "item_dense": dense},  # N rows each
    )
    scores = stub.Predict(request).outputs["score"]

User features are given as one row; the batch dimension of 1 is added here. Item features
carry their N rows. Tensors are encoded with `tensor_content` (what `tf.make_tensor_proto`
does for numeric arrays), strings as `string_val`.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from numpy.typing import ArrayLike
from tensorflow_serving.apis import predict_pb2

from tfrec.base import codecs

STRUCTURED_SUFFIX = "_structured"


def structured_request(
    model: str,
    user: Mapping[str, ArrayLike],
    items: Mapping[str, ArrayLike],
    *,
    signature: str = "serving_default" + STRUCTURED_SUFFIX,
    version: int | None = None,
) -> predict_pb2.PredictRequest:
    """A PredictRequest with each user feature at batch 1 and each item feature at batch N."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    for name, value in user.items():
        codecs.from_ndarray(np.asarray(value)[np.newaxis], True, request.inputs[name])
    for name, value in items.items():
        codecs.from_ndarray(np.asarray(value), True, request.inputs[name])
    return request
