"""``sensorwire install-service`` used for real, as an operator would: run again after an
edit, under a strict umask, with a configuration only root may read, from a venv the
unit's sandbox cannot reach."""

from __future__ import annotations

import stat
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


def test_folders_it_makes_are_readable_by_the_service_whatever_the_umask(tmp_path: Path) -> None:
    root = tmp_path / "root"
    r = run_cli("install-service", "agent", "--root", str(root), umask=0o077)
    assert r.returncode == 0, r.stderr
    # DynamicUser=yes: the service's user is neither root nor the owner; it must get through
    for folder in ("etc", "etc/sensorwire", "etc/systemd", "etc/systemd/system"):
        assert stat.S_IMODE((root / folder).stat().st_mode) == 0o755, folder
    assert stat.S_IMODE((root / "etc/sensorwire/agent.toml").stat().st_mode) == 0o644


def test_it_warns_when_the_dynamic_user_cannot_read_the_configuration(tmp_path: Path) -> None:
    root = tmp_path / "root"
    cfg = put(root / "etc/sensorwire/agent.toml", default_config_text("agent"))
    cfg.chmod(0o600)  # e.g. written with `install -m 600`
    r = run_cli("install-service", "agent", "--root", str(root))
    assert r.returncode == 0, r.stderr
    assert f"warning: the service may not read {cfg}" in r.stdout
    cfg.chmod(0o644)
    (root / "etc/sensorwire").chmod(0o700)
    r = run_cli("install-service", "agent", "--root", str(root))
    assert f"warning: the service may not read {cfg}" in r.stdout
    (root / "etc/sensorwire").chmod(0o755)
    r = run_cli("install-service", "agent", "--root", str(root))
    assert "may not read" not in r.stdout
    cfg.chmod(0o600)  # with --user NAME, that user may well be the owner: nothing said
    r = run_cli("install-service", "agent", "--root", str(root), "--user", "pi")
    assert "may not read" not in r.stdout
