"""The in-page runner on onnxruntime-web's WebGPU execution provider, in Chromium with SwiftShader's
software WebGPU adapter (no GPU on this machine): same answers as the server within 1e-5."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.browser_support import browser_server, build_jobs, compare, run_browser
from tests.support import ServerProcess

__all__ = ["browser_server"]  # the module-scoped server fixture, shared with the parity tests

# The recurrent models are the point (WebGPU runs LSTM/GRU with Sigmoid/Tanh/Relu); add_sub is the integer control.
MODELS = ["add_sub", "lstm_tiny", "sine_lstm", "bigru_classifier", "tf_basic_lstm"]


def test_webgpu_device_agrees_with_the_server(browser_server: ServerProcess, tmp_path: Path) -> None:
    models, reference = build_jobs(browser_server, device="webgpu", probes=False, only=MODELS)
    result = run_browser({"url": browser_server.url, "gpu": True, "models": models}, tmp_path)
    report, failures = compare(result, models, reference)
    print("\nWebGPU (SwiftShader) vs server, max |diff| per model:\n" + "\n".join(report))
    assert not failures, "\n".join(failures)
    devices = {m["name"]: m["device"] for m in result["models"]}
    assert set(devices.values()) == {"webgpu"}, f"the runner did not use WebGPU: {devices}"
