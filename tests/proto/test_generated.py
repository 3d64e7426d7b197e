"""The committed generated code is exactly what protoc makes of the schema."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_committed_pb2_matches_regenerated(tmp_path: Path) -> None:
    protoc = pytest.importorskip("grpc_tools.protoc", reason="grpcio-tools is a test dependency")
    rc = protoc.main([
        "protoc", f"-I{ROOT / 'proto'}", f"--python_out={tmp_path}", f"--pyi_out={tmp_path}",
        str(ROOT / "proto/sensorwire/v1/telemetry.proto"),
    ])
    assert rc == 0
    for name in ("telemetry_pb2.py", "telemetry_pb2.pyi"):
        fresh = (tmp_path / "sensorwire/v1" / name).read_text()
        committed = (ROOT / "proto/v1" / name).read_text()
        assert fresh == committed, (
            f"proto/v1/{name} is stale: regenerate it (see proto/README.md, 'Regenerating')"
        )
