#!/usr/bin/env bash
# make bench: the shared peer harness (MLServer vs modelbridge, same pinned core), then bench/extra.py
# (batching at c=32, time to ready, RSS flatness). Needs wrk, h2load (Debian: wrk, nghttp2-client), taskset.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SHARED=${SHARED_BENCH:-$ROOT/../shared/bench}
command -v wrk >/dev/null && command -v h2load >/dev/null || \
  (apt-get -o DPkg::Lock::Timeout=300 update -qq && apt-get -o DPkg::Lock::Timeout=300 install -y -qq wrk nghttp2-client >/dev/null)
PYTHON=$ROOT/.venv/bin/python bash "$SHARED/peer_bench.sh" \
  "$ROOT/.venv/bin/modelbridge serve --model-repository {repo} --http-port {http} --grpc-port {grpc} --metrics-port 0"
cd "$ROOT/bench" && "$ROOT/.venv/bin/python" extra.py "$@"
