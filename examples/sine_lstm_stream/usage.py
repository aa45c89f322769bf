"""What the three *_stream examples share: the step-form check and the "Streaming it" README section
(no framework imported here)."""

from __future__ import annotations

from typing import Any


def checked_step_form(name: str, stateful: Any, plain: Any, input_name: str, stream: Any) -> tuple[Any, float, str]:
    """Prove the step form (fed one step at a time == each prefix whole) and package it for publishing.

    Returns the ConversionResult to publish, the max streaming difference and the README's state-pair list."""
    from converters.annotations import read_annotations
    from converters.result import ConversionResult
    from converters.stateful import state_pairs, streaming_error

    error = streaming_error(stateful, input_name, stream)
    print(f"{name}: step by step vs whole sequence, max difference {error:.3g}")
    if error > 1e-5:
        raise SystemExit(f"{name}: the step form drifts from the whole sequence by {error:.3g}")
    pairs = ", ".join(f"`{pair['input']}` → `{pair['output']}`" for pair in state_pairs(stateful))
    result = ConversionResult(model=stateful, parity=plain.parity, annotations=read_annotations(stateful))
    return result, error, pairs


def usage(model: str, name: str, output: str, features: int) -> str:
    """README section: stream a sequence with tritonclient (gRPC stream) and step over REST with curl."""
    sample = ", ".join(["0.5"] * features)
    return f"""
## Streaming it

The server keeps the state per `sequence_id` (zeros at `sequence_start`, dropped at `sequence_end` or after
the idle timeout); clients send only `{name}`. One step per message on tritonclient's gRPC stream:

```python
import numpy as np
import tritonclient.grpc as grpcclient

steps = np.random.default_rng(0).uniform(-1, 1, (20, {features})).astype(np.float32)
answers = []
client = grpcclient.InferenceServerClient("localhost:8001")
client.start_stream(callback=lambda result, error: answers.append(error or result.as_numpy("{output}")))
for t, step in enumerate(steps):
    x = grpcclient.InferInput("{name}", [1, 1, {features}], "FP32")
    x.set_data_from_numpy(step.reshape(1, 1, {features}))
    client.async_stream_infer("{model}", [x], sequence_id=42,
                              sequence_start=t == 0, sequence_end=t == len(steps) - 1)
client.stop_stream()  # waits for every answer
```

The same over REST, one request per step (`sequence_end: true` on the last):

```sh
curl -s localhost:8000/v2/models/{model}/infer -d '{{"parameters": {{"sequence_id": 42, "sequence_start": true}},
  "inputs": [{{"name": "{name}", "shape": [1, 1, {features}], "datatype": "FP32", "data": [{sample}]}}]}}'
curl -s localhost:8000/v2/models/{model}/infer -d '{{"parameters": {{"sequence_id": 42}},
  "inputs": [{{"name": "{name}", "shape": [1, 1, {features}], "datatype": "FP32", "data": [{sample}]}}]}}'
```
"""
