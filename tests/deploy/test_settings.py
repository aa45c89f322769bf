"""One settings object: flag > MODELBRIDGE_* environment > config file > default, for the real process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import fields
from pathlib import Path

import httpx
import orjson
import pytest

from server.cli import build_parser
from server.core.errors import InvalidArgument
from server.settings import Settings, load_settings
from tests.deploy.helpers import OPEN_ADMIN, add_sub_body
from tests.support import ROOT, ServerProcess, copy_repository, free_port


def serve_flags() -> set[str]:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return {opt for action in sub.choices["serve"]._actions for opt in action.option_strings}


def test_every_setting_has_a_flag() -> None:
    flags = serve_flags()
    internal = {"extra", "worker_index"}  # worker_index: set by the multi-process supervisor, not by users
    missing = [f.name for f in fields(Settings)
               if f.name not in internal and "--" + f.name.replace("_", "-") not in flags]
    assert missing == []


def test_precedence_in_process(tmp_path: Path) -> None:
    cfg = tmp_path / "s.toml"
    cfg.write_text('http_port = 1001\nmetrics_port = 1002\nmodel_control_mode = "none"\nlog_format = "json"\n')
    env = {"MODELBRIDGE_HTTP_PORT": "2001", "MODELBRIDGE_MODEL_CONTROL_MODE": "poll",
           "MODELBRIDGE_REPOSITORY_POLL_SECS": "2.5"}
    s = load_settings({"http_port": 3001}, env=env, config_file=str(cfg))
    assert (s.http_port, s.model_control_mode, s.repository_poll_secs) == (3001, "poll", 2.5)
    assert (s.metrics_port, s.log_format) == (1002, "json")
    assert s.shutdown_grace_secs == Settings().shutdown_grace_secs and s.grpc_port == 8001
    # The config file may also come from the environment.
    assert load_settings({}, env={"MODELBRIDGE_CONFIG": str(cfg)}).http_port == 1001


@pytest.mark.parametrize("env", [
    {"MODELBRIDGE_MODEL_CONTROL_MODE": "sometimes"}, {"MODELBRIDGE_LOG_FORMAT": "xml"},
    {"MODELBRIDGE_HTTP_PORT": "70000"}, {"MODELBRIDGE_REPOSITORY_POLL_SECS": "0"},
])
def test_bad_values_from_any_source_are_named(env: dict[str, str]) -> None:
    with pytest.raises(InvalidArgument) as err:
        load_settings({}, env=env)
    name = next(iter(env)).removeprefix("MODELBRIDGE_").lower()
    assert name in err.value.message


def test_precedence_in_the_real_process(tmp_path: Path) -> None:
    repo = copy_repository(tmp_path / "repo", ["add_sub"])
    p_file, p_env, p_flag, m_file = free_port(), free_port(), free_port(), free_port()
    cfg = tmp_path / "modelbridge.toml"
    cfg.write_text(f'model_repository = "{repo}"\nhttp_port = {p_file}\nmetrics_port = {m_file}\ngrpc_port = 0\n'
                   'model_control_mode = "none"\nlog_format = "plain"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELBRIDGE_")}
    env |= {"MODELBRIDGE_HTTP_PORT": str(p_env), "MODELBRIDGE_MODEL_CONTROL_MODE": "poll",
            "MODELBRIDGE_LOG_FORMAT": "json", "MODELBRIDGE_LOG_REQUESTS": "1", "PYTHONUNBUFFERED": "1",
            **OPEN_ADMIN}
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "server.cli", "serve", "--config", str(cfg),
                                 "--http-port", str(p_flag)], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{p_flag}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            try:
                if httpx.get(url + "/v2/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        for port in (p_env, p_file):  # the flag won over the environment and the file
            with pytest.raises(httpx.ConnectError):
                httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1)
        assert "nv_inference_request_success" in httpx.get(f"http://127.0.0.1:{m_file}/metrics").text  # file
        refused = httpx.post(url + "/v2/repository/models/add_sub/unload")  # environment over file
        assert refused.status_code == 400 and "model-control-mode=poll" in refused.json()["error"]
        with_id = httpx.post(url + "/v2/models/add_sub/infer", content=orjson.dumps(add_sub_body(1, rid="req-42")))
        without_id = httpx.post(url + "/v2/models/add_sub/infer", content=orjson.dumps(add_sub_body(1)))
        assert with_id.status_code == without_id.status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0

    # JSON lines (environment over file), request ids (MODELBRIDGE_LOG_REQUESTS turned them on).
    records = [orjson.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    assert records and all({"ts", "level", "logger", "message"} <= r.keys() for r in records)
    requests = [r for r in records if r["logger"] == "modelbridge.request"]
    assert [r["status"] for r in requests] == ["ok", "ok"]
    assert requests[0]["request_id"] == "req-42" and requests[0]["model"] == "add_sub"
    generated = requests[1]["request_id"]
    assert len(generated) == 16 and int(generated, 16) >= 0
    assert not [r for r in records if r["level"] == "debug"]


def test_plain_logs_carry_request_ids(tmp_path: Path) -> None:
    server = ServerProcess(copy_repository(tmp_path / "repo", ["add_sub"]), ["--log-requests"]).start()
    r = httpx.post(server.url + "/v2/models/add_sub/infer",
                   content=orjson.dumps(add_sub_body(1, width=3, rid="bad-7")))
    assert r.status_code == 400
    server.stop()
    line = next(x for x in server.log().splitlines() if "request_id=bad-7" in x)
    assert "INFO modelbridge.request: infer model=add_sub" in line and "status=invalid_argument" in line


def test_request_lines_are_off_by_default(private_server) -> None:
    r = httpx.post(private_server.url + "/v2/models/add_sub/infer", content=orjson.dumps(add_sub_body(1, rid="q-1")))
    assert r.status_code == 200
    private_server.stop()
    assert "q-1" not in private_server.log()
