"""A reader and writer for the protobuf text format used by Triton's config.pbtxt.

The core must not depend on generated protobuf classes (transports own those), so config files are
read into the same dict shape as Triton's JSON model config. Fields that are repeated in
model_config.proto are always lists, whether the file wrote them once or many times.
"""

from __future__ import annotations

import json
import re
from typing import Any

from server.core.errors import InvalidArgument

# Repeated fields of Triton's ModelConfig (and nested messages) that we read.
REPEATED = {
    "input", "output", "dims", "preferred_batch_size", "instance_group", "versions", "gpus",
    "control_input", "control", "state", "initial_state", "int32_false_true", "fp32_false_true",
    "bool_false_true", "model_warmup", "parameters_list", "reshape_shape",
    "cuda_graph_spec", "profile", "oldest", "shape",
}
_TOKEN = re.compile(
    r"""\s*(?:
        (?P<comment>\#[^\n]*)
      | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
      | (?P<number>[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?)
      | (?P<ident>[A-Za-z_][A-Za-z0-9_.]*)
      | (?P<punct>[{}\[\]:,;<>])
    )""",
    re.VERBOSE,
)


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            if text[pos:].strip() == "":
                break
            raise InvalidArgument(f"config.pbtxt: cannot parse near {text[pos:pos + 30]!r}")
        pos = m.end()
        kind = m.lastgroup or ""
        if kind != "comment":
            out.append((kind, m.group(kind)))
    return out


class _Parser:
    def __init__(self, text: str) -> None:
        self.toks = _tokens(text)
        self.i = 0

    def peek(self) -> tuple[str, str] | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self) -> tuple[str, str]:
        tok = self.peek()
        if tok is None:
            raise InvalidArgument("config.pbtxt: unexpected end of file")
        self.i += 1
        return tok

    def message(self, closer: str | None) -> dict[str, Any]:
        msg: dict[str, Any] = {}
        while True:
            tok = self.peek()
            if tok is None:
                if closer:
                    raise InvalidArgument(f"config.pbtxt: missing '{closer}'")
                return msg
            if tok[1] == closer and tok[0] == "punct":
                self.i += 1
                return msg
            if tok[1] in (",", ";"):
                self.i += 1
                continue
            kind, name = self.take()
            if kind != "ident":
                raise InvalidArgument(f"config.pbtxt: expected a field name, got {name!r}")
            nxt = self.peek()
            if nxt and nxt[1] == ":":
                self.i += 1
                nxt = self.peek()
            if nxt and nxt[1] in ("{", "<"):
                self.i += 1
                value: Any = self.message("}" if nxt[1] == "{" else ">")
            elif nxt and nxt[1] == "[":
                self.i += 1
                value = self.list_value()
            else:
                value = self.scalar()
            self.add(msg, name, value)

    def list_value(self) -> list[Any]:
        items: list[Any] = []
        while True:
            tok = self.peek()
            if tok is None:
                raise InvalidArgument("config.pbtxt: missing ']'")
            if tok[1] == "]":
                self.i += 1
                return items
            if tok[1] == ",":
                self.i += 1
                continue
            if tok[1] in ("{", "<"):
                self.i += 1
                items.append(self.message("}" if tok[1] == "{" else ">"))
            else:
                items.append(self.scalar())

    def scalar(self) -> Any:
        kind, text = self.take()
        if kind == "string":
            return json.loads('"' + text[1:-1].replace('\\\'', "'") + '"') if text[0] == '"' else text[1:-1]
        if kind == "number":
            return float(text) if any(c in text for c in ".eE") else int(text)
        if kind == "ident":
            return {"true": True, "false": False, "True": True, "False": False}.get(text, text)
        raise InvalidArgument(f"config.pbtxt: unexpected {text!r}")

    @staticmethod
    def add(msg: dict[str, Any], name: str, value: Any) -> None:
        if name in REPEATED:
            items = value if isinstance(value, list) else [value]
            msg.setdefault(name, []).extend(items)
        elif name == "parameters" and isinstance(value, dict) and "key" in value:
            # map<string, ModelParameter> written as repeated {key, value} entries.
            msg.setdefault("parameters", {})[str(value["key"])] = value.get("value", {})
        else:
            msg[name] = value


def loads(text: str) -> dict[str, Any]:
    return _Parser(text).message(None)


def dumps(config: dict[str, Any], indent: int = 0) -> str:
    pad = "  " * indent
    lines: list[str] = []
    for key, value in config.items():
        if key == "parameters" and isinstance(value, dict):
            for k, v in value.items():
                lines.append(f"{pad}parameters {{ key: {json.dumps(k)} value {{ {_inline(v)} }} }}")
            continue
        items = value if isinstance(value, list) else [value]
        if isinstance(value, list) and value and not isinstance(value[0], dict):
            lines.append(f"{pad}{key}: [ {', '.join(_scalar(v) for v in value)} ]")
            continue
        for item in items:
            if isinstance(item, dict):
                lines.append(f"{pad}{key} {{")
                lines.append(dumps(item, indent + 1))
                lines.append(f"{pad}}}")
            else:
                lines.append(f"{pad}{key}: {_scalar(item)}")
    return "\n".join(line for line in lines if line)


def _inline(v: dict[str, Any]) -> str:
    return " ".join(f"{k}: {_scalar(x)}" for k, x in v.items())


def _scalar(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return v if re.fullmatch(r"[A-Z][A-Z0-9_]*", v) else json.dumps(v)
    return str(v)
