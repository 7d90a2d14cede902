"""Build a zoo model, export it in TF-Serving's version layout, and check the export.

`<out>/<name>/<version>/` holds a standard serving SavedModel (`serving_default` returns a
dict of float32 outputs) plus the sidecar `assets.extra/tfrec_features.json`. Every export is
loaded back the way TF-Serving loads it and must reproduce the in-memory model's outputs.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np

from benchmarks.models import dlrm, sequence, tabular, tfrs
from benchmarks.models.built import Built
from benchmarks.models.features import Sidecar, sample
from benchmarks.models.scales import SCALES, Dims
from benchmarks.models.session import DEFAULT_SIGNATURE, ServingSession

BUILDERS: dict[str, Callable[[Dims], Built]] = {
    "wdl": tabular.wdl,
    "dlrm": dlrm.dlrm,
    "dcn_v2": tabular.dcn_v2,
    "din": sequence.din,
    "dien": sequence.dien,
    "mmoe": tabular.mmoe,
    "user_heavy": sequence.user_heavy,
    "strings": tfrs.string_ranker,
}
NAMES = tuple(BUILDERS)
TOLERANCE = 1e-5
CHECK_ROWS = 8


class ExportError(RuntimeError):
    """The exported SavedModel does not match the in-memory model."""


@dataclasses.dataclass(frozen=True)
class BuildReport:
    name: str
    scale: str
    path: Path  # the version directory
    seconds: float  # build + export + check
    bytes: int  # size of the version directory on disk
    weight_bytes: int  # size of the model's distinct variables
    max_abs_diff: float  # exported vs in-memory outputs; nan if not checked

    def line(self) -> str:
        return (
            f"{self.name:<11} {self.scale:<5} {self.bytes / 1e6:8.1f} MB on disk"
            f" {self.weight_bytes / 1e6:8.1f} MB weights {self.seconds:6.1f} s"
            f"  max|diff| {self.max_abs_diff:.1e}  {self.path}"
        )


def build(name: str, scale: str, out_dir: Path | str, version: int = 1) -> Path:
    """Builds, exports and checks one model; returns its version directory."""
    return export(name, scale, out_dir, version).path


def export(
    name: str, scale: str, out_dir: Path | str, version: int = 1, *, check: bool = True
) -> BuildReport:
    """Builds model `name` at `scale` with fixed seeds, replacing `<out_dir>/<name>/<version>`."""
    if name not in BUILDERS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(NAMES)}")
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; known: {', '.join(SCALES)}")
    start = time.perf_counter()
    keras.utils.set_random_seed(0)
    built = BUILDERS[name](SCALES[scale])
    version_dir = Path(out_dir) / name / str(version)
    if version_dir.exists():
        shutil.rmtree(version_dir)
    version_dir.parent.mkdir(parents=True, exist_ok=True)
    built.save(version_dir)
    Sidecar(name, scale, built.features, built.outputs).write(version_dir)
    diff = check_export(built, version_dir) if check else float("nan")
    keras.backend.clear_session()
    size = sum(p.stat().st_size for p in version_dir.rglob("*") if p.is_file())
    seconds = time.perf_counter() - start
    return BuildReport(name, scale, version_dir, seconds, size, built.weight_bytes, diff)


def check_export(built: Built, version_dir: Path, seed: int = 0) -> float:
    """Loads the export with the TF1 loader and compares it with the in-memory model on
    random valid inputs; returns the largest absolute difference, raises ExportError."""
    rng = np.random.default_rng(seed)
    inputs = {f.name: sample(f, CHECK_ROWS, rng) for f in built.features}
    expected = built.predict(inputs)
    with ServingSession(version_dir) as session:
        signature = session.signatures[DEFAULT_SIGNATURE]
        if set(signature.inputs) != set(inputs):
            raise ExportError(f"{built.name}: signature inputs {sorted(signature.inputs)}")
        if set(signature.outputs) != set(built.outputs):
            raise ExportError(f"{built.name}: signature outputs {sorted(signature.outputs)}")
        got = session.run(inputs)
    diff = max(float(np.max(np.abs(got[k] - expected[k]))) for k in built.outputs)
    if not diff <= TOLERANCE:
        raise ExportError(f"{built.name}: export differs from the model by {diff:g}")
    return diff
