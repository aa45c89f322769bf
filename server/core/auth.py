"""API keys and their two scopes, independent of any transport.

    scope           grants                                           default without keys
    inference       infer, metadata, config, statistics, download    open
    administration  repository index, load, unload, upload           refused (unless allowed)

An admin key also grants inference. Keys are compared with hmac.compare_digest against every
configured key (no early exit on a match), and no key is ever put into a message or a log line.
"""

from __future__ import annotations

import enum
import hmac
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from server.core.errors import InvalidArgument, PermissionDenied, Unauthenticated

# A key shorter than this is too easy to guess; the server refuses to start with one.
MIN_KEY_LENGTH = 16


class Scope(enum.Enum):
    OPEN = "open"                # health probes: never need a key
    INFERENCE = "inference"
    ADMIN = "administration"


@dataclass(frozen=True)
class KeyRing:
    admin_keys: tuple[bytes, ...] = ()
    inference_keys: tuple[bytes, ...] = ()
    allow_unauthenticated_admin: bool = False
    require_inference_key: bool = False
    _all: tuple[bytes, ...] = field(init=False, repr=False, default=())

    def __post_init__(self) -> None:
        object.__setattr__(self, "_all", self.admin_keys + self.inference_keys)

    def __repr__(self) -> str:  # never show key material
        return (f"KeyRing(admin_keys={len(self.admin_keys)}, inference_keys={len(self.inference_keys)}, "
                f"allow_unauthenticated_admin={self.allow_unauthenticated_admin}, "
                f"inference_open={self.inference_open})")

    @property
    def inference_open(self) -> bool:
        return not (self.require_inference_key or self.inference_keys)

    def check(self, scope: Scope, authorization: str | bytes | None) -> None:
        """Raise Unauthenticated (no or unknown key) or PermissionDenied (wrong scope)."""
        if scope is Scope.OPEN:
            return
        if scope is Scope.INFERENCE and self.inference_open:
            return
        if scope is Scope.ADMIN and not self.admin_keys:
            if self.allow_unauthenticated_admin:
                return
            raise PermissionDenied(
                "administration (upload, load, unload, repository index) is disabled: the server has no admin "
                "key; configure one (MODELBRIDGE_ADMIN_KEYS or --keys-file) or start it with "
                "--allow-unauthenticated-admin"
            )
        key = bearer_token(authorization)
        if key is None:
            raise Unauthenticated(f"{scope.value} needs an API key: send 'Authorization: Bearer <key>'")
        is_admin = _matches(key, self.admin_keys)
        is_inference = _matches(key, self.inference_keys)
        if not (is_admin or is_inference):
            raise Unauthenticated("the API key is not valid")
        if scope is Scope.ADMIN and not is_admin:
            raise PermissionDenied("this API key grants inference only; administration needs an admin key")


def bearer_token(authorization: str | bytes | None) -> bytes | None:
    if authorization is None:
        return None
    raw = authorization.encode("latin-1", "replace") if isinstance(authorization, str) else authorization
    scheme, _, token = raw.strip().partition(b" ")
    if scheme.lower() != b"bearer" or not token.strip():
        return None
    return token.strip()


def _matches(key: bytes, keys: tuple[bytes, ...]) -> bool:
    # Compare against every key so the time taken says nothing about which (or whether one) matched.
    found = False
    for k in keys:
        found |= hmac.compare_digest(key, k)
    return found


def parse_keys(text: str, what: str) -> tuple[bytes, ...]:
    """Comma- or whitespace-separated keys, as MODELBRIDGE_ADMIN_KEYS / --inference-keys give them."""
    keys = tuple(k.encode() for k in text.replace(",", " ").split())
    for i, k in enumerate(keys):
        if len(k) < MIN_KEY_LENGTH:
            raise InvalidArgument(f"{what}: key #{i + 1} is shorter than {MIN_KEY_LENGTH} characters")
        if not k.isascii() or any(c < 0x21 or c > 0x7E for c in k):
            raise InvalidArgument(f"{what}: key #{i + 1} must be printable ASCII without spaces")
    return keys


def read_keys_file(path: Path) -> tuple[tuple[bytes, ...], tuple[bytes, ...]]:
    """A keys file has one '<scope> <key>' per line (scope: admin or inference); '#' starts a comment."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidArgument(f"cannot read keys file {path}: {exc.strerror}") from None
    admin: list[bytes] = []
    inference: list[bytes] = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        scope, _, key = line.partition(" ")
        target = {"admin": admin, "inference": inference}.get(scope.strip().lower())
        if target is None or not key.strip():
            raise InvalidArgument(f"keys file {path} line {n}: expected '<admin|inference> <key>'")
        target.extend(parse_keys(key, f"keys file {path} line {n}"))
    return tuple(admin), tuple(inference)


def build_keyring(
    *, admin_keys: str = "", inference_keys: str = "", keys_file: str = "",
    allow_unauthenticated_admin: bool = False, require_inference_key: bool = False,
) -> KeyRing:
    admin = list(parse_keys(admin_keys, "admin_keys"))
    inference = list(parse_keys(inference_keys, "inference_keys"))
    if keys_file:
        fa, fi = read_keys_file(Path(keys_file))
        admin += fa
        inference += fi
    if require_inference_key and not (admin or inference):
        raise InvalidArgument("require_inference_key is set but no API key is configured")
    return KeyRing(_unique(admin), _unique(inference), allow_unauthenticated_admin=allow_unauthenticated_admin,
                   require_inference_key=require_inference_key)


def _unique(keys: Iterable[bytes]) -> tuple[bytes, ...]:
    return tuple(dict.fromkeys(keys))
