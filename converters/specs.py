"""Input specifications: what the converter feeds a model when the source does not say.

The command line writes them as ``NAME:SHAPE:DTYPE``, e.g. ``x:1,50,1:float32``; a dimension of
``-1``, ``?`` or ``None`` is dynamic.  The dtype is optional and defaults to float32.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_DYNAMIC = {"-1", "?", "none", ""}


class InputSpecError(ValueError):
    """An input specification that cannot be parsed."""


@dataclass(frozen=True)
class InputSpec:
    name: str
    shape: tuple[int | None, ...]
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if not self.name:
            raise InputSpecError("input spec needs a name")
        try:
            np.dtype(self.dtype)
        except TypeError as exc:
            raise InputSpecError(f"input {self.name!r}: unknown dtype {self.dtype!r}") from exc
        for dim in self.shape:
            if dim is not None and (not isinstance(dim, int) or dim < 0):
                raise InputSpecError(f"input {self.name!r}: bad dimension {dim!r} in shape {self.shape}")

    @property
    def is_static(self) -> bool:
        return all(dim is not None for dim in self.shape)

    def concrete_shape(self, *, dynamic: int = 2) -> tuple[int, ...]:
        """The shape with every dynamic dimension replaced by ``dynamic``."""
        return tuple(dynamic if dim is None else dim for dim in self.shape)

    def __str__(self) -> str:
        dims = ",".join("-1" if dim is None else str(dim) for dim in self.shape)
        return f"{self.name}:{dims}:{self.dtype}"


def parse_input_spec(text: str) -> InputSpec:
    """Parse ``NAME:SHAPE[:DTYPE]``; SHAPE is comma-separated, ``-1``/``?``/``None`` meaning dynamic."""
    parts = text.strip().split(":")
    if len(parts) not in (2, 3):
        raise InputSpecError(f"input spec {text!r} is not NAME:SHAPE[:DTYPE] (e.g. x:1,50,1:float32)")
    name, shape_text = parts[0].strip(), parts[1].strip()
    dtype = parts[2].strip() if len(parts) == 3 and parts[2].strip() else "float32"
    shape: list[int | None] = []
    if shape_text:
        for token in shape_text.split(","):
            token = token.strip()
            if token.lower() in _DYNAMIC:
                shape.append(None)
                continue
            try:
                shape.append(int(token))
            except ValueError as exc:
                raise InputSpecError(f"input spec {text!r}: dimension {token!r} is not an integer") from exc
    return InputSpec(name=name, shape=tuple(shape), dtype=dtype)
