"""`modelbridge` command line: serve, convert, gates."""

from __future__ import annotations

import argparse
import sys

from server import __version__, logs


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve a model repository over the V2 protocol (REST, gRPC, metrics)",
                       description="Serve a Triton-layout model repository. Flags override MODELBRIDGE_* "
                                   "environment variables, which override the --config file.")
    p.add_argument("--model-repository", help="repository folder (default: the bundled example repository)")
    p.add_argument("--host", help="address to bind (default 127.0.0.1)")
    p.add_argument("--http-port", type=int, help="REST port (default 8000)")
    p.add_argument("--grpc-port", type=int, help="gRPC port, 0 to disable (default 8001)")
    p.add_argument("--metrics-port", type=int, help="Prometheus metrics port, 0 to disable (default 8002)")
    p.add_argument("--max-body-bytes", type=int, help="largest accepted request body (default 64 MiB)")
    p.add_argument("--grpc-max-message-bytes", type=int, help="largest gRPC message (default: --max-body-bytes)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="default info")
    p.add_argument("--log-format", choices=["plain", "json"], help="plain text or JSON lines (default plain)")
    p.add_argument("--shutdown-grace-secs", type=float,
                   help="on SIGTERM, how long in-flight requests may take to finish (default 10)")
    p.add_argument("--model-control-mode", choices=["none", "poll", "explicit"],
                   help="none: load/unload requests refused; poll: follow repository changes; "
                        "explicit: load/unload through the API (default explicit; all models load at startup)")
    p.add_argument("--repository-poll-secs", type=float, help="poll mode: seconds between scans (default 15)")
    p.add_argument("--sequence-idle-secs", type=float,
                   help="stateful models: drop a sequence after this many idle seconds (default 60)")
    p.add_argument("--max-sequences", type=int,
                   help="stateful models: most live sequences at once; more are refused with 429 (default 1024)")
    p.add_argument("--config", help="settings file (TOML or JSON) with the same names as the flags")
    p.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    from server.app import run
    from server.core.errors import ModelBridgeError
    from server.settings import load_settings

    flags = {k: v for k, v in vars(args).items() if k not in ("func", "config", "command")}
    try:
        settings = load_settings(flags, config_file=args.config)
    except ModelBridgeError as exc:
        print(f"modelbridge: {exc.message}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level, settings.log_format)
    try:
        run(settings)
    except ModelBridgeError as exc:
        print(f"modelbridge: {exc.message}", file=sys.stderr)
        return 2
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="modelbridge", description=__doc__)
    parser.add_argument("--version", action="version", version=f"modelbridge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_serve(sub)
    try:
        from converters.cli import register  # imports no framework until a command runs
    except ImportError:
        pass
    else:
        register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
