"""``modelbridge convert`` and ``modelbridge gates``: argparse subcommands, no framework imported here.

server/cli.py adds them with ``register(subparsers)``; each subcommand stores its handler as
``args.func`` (returning an exit code).  ``python -m converters.cli`` runs them standalone.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
import traceback
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

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
    convert.add_argument("--trust-pickle", action="store_true",
                         help="PyTorch: unpickle a whole model saved with torch.save(model) (runs code named in the "
                         "file: only for files you trust; prefer a .pt2 ExportedProgram or TorchScript)")
    convert.add_argument("-v", "--verbose", action="store_true",
                         help="show the frameworks' own log output (TensorFlow's C++ log, warnings) and tracebacks")
    convert.set_defaults(func=run_convert)

    gates = subparsers.add_parser(
        "gates", help="split every fused recurrent node of an ONNX model into per-gate matrices",
        description="Print or write W, R, Wb, Rb of every gate of every LSTM/GRU/RNN node, per direction.",
    )
    gates.add_argument("model", help="an .onnx file")
    gates.add_argument("--format", dest="fmt", choices=("json", "npz", "text"), default="json")
    gates.add_argument("-o", "--output", help="output file (default stdout; required for npz)")
    gates.set_defaults(func=run_gates)


@contextlib.contextmanager
def _framework_noise_hidden(verbose: bool) -> Iterator[TextIO]:
    """Yield the stream for our own messages; unless ``verbose``, everything else written to fd 2 is dropped.

    TensorFlow logs from C++ straight to file descriptor 2 (cuInit, oneDNN and CPU-feature banners, absl
    warnings), and Python warnings go to sys.stderr: the file descriptor itself is pointed elsewhere
    while the framework runs.  TF_CPP_MIN_LOG_LEVEL must be set before TensorFlow is imported.
    """
    if verbose:
        yield sys.stderr
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.stderr.flush()
    original = os.dup(2)
    ours = os.fdopen(os.dup(2), "w", buffering=1, encoding="utf-8", errors="replace")
    try:
        with open(os.devnull, "w") as sink, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            os.dup2(sink.fileno(), 2)
            yield ours
    finally:
        sys.stderr.flush()
        os.dup2(original, 2)
        os.close(original)
        ours.close()


def run_convert(args: argparse.Namespace) -> int:
    with _framework_noise_hidden(getattr(args, "verbose", False)) as err:
        code, result = _convert(args, err)
    if result is None:
        return code
    try:
        path = result.save(args.output)
    except OSError as exc:
        print(f"error: cannot write {args.output!r}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(result.parity.summary(), file=sys.stderr)
    recurrent = ", ".join(f"{entry['node']} ({entry['op']} from {entry['source']['layer']})"
                          for entry in result.annotations)
    print(f"recurrent nodes: {recurrent or 'none'}", file=sys.stderr)
    print(f"wrote {path} ({path.stat().st_size} bytes)", file=sys.stderr)
    return 0


def _convert(args: argparse.Namespace, err: TextIO) -> tuple[int, Any]:
    from converters import UnsupportedSourceError, convert
    from converters.parity import ParityError

    started = time.monotonic()

    def progress(stage: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {stage}", file=err, flush=True)

    extra: dict[str, Any] = {"outputs": args.outputs} if args.outputs else {}
    if getattr(args, "trust_pickle", False):
        extra["trust_pickle"] = True
    try:
        result = convert(args.source, framework=args.framework, inputs=args.inputs, opset=args.opset,
                         atol=args.atol, progress=progress, stateful=args.stateful, time_axis=args.time_axis,
                         **extra)
    except ParityError as exc:
        print(f"error: {exc}\n{exc.report.summary()}", file=err)
        return EXIT_FAILED, None
    except (UnsupportedSourceError, ValueError, RuntimeError, OSError, ImportError) as exc:
        print(f"error: {exc}", file=err)
        return EXIT_FAILED, None
    except TypeError as exc:  # an option the framework's converter does not take (e.g. --trust-pickle)
        print(f"error: {exc}", file=err)
        return EXIT_USAGE, None
    except Exception as exc:  # noqa: BLE001 - a framework's own failure: one line, the traceback on --verbose
        if getattr(args, "verbose", False):
            traceback.print_exc(file=err)
        print(f"error: the conversion failed inside the framework: {type(exc).__name__}: {exc} "
              "(run with --verbose for its log)", file=err)
        return EXIT_FAILED, None
    progress("writing")
    return 0, result


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
    if not model.ir_version or not model.opset_import:  # protobuf parses some non-ONNX bytes (e.g. "{}")
        print(f"error: {args.model!r} is not an ONNX model (no IR version or opset: convert it first with "
              "`modelbridge convert`)", file=sys.stderr)
        return EXIT_FAILED
    try:
        data = gates.write(model, fmt=args.fmt, path=Path(args.output) if args.output else None)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as exc:  # noqa: BLE001 - e.g. onnx's evaluator on a malformed weight subgraph: one line
        print(f"error: cannot split the gates of {args.model!r}: {type(exc).__name__}: {exc}", file=sys.stderr)
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
