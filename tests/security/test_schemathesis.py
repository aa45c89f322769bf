"""Schemathesis against the server's own OpenAPI document (FastAPI's /openapi.json), with request bodies
described for the routes that read raw bodies, so the generator fuzzes V2 inference and load documents too.
No answer may be a server error (anything 5xx but 503, which is a legitimate "not loaded"/overload),
and the server must be alive at the end. FUZZ_EXAMPLES raises the example count (`make fuzz`)."""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from tests.support import ServerProcess, copy_repository

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "25"))
MODELS = ["add_sub", "identity_types", "lstm_tiny", "lstm_stream"]
DATATYPES = ["BOOL", "UINT8", "INT32", "INT64", "FP16", "FP32", "FP64", "BYTES", "BF16", "nope"]
NAMES = ["INPUT0", "INPUT1", "x", "IN_FP32", "IN_BYTES", "IN_BOOL", "nope"]

INFER_BODY: dict[str, Any] = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "parameters": {"type": "object", "properties": {
            "binary_data_output": {"type": "boolean"}, "timeout": {"type": "integer"},
            "sequence_id": {"type": ["integer", "string"]}, "sequence_start": {"type": "boolean"},
            "sequence_end": {"type": "boolean"}}},
        "inputs": {"type": "array", "maxItems": 3, "items": {
            "type": "object",
            "properties": {
                "name": {"enum": NAMES}, "datatype": {"enum": DATATYPES},
                "shape": {"type": "array", "maxItems": 4, "items": {"type": "integer", "minimum": -2,
                                                                    "maximum": 2**40}},
                "data": {"type": "array", "maxItems": 20, "items": {}},
                "parameters": {"type": "object", "properties": {"binary_data_size": {"type": "integer"}}},
            },
            "required": ["name", "datatype", "shape", "data"]}},
        "outputs": {"type": "array", "maxItems": 2, "items": {
            "type": "object", "properties": {"name": {"type": "string"},
                                             "parameters": {"type": "object"}}, "required": ["name"]}},
    },
    "required": ["inputs"],
}
LOAD_BODY = {"type": "object", "properties": {"parameters": {"type": "object", "properties": {
    "config": {"type": "string"}}, "additionalProperties": {"type": "string"}}}}
INDEX_BODY = {"type": "object", "properties": {"ready": {"type": "boolean"}}}


def described(raw: dict[str, Any]) -> dict[str, Any]:
    """The document FastAPI serves, plus what the raw-body routes read and the names that exist."""
    doc = copy.deepcopy(raw)
    for path, item in doc["paths"].items():
        for method, op in item.items():
            for p in op.get("parameters", []):
                if p["name"] == "model":
                    p["schema"] = {"anyOf": [{"enum": MODELS}, {"type": "string", "maxLength": 40}]}
                if p["name"] == "version":
                    p["schema"] = {"anyOf": [{"enum": ["1", "2", "0"]}, {"type": "string", "maxLength": 25}]}
            body = ({"post": INFER_BODY} if path.endswith("/infer") else
                    {"post": LOAD_BODY} if path.endswith("/load") else
                    {"post": INDEX_BODY} if path.endswith("/index") else {}).get(method)
            if body is not None:
                op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    return doc


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(copy_repository(tmp_path_factory.mktemp("schema") / "repo", MODELS)).start()
    yield proc
    assert proc.proc is not None and proc.proc.poll() is None, "the server died under the fuzzer"
    assert httpx.get(proc.url + "/v2/health/live").status_code == 200
    proc.stop()


@pytest.fixture(scope="module")
def api_schema(live: ServerProcess) -> Any:
    raw = httpx.get(live.url + "/openapi.json").json()
    schema = schemathesis.openapi.from_dict(described(raw))
    # Unload and upload change what the rest of the run sees (and each upload costs a checker process):
    # they have their own tests (test_access, test_uploads).
    return schema.exclude(path_regex=r"/unload$").exclude(method="PUT")


def test_no_server_errors(api_schema: Any, live: ServerProcess) -> None:
    # Driven by hand rather than through schemathesis' pytest plugin, which does not load under this pytest.
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 18, [op.label for op in operations]
    seen: set[str] = set()
    with httpx.Client(base_url=live.url, timeout=30) as http:
        for op in operations:
            @given(case=_strategy(op))
            @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
            def check(case: Any) -> None:
                kwargs = case.as_transport_kwargs(base_url=live.url)
                kwargs.pop("url", None)
                r = http.request(case.method, case.formatted_path, params=kwargs.get("params"),
                                 headers={k: v for k, v in (kwargs.get("headers") or {}).items()
                                          if k.lower() not in ("host", "content-length")},
                                 content=_body(kwargs))
                seen.add(f"{case.method} {r.status_code}")
                assert r.status_code < 500 or r.status_code == 503, (
                    f"{case.method} {case.formatted_path} -> {r.status_code}: {r.text[:300]}")

            check()
    assert any(s.endswith(" 200") for s in seen) and any(s.endswith(" 400") for s in seen), seen


def _strategy(op: Any) -> Any:
    """Valid requests (positive) and requests that break the schema on purpose (negative), when the
    operation has something to break."""
    try:
        return st.one_of(op.as_strategy(), op.as_strategy(GenerationMode.NEGATIVE))
    except Exception:  # noqa: BLE001 - schemathesis cannot negate an operation without parameters
        return op.as_strategy()


def _body(kwargs: dict[str, Any]) -> bytes | None:
    if "json" in kwargs:
        return json.dumps(kwargs["json"]).encode()
    data = kwargs.get("data") or kwargs.get("content")
    return data.encode() if isinstance(data, str) else data
