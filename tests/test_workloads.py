"""Workload generator: deterministic ranking requests in flat and structured form, valid for
the model's signature and vocabularies, written and read back as PredictionLog TFRecords."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from benchmarks import workloads
from benchmarks.models import NAMES, SIDECAR, export
from benchmarks.models.session import ServingSession
from benchmarks.workloads import Workload, make_request, read_tfrecord, write_tfrecord


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("zoo")
    return {name: export(name, "tiny", out, check=False).path for name in NAMES}


def assert_same_arrays(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert list(a) == list(b)
    for name in a:
        assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape, name
        assert np.array_equal(a[name], b[name]), name


@pytest.mark.parametrize("name", ["din", "wdl"])
def test_same_seed_gives_byte_identical_requests(zoo: dict[str, Path], name: str) -> None:
    first = make_request(zoo[name], 100, seed=5)
    assert_same_arrays(first, make_request(zoo[name], 100, seed=5))
    other = make_request(zoo[name], 100, seed=6)
    assert any(not np.array_equal(first[k], other[k]) for k in first)
    to_bytes = [
        workloads.predict_request(r, name, "serving_default").SerializeToString(deterministic=True)
        for r in (first, make_request(zoo[name], 100, seed=5))
    ]
    assert to_bytes[0] == to_bytes[1]


@pytest.mark.parametrize("name", NAMES)
def test_flat_is_structured_with_user_rows_tiled(zoo: dict[str, Path], name: str) -> None:
    workload = Workload.load(zoo[name])
    flat = workload.request(50, seed=3, form="flat")
    structured = workload.request(50, seed=3, form="structured")
    assert list(flat) == list(structured)
    for feature in workload.features:
        value = structured[feature.name]
        assert value.shape[0] == (1 if feature.per_user else 50), feature.name
        tiled = np.repeat(value, 50, axis=0) if feature.per_user else value
        assert np.array_equal(tiled, flat[feature.name]), feature.name


@pytest.mark.parametrize("name", NAMES)
def test_requests_are_valid_and_run_on_the_export(zoo: dict[str, Path], name: str) -> None:
    workload = Workload.load(zoo[name])
    inputs = workload.request(100, seed=0)
    for f in workload.features:
        value = inputs[f.name]
        assert value.shape == (100, *f.shape), f.name
        if f.dtype == "string":
            assert {v.decode() for v in value.ravel()} <= set(f.vocab), f.name
        elif f.dtype == "int64":
            assert value.min() >= 0 and value.max() < f.vocab_size, f.name
            if f.padded:  # at least one id, then only zeros
                nonzero = value != 0
                assert nonzero[:, 0].all() and (np.diff(nonzero.astype(int), axis=1) <= 0).all()
            else:
                assert value.min() >= 1, f.name
    with ServingSession(zoo[name]) as session:
        outputs = session.run(inputs)
        halves = [
            session.run({k: v[s] for k, v in inputs.items()}) for s in np.split(np.arange(100), 2)
        ]
    for output, scores in outputs.items():
        assert scores.shape[0] == 100 and np.isfinite(scores).all()
        rejoined = np.concatenate([h[output] for h in halves])
        np.testing.assert_allclose(rejoined, scores, atol=1e-5, rtol=0)


def test_tfrecord_round_trips(zoo: dict[str, Path], tmp_path: Path) -> None:
    workload = Workload.load(zoo["wdl"])
    requests = list(workload.predict_requests([10, 20], count=4, seed=1, form="structured"))
    path = tmp_path / "wdl.tfrecord"
    assert write_tfrecord(path, requests) == 4
    back = list(read_tfrecord(path))
    assert back == requests
    assert [r.model_spec.name for r in back] == ["wdl"] * 4
    assert {r.model_spec.signature_name for r in back} == {"serving_default_structured"}
    arrays = workloads.request_arrays(back[1])
    expected = workload.request(20, (1, 1), "structured")  # request i has seed (seed, i)
    assert_same_arrays({k: arrays[k] for k in expected}, expected)


def test_cli_writes_identical_files_for_one_seed(
    zoo: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    outs = [tmp_path / "a.tfrecord", tmp_path / "b.tfrecord"]
    for out in outs:
        argv = ["--model-dir", str(zoo["din"]), "--n", "100", "--count", "3", "--out", str(out)]
        assert workloads.main([*argv, "--seed", "0", "--form", "flat"]) == 0
    summary = capsys.readouterr().out.splitlines()[-1]
    assert f"3 flat requests for din (n=100) {outs[1].stat().st_size} bytes" in summary
    assert outs[0].read_bytes() == outs[1].read_bytes()


def test_replayed_file_runs_on_the_export(zoo: dict[str, Path], tmp_path: Path) -> None:
    path = tmp_path / "dlrm.tfrecord"
    workload = Workload.load(zoo["dlrm"])
    write_tfrecord(path, workload.predict_requests([7, 30], count=3, seed=2))
    with ServingSession(zoo["dlrm"]) as session:
        rows = [
            session.run(workloads.request_arrays(r), r.model_spec.signature_name)["score"].shape[0]
            for r in read_tfrecord(path)
        ]
    assert rows == [7, 30, 7]


def test_signature_and_sidecar_must_agree(zoo: dict[str, Path], tmp_path: Path) -> None:
    version = shutil.copytree(zoo["din"], tmp_path / "din" / "1")
    sidecar = json.loads((version / SIDECAR).read_text())
    sidecar["features"]["user_dense"]["shape"] = [-1, 99]
    (version / SIDECAR).write_text(json.dumps(sidecar))
    with pytest.raises(ValueError, match="user_dense"):
        Workload.load(version)
