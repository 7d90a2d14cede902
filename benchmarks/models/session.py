"""Run a SavedModel version exactly as TF-Serving loads it: the TF1 loader with the `serve`
tag into a fresh `tf.Graph` and `tf.compat.v1.Session`, signatures run by tensor names."""

from __future__ import annotations

from pathlib import Path
from types import TracebackType

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2

DEFAULT_SIGNATURE = "serving_default"


class ServingSession:
    """One loaded version. Not thread-safe to close while `run` is in flight."""

    def __init__(self, version_dir: Path | str, tags: tuple[str, ...] = ("serve",)) -> None:
        self.graph = tf.Graph()
        self.session = tf.compat.v1.Session(graph=self.graph)
        with self.graph.as_default():
            meta = tf.compat.v1.saved_model.loader.load(self.session, list(tags), str(version_dir))
        self.signatures: dict[str, meta_graph_pb2.SignatureDef] = dict(meta.signature_def)

    def run(
        self, inputs: dict[str, np.ndarray], signature: str = DEFAULT_SIGNATURE
    ) -> dict[str, np.ndarray]:
        """Feeds every input by its signature tensor name; fetches every signature output."""
        sig = self.signatures[signature]
        feed = {sig.inputs[name].name: value for name, value in inputs.items()}
        fetch = {name: info.name for name, info in sig.outputs.items()}
        return self.session.run(fetch, feed)

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> ServingSession:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
