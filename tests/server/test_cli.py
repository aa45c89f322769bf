"""The `modelbridge` entry point as a user runs it."""

from __future__ import annotations

import subprocess
import sys

import httpx

from tests.support import ROOT, free_port


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "server.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, check=False)  # callers assert on the exit code


def test_help_documents_every_command() -> None:
    out = run("--help")
    assert out.returncode == 0
    assert "serve" in out.stdout
    serve = run("serve", "--help")
    for flag in ("--model-repository", "--host", "--http-port", "--grpc-port", "--metrics-port"):
        assert flag in serve.stdout


def test_serve_defaults_to_bundled_examples_and_stops_on_sigterm(tmp_path) -> None:
    import signal
    import time

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "server.cli", "serve", "--http-port", str(port),
                             "--grpc-port", "0", "--metrics-port", str(free_port()),
                             "--allow-unauthenticated-admin"], cwd=ROOT)
    try:
        for _ in range(300):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        names = {m["name"] for m in httpx.post(f"http://127.0.0.1:{port}/v2/repository/index").json()}
        assert {"add_sub", "identity_types", "lstm_tiny"} <= names
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0


def test_bad_settings_exit_with_a_message(tmp_path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text('http_port = "not a port"\n')
    out = run("serve", "--config", str(cfg))
    assert out.returncode == 2 and "http_port" in out.stderr
