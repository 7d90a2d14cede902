"""The model zoo at tiny scale: TF-Serving layout, sidecar, TF1-loader compatibility, exact
exports, and row independence (a row's scores never depend on the rest of its batch)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from tensorflow.core.framework import types_pb2

from benchmarks.models import NAMES, SIDECAR, BuildReport, Sidecar, export
from benchmarks.models.__main__ import main
from benchmarks.models.features import sample
from benchmarks.models.scales import FULL, dlrm_table_rows
from benchmarks.models.session import ServingSession

REQUIRED = {"wdl", "dlrm", "dcn_v2", "din", "dien", "mmoe", "user_heavy"}
DTYPES = {"int64": types_pb2.DT_INT64, "float32": types_pb2.DT_FLOAT, "string": types_pb2.DT_STRING}


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, BuildReport]:
    out = tmp_path_factory.mktemp("zoo")
    return {name: export(name, "tiny", out) for name in NAMES}


@pytest.fixture(scope="module")
def sessions(zoo: dict[str, BuildReport]) -> Iterator[dict[str, ServingSession]]:
    loaded = {name: ServingSession(report.path) for name, report in zoo.items()}
    yield loaded
    for session in loaded.values():
        session.close()


def random_rows(path: Path, rows: int, seed: int) -> dict[str, np.ndarray]:
    """Rows that each have their own user: a harder batch than one user's ranking request."""
    rng = np.random.default_rng(seed)
    return {f.name: sample(f, rows, rng) for f in Sidecar.read(path).features}


def test_zoo_has_the_required_models() -> None:
    assert set(NAMES) >= REQUIRED


@pytest.mark.parametrize("name", NAMES)
def test_export_is_in_tf_serving_layout_with_a_sidecar(
    zoo: dict[str, BuildReport], name: str
) -> None:
    path = zoo[name].path
    assert (path.parent.name, path.name) == (name, "1")
    assert (path / "saved_model.pb").is_file()
    assert (path / "variables" / "variables.index").is_file()
    raw = json.loads((path / SIDECAR).read_text())
    assert raw["model"] == name and raw["scale"] == "tiny"
    assert raw["user_inputs"] and raw["item_inputs"] and raw["outputs"]
    assert all(n.startswith("user_") for n in raw["user_inputs"])
    assert all(n.startswith("item_") for n in raw["item_inputs"])
    assert set(raw["features"]) == {*raw["user_inputs"], *raw["item_inputs"]}


@pytest.mark.parametrize("name", NAMES)
def test_export_reproduces_the_in_memory_model(zoo: dict[str, BuildReport], name: str) -> None:
    assert zoo[name].max_abs_diff <= 1e-5


@pytest.mark.parametrize("name", NAMES)
def test_serving_default_inputs_and_outputs_are_the_sidecars(
    zoo: dict[str, BuildReport], sessions: dict[str, ServingSession], name: str
) -> None:
    sidecar = Sidecar.read(zoo[name].path)
    signature = sessions[name].signatures["serving_default"]
    assert signature.method_name == "tensorflow/serving/predict"
    assert set(signature.inputs) == {*sidecar.user_inputs, *sidecar.item_inputs}
    for feature in sidecar.features:
        info = signature.inputs[feature.name]
        assert info.dtype == DTYPES[feature.dtype], feature.name
        assert [d.size for d in info.tensor_shape.dim] == [-1, *feature.shape], feature.name
    assert set(signature.outputs) == set(sidecar.outputs)
    for info in signature.outputs.values():
        assert info.dtype == types_pb2.DT_FLOAT
        assert [d.size for d in info.tensor_shape.dim] in ([-1], [-1, 1])


@pytest.mark.parametrize("name", NAMES)
def test_outputs_are_finite_and_row_independent(
    zoo: dict[str, BuildReport], sessions: dict[str, ServingSession], name: str
) -> None:
    session = sessions[name]
    inputs = random_rows(zoo[name].path, 6, seed=7)
    batch = session.run(inputs)
    singles = [session.run({k: v[i : i + 1] for k, v in inputs.items()}) for i in range(6)]
    order = np.array([3, 5, 0, 2, 4, 1])
    shuffled = session.run({k: v[order] for k, v in inputs.items()})
    for output, scores in batch.items():
        assert scores.shape[0] == 6 and np.isfinite(scores).all()
        assert scores.std() > 1e-3, "scores should differ between rows for a meaningful check"
        one_by_one = np.concatenate([single[output] for single in singles])
        np.testing.assert_allclose(one_by_one, scores, atol=1e-5, rtol=0)
        np.testing.assert_allclose(shuffled[output], scores[order], atol=1e-5, rtol=0)


def test_mmoe_has_two_task_outputs(zoo: dict[str, BuildReport]) -> None:
    assert Sidecar.read(zoo["mmoe"].path).outputs == ("ctr", "cvr")


def test_string_ids_go_through_lookup_tables(
    zoo: dict[str, BuildReport], sessions: dict[str, ServingSession]
) -> None:
    with_strings = [
        name
        for name, report in zoo.items()
        if any(f.dtype == "string" for f in Sidecar.read(report.path).features)
    ]
    assert {"wdl", "dlrm"} <= set(with_strings)
    for name in with_strings:
        graph = sessions[name].graph.as_graph_def()
        ops = {n.op for n in graph.node} | {
            n.op for f in graph.library.function for n in f.node_def
        }
        assert {"HashTableV2", "LookupTableFindV2"} <= ops, name


def test_unknown_strings_map_to_the_out_of_vocabulary_row(
    zoo: dict[str, BuildReport], sessions: dict[str, ServingSession]
) -> None:
    inputs = random_rows(zoo["dlrm"].path, 2, seed=1)
    inputs["user_country"] = np.array([b"??", b"not a country"], dtype=object)
    scores = sessions["dlrm"].run(inputs)["score"]
    assert np.isfinite(scores).all()


def test_full_scale_holds_a_400_mb_embedding_model() -> None:
    rows = sum(dlrm_table_rows(FULL).values())
    assert rows * FULL.dlrm_emb * 4 >= 400e6


def test_cli_builds_one_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--model", "dcn_v2", "--scale", "tiny", "--out", str(tmp_path)]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("dcn_v2") and " MB " in line and str(tmp_path / "dcn_v2" / "1") in line
    assert (tmp_path / "dcn_v2" / "1" / SIDECAR).is_file()


def test_unknown_model_or_scale_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown model"):
        export("nope", "tiny", tmp_path)
    with pytest.raises(ValueError, match="unknown scale"):
        export("din", "huge", tmp_path)
