"""``modelbridge convert`` and ``modelbridge gates``: argparse subcommands, no framework imported here.

server/cli.py adds them with ``register(subparsers)``; each subcommand stores its handler as
``args.func`` (returning an exit code).  ``python -m converters.cli`` runs them standalone.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from converters import DEFAULT_OPSET, FRAMEWORKS
from converters.parity import DEFAULT_ATOL
from converters.specs import InputSpecError, parse_input_spec

EXIT_FAILED = 1
EXIT_USAGE = 2


def _input_spec(text: str) -> object:
    try:
        return parse_input_spec(text)
    except InputSpecError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    convert = subparsers.add_parser(
        "convert", help="convert a TensorFlow, Keras or PyTorch model to ONNX (fused, annotated recurrent ops)",
        description="Convert a model to ONNX; recurrent layers become fused LSTM/GRU/RNN nodes with per-gate "
        "annotations, and the result is checked against the source framework (parity) before it is written.",
    )
    convert.add_argument("source", help="model file or SavedModel directory (.pt, .pt2, .keras, .h5, .pb, .meta, dir)")
    convert.add_argument("-o", "--output", required=True, help="where to write the .onnx file")
    convert.add_argument("--framework", choices=sorted(FRAMEWORKS), help="override detection from the file")
    convert.add_argument("--input", dest="inputs", action="append", type=_input_spec, metavar="NAME:SHAPE:DTYPE",
                         help="an input the source does not describe, e.g. x:-1,50,1:float32 (-1 = dynamic); repeat")
    convert.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    convert.add_argument("--atol", type=float, default=DEFAULT_ATOL,
                         help=f"largest absolute difference from the source allowed (default {DEFAULT_ATOL:g})")
    convert.add_argument("--stateful", action="store_true",
                         help="export the step form: every recurrent layer's state as an extra input and output, "
                         "so the server can carry it between requests of a sequence")
    convert.add_argument("--time-axis", type=int, default=1,
                         help="the time axis of the inputs, for proving the step form (default 1: [batch, time, ...])")
    convert.add_argument("--output-name", dest="outputs", action="append", metavar="TENSOR",
                         help="TensorFlow graphs: a graph tensor to export as an output (default: found from the "
                         "graph); repeat")
    convert.set_defaults(func=run_convert)

    gates = subparsers.add_parser(
        "gates", help="split every fused recurrent node of an ONNX model into per-gate matrices",
        description="Print or write W, R, Wb, Rb of every gate of every LSTM/GRU/RNN node, per direction.",
    )
    gates.add_argument("model", help="an .onnx file")
    gates.add_argument("--format", dest="fmt", choices=("json", "npz", "text"), default="json")
    gates.add_argument("-o", "--output", help="output file (default stdout; required for npz)")
    gates.set_defaults(func=run_gates)


def run_convert(args: argparse.Namespace) -> int:
    from converters import UnsupportedSourceError, convert
    from converters.parity import ParityError

    started = time.monotonic()

    def progress(stage: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {stage}", file=sys.stderr, flush=True)

    try:
        extra = {"outputs": args.outputs} if args.outputs else {}
        result = convert(args.source, framework=args.framework, inputs=args.inputs, opset=args.opset,
                         atol=args.atol, progress=progress, stateful=args.stateful, time_axis=args.time_axis,
                         **extra)
    except ParityError as exc:
        print(f"error: {exc}\n{exc.report.summary()}", file=sys.stderr)
        return EXIT_FAILED
    except (UnsupportedSourceError, ValueError, RuntimeError, OSError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    progress("writing")
    path = result.save(args.output)
    print(result.parity.summary(), file=sys.stderr)
    recurrent = ", ".join(f"{entry['node']} ({entry['op']} from {entry['source']['layer']})"
                          for entry in result.annotations)
    print(f"recurrent nodes: {recurrent or 'none'}", file=sys.stderr)
    print(f"wrote {path} ({path.stat().st_size} bytes)", file=sys.stderr)
    return 0


def run_gates(args: argparse.Namespace) -> int:
    import onnx
    from google.protobuf.message import DecodeError

    from converters import gates

    if args.fmt == "npz" and not args.output:
        print("error: --format npz writes binary data; give -o OUT.npz", file=sys.stderr)
        return EXIT_USAGE
    try:
        model = onnx.load(args.model)
    except OSError as exc:
        print(f"error: cannot read ONNX model {args.model!r}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except DecodeError as exc:
        print(f"error: {args.model!r} is not an ONNX model ({type(exc).__name__}: {exc})", file=sys.stderr)
        return EXIT_FAILED
    try:
        data = gates.write(model, fmt=args.fmt, path=Path(args.output) if args.output else None)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if not args.output:
        sys.stdout.write(data.decode())
    elif not gates.recurrent_nodes(model):
        print(f"note: {args.model} has no LSTM/GRU/RNN nodes", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="modelbridge")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
