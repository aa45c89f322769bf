"""The `modelbridge` entry point as a user runs it."""

from __future__ import annotations

import socket
import subprocess
import sys

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


def test_bad_settings_exit_with_a_message(tmp_path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text('http_port = "not a port"\n')
    out = run("serve", "--config", str(cfg))
    assert out.returncode == 2 and "http_port" in out.stderr


def _one_line_refusal(out: subprocess.CompletedProcess, code: int, *words: str) -> None:
    lines = out.stderr.strip().splitlines()
    assert out.returncode == code, out.stderr
    # The error is the last line, alone; startup log lines may come before it, nothing else.
    assert lines[-1].startswith("modelbridge: ") and "Traceback" not in out.stderr, out.stderr
    assert all(" INFO " in line for line in lines[:-1]), out.stderr
    for word in words:
        assert word in lines[-1], lines[-1]


def test_admin_without_key_refused_on_a_public_host() -> None:
    for host in ("0.0.0.0", "::", "192.0.2.7", "example.com"):
        out = run("serve", "--host", host, "--allow-unauthenticated-admin")
        _one_line_refusal(out, 2, "--allow-unauthenticated-admin", host)


def test_bad_settings_file_and_repository_are_one_line_errors(tmp_path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("http_port = [\n")
    _one_line_refusal(run("serve", "--config", str(broken)), 2, str(broken))
    _one_line_refusal(run("serve", "--config", str(tmp_path / "absent.toml")), 2, "absent.toml")
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]")
    _one_line_refusal(run("serve", "--config", str(listed)), 2, "must hold an object")
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe")
    _one_line_refusal(run("serve", "--config", str(binary)), 2, "cannot read config file")
    _one_line_refusal(run("serve", "--model-repository", str(tmp_path / "nowhere")), 2, "does not exist")
    a_file = tmp_path / "file"
    a_file.write_text("")
    _one_line_refusal(run("serve", "--model-repository", str(a_file)), 2, "not a directory")


def test_busy_port_is_a_one_line_error(tmp_path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        for flag in ("--http-port", "--grpc-port", "--metrics-port"):
            ports = {"--http-port": free_port(), "--grpc-port": free_port(), "--metrics-port": free_port(), flag: port}
            out = run("serve", "--model-repository", str(repo), *(x for kv in ports.items() for x in map(str, kv)))
            _one_line_refusal(out, 2, f"127.0.0.1:{port}", "already in use")
