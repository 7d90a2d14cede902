"""One REST request body through tfrec's JSON codec, as the fuzzers drive it (the hypothesis
tests and the atheris target): only ServingError may escape."""

from __future__ import annotations

from server import json_codec
from tfrec.base.errors import ServingError


def decode_rest(body: bytes, inputs: dict[str, int], predict: bool) -> None:
    """Parses `body`; then reads it as a Predict over a signature whose inputs have the dtypes
    `inputs`, or (not `predict`) as a Classify/Regress request."""
    try:
        doc = json_codec.parse_body(body)
        if predict:
            json_codec.predict_signature_name(doc)
            json_codec.predict_inputs(doc, inputs)
        else:
            json_codec.classify_regress_request(doc)
    except ServingError:
        pass
