"""Per-gate annotations: derived from the node, stored on node and model, validated, and the gate split."""

from __future__ import annotations

import copy
import io
import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from converters import gates
from converters.annotations import (
    ANNOTATION_KEY,
    AnnotationError,
    annotate_recurrent_node,
    node_annotation,
    read_annotations,
    validate,
)
from converters.parity import run_onnx
from converters.weights import NotConstantError, resolve
from tests.converters.helpers import recurrent_model

TORCH_LSTM = {"source_gate_order": ("i", "f", "g", "o"), "gate_map": {"i": "i", "f": "f", "g": "c", "o": "o"}}


def _annotated_lstm(**options: object) -> tuple[onnx.ModelProto, dict]:
    model = recurrent_model("LSTM", direction="bidirectional", peepholes=True, **options)  # type: ignore[arg-type]
    entry = annotate_recurrent_node(
        model, model.graph.node[0], framework="pytorch", layer="encoder", variables={"forward.W": "w_ih"},
        folded={"forget_bias": 1.0}, notes="test", **TORCH_LSTM,
    )
    return model, entry


def test_entry_describes_node_and_rows() -> None:
    _, entry = _annotated_lstm()
    assert entry["op"] == "LSTM" and entry["directions"] == ["forward", "reverse"]
    assert (entry["hidden_size"], entry["input_size"], entry["layout"]) == (4, 3, 0)
    assert entry["onnx_gate_order"] == ["i", "o", "f", "c"]
    assert entry["activations"] == ["Sigmoid", "Tanh", "Tanh"] * 2
    forget = entry["gate_rows"]["reverse"]["f"]
    assert forget == {"W": [8, 12], "R": [8, 12], "Wb": [8, 12], "Rb": [24, 28], "source_gate": "f"}
    assert entry["gate_rows"]["forward"]["c"]["source_gate"] == "g"
    assert entry["peephole_rows"]["forward"] == {"i": [0, 4], "o": [4, 8], "f": [8, 12]}
    assert entry["source"]["folded"] == {"forget_bias": 1.0}


def test_entry_is_stored_on_node_and_model_and_survives_serialization() -> None:
    model, entry = _annotated_lstm()
    loaded = onnx.load_from_string(model.SerializeToString())
    assert read_annotations(loaded) == [json.loads(json.dumps(entry))]
    assert node_annotation(loaded.graph.node[0]) == read_annotations(loaded)[0]
    annotate_recurrent_node(loaded, loaded.graph.node[0], framework="keras", layer="lstm", variables={},
                            source_gate_order=("i", "f", "c", "o"), gate_map={"i": "i", "f": "f", "c": "c", "o": "o"})
    assert [item["source"]["framework"] for item in read_annotations(loaded)] == ["keras"]  # replaced, not duplicated


@pytest.mark.parametrize(
    ("path", "value", "fragment"),
    [
        (("gate_map",), {"i": "i", "f": "f", "g": "f", "o": "o"}, "exactly once"),
        (("onnx_gate_order",), ["i", "f", "o", "c"], "onnx_gate_order"),
        (("gate_rows", "forward", "o", "R"), [0, 4], "forward/o.R"),
        (("gate_rows", "reverse", "i", "source_gate"), "g", "source_gate 'g'"),
        (("hidden_size",), "4", "hidden_size"),
        (("source", "framework"), None, "framework"),
    ],
)
def test_validate_names_what_is_wrong(path: tuple[str, ...], value: object, fragment: str) -> None:
    _, entry = _annotated_lstm()
    broken = copy.deepcopy(entry)
    target = broken["source"] if path[0] == "gate_map" else broken
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(AnnotationError, match=fragment):
        validate(broken)


def test_annotating_a_non_recurrent_node_is_refused() -> None:
    model = recurrent_model("GRU")
    relu = onnx.helper.make_node("Relu", ["y_h"], ["r"], name="relu")
    model.graph.node.append(relu)
    with pytest.raises(AnnotationError, match="Relu, not a recurrent op"):
        annotate_recurrent_node(model, model.graph.node[1], framework="x", layer="x", variables={},
                                source_gate_order=(), gate_map={})


def test_split_matches_fused_rows_and_source_gates() -> None:
    model, _ = _annotated_lstm()
    weight = numpy_helper.to_array(model.graph.initializer[0])
    bias = numpy_helper.to_array(model.graph.initializer[2])
    peep = numpy_helper.to_array(model.graph.initializer[3])
    split = gates.split_gates(model)
    (node,) = split["nodes"]
    reverse = node["directions"][1]
    assert reverse["direction"] == "reverse"
    np.testing.assert_array_equal(reverse["gates"]["f"]["W"], weight[1, 8:12].astype(np.float64))
    np.testing.assert_array_equal(reverse["gates"]["c"]["Rb"], bias[1, 28:32].astype(np.float64))
    np.testing.assert_array_equal(reverse["peepholes"]["o"], peep[1, 4:8].astype(np.float64))
    assert reverse["gates"]["c"]["source_gate"] == "g" and node["source"]["layer"] == "encoder"
    json.loads(gates.to_json(model))  # plain JSON


def test_npz_and_text_writers() -> None:
    model, _ = _annotated_lstm()
    archive = np.load(io.BytesIO(gates.write(model, fmt="npz")))
    assert archive["lstm0/forward/i/W"].shape == (4, 3)
    assert archive["lstm0/reverse/peepholes/f"].shape == (4,)
    text = gates.write(model, fmt="text").decode()
    assert ("[reverse] gate c (source gate g): W[1, 12:16] R[1, 12:16] Wb=B[1, 12:16] Rb=B[1, 28:32] "
            "<- 3rd source gate of i, f, g, o") in text
    assert "folded {'forget_bias': 1.0}" in text
    with pytest.raises(ValueError, match="unknown gates format 'csv'"):
        gates.write(model, fmt="csv")


def test_weights_behind_slice_concat_chains_are_resolved() -> None:
    """The torch dynamo exporter feeds LSTM from Slice/Concat of parameters; W must still resolve."""
    model = recurrent_model("GRU", direction="bidirectional")
    weight = model.graph.initializer[0]
    original = numpy_helper.to_array(weight)
    weight.name = "packed"
    ints = [numpy_helper.from_array(np.array([v], np.int64), n) for v, n in ((0, "s0"), (1, "s1"), (2, "s2"), (0, "ax"))]
    model.graph.initializer.extend(ints)
    model.graph.node.insert(0, onnx.helper.make_node("Slice", ["packed", "s1", "s2", "ax"], ["back"]))
    model.graph.node.insert(0, onnx.helper.make_node("Slice", ["packed", "s0", "s1", "ax"], ["front"]))
    model.graph.node.insert(2, onnx.helper.make_node("Concat", ["front", "back"], ["gru0.W"], axis=0))
    np.testing.assert_array_equal(resolve(model, "gru0.W"), original)
    feeds = {"x": np.ones((3, 1, 3), np.float32)}
    run_onnx(model, feeds)  # still a valid model
    split = gates.split_gates(model)
    np.testing.assert_array_equal(split["nodes"][0]["directions"][1]["gates"]["h"]["W"], original[1, 8:12].astype(np.float64))
    with pytest.raises(NotConstantError, match="graph input 'x'"):
        resolve(model, "y")


def test_model_annotation_key_is_documented_name() -> None:
    model, _ = _annotated_lstm()
    assert [prop.key for prop in model.metadata_props] == [ANNOTATION_KEY] == ["modelbridge.recurrent"]


def test_annotating_raises_ir_version_to_carry_node_metadata() -> None:
    model = recurrent_model("RNN")
    model.ir_version = 8
    annotate_recurrent_node(model, model.graph.node[0], framework="pytorch", layer="rnn", variables={},
                            source_gate_order=("h",), gate_map={"h": "i"})
    assert model.ir_version == 10
    onnx.checker.check_model(model)
    assert node_annotation(onnx.load_from_string(model.SerializeToString()).graph.node[0]) is not None
