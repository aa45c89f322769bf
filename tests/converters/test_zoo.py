"""The committed PyTorch zoo models: fused, annotated, proven when built, and still runnable."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from converters import gates, parity
from converters.annotations import read_annotations, validate
from converters.reference import intermediates, run_reference

ROOT = Path(__file__).resolve().parents[2]
REPOSITORY = ROOT / "server" / "examples" / "repository"
ZOO = {
    "autoencoder": {"Gemm", "Relu", "Sigmoid"},
    "maxout_prelu": {"PRelu", "ReduceMax", "Reshape", "Softmax"},
    "bigru_classifier": {"GRU", "Softmax"},
}


def _load(name: str) -> onnx.ModelProto:
    return onnx.load(REPOSITORY / name / "1" / "model.onnx")


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_model_is_proven_and_small(name: str) -> None:
    model = _load(name)
    ops = {node.op_type for node in model.graph.node}
    assert ZOO[name] <= ops and not {"Loop", "Scan"} & ops
    report = parity.read(model)
    assert report is not None and report.passed and report.atol == 1e-4
    path = REPOSITORY / name / "1" / "model.onnx"
    # the autoencoder is the documented exception (1.34 M float32 parameters; see its README)
    assert path.stat().st_size < (6_000_000 if name == "autoencoder" else 1_000_000)
    assert "## Parity report" in (ROOT / "examples" / name / "README.md").read_text()
    onnx.checker.check_model(model)


def test_bigru_classifier_gates_and_reference() -> None:
    model = _load("bigru_classifier")
    (entry,) = read_annotations(model)
    validate(entry)
    assert entry["op"] == "GRU" and entry["directions"] == ["forward", "reverse"] and entry["layout"] == 0
    assert entry["source"]["variables"]["reverse.W"] == "gru.weight_ih_l0_reverse"
    (node,) = gates.split_gates(model)["nodes"]
    assert node["directions"][1]["gates"]["h"]["source_gate"] == "n"
    feeds = parity.random_feeds(model, seed=11, dynamic=7)
    reference = run_reference(model, feeds)
    actual = intermediates(model, feeds, list(reference))
    for tensor, value in reference.items():
        np.testing.assert_allclose(value, actual[tensor], atol=1e-5, rtol=0)
    probabilities = parity.run_onnx(model, feeds)["output"]
    np.testing.assert_allclose(probabilities.sum(axis=-1), 1.0, atol=1e-5)


RECURRENT_MODELS = sorted(
    path.parents[1].name for path in REPOSITORY.glob("*/1/model.onnx")
    if gates.recurrent_nodes(onnx.load(path, load_external_data=False))
)


@pytest.mark.parametrize("name", RECURRENT_MODELS)
def test_numpy_reference_equals_onnxruntime_for_every_repository_model(name: str) -> None:
    model = _load(name)
    feeds = parity.random_feeds(model, seed=5, dynamic=4)
    reference = run_reference(model, feeds)
    actual = intermediates(model, feeds, list(reference))
    assert reference
    for tensor, value in reference.items():
        np.testing.assert_allclose(value, actual[tensor], atol=1e-5, rtol=0, err_msg=f"{name}: {tensor}")
