"""What a zoo model takes: per-input value domains, the sidecar JSON, and random valid values.

The sidecar is `<version>/assets.extra/tfrec_features.json`; TF-Serving copies `assets.extra`
along with the version and ignores files it does not know. Its format (version 1):

    {
      "format": 1,
      "model": "din",
      "scale": "tiny",
      "user_inputs": ["user_id", "user_hist_items", ...],   # per-user: one row per request
      "item_inputs": ["item_id", "item_category"],          # per-candidate: N rows
      "outputs": ["score"],
      "features": {
        "user_id": {"dtype": "int64", "shape": [-1], "vocab_size": 1000},
        "user_hist_items": {"dtype": "int64", "shape": [-1, 100], "vocab_size": 2000,
                            "padded": true},
        "user_country": {"dtype": "string", "shape": [-1], "vocab": ["US", "DE", ...]},
        "user_dense": {"dtype": "float32", "shape": [-1, 8]}
      }
    }

Value domains: an int64 id input with `vocab_size` V takes ids in [1, V) (0 is reserved for
padding and unknown ids); `padded` id sequences hold a random number (>= 1) of ids followed by
zeros; a string input takes values from `vocab` (the lookup table maps anything else to an
out-of-vocabulary row); float inputs are standard normal.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

SIDECAR = Path("assets.extra") / "tfrec_features.json"
FORMAT = 1


@dataclasses.dataclass(frozen=True)
class Feature:
    """One signature input: its name, dtype, per-row shape and value domain."""

    name: str
    dtype: str  # "int64", "float32" or "string"
    shape: tuple[int, ...] = ()  # per-row shape; the signature shape is (-1, *shape)
    vocab_size: int = 0  # int64 ids: valid ids are [1, vocab_size)
    vocab: tuple[str, ...] = ()  # string inputs: the values the lookup table knows
    padded: bool = False  # id sequence: ids, then zero padding

    @property
    def per_user(self) -> bool:
        return self.name.startswith("user_")

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"dtype": self.dtype, "shape": [-1, *self.shape]}
        if self.vocab_size:
            out["vocab_size"] = self.vocab_size
        if self.vocab:
            out["vocab"] = list(self.vocab)
        if self.padded:
            out["padded"] = True
        return out

    @classmethod
    def from_json(cls, name: str, spec: dict) -> Feature:
        return cls(
            name=name,
            dtype=spec["dtype"],
            shape=tuple(spec["shape"][1:]),
            vocab_size=int(spec.get("vocab_size", 0)),
            vocab=tuple(spec.get("vocab", ())),
            padded=bool(spec.get("padded", False)),
        )


def ids(name: str, vocab_size: int, length: int = 0) -> Feature:
    """An int64 id input, or a zero-padded id sequence of `length` if length > 0."""
    shape = (length,) if length else ()
    return Feature(name, "int64", shape, vocab_size=vocab_size, padded=bool(length))


def dense(name: str, width: int) -> Feature:
    return Feature(name, "float32", (width,))


def strings(name: str, vocab: tuple[str, ...], length: int = 0) -> Feature:
    """A string input, or a sequence of `length` strings per row if length > 0 (every step
    holds a value from `vocab`: string sequences are not padded)."""
    shape = (length,) if length else ()
    return Feature(name, "string", shape, vocab=vocab)


@dataclasses.dataclass(frozen=True)
class Sidecar:
    """The parsed sidecar: which inputs are per-user, and every input's domain."""

    model: str
    scale: str
    features: tuple[Feature, ...]
    outputs: tuple[str, ...]

    @property
    def user_inputs(self) -> list[str]:
        return [f.name for f in self.features if f.per_user]

    @property
    def item_inputs(self) -> list[str]:
        return [f.name for f in self.features if not f.per_user]

    def write(self, version_dir: Path) -> Path:
        path = version_dir / SIDECAR
        path.parent.mkdir(parents=True, exist_ok=True)
        doc = {
            "format": FORMAT,
            "model": self.model,
            "scale": self.scale,
            "user_inputs": self.user_inputs,
            "item_inputs": self.item_inputs,
            "outputs": list(self.outputs),
            "features": {f.name: f.to_json() for f in self.features},
        }
        path.write_text(_dumps(doc))
        return path

    @classmethod
    def read(cls, version_dir: Path) -> Sidecar:
        doc = json.loads((Path(version_dir) / SIDECAR).read_text())
        if doc.get("format") != FORMAT:
            raise ValueError(f"unknown sidecar format {doc.get('format')!r} in {version_dir}")
        names = [*doc["user_inputs"], *doc["item_inputs"]]
        for name in names:  # the naming convention is what makes `per_user` work
            if not name.startswith("user_" if name in doc["user_inputs"] else "item_"):
                raise ValueError(f"{version_dir}: input {name!r} breaks the user_/item_ naming")
        features = tuple(Feature.from_json(n, doc["features"][n]) for n in names)
        return cls(doc["model"], doc["scale"], features, tuple(doc["outputs"]))


def _dumps(doc: dict[str, object]) -> str:
    """Indented JSON with one line per key and per feature (string vocabularies are long)."""
    lines = []
    for key, value in doc.items():
        if isinstance(value, dict):
            inner = ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in value.items())
            lines.append(f" {json.dumps(key)}: {{\n{inner}\n }}")
        else:
            lines.append(f" {json.dumps(key)}: {json.dumps(value)}")
    return "{\n" + ",\n".join(lines) + "\n}\n"


def sample(feature: Feature, rows: int, rng: np.random.Generator) -> np.ndarray:
    """`rows` random valid values of `feature`, shape (rows, *feature.shape)."""
    shape = (rows, *feature.shape)
    if feature.dtype == "string":
        picks = rng.integers(0, len(feature.vocab), size=shape)
        return np.array([feature.vocab[i].encode() for i in picks.ravel()], object).reshape(shape)
    if feature.dtype == "float32":
        return rng.standard_normal(shape, dtype=np.float32)
    values = rng.integers(1, feature.vocab_size, size=shape, dtype=np.int64)
    if feature.padded:
        lengths = rng.integers(1, feature.shape[-1] + 1, size=(rows, 1))
        values[np.arange(feature.shape[-1]) >= lengths] = 0
    return values
