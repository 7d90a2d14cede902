"""The bench pipeline: `make bench-smoke` as a user runs it, and the structured arms with a
stand-in converter (until saved_model_tools.convert exists).

`make -o .venv/.installed` keeps make from reinstalling the venv when setup.cfg is newer
than its stamp: the test checks the bench, not the install.
"""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path
from typing import Any

import pytest
import tensorflow as tf

from benchmarks import arms, bench

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def only(directory: Path, pattern: str) -> Path:
    found = sorted(directory.glob(pattern))
    assert len(found) == 1, f"{pattern} in {directory}: {found}"
    return found[0]


def check_outputs(out: Path) -> dict[str, Any]:
    """The JSON, table and PNG exist and are sane; returns the JSON."""
    result = json.loads(only(out, "????-??-??.json").read_text())
    table = only(out, "????-??-??.md").read_text()
    assert only(out, "speedup-*.png").read_bytes()[:4] == b"\x89PNG"
    assert result["cases"] and "| model | N |" in table
    for case in result["cases"]:
        assert f"| {case['model']} | {case['n']} |" in table
        for arm in ("floor_flat", "tfrec_flat"):
            stats = case["arms"][arm]
            assert stats["n"] >= 2 and 0 < stats["p50_us"] <= stats["p99_us"], (case, arm)
            assert "errors" not in stats
        for name, ratio in case["ratios"].items():
            assert ratio is None or (math.isfinite(ratio) and ratio > 0), (case, name)
        assert case["ratios"]["floor_over_tfrec_flat"] is not None
        assert max(case["max_abs_diff_vs_floor_flat"].values()) < 1e-4
    return result


def test_make_bench_smoke(tmp_path: Path) -> None:
    command = ["make", "-o", ".venv/.installed", "bench-smoke", f"BENCH_SMOKE_OUT={tmp_path}"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    result = check_outputs(tmp_path)
    assert {c["model"] for c in result["cases"]} == {"wdl", "din", "mmoe"}
    assert {c["n"] for c in result["cases"]} == {50, 100}
    assert result["scale"] == "tiny"
    if arms._tools("convert") is None:
        assert any("saved_model_tools.convert does not exist" in n for n in result["notes"])


def stand_in_convert(src: Path, dst: Path, user_inputs: list[str]) -> None:
    """Adds `serving_default_structured` by tiling the user inputs back to N rows: the right
    outputs with none of the savings (what the converter's output must agree with)."""
    loaded = tf.saved_model.load(str(src))
    original = loaded.signatures["serving_default"]
    specs = {
        k: tf.TensorSpec(v.shape, v.dtype, name=k)
        for k, v in original.structured_input_signature[1].items()
    }
    item = next(k for k in specs if k not in user_inputs)

    @tf.function(input_signature=[specs])
    def flat(inputs: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        return original(**inputs)

    @tf.function(input_signature=[specs])
    def structured(inputs: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        n = tf.shape(inputs[item])[0]
        tiled = {k: tf.repeat(v, n, axis=0) if k in user_inputs else v for k, v in inputs.items()}
        return original(**tiled)

    module = tf.Module()
    module.loaded = loaded
    signatures = {
        "serving_default": flat.get_concrete_function(),
        arms.STRUCTURED: structured.get_concrete_function(),
    }
    tf.saved_model.save(module, str(dst), signatures=signatures)


def test_structured_arms_once_a_converter_exists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    counted: list[tuple[str, str, int, bool]] = []

    def flops(version_dir: Path, signature: str, n: int, structured: bool) -> int:
        counted.append((Path(version_dir).parent.parent.name, signature, n, structured))
        return n * 10 if structured else n * 40

    tools = {"convert": stand_in_convert, "flops": flops}
    monkeypatch.setattr(arms, "_tools", tools.get)
    argv = ["--scale", "tiny", "--models", "din", "--n", "20", "--rounds", "1"]
    bench.main([*argv, "--seconds-per-case", "0.1", "--out", str(tmp_path), "--no-readme"])
    result = check_outputs(tmp_path)
    (case,) = result["cases"]
    assert set(case["arms"]) == {
        "floor_flat",
        "tfrec_flat",
        "tfrec_structured",
        "floor_structured",
        "tfrec_dedup",
    }
    assert case["request_bytes"]["structured"] < case["request_bytes"]["flat"]
    assert case["ratios"]["flop_ratio"] == 4.0
    # saved_model_tools.flops takes the original signature; structured=True counts its twin
    assert counted == [
        ("original", "serving_default", 20, False),
        ("converted", "serving_default", 20, True),
    ]
    assert all(case["ratios"][k] for k in ("floor_over_tfrec_structured", "flop_ratio"))
    assert result["notes"] == []
