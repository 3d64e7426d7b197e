"""``sensorwire install-service`` used for real, as an operator would: run again after an
edit, under a strict umask, with a configuration only root may read, from a venv the
unit's sandbox cannot reach."""

from __future__ import annotations

from pathlib import Path

from support import run_cli, write

from sensorwire.install import default_config_text


def put(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return write(path, text)


def test_a_second_run_shows_the_unit_lines_it_replaces(tmp_path: Path) -> None:
    root = tmp_path / "root"
    put(root / "srv/agent.toml", default_config_text("agent"))
    first = ("install-service", "agent", "--root", str(root), "--user", "pi",
             "--config", "/srv/agent.toml")
    assert run_cli(*first).returncode == 0
    again = run_cli(*first)
    assert again.returncode == 0, again.stderr
    assert "replacing" not in again.stdout  # the same unit: nothing to say
    # docs/install.md's "run install-service again" (CURVE), without the first run's options
    r = run_cli("install-service", "agent", "--root", str(root), "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "replacing one that differs" in r.stderr and "--user and --config" in r.stderr
    lines = r.stderr.splitlines()
    assert "  - User=pi" in lines and "  + DynamicUser=yes" in lines
    assert any(x.startswith("  - ExecStart=") and x.endswith(" -c /srv/agent.toml") for x in lines)
    assert not any(x.startswith(("  - #", "  + #")) for x in lines)  # settings, not comments
