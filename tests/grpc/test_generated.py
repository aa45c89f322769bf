"""The committed stubs are exactly what scripts/gen_proto.py makes from proto/, and import as a package."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support import ROOT

GENERATED = ROOT / "server" / "grpc" / "_generated"


def test_regeneration_gives_the_committed_files(tmp_path: Path) -> None:
    out = tmp_path / "_generated"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_proto.py"), "--out", str(out)],
                   check=True, capture_output=True, timeout=120)
    fresh = {p.name: p.read_text() for p in out.iterdir() if p.is_file()}
    committed = {p.name: p.read_text() for p in GENERATED.iterdir() if p.is_file()}
    assert sorted(fresh) == sorted(committed)
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"run scripts/gen_proto.py: {stale} differ from proto/"


def test_stubs_import_from_any_directory(tmp_path: Path) -> None:
    # No sys.path trick: the generated modules import each other by package path.
    code = (
        "from server.grpc._generated import grpc_service_pb2_grpc as g;"
        "print(g.grpc__service__pb2.ModelConfigResponse().config.DESCRIPTOR.full_name)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=False, capture_output=True, text=True,
                         timeout=60, env={"PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "inference.ModelConfig"
