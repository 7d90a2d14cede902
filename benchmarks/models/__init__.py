"""The recommendation model zoo: builders that export serving SavedModels in TF-Serving's
version layout, each with a sidecar naming its per-user inputs (see `features`).

    python -m benchmarks.models --model all --scale tiny --out /tmp/zoo
"""

from benchmarks.models.features import SIDECAR, Feature, Sidecar
from benchmarks.models.zoo import NAMES, BuildReport, ExportError, build, export

__all__ = [
    "NAMES",
    "SIDECAR",
    "BuildReport",
    "ExportError",
    "Feature",
    "Sidecar",
    "build",
    "export",
]
