"""Rebuild the example zoo: run every examples/<name>/build.py, each in its own process (`make zoo`).

Each build script trains its model briefly on synthetic data with fixed seeds, converts it with our
converters, writes server/examples/repository/<name>/1/model.onnx and examples/<name>/README.md.
``publish`` below is the helper the build scripts share for that last step, and ``train_torch_classifier``
the training loop of the PyTorch classifiers.

    .venv/bin/python examples/build_zoo.py [NAME ...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
REPOSITORY = ROOT / "server" / "examples" / "repository"
SIZE_LIMIT = 1_000_000


def train_torch_classifier(model: Any, x: Any, y: Any, *, steps: int, batch: int, lr: float) -> float:
    """Adam on the negative log-likelihood of `model`'s softmax output, minibatches taken in order and
    wrapping around; returns the training accuracy (the model is left in eval mode)."""
    import torch  # only the PyTorch build scripts call this
    from torch import nn

    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    count = len(x)
    for step in range(steps):
        index = slice((step * batch) % count, (step * batch) % count + batch)
        loss = nn.functional.nll_loss(torch.log(model(x[index]) + 1e-9), y[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        return float((model(x).argmax(dim=-1) == y).float().mean())


def publish(
    name: str,
    result: Any,
    *,
    title: str,
    description: str,
    inputs: list[tuple[str, str, str, str]],
    outputs: list[tuple[str, str, str, str]],
    training: str,
    notes: str = "",
) -> Path:
    """Write the converted model into the repository and its README next to its build script.

    ``inputs``/``outputs`` are (name, shape, dtype, meaning) rows for the README table.
    """
    target = result.save(REPOSITORY / name / "1" / "model.onnx")
    size = target.stat().st_size
    ops = sorted({node.op_type for node in result.model.graph.node})
    source = {prop.key: prop.value for prop in result.model.metadata_props}.get("modelbridge.source", "{}")
    rows = "\n".join(f"| `{n}` | `{s}` | {d} | {m} |" for n, s, d, m in inputs)
    out_rows = "\n".join(f"| `{n}` | `{s}` | {d} | {m} |" for n, s, d, m in outputs)
    recurrent = "".join(
        f"- `{entry['node']}`: {entry['op']} ({entry['direction']}, hidden {entry['hidden_size']}, input "
        f"{entry['input_size']}) from {entry['source']['framework']} layer `{entry['source']['layer']}`, "
        f"source gate order {', '.join(entry['source']['gate_order'])}\n"
        for entry in result.annotations
    )
    readme = f"""# {name} — {title}

{description}

Built by `python examples/{name}/build.py` (or `make zoo`): {training}
Stored at `server/examples/repository/{name}/1/model.onnx` ({size / 1e6:.2f} MB, ONNX opset
{next(op.version for op in result.model.opset_import if op.domain in ('', 'ai.onnx'))}; ops: {', '.join(ops)}).
{notes}
## Inputs

| name | shape | dtype | meaning |
|---|---|---|---|
{rows}

## Outputs

| name | shape | dtype | meaning |
|---|---|---|---|
{out_rows}

## Recurrent nodes

{recurrent or 'None.'}
Per-gate weights: `modelbridge gates server/examples/repository/{name}/1/model.onnx --format text`.

## Parity report

Stored in the model's `metadata_props` under `modelbridge.parity`:

```
{result.parity.summary()}
```

Converter: `{source}`
"""
    readme_path = EXAMPLES / name / "README.md"
    readme_path.write_text(readme)
    return target


def build(names: list[str]) -> int:
    scripts = sorted(EXAMPLES.glob("*/build.py"))
    if names:
        scripts = [script for script in scripts if script.parent.name in names]
        missing = set(names) - {script.parent.name for script in scripts}
        if missing:
            print(f"no build script for: {', '.join(sorted(missing))}", file=sys.stderr)
            return 2
    failed = []
    for script in scripts:
        started = time.monotonic()
        print(f"== {script.parent.name}", flush=True)
        done = subprocess.run([sys.executable, str(script)], cwd=ROOT, check=False)
        status = "ok" if done.returncode == 0 else f"FAILED (exit {done.returncode})"
        print(f"== {script.parent.name}: {status} in {time.monotonic() - started:.0f}s", flush=True)
        if done.returncode:
            failed.append(script.parent.name)
    sizes = {path.parent.parent.name: path.stat().st_size for path in REPOSITORY.glob("*/1/model.onnx")}
    print(json.dumps(sizes, indent=1, sort_keys=True))
    for name, size in sorted(sizes.items()):
        if size > SIZE_LIMIT:
            print(f"note: {name} is {size / 1e6:.1f} MB (over 1 MB; its README says why)")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="build only these examples")
    return build(parser.parse_args().names)


if __name__ == "__main__":
    raise SystemExit(main())
