"""``sensorwire install-service`` used for real, as an operator would: run again after an
edit, under a strict umask, with a configuration only root may read, from a venv the
unit's sandbox cannot reach."""

from __future__ import annotations

import io
import stat
import sys
from pathlib import Path

import pytest
from support import run_cli, write

from sensorwire import install
from sensorwire.install import default_config_text

UNIT = "etc/systemd/system/sensorwire-agent.service"


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
    assert "sudo systemctl enable --now sensorwire-agent.service" in again.stdout
    # docs/install.md's "run install-service again" (CURVE), without the first run's options
    r = run_cli("install-service", "agent", "--root", str(root), "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "replacing one that differs" in r.stderr and "--user and --config" in r.stderr
    lines = r.stderr.splitlines()
    assert "  - User=pi" in lines and "  + DynamicUser=yes" in lines
    assert any(x.startswith("  - ExecStart=") and x.endswith(" -c /srv/agent.toml") for x in lines)
    assert not any(x.startswith(("  - #", "  + #")) for x in lines)  # settings, not comments
    # the running service keeps its old unit until it is restarted: enable --now would not
    assert "  sudo systemctl restart sensorwire-agent.service" in lines
    assert "  sudo systemctl enable --now sensorwire-agent.service" not in lines


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


def test_it_warns_when_the_unit_hides_sensorwire_or_its_configuration(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ProtectHome=yes hides /home, /root and /run/user, PrivateTmp=yes /tmp and /var/tmp:
    an ExecStart there fails (status=203/EXEC), a configuration there does not load."""
    venv = tmp_path / "opt sw"  # under /tmp, as pytest's tmp_path is
    (venv / "bin").mkdir(parents=True)
    exe = venv / "bin/sensorwire"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    (venv / "bin/python").symlink_to(sys.executable)
    monkeypatch.setattr(sys, "executable", str(venv / "bin/python"))
    out, err = io.StringIO(), io.StringIO()
    assert install.run("agent", config="/home/pi/agent.toml", dry_run=True,
                       root=str(tmp_path / "root"), out=out, err=err) == 0
    text = err.getvalue()
    if str(tmp_path).startswith(("/tmp/", "/var/tmp/")):
        assert f"warning: the service cannot run {exe}: PrivateTmp=yes" in text, text
    assert "warning: the service cannot read /home/pi/agent.toml: ProtectHome=yes" in text, text
    assert "a venv under /opt" in text and "under /etc/sensorwire" in text
    assert 'ExecStart="' + str(exe) + '" agent' in out.getvalue()  # written all the same
    # the hint is a command to paste into a shell
    assert f"check it with: '{exe}' check-config /home/pi/agent.toml" in text
    out, err = io.StringIO(), io.StringIO()
    install.run("agent", config="/etc/sensorwire/agent.toml", dry_run=True,
                root=str(tmp_path / "root"), out=out, err=err)
    assert "cannot read" not in err.getvalue()


@pytest.mark.parametrize(("role", "table", "key", "value"), [
    ("collector", "storage", "path", "/var/lib/sensorwire/telemetry.db"),
    ("collector", "storage", "path", "/home/pi/telemetry.db"),
    ("agent", "spool", "dir", "/var/spool/sensorwire"),
    ("agent", "spool", "dir", "/tmp/spool"),  # writable, but the unit's own, and emptied
    ("agent", "spool", "dir", "~/spool"),  # a dynamic user's home is /
])
def test_it_warns_when_the_service_would_write_where_its_unit_forbids(
        role: str, table: str, key: str, value: str, tmp_path: Path) -> None:
    root = tmp_path / "root"
    cfg = put(root / f"etc/sensorwire/{role}.toml", default_config_text(role))
    text = cfg.read_text()
    cfg.write_text(text.replace('path = "telemetry.db"', f'path = "{value}"') if key == "path"
                   else text + f'\n[{table}]\n{key} = "{value}"\n')
    r = run_cli("install-service", role, "--root", str(root))
    assert r.returncode == 0, r.stderr
    assert f"warning: [{table}] {key} = {value!r}" in r.stdout, r.stdout
    assert f"may write only under /var/lib/sensorwire-{role}" in r.stdout
    state = f"/var/lib/sensorwire-{role}/data"  # inside the state directory, or relative: fine
    for ok in (state, "data"):
        cfg.write_text(text.replace('path = "telemetry.db"', f'path = "{ok}/t.db"')
                       if key == "path" else text + f'\n[{table}]\n{key} = "{ok}"\n')
        r = run_cli("install-service", role, "--root", str(root))
        assert "may write only" not in r.stdout, r.stdout


def test_a_link_where_the_unit_goes_is_replaced_not_written_through(tmp_path: Path) -> None:
    """``systemctl link`` and ``mask`` leave links in /etc/systemd/system: writing through one
    wrote into its target and chmod-ed it (a masked unit's: /dev/null, to 0644)."""
    root = tmp_path / "root"
    target = tmp_path / "elsewhere.service"
    target.write_text("someone else's\n")
    target.chmod(0o666)
    unit = root / UNIT
    unit.parent.mkdir(parents=True)
    unit.symlink_to(target)
    r = run_cli("install-service", "agent", "--root", str(root))
    assert r.returncode == 0, r.stderr
    assert target.read_text() == "someone else's\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o666
    assert not unit.is_symlink() and "ExecStart=" in unit.read_text()
    assert not list(unit.parent.glob(".*.tmp"))
    # masked: said so, and nothing written (tried with --dry-run only: written through, the
    # link would chmod this machine's own /dev/null)
    unit.unlink()
    unit.symlink_to("/dev/null")
    r = run_cli("install-service", "agent", "--root", str(root), "--dry-run")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "sensorwire-agent.service is masked" in r.stderr
    assert "sudo systemctl unmask sensorwire-agent.service" in r.stderr
    assert r.stdout == ""


def test_it_warns_about_a_user_this_machine_does_not_have(tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    install.run("agent", user="no-such-user-sw", dry_run=True, out=out, err=err)
    assert "warning: there is no user 'no-such-user-sw' here" in err.getvalue()
    assert "status=217/USER" in err.getvalue()
    for known in ("root", "0"):
        out, err = io.StringIO(), io.StringIO()
        install.run("agent", user=known, dry_run=True, out=out, err=err)
        assert "there is no user" not in err.getvalue()


def test_a_sqlite_path_left_in_a_postgres_configuration_is_not_warned_about(
        tmp_path: Path) -> None:
    root = tmp_path / "root"
    put(root / "etc/sensorwire/collector.toml", '[storage]\nkind = "postgres"\n'
        'dsn = "postgresql://db/telemetry"\npath = "/srv/unused.db"\n')
    r = run_cli("install-service", "collector", "--root", str(root), "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "may write only" not in r.stderr


def test_a_path_systemd_would_expand_or_split_is_written_as_it_is(tmp_path: Path) -> None:
    """ExecStart= expands $VAR and %x; a newline would end the line (and start another)."""
    out, err = io.StringIO(), io.StringIO()
    install.run("agent", config="/srv/$HOME/a%i.toml", dry_run=True, out=out, err=err)
    [start] = [x for x in out.getvalue().splitlines() if x.startswith("ExecStart=")]
    assert start.endswith(' agent -c "/srv/$$HOME/a%%i.toml"'), start
    r = run_cli("install-service", "agent", "--dry-run", "--config",
                "/srv/a.toml\nExecStartPre=/bin/true")
    assert r.returncode == 1 and r.stdout == ""
    assert "a control character cannot be written into a unit" in r.stderr
