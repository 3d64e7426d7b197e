"""The wheel holds every package folder, under the sensorwire namespace only."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAPPING = {"sensorwire": "sensorwire", "agent": "sensorwire.agent",
           "collector": "sensorwire.collector", "proto": "sensorwire.proto"}


def source_packages() -> set[str]:
    out = set()
    for top, name in MAPPING.items():
        for init in (ROOT / top).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / top)
            out.add(".".join([name, *rel.parts]))
    return out


@pytest.mark.slow
def test_wheel_contains_every_package_and_no_top_level_agent_or_proto(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "-w", str(tmp_path), str(ROOT)],
                   check=True, timeout=300)
    [wheel] = tmp_path.glob("sensorwire-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    packages = {str(Path(n).parent).replace("/", ".") for n in names if n.endswith("__init__.py")}
    assert packages == source_packages()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"sensorwire"}
    assert "sensorwire/proto/v1/telemetry_pb2.py" in names
    assert "sensorwire/proto/README.md" in names
    # data folders: the .proto source, the default configurations install-service writes
    assert "sensorwire/proto/sensorwire/v1/telemetry.proto" in names
    assert {f"sensorwire/defaults/{r}.toml" for r in ("agent", "collector", "proxy")} <= set(names)


def test_installed_namespace_is_sensorwire() -> None:
    import sensorwire.agent
    import sensorwire.collector
    import sensorwire.proto

    assert Path(sensorwire.agent.__file__).parent == ROOT / "agent"
    assert Path(sensorwire.proto.__file__).parent == ROOT / "proto"
