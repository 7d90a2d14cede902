"""tfrec-convert: rewrite a serving SavedModel so that per-user work runs once per request.

    from saved_model_tools import convert, flops
    result = convert("models/din/1", "models/din/2", ["user_id", "user_hist_items", ...])
    result.signatures["serving_default"].flop_ratio(1000)
    flops("models/din/2", "serving_default", 1000, structured=True)

`conversion` runs the pipeline; `classify`/`rules` decide what moves to the per-user part and
why; `rewrite` builds the twin and its broadcasts; `decompose` splits linear maps;
`flopcount` counts FLOPs. Attributes load lazily, so that the CLI can quiet TensorFlow's logs
before TensorFlow is imported.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from saved_model_tools.conversion import ConversionResult, SignatureStats, convert
    from saved_model_tools.errors import ConversionError
    from saved_model_tools.flopcount import flops

__all__ = ["ConversionError", "ConversionResult", "SignatureStats", "convert", "flops"]
_HOMES = {
    "ConversionError": "saved_model_tools.errors",
    "ConversionResult": "saved_model_tools.conversion",
    "SignatureStats": "saved_model_tools.conversion",
    "convert": "saved_model_tools.conversion",
    "flops": "saved_model_tools.flopcount",
}


def __getattr__(name: str) -> object:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
