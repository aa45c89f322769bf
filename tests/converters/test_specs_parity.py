"""Input specs and the parity check: parsing, reports stored in the model, failures that name the output."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from converters import parity
from converters.specs import InputSpec, InputSpecError, parse_input_spec


def test_parse_input_spec_static_dynamic_and_default_dtype() -> None:
    assert parse_input_spec("x:1,50,1:float32") == InputSpec("x", (1, 50, 1), "float32")
    assert parse_input_spec("x:-1,50,?:int64") == InputSpec("x", (None, 50, None), "int64")
    assert parse_input_spec("tokens:-1,-1") == InputSpec("tokens", (None, None), "float32")
    assert str(parse_input_spec("x:-1,3:float16")) == "x:-1,3:float16"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [("x", "NAME:SHAPE"), ("x:1,a,3", "'a' is not an integer"), ("x:1,2:floaty", "unknown dtype 'floaty'"),
     (":1,2", "needs a name"), ("x:1,-3", "bad dimension -3")],
)
def test_parse_input_spec_rejects_with_reason(text: str, fragment: str) -> None:
    with pytest.raises(InputSpecError, match=fragment.replace("?", r"\?")):
        parse_input_spec(text)


def _add_model() -> onnx.ModelProto:
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Add", ["x", "x"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 3])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n", 3])],
    )
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])


def test_random_feeds_follow_specs_and_seed() -> None:
    model = _add_model()
    feeds = parity.random_feeds(model, seed=3, dynamic=4)
    assert feeds["x"].shape == (4, 3) and feeds["x"].dtype == np.float32
    np.testing.assert_array_equal(feeds["x"], parity.random_feeds(model, seed=3, dynamic=4)["x"])
    ints = parity.random_feeds([InputSpec("t", (2, None), "int64")], seed=0)["t"]
    assert ints.dtype == np.int64 and ints.shape == (2, 2) and ints.min() >= 0 and ints.max() < 10


def test_check_passes_and_stores_report_in_model() -> None:
    model = _add_model()
    feeds = parity.random_feeds(model, seed=0)
    report = parity.check(model, feeds, [feeds["x"] * 2 + 1e-6], atol=1e-4)
    assert report.passed and report.outputs[0].name == "y"
    assert 0 < report.outputs[0].max_abs < 1e-5
    stored = parity.read(onnx.load_from_string(model.SerializeToString()))
    assert stored == report
    assert stored.inputs[0]["shape"] == [2, 3]


def test_check_fails_naming_output_and_error() -> None:
    model = _add_model()
    feeds = parity.random_feeds(model, seed=0)
    with pytest.raises(parity.ParityError, match=r"output 'y' differs from the source by max_abs 0\.01") as info:
        parity.check(model, {"x": feeds["x"]}, {"y": feeds["x"] * 2 + 0.01}, atol=1e-3)
    assert not info.value.report.passed
    assert parity.read(model) is not None and not parity.read(model).passed  # the failure is recorded too


def test_check_rejects_shape_and_nan_mismatch() -> None:
    model = _add_model()
    feeds = parity.random_feeds(model, seed=0)
    with pytest.raises(parity.ParityError, match=r"shape \[2, 3\], source gives \[3, 2\]"):
        parity.check(model, feeds, [np.zeros((3, 2), np.float32)])
    expected = feeds["x"] * 2
    expected[0, 0] = np.nan
    with pytest.raises(parity.ParityError, match="max_abs inf"):
        parity.check(model, feeds, [expected])


def test_onnxruntime_failures_become_runtime_failure() -> None:
    model = _add_model()
    with pytest.raises(parity.RuntimeFailure, match="onnxruntime cannot run the converted model"):
        parity.run_onnx(model, {"x": np.zeros((2, 4), np.float32)})  # declared [n, 3]
