#!/usr/bin/env bash
# Run Triton's perf_analyzer (shipped in the tritonclient wheel) against a modelbridge server.
#
#   scripts/perf_analyzer.sh -m add_sub -i grpc -u 127.0.0.1:8001 [more perf_analyzer options]
#   scripts/perf_analyzer.sh -m add_sub -i http -u 127.0.0.1:8000 --concurrency-range 1:4
#
# The binary links libb64.so.0d (Debian: apt-get install libb64-0d) and libcudart.so.12, which
# comes from the nvidia-cuda-runtime-cu12 wheel (dev extra) - no GPU is needed or used.
# Set VENV to use another virtualenv (default: .venv next to this script's folder).
# Exits with perf_analyzer's status: 0 only if every request succeeded.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PA="$VENV/bin/perf_analyzer"
[[ -x "$PA" ]] || { echo "perf_analyzer not found at $PA: install the dev extra (tritonclient[all])" >&2; exit 2; }

CUDART="$("$VENV/bin/python" - <<'PY'
import pathlib
try:
    import nvidia.cuda_runtime as m
except ImportError:
    raise SystemExit(0)
for base in m.__path__:
    lib = pathlib.Path(base) / "lib"
    if (lib / "libcudart.so.12").exists():
        print(lib)
        break
PY
)"
[[ -n "$CUDART" ]] || { echo "libcudart.so.12 missing: pip install nvidia-cuda-runtime-cu12 (dev extra)" >&2; exit 2; }
# Read the whole cache before matching: `ldconfig -p | grep -q` under pipefail fails at random when
# grep exits on the first match and ldconfig dies of SIGPIPE.
LDCACHE="$(/sbin/ldconfig -p 2>/dev/null || true)"
if [[ "$LDCACHE" != *libb64.so.0d* ]]; then
  echo "libb64.so.0d missing: apt-get install -y libb64-0d (make browser does it)" >&2
  exit 2
fi

export LD_LIBRARY_PATH="$CUDART${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
exec "$PA" "$@"
