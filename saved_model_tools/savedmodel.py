"""Writing the output SavedModel, and loading a SavedModel the way TF-Serving does.

The output is the source SavedModel with nodes and signatures added to its `serve` MetaGraph:
the original graph, signatures, saver, collections and object graph are kept byte for byte,
and the checkpoint under `variables/` is the original one (hard-linked when the filesystem
allows, copied otherwise), so every weight stays a variable restored from it. `assets/` and
`assets.extra/` are copied. The directory is assembled under a hidden temporary name next to
DST and renamed into place only once verified, so a server polling the base path never sees
half a version.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from types import TracebackType

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import config_pb2, meta_graph_pb2, saved_model_pb2
from tensorflow.python.saved_model import fingerprinting_utils

from saved_model_tools.errors import ConversionError

SKIPPED = {"saved_model.pb", "saved_model.pbtxt", "fingerprint.pb"}
STRUCTURED_SIDECAR = Path("assets.extra") / "tfrec_structured.json"
SIDECAR_FORMAT = 1


def staging_dir(dst: Path) -> Path:
    if dst.exists() and any(dst.iterdir()):
        raise ConversionError(f"{dst} exists and is not empty; choose a new version directory")
    dst.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{dst.name}.tfrec-convert-", dir=dst.parent))


def write(
    src: Path,
    out: Path,
    model: saved_model_pb2.SavedModel,
    extra_files: dict[str, str],
) -> None:
    """Writes `model` and the source's checkpoint, assets and other files into `out`.
    `extra_files`: relative path -> text, written last (e.g. the structured sidecar)."""
    for child in src.iterdir():
        if child.name in SKIPPED:
            continue
        if child.is_dir():
            shutil.copytree(child, out / child.name, copy_function=_link_or_copy)
        else:
            _link_or_copy(child, out / child.name)
    (out / "saved_model.pb").write_bytes(model.SerializeToString(deterministic=True))
    for relative, text in extra_files.items():
        write_text(out / relative, text)
    try:
        fingerprinting_utils.write_fingerprint(str(out))
    except Exception:
        (out / "fingerprint.pb").unlink(missing_ok=True)


def write_text(path: Path, text: str) -> None:
    """Writes a file of the output; one already there is a hard link to the source's copy,
    so it is replaced, never written through."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    path.write_text(text)


def publish(staged: Path, dst: Path) -> None:
    if dst.exists():
        dst.rmdir()  # empty, checked by staging_dir
    os.replace(staged, dst)


def _link_or_copy(src: str | Path, dst: str | Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def json_text(doc: object) -> str:
    return json.dumps(doc, indent=1) + "\n"


def read_structured_sidecar(version_dir: Path) -> dict[str, dict]:
    """`<sig>_structured` -> {"original", "user_inputs", "item_inputs", "outputs"}; {} if the
    version has no (readable) `assets.extra/tfrec_structured.json`."""
    path = Path(version_dir) / STRUCTURED_SIDECAR
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(doc, dict) or doc.get("format") != SIDECAR_FORMAT:
        return {}
    return dict(doc.get("signatures", {}))


class Loaded:
    """A SavedModel loaded by the TF1 loader into a fresh Graph and Session, run by signature
    tensor names: how TF-Serving and tfrec load models."""

    def __init__(self, path: Path, config: config_pb2.ConfigProto | None = None) -> None:
        self.graph = tf.Graph()
        self.session = tf.compat.v1.Session(graph=self.graph, config=config)
        try:
            with self.graph.as_default():
                self.meta: meta_graph_pb2.MetaGraphDef = tf.compat.v1.saved_model.loader.load(
                    self.session, ["serve"], str(path)
                )
        except Exception as err:
            self.session.close()
            raise ConversionError(f"{path} cannot be loaded: {_first_line(err)}") from err
        self.signatures = dict(self.meta.signature_def)

    def run(
        self,
        signature: str,
        inputs: dict[str, np.ndarray],
        options: config_pb2.RunOptions | None = None,
        run_metadata: config_pb2.RunMetadata | None = None,
    ) -> dict[str, np.ndarray]:
        sig = self.signatures[signature]
        feed = {sig.inputs[k].name: v for k, v in inputs.items()}
        fetch = {k: info.name for k, info in sig.outputs.items()}
        return self.session.run(fetch, feed, options=options, run_metadata=run_metadata)

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> Loaded:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _first_line(err: Exception) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]
