"""Structured signatures at serving time: their sidecar, and validating their requests.

`tfrec-convert` adds `<sig>_structured` twins to a SavedModel and records them in
`assets.extra/tfrec_structured.json`:
    {"format": 1, "signatures": {"<sig>_structured": {"original": "<sig>",
        "user_inputs": [...], "item_inputs": [...], "outputs": [...]}}}
A structured request carries the user inputs once (batch 1) and the item inputs N times.

Dedup of flat requests onto twins (`--structured_dedup=auto`) is a runtime stage:
`tfrec.runtime.route`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from tfrec.base.errors import InvalidArgument

log = logging.getLogger(__name__)

SIDECAR = Path("assets.extra") / "tfrec_structured.json"


@dataclasses.dataclass(frozen=True)
class Twin:
    """A structured signature and the flat signature it stands for."""

    name: str
    original: str
    user_inputs: tuple[str, ...]
    item_inputs: tuple[str, ...]


def load(version_dir: Path, signatures: Mapping[str, object]) -> dict[str, Twin]:
    """The structured twins recorded next to a SavedModel, by structured signature name.

    Entries naming signatures the model does not have are logged and ignored.
    """
    path = version_dir / SIDECAR
    if not path.exists():
        return {}
    try:
        entries = json.loads(path.read_text())["signatures"]
        twins = {
            name: Twin(name, e["original"], tuple(e["user_inputs"]), tuple(e["item_inputs"]))
            for name, e in entries.items()
        }
    except (OSError, ValueError, KeyError, TypeError) as err:
        log.warning("Ignoring %s: %s", path, err)
        return {}
    usable = {n: t for n, t in twins.items() if n in signatures and t.original in signatures}
    for name in set(twins) - set(usable):
        log.warning("%s names signature %s, which %s does not have", path, name, version_dir)
    return usable


def check_request(twin: Twin, arrays: Mapping[str, np.ndarray]) -> None:
    """User inputs must have batch 1; item inputs one common batch N (N may be 0)."""
    for alias in twin.user_inputs:
        array = arrays.get(alias)
        if array is not None and (array.ndim == 0 or array.shape[0] != 1):
            got = "a scalar" if array.ndim == 0 else f"{array.shape[0]} rows"
            raise InvalidArgument(
                f"Input {alias} is a per-user input of structured signature {twin.name}: it "
                f"takes exactly 1 row, got {got}"
            )
    rows = {}
    for alias in twin.item_inputs:
        array = arrays.get(alias)
        if array is not None:
            if array.ndim == 0:
                raise InvalidArgument(
                    f"Input {alias} is a per-item input of structured signature {twin.name}: "
                    "it needs a batch dimension, got a scalar"
                )
            rows[alias] = array.shape[0]
    if len(set(rows.values())) > 1:
        listing = ", ".join(f"{a} has {n}" for a, n in sorted(rows.items()))
        raise InvalidArgument(
            f"Per-item inputs of structured signature {twin.name} must all have the same number "
            f"of rows: {listing}"
        )
