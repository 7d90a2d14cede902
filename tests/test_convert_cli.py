"""The tfrec-convert command line: success output and report, and each refusal as one clear
line with a non-zero exit and nothing written."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.workloads import predict_request, write_tfrecord
from saved_model_tools import cli
from tests import tf1_ranker

TESTDATA = Path(__file__).parent / "testdata" / "tfserving"
USER = ",".join(tf1_ranker.USER_INPUTS)


@pytest.fixture(scope="module")
def src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tf1_ranker.build(tmp_path_factory.mktemp("tf1"))


def run(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def refused(capsys: pytest.CaptureFixture[str], dst: Path, *argv: str | Path) -> str:
    code, _, err = run(capsys, *argv)
    line = [x for x in err.splitlines() if x.startswith("tfrec-convert: error:")]
    assert code == 1, err
    assert len(line) == 1, err
    assert not dst.exists() or not any(dst.iterdir())
    assert not [p for p in dst.parent.iterdir() if p.name.startswith(".")], "staging left over"
    return line[0]


def test_converts_and_reports(src: Path, tmp_path: Path, capsys) -> None:
    dst = tmp_path / "model" / "2"
    code, out, _ = run(capsys, src, dst, "--user-inputs", USER, "--report")
    assert code == 0
    assert "serving_default -> serving_default_structured" in out
    assert "FLOPs per request" in out and "decompositions: 1" in out
    page = (dst / "assets.extra" / "tfrec_convert_report.html").read_text()
    assert "<svg" in page and "per user" in page
    assert (dst / "assets.extra" / "tfrec_convert_report.json").is_file()
    assert (dst / "saved_model.pb").is_file() and (dst / "variables").is_dir()


def test_infer_prints_the_proposal(src: Path, tmp_path: Path, capsys) -> None:
    samples = tmp_path / "flat.tfrecord"
    requests = [predict_request(tf1_ranker.requests(n, n), "m", "serving_default") for n in (4, 9)]
    write_tfrecord(samples, requests)
    code, out, _ = run(capsys, src, tmp_path / "m" / "2", "--infer-user-inputs", samples)
    assert code == 0
    assert "proposed user inputs: user_dense,user_hist,user_id" in out


def test_refuses_unknown_input(src: Path, tmp_path: Path, capsys) -> None:
    dst = tmp_path / "2"
    line = refused(capsys, dst, src, dst, "--user-inputs", "user_id,nope")
    assert "unknown input 'nope'" in line and "item_dense" in line


def test_refuses_unknown_signature(src: Path, tmp_path: Path, capsys) -> None:
    dst = tmp_path / "2"
    line = refused(capsys, dst, src, dst, "--user-inputs", USER, "--signatures", "ranking")
    assert "signature 'ranking' does not exist" in line and "serving_default" in line


def test_refuses_user_input_nothing_consumes(src: Path, tmp_path: Path, capsys) -> None:
    dst = tmp_path / "2"
    line = refused(
        capsys, dst, src, dst, "--user-inputs", "user_id,user_unused", "--signatures", "score"
    )
    assert "no output depends on user input 'user_unused'" in line


@pytest.mark.parametrize(
    ("model", "signature", "inputs"),
    [
        ("saved_model_half_plus_two_cpu/00000123", "classify_x_to_y", "inputs"),
        ("saved_model_half_plus_two_cpu/00000123", "regress_x_to_y", "inputs"),
        ("saved_model_half_plus_two_tf2_cpu/00000123", "classify_x_to_y", "inputs"),
    ],
)
def test_refuses_tf_example_signatures(model, signature, inputs, tmp_path: Path, capsys) -> None:
    dst = tmp_path / "2"
    line = refused(
        capsys, dst, TESTDATA / model, dst, "--user-inputs", inputs, "--signatures", signature
    )
    assert "tf.Example" in line and "out of scope" in line


def test_refuses_when_every_input_is_per_user(tmp_path: Path, capsys) -> None:
    dst = tmp_path / "2"
    line = refused(
        capsys, dst, TESTDATA / "saved_model_half_plus_two_cpu/00000123", dst, "--user-inputs", "x"
    )
    assert "every input is per-user" in line


@pytest.mark.parametrize("damage", ["missing", "garbage", "no-variables"])
def test_refuses_what_cannot_be_loaded(src: Path, tmp_path: Path, capsys, damage: str) -> None:
    broken = tmp_path / "broken" / "1"
    shutil.copytree(src, broken)
    if damage == "missing":
        (broken / "saved_model.pb").unlink()
    elif damage == "garbage":
        (broken / "saved_model.pb").write_bytes(b"\x08\x01\x12\x04 not a proto")
    else:
        shutil.rmtree(broken / "variables")
    dst = tmp_path / "2"
    line = refused(capsys, dst, broken, dst, "--user-inputs", USER)
    assert "cannot be loaded" in line


def test_refuses_without_user_inputs_and_a_non_empty_dst(src: Path, tmp_path: Path, capsys) -> None:
    dst = tmp_path / "2"
    assert "--user-inputs" in refused(capsys, dst, src, dst)
    dst.mkdir()
    (dst / "keep").write_text("x")
    code, _, err = run(capsys, src, dst, "--user-inputs", USER)
    assert code == 1 and "not empty" in err and (dst / "keep").is_file()


@pytest.mark.slow
def test_console_script(src: Path, tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "tfrec-convert"
    bad = subprocess.run(
        [script, src, tmp_path / "a", "--user-inputs", "nope"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines()[-1].startswith("tfrec-convert: error: unknown input")
    good = subprocess.run(
        [script, src, tmp_path / "b", "--user-inputs", USER],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert good.returncode == 0, good.stderr
    assert "serving_default_structured" in good.stdout


def test_reconverting_keeps_twins_and_never_writes_through_to_src(
    src: Path, tmp_path: Path, capsys
) -> None:
    first, second = tmp_path / "m" / "2", tmp_path / "m" / "3"
    assert run(capsys, src, first, "--user-inputs", USER, "--report")[0] == 0
    page = (first / "assets.extra" / "tfrec_convert_report.html").read_text()
    sidecar = (first / "assets.extra" / "tfrec_structured.json").read_text()
    code, _, _ = run(
        capsys, first, second, "--user-inputs", USER, "--signatures", "score", "--report"
    )
    assert code == 0
    assert (first / "assets.extra" / "tfrec_convert_report.html").read_text() == page
    assert (first / "assets.extra" / "tfrec_structured.json").read_text() == sidecar
    doc = json.loads((second / "assets.extra" / "tfrec_structured.json").read_text())
    assert set(doc["signatures"]) == {"serving_default_structured", "score_structured"}
    line = refused(
        capsys, tmp_path / "m" / "4", second, tmp_path / "m" / "4", "--user-inputs", USER
    )
    assert "already has signature serving_default_structured" in line
