"""Runs the coverage-guided decoder fuzz target (`tests/fuzz_decoders.py`) for a fixed number
of libFuzzer iterations with a fixed seed, from a corpus of valid requests: every dtype as
typed fields and tensor_content, and REST predict/classify bodies."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ml_dtypes import bfloat16

from tfrec.base import codecs

TARGET = Path(__file__).parent / "fuzz_decoders.py"
RUNS = 2_000_000  # ~20 s here (~100k runs/s); -max_total_time caps a slower machine
REST_SEEDS = [
    b'{"instances": [1.0, 2.0, 5.0]}',
    b'{"signature_name": "s", "inputs": {"x": [[1, 2]], "y": [{"b64": "aGk="}]}}',
    b'{"instances": [{"x": [true, false], "y": "a"}, {"x": [false, true], "y": "b"}]}',
    b'{"inputs": [[NaN, Infinity, -1e308, 18446744073709551615]]}',
    b'{"examples": [{"a": 1, "b": [1.5, 2.5], "c": {"b64": "AA=="}}], "context": {"d": "e"}}',
]


def seeds() -> list[bytes]:
    arrays = [np.arange(6).astype(d.numpy).reshape(2, 3) for d in codecs.BY_ENUM.values()
              if not d.is_string and d.numpy != np.dtype(bfloat16)]  # fmt: skip
    arrays += [np.array([1.5, -2.0], dtype=bfloat16), np.array([b"ab", b"", b"\xff"], object)]
    protos = [codecs.from_ndarray(a, content) for a in arrays for content in (False, True)]
    tensors = [b"\x01" + p.SerializeToString() for p in protos]
    return tensors + [b"\x00" + bytes([i]) + body for i, body in enumerate(REST_SEEDS)]


@pytest.mark.timeout(300)
def test_decoders_survive_coverage_guided_fuzzing(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i, seed in enumerate(seeds()):
        (corpus / f"seed{i}").write_bytes(seed)
    command = [sys.executable, str(TARGET), f"-runs={RUNS}", "-seed=1", "-max_len=4096",
               "-timeout=20", "-rss_limit_mb=4096", "-max_total_time=150", str(corpus)]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=280)
    tail = "\n".join(result.stderr.splitlines()[-40:])
    assert result.returncode == 0, tail
    assert "Done " in result.stderr and " runs in " in result.stderr, tail
