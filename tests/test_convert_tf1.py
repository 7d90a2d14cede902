"""tfrec-convert on a TF1-style ranking model (tests/tf1_ranker.py): placeholders, ref
variables, a HashTable for a string id, a batch-level reduction and shape ops, several
signatures and outputs, and a tf.Example signature that is refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tensorflow.core.protobuf import saved_model_pb2

from benchmarks.models.session import ServingSession
from saved_model_tools import ConversionError, ConversionResult, convert
from tests import tf1_ranker

SIGNATURES = ["serving_default", "score"]


@pytest.fixture(scope="module")
def src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tf1_ranker.build(tmp_path_factory.mktemp("tf1"))


@pytest.fixture(scope="module", params=[True, False], ids=["decompose", "no-decompose"])
def converted(src: Path, request: pytest.FixtureRequest) -> ConversionResult:
    dst = src.parent / ("2" if request.param else "3")
    return convert(
        src, dst, list(tf1_ranker.USER_INPUTS), signatures=SIGNATURES, decompose=request.param
    )


def _structured(flat: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: v[:1] if k in tf1_ranker.USER_INPUTS else v for k, v in flat.items()}


@pytest.mark.parametrize("n", [1, 7, 100])
def test_twins_equal_originals_in_a_fresh_tf1_session(converted: ConversionResult, n: int) -> None:
    with ServingSession(converted.dst) as session:
        for signature in SIGNATURES:
            flat = tf1_ranker.requests(n, seed=n)
            if signature == "score":
                flat["user_unused"] = np.zeros((n, 2), np.float32)
            want = session.run(flat, signature)
            got = session.run(_structured(flat), signature + "_structured")
            for key in want:
                assert got[key].shape == want[key].shape == (n,)
                np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-6)


def test_batch_level_ops_stay_at_n_rows(converted: ConversionResult) -> None:
    large_request = _structured(tf1_ranker.requests(30, 0))
    small_request = {
        k: v[:3] if k in tf1_ranker.ITEM_INPUTS else v for k, v in large_request.items()
    }
    with ServingSession(converted.dst) as session:
        small = session.run(small_request, "serving_default_structured")
        large = session.run(large_request, "serving_default_structured")
    # the same user and first three candidates: `score` is per row, `listwise` sees N
    np.testing.assert_allclose(small["score"], large["score"][:3], rtol=1e-6)
    assert not np.allclose(small["listwise"], large["listwise"][:3])


def test_ref_variables_and_table_are_shared_not_copied(
    src: Path, converted: ConversionResult
) -> None:
    model = saved_model_pb2.SavedModel.FromString((converted.dst / "saved_model.pb").read_bytes())
    nodes = model.meta_graphs[0].graph_def.node
    twin = [n for n in nodes if n.name.startswith(("serving_default_structured/", "score_s"))]
    assert twin
    assert not [n for n in twin if n.op in ("VariableV2", "HashTableV2", "Assign")]
    refs = {ref.lstrip("^").partition(":")[0] for n in twin for ref in n.input}
    assert {"user_ids", "w1/read", "item_embedding/read"} <= refs
    assert not [n for n in twin if n.op == "Const" and n.attr["value"].tensor.ByteSize() > 1024]


def test_stats_of_the_split(converted: ConversionResult) -> None:
    stats = converted.signatures["serving_default"]
    assert stats.user_ops > 0 and stats.item_ops > 0
    assert stats.flops[1000][1] < stats.flops[1000][0]
    if stats.decompositions:
        assert stats.flop_ratio(1000) > 3  # 33 of 40 input features of the MLP are per user
        assert "MatMul" in stats.decompositions[0]


def test_tf_example_signature_is_refused(src: Path, tmp_path: Path) -> None:
    with pytest.raises(ConversionError, match=r"tf\.Example") as err:
        convert(src, tmp_path / "x", ["inputs"], signatures=["classify"])
    assert "\n" not in str(err.value)
    assert not (tmp_path / "x").exists()
