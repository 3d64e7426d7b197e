"""The unit files: systemd accepts them, their exposure is "OK" or better, and
``install-service`` writes the same units for the sensorwire installed here, with the
CURVE secret key of the configuration handed over as a systemd credential."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from support import free_port, run_cli

from sensorwire import checkconfig, units
from sensorwire.install import default_config_text, installed_executable

ROOT = Path(__file__).resolve().parents[1]
MAX_EXPOSURE = 4.9  # systemd-analyze security: "OK" ends below 5.0


def analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        if os.environ.get("SENSORWIRE_REQUIRE_ALL"):
            pytest.fail("systemd-analyze is missing: .ci/run installs Debian's systemd package")
        pytest.skip("systemd-analyze is missing (apt-get install systemd)")
    return found


def verify(unit: Path) -> None:
    r = subprocess.run([analyze(), "verify", unit.name], cwd=unit.parent, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and r.stderr.strip() == "", r.stderr


def exposure(unit: Path) -> float:
    r = subprocess.run([analyze(), "security", "--offline=true", "--no-pager", unit.name],
                       cwd=unit.parent, capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", r.stdout)
    assert m, r.stdout + r.stderr
    return float(m.group(1))


def local_copy(tmp_path: Path, role: str, text: str) -> Path:
    """The unit with ExecStart on the sensorwire installed here (verify checks that it exists)."""
    p = tmp_path / units.unit_name(role)
    p.write_text(text.replace(units.DEFAULT_EXECUTABLE, installed_executable()))
    return p


@pytest.mark.parametrize("role", units.ROLES)
def test_the_repository_units_are_the_rendered_ones(role: str) -> None:
    assert (ROOT / "systemd" / units.unit_name(role)).read_text() == units.render(role)


@pytest.mark.parametrize("role", units.ROLES)
def test_each_unit_passes_verify_and_is_hardened(role: str, tmp_path: Path) -> None:
    unit = local_copy(tmp_path, role, (ROOT / "systemd" / units.unit_name(role)).read_text())
    verify(unit)
    level = exposure(unit)
    assert level <= MAX_EXPOSURE, f"{role}: exposure {level}"


@pytest.mark.parametrize("role", units.ROLES)
def test_install_service_dry_run_prints_exactly_a_valid_unit(role: str, tmp_path: Path) -> None:
    r = run_cli("install-service", role, "--dry-run")
    assert r.returncode == 0, r.stderr
    assert r.stdout == units.render(role, installed_executable())
    assert "would write /etc/systemd/system/" in r.stderr and "systemctl enable --now" in r.stderr
    unit = tmp_path / units.unit_name(role)
    unit.write_text(r.stdout)
    verify(unit)
    assert exposure(unit) <= MAX_EXPOSURE


def test_units_say_what_systemd_needs_to_know() -> None:
    agent = units.render("agent")
    for line in ("Type=notify", "WatchdogSec=30s", "Restart=on-failure", "RestartSec=5s",
                 "ExecReload=/bin/kill -HUP $MAINPID", "DynamicUser=yes", "ProtectSystem=strict",
                 "ProtectHome=yes", "PrivateTmp=yes", "NoNewPrivileges=yes",
                 "StateDirectory=sensorwire-agent", "ConfigurationDirectory=sensorwire",
                 "SupplementaryGroups=dialout", "DeviceAllow=char-ttyUSB rw",
                 f"ExecStart={units.DEFAULT_EXECUTABLE} agent -c /etc/sensorwire/agent.toml"):
        assert line in agent.splitlines(), line
    pi = units.render("agent", "/opt/sw env/bin/sensorwire", "/srv/a%b.toml", user="pi")
    assert "User=pi" in pi.splitlines() and "DynamicUser=yes" not in pi
    assert 'ExecStart="/opt/sw env/bin/sensorwire" agent -c /srv/a%%b.toml' in pi.splitlines()
    assert "SupplementaryGroups" not in units.render("collector")
    # servers take a connection a peer: past systemd's soft limit of 1024 they refuse them
    assert all("\nLimitNOFILE=65536\n" in units.render(r) for r in ("proxy", "collector"))
    assert "LimitNOFILE" not in agent


def test_install_service_writes_the_unit_and_a_default_config_once(tmp_path: Path) -> None:
    root = tmp_path / "root"
    r = run_cli("install-service", "collector", "--root", str(root))
    assert r.returncode == 0, r.stderr
    unit = root / "etc/systemd/system/sensorwire-collector.service"
    cfg = root / "etc/sensorwire/collector.toml"
    assert unit.read_text() == units.render("collector", installed_executable())
    assert cfg.read_text() == default_config_text("collector")
    assert "sudo systemctl enable --now sensorwire-collector.service" in r.stdout
    cfg.write_text(cfg.read_text().replace("127.0.0.1:5557", "10.0.0.2:5557"))
    r = run_cli("install-service", "collector", "--root", str(root), "--user", "sensorwire")
    assert r.returncode == 0 and "keep the configuration" in r.stdout
    assert "10.0.0.2:5557" in cfg.read_text()
    assert "User=sensorwire" in unit.read_text().splitlines()


def test_install_service_with_its_own_config_path_and_a_bad_config(tmp_path: Path) -> None:
    root = tmp_path / "root"
    own = root / "srv/agent.toml"
    own.parent.mkdir(parents=True)
    own.write_text('site = "x"\n')
    r = run_cli("install-service", "agent", "--root", str(root), "--config", "/srv/agent.toml")
    assert r.returncode == 0, r.stderr
    unit = (root / "etc/systemd/system/sensorwire-agent.service").read_text()
    assert " agent -c /srv/agent.toml" in unit
    assert "warning: the configuration is not valid" in r.stdout and "publish" in r.stdout


@pytest.mark.parametrize("role", units.ROLES)
def test_default_configs_are_valid(role: str, tmp_path: Path) -> None:
    p = tmp_path / f"{role}.toml"
    p.write_text(default_config_text(role))
    assert checkconfig.load_any(p)[0] == role


def test_install_service_says_why_it_cannot_write(tmp_path: Path) -> None:
    (tmp_path / "etc").write_text("a file where a folder should be")
    r = run_cli("install-service", "proxy", "--root", str(tmp_path))
    assert r.returncode == 1
    unit = tmp_path / "etc/systemd/system/sensorwire-proxy.service"
    assert f"sensorwire: cannot write {unit}: " in r.stderr


def test_the_agent_may_read_the_clock_state_and_set_nothing() -> None:
    agent = units.render("agent").splitlines()
    allow = "SystemCallFilter=adjtimex clock_adjtime clock_adjtime64"
    # after the deny list, which holds @clock: systemd applies SystemCallFilter= lines in order
    assert agent.index(allow) > agent.index("SystemCallFilter=~@privileged @resources")
    assert "ProtectClock=yes" not in agent  # its seccomp filter would refuse even the read
    assert "CapabilityBoundingSet=" in agent and "NoNewPrivileges=yes" in agent
    for role in ("proxy", "collector"):
        lines = units.render(role).splitlines()
        assert "ProtectClock=yes" in lines and allow not in lines


def curve_root(tmp_path: Path, secret_key: str) -> Path:
    """A scratch root with the proxy's keys in /etc/sensorwire/keys and a CURVE proxy.toml."""
    root = tmp_path / "root"
    keys_dir = root / "etc/sensorwire/keys"
    r = run_cli("keygen", "proxy", "--dir", str(keys_dir))
    assert r.returncode == 0, r.stderr
    (keys_dir / "agents").mkdir()
    (root / "etc/sensorwire/proxy.toml").write_text(f"""\
frontend = "tcp://127.0.0.1:{free_port()}"
backend = "tcp://127.0.0.1:{free_port()}"
[security]
mode = "curve"
secret_key = "{secret_key}"
authorized_keys = "{keys_dir}/agents"
""")
    return root


def test_install_service_hands_the_curve_secret_key_over_as_a_credential(
        tmp_path: Path, procs: Any) -> None:
    root = curve_root(tmp_path, "${CREDENTIALS_DIRECTORY:-/etc/sensorwire/keys}/proxy.key_secret")
    r = run_cli("install-service", "proxy", "--root", str(root), "--dry-run")
    assert r.returncode == 0, r.stderr
    key = "/etc/sensorwire/keys/proxy.key_secret"
    assert r.stdout == units.render("proxy", installed_executable(),
                                    credentials=[("proxy.key_secret", key)])
    assert f"LoadCredential=proxy.key_secret:{key}" in r.stdout.splitlines()
    # nothing to say about the key (the test's own venv may be where a unit cannot run it)
    assert [x for x in r.stderr.splitlines()
            if "warning" in x and "the service cannot run" not in x] == [], r.stderr
    unit = tmp_path / units.unit_name("proxy")
    unit.write_text(r.stdout)
    verify(unit)
    assert exposure(unit) <= MAX_EXPOSURE

    # the service as systemd starts it: the key only in $CREDENTIALS_DIRECTORY, where
    # systemd's copy shows group bits (an ACL for the service's user)
    creds = tmp_path / "credentials"
    creds.mkdir(mode=0o500)
    copy = creds / "proxy.key_secret"
    shutil.copyfile(root / key.lstrip("/"), copy)
    copy.chmod(0o440)
    p = procs("proxy", "proxy", "-c", str(root / "etc/sensorwire/proxy.toml"),
              env={"CREDENTIALS_DIRECTORY": str(creds)})
    log = p.log()
    assert "CURVE on: this proxy is proxy" in log, log
    assert "can be read by other users" not in log
    assert p.terminate() == 0, p.log()


def test_install_service_says_what_to_write_for_a_key_named_in_place(tmp_path: Path) -> None:
    root = curve_root(tmp_path, "/etc/sensorwire/keys/proxy.key_secret")
    r = run_cli("install-service", "proxy", "--root", str(root), "--dry-run")
    assert r.returncode == 0, r.stderr
    load = "LoadCredential=proxy.key_secret:/etc/sensorwire/keys/proxy.key_secret"
    assert load in r.stdout.splitlines()
    assert ("warning: the service may not read /etc/sensorwire/keys/proxy.key_secret itself"
            in r.stderr)
    assert ('  secret_key = "${CREDENTIALS_DIRECTORY:-/etc/sensorwire/keys}/proxy.key_secret"'
            in r.stderr.splitlines())
    (root / "etc/sensorwire/keys/proxy.key_secret").unlink()
    r = run_cli("install-service", "proxy", "--root", str(root), "--dry-run")
    assert "/etc/sensorwire/keys/proxy.key_secret does not exist" in r.stderr


def test_without_curve_the_unit_loads_no_credential(tmp_path: Path) -> None:
    root = curve_root(tmp_path, "/etc/sensorwire/keys/proxy.key_secret")
    cfg = root / "etc/sensorwire/proxy.toml"
    cfg.write_text(cfg.read_text().replace('mode = "curve"', 'mode = "none"'))
    r = run_cli("install-service", "proxy", "--root", str(root), "--dry-run")
    assert r.returncode == 0, r.stderr
    assert r.stdout == units.render("proxy", installed_executable())
    assert "LoadCredential=" not in r.stdout.replace("the LoadCredential= line", "")


def test_a_credential_needs_a_file_name_and_a_normal_absolute_path() -> None:
    with pytest.raises(ValueError, match="cannot name a credential"):
        units.render("agent", credentials=[("a:b", "/etc/a:b")])
    with pytest.raises(ValueError, match="absolute, normal path"):
        units.render("agent", credentials=[("k", "/etc/../k")])
    assert "LoadCredential=k%%1:/etc/k%%1" in units.render(
        "agent", credentials=[("k%1", "/etc/k%1")]).splitlines()
