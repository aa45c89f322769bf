"""Which converter a source goes to: by file extension, SavedModel layout, or in-memory class."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from converters import FRAMEWORKS, UnsupportedSourceError, detect_framework


@pytest.mark.parametrize(
    ("name", "framework"),
    [("m.pt", "pytorch"), ("m.pt2", "pytorch"), ("m.pth", "pytorch"), ("m.keras", "keras"), ("m.h5", "keras"),
     ("frozen.pb", "tensorflow"), ("model.ckpt.meta", "tensorflow")],
)
def test_files_by_extension(tmp_path: Path, name: str, framework: str) -> None:
    (tmp_path / name).write_bytes(b"x")
    assert detect_framework(tmp_path / name) == framework


def test_saved_model_directory_and_refusals(tmp_path: Path) -> None:
    (tmp_path / "saved").mkdir()
    (tmp_path / "saved" / "saved_model.pb").write_bytes(b"x")
    assert detect_framework(tmp_path / "saved") == "tensorflow"
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "checkpoint").write_text('model_checkpoint_path: "model"\n')
    assert detect_framework(tmp_path / "ckpt") == "tensorflow"
    (tmp_path / "empty").mkdir()
    with pytest.raises(UnsupportedSourceError, match="neither a TensorFlow SavedModel"):
        detect_framework(tmp_path / "empty")
    with pytest.raises(UnsupportedSourceError, match="does not exist"):
        detect_framework(tmp_path / "missing.pt")
    with pytest.raises(UnsupportedSourceError, match="cannot tell which framework a dict belongs to"):
        detect_framework({})


def test_in_memory_torch_objects() -> None:
    assert detect_framework(torch.nn.LSTM(2, 2)) == "pytorch"
    program = torch.export.export(torch.nn.Linear(2, 2), (torch.randn(1, 2),))
    assert detect_framework(program) == "pytorch"
    assert sorted(FRAMEWORKS) == ["keras", "pytorch", "tensorflow"]
