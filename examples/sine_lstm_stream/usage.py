"""The "Streaming it" README section the three *_stream examples share (no framework imported here)."""

from __future__ import annotations


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
