"""tfrec-convert on the model zoo at tiny scale.

Every model converts; loaded the way TF-Serving loads it (TF1 loader, fresh Graph/Session, run
by signature tensor names) its structured twin gives the original's outputs at N = 1, 7 and 100
on the zoo's own ranking requests; weights stay variables; the output keeps the original
signatures and writes the structured sidecar next to SRC's assets.extra; FLOPs go down; and
--infer-user-inputs proposes exactly the user inputs from flat workloads.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tensorflow.core.protobuf import saved_model_pb2

from benchmarks import workloads
from benchmarks.models import NAMES, SIDECAR, Sidecar, build
from benchmarks.models.session import ServingSession
from saved_model_tools import ConversionResult, convert, flops
from saved_model_tools.infer import propose

TWIN = "serving_default_structured"


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("zoo")
    return {name: build(name, "tiny", out) for name in NAMES}


@pytest.fixture(scope="module")
def converted(
    zoo: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, ConversionResult]:
    out = tmp_path_factory.mktemp("converted")
    return {
        name: convert(path, out / name / "2", Sidecar.read(path).user_inputs)
        for name, path in zoo.items()
    }


def _meta(version_dir: Path) -> saved_model_pb2.MetaGraphDef:
    model = saved_model_pb2.SavedModel.FromString((version_dir / "saved_model.pb").read_bytes())
    return model.meta_graphs[0]


@pytest.mark.parametrize("name", NAMES)
def test_twin_equals_original_in_a_fresh_tf1_session(
    zoo: dict[str, Path], converted: dict[str, ConversionResult], name: str
) -> None:
    result = converted[name]
    assert result.signatures["serving_default"].max_rel_diff <= 1e-5
    with ServingSession(result.dst) as session:
        for n in (1, 7, 100):
            flat = workloads.make_request(zoo[name], n, seed=n, form="flat")
            structured = workloads.make_request(zoo[name], n, seed=n, form="structured")
            want = session.run(flat)
            got = session.run(structured, TWIN)
            assert set(got) == set(want)
            for key in want:
                assert got[key].shape == want[key].shape
                np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_weights_stay_variables(
    zoo: dict[str, Path], converted: dict[str, ConversionResult], name: str
) -> None:
    before = _meta(zoo[name]).graph_def
    after = _meta(converted[name].dst).graph_def
    twin = [n for n in after.node if n.name.startswith(TWIN + "/")]
    variables = {n.name for n in before.node if n.op in ("VarHandleOp", "VariableV2")}
    assert variables == {n.name for n in after.node if n.op in ("VarHandleOp", "VariableV2")}
    assert not [n.name for n in twin if n.op in ("VarHandleOp", "VariableV2", "HashTableV2")]
    read = {ref.lstrip("^").partition(":")[0] for n in twin for ref in n.input}
    assert read & variables, "the twin reads the same weights"
    big = [n.name for n in twin if n.op == "Const" and n.attr["value"].tensor.ByteSize() > 1024]
    assert not big, f"constants where weights should be read: {big}"
    files = sorted(p.name for p in (converted[name].dst / "variables").iterdir())
    assert files == sorted(p.name for p in (zoo[name] / "variables").iterdir())


@pytest.mark.parametrize("name", NAMES)
def test_layout_signatures_and_sidecar(
    zoo: dict[str, Path], converted: dict[str, ConversionResult], name: str
) -> None:
    dst = converted[name].dst
    before, after = _meta(zoo[name]), _meta(dst)
    for sig, definition in before.signature_def.items():
        assert after.signature_def[sig] == definition, f"{sig} changed"
    twin = after.signature_def[TWIN]
    sidecar = Sidecar.read(zoo[name])
    assert set(twin.inputs) == set(before.signature_def["serving_default"].inputs)
    for key in sidecar.user_inputs:
        assert twin.inputs[key].tensor_shape.dim[0].size == 1
    doc = json.loads((dst / "assets.extra" / "tfrec_structured.json").read_text())
    assert doc == {
        "format": 1,
        "signatures": {
            TWIN: {
                "original": "serving_default",
                "user_inputs": sidecar.user_inputs,
                "item_inputs": sorted(sidecar.item_inputs),
                "outputs": sorted(sidecar.outputs),
            }
        },
    }
    assert (dst / SIDECAR).read_text() == (zoo[name] / SIDECAR).read_text()
    assert not [p for p in dst.parent.iterdir() if p.name.startswith(".")], "staging left over"


@pytest.mark.parametrize("name", NAMES)
def test_flops_go_down(converted: dict[str, ConversionResult], name: str) -> None:
    stats = converted[name].signatures["serving_default"]
    for n in (100, 1000):
        before, after = stats.flops[n]
        assert 0 < after < before
    assert stats.ops > 0 and stats.user_ops > 0 and stats.item_ops > 0
    expected = {"dien": 5.0, "user_heavy": 50.0, "mmoe": 1.5, "wdl": 1.3}
    assert stats.flop_ratio(1000) >= expected.get(name, 1.0)


def test_flops_api_agrees_with_the_conversion(converted: dict[str, ConversionResult]) -> None:
    result = converted["din"]
    before, after = result.signatures["serving_default"].flops[100]
    assert flops(result.dst, "serving_default", 100, structured=False) == before
    assert flops(result.dst, "serving_default", 100, structured=True) == after
    assert flops(result.src, "serving_default", 100, structured=False) == before


def test_sequence_models_move_their_encoders_to_the_user_side(
    converted: dict[str, ConversionResult],
) -> None:
    dien = converted["dien"].signatures["serving_default"]
    assert dien.loop_frames == {"user": 1, "item": 0}  # the GRU runs once per request
    din = converted["din"].signatures["serving_default"]
    assert din.broadcasts == [], "DIN's history reaches the candidates by implicit broadcast"
    assert any("Tensordot" in d for d in din.decompositions), "the attention unit is split"


def _flat_requests(version_dir: Path, path: Path) -> Path:
    workload = workloads.Workload.load(version_dir)
    workloads.write_tfrecord(path, workload.predict_requests((5, 30), 6, seed=3, form="flat"))
    return path


@pytest.mark.parametrize("name", NAMES)
def test_infer_user_inputs_proposes_exactly_the_user_inputs(
    zoo: dict[str, Path], tmp_path: Path, name: str
) -> None:
    samples = _flat_requests(zoo[name], tmp_path / "flat.tfrecord")
    meta = _meta(zoo[name])
    proposal, read = propose(samples, meta, "serving_default")
    assert proposal == sorted(Sidecar.read(zoo[name]).user_inputs)
    assert len(read) == 6


def test_convert_with_inferred_user_inputs_and_no_decompose(
    zoo: dict[str, Path], tmp_path: Path
) -> None:
    samples = _flat_requests(zoo["wdl"], tmp_path / "flat.tfrecord")
    result = convert(zoo["wdl"], tmp_path / "wdl" / "3", infer_from=samples, decompose=False)
    assert result.user_inputs == sorted(Sidecar.read(zoo["wdl"]).user_inputs)
    assert result.proposed_user_inputs == result.user_inputs
    assert result.signatures["serving_default"].decompositions == []
