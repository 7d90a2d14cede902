"""Zoo exports kept between benchmark runs, in the temp dir (`full` takes ~3 GB and a minute).

`<tmp>/tfrec-bench-zoo/<scale>-<key>/<name>/1` holds model `name` as `python -m
benchmarks.models` exports it (built in a subprocess, so the benchmark's own process never runs
Keras). The key hashes the zoo's sources and the TensorFlow and Keras versions: editing a
builder rebuilds, and the outdated exports of that scale are deleted then. An export appears
under its final name only once built and checked, so an interrupted build is redone.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

from benchmarks.models import SIDECAR

ROOT = Path(__file__).resolve().parents[1]
MODELS_SRC = ROOT / "benchmarks" / "models"
CACHE = Path(tempfile.gettempdir()) / "tfrec-bench-zoo"


def _key() -> str:
    digest = hashlib.sha256()
    for path in sorted(MODELS_SRC.glob("*.py")):
        digest.update(path.name.encode() + path.read_bytes())
    for package in ("tensorflow", "keras"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            digest.update(metadata.version(package).encode())
    return digest.hexdigest()[:12]


def zoo_model(name: str, scale: str, cache: Path = CACHE) -> Path:
    """The base path (holding version 1) of zoo model `name` at `scale`, built if needed."""
    home = cache / f"{scale}-{_key()}"
    base = home / name
    if (base / "1" / "saved_model.pb").is_file() and (base / "1" / SIDECAR).is_file():
        return base
    cache.mkdir(parents=True, exist_ok=True)
    for stale in cache.glob(f"{scale}-*"):
        if stale != home and not stale.name.endswith(".tmp"):
            shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{scale}-", suffix=".tmp", dir=cache))
    try:
        print(f"[zoo] building {name} at scale {scale} into {home}", file=sys.stderr, flush=True)
        command = [sys.executable, "-m", "benchmarks.models", "--model", name, "--scale", scale]
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
        done = subprocess.run(
            [*command, "--out", str(staging)], cwd=ROOT, env=env, capture_output=True, text=True
        )
        if done.returncode:
            raise RuntimeError(f"building {name} failed:\n{done.stderr[-3000:]}")
        home.mkdir(exist_ok=True)
        shutil.rmtree(base, ignore_errors=True)
        (staging / name).rename(base)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return base
