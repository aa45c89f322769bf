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
    p.add_argument("--grpc-engine", choices=["h2", "grpcio"],
                   help="what serves the gRPC port: h2, our HTTP/2 layer (default; 3.5-4x the calls per core of "
                        "grpcio in BENCHMARKS.md), or grpcio's asyncio server")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="default info")
    p.add_argument("--log-requests", action="store_true", default=None,
                   help="log one line per inference request with its request id (default off)")
    p.add_argument("--log-format", choices=["plain", "json"], help="plain text or JSON lines (default plain)")
    p.add_argument("--shutdown-grace-secs", type=float,
                   help="on SIGTERM, how long in-flight requests may take to finish (default 10)")
    p.add_argument("--model-control-mode", choices=["none", "poll", "explicit"],
                   help="none: load/unload requests refused; poll: follow repository changes; "
                        "explicit: load/unload through the API (default explicit; all models load at startup)")
    p.add_argument("--repository-poll-secs", type=float, help="poll mode: seconds between scans (default 15)")
    p.add_argument("--workers", type=int,
                   help="server processes sharing the REST and gRPC ports (default 1); with more than one, "
                        "statistics are per worker, worker 0 serves metrics, and the repository API is off "
                        "unless --model-control-mode poll")
    p.add_argument("--sequence-idle-secs", type=float,
                   help="stateful models: drop a sequence after this many idle seconds (default 60)")
    p.add_argument("--max-sequences", type=int,
                   help="stateful models: most live sequences at once; more are refused with 429 (default 1024)")
    sec = p.add_argument_group("security and limits", "API keys are secrets: prefer MODELBRIDGE_ADMIN_KEYS / "
                               "MODELBRIDGE_INFERENCE_KEYS or --keys-file to flags, which other users can see in ps")
    sec.add_argument("--admin-keys", help="comma-separated admin API keys (upload, load, unload, repository index)")
    sec.add_argument("--inference-keys", help="comma-separated inference API keys; setting any makes inference "
                                              "need a key (an admin key also grants inference)")
    sec.add_argument("--keys-file", help="file of '<admin|inference> <key>' lines")
    sec.add_argument("--allow-unauthenticated-admin", action="store_true", default=None,
                     help="without an admin key, allow administration to anyone who can reach the port")
    sec.add_argument("--require-inference-key", action="store_true", default=None,
                     help="inference needs a key (implied when inference keys are configured)")
    sec.add_argument("--cors-origins", help="comma-separated origins allowed by CORS (default: CORS off)")
    sec.add_argument("--model-check-timeout-secs", type=float,
                     help="an uploaded model must pass checks and load in a child process within this (default 60)")
    sec.add_argument("--model-check-memory-mb", type=int, help="address-space limit of that child (default 2048)")
    sec.add_argument("--max-pending-per-model", type=int,
                     help="requests in flight per model version; more are answered 503/UNAVAILABLE (default 4096)")
    sec.add_argument("--max-concurrent-requests", type=int,
                     help="REST connections and gRPC rpcs at once; more are refused (default 0: unbounded)")
    sec.add_argument("--body-timeout-secs", type=float,
                     help="a request body must arrive within this many seconds, else 408 (default 60; 0: off)")
    sec.add_argument("--header-timeout-secs", type=float,
                     help="request headers must arrive within this many seconds, else the connection is "
                          "closed (default 10; 0: off)")
    p.add_argument("--config", help="settings file (TOML or JSON) with the same names as the flags")
    p.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    from server.core.errors import ModelBridgeError
    from server.settings import load_settings

    flags = {k: v for k, v in vars(args).items() if k not in ("func", "config", "command")}
    try:
        settings = load_settings(flags, config_file=args.config)
    except ModelBridgeError as exc:
        print(f"modelbridge: {exc.message}", file=sys.stderr)
        return 2
    from server.app import CannotStart, run  # onnxruntime, grpc...: only once the settings are good

    logs.configure(settings.log_level, settings.log_format, requests=settings.log_requests)
    try:
        run(settings)
    except ModelBridgeError as exc:   # the repository or a key setting: what the user gave is wrong
        print(f"modelbridge: {exc.message}", file=sys.stderr)
        return 2
    except CannotStart as exc:   # e.g. a port in use
        print(f"modelbridge: {exc}", file=sys.stderr)
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
