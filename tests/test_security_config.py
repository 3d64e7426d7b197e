"""``[security]`` and ``[limits]``: validated at start, with messages that say what to do.

Key files are read when a role starts (a missing one is exit status 2), not
when a file is validated: ``check-config`` checks the structure only, so a
production file can be checked on another machine.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import pytest
import zmq
from support import run_cli, tcp, write

from sensorwire import checkconfig, keys
from sensorwire.configload import ConfigError
from sensorwire.security import ClientSecurity, Security

ROOT = Path(__file__).resolve().parents[1]

AGENT = """\
site = "gh"
device_id = "pi-1"
[publish]
{publish}
[[sensors]]
name = "env"
kind = "simulated"
metrics = [{{ name = "t", signal = "constant", value = 1.0 }}]
[security]
{security}
"""
PROXY = 'frontend = "tcp://*:1"\nbackend = "tcp://*:2"\n[security]\n{security}\n'
COLLECTOR = '[subscribe]\n{subscribe}\n[security]\n{security}\n'


def load(tmp_path: Path, role: str, text: str) -> object:
    return checkconfig.load_any(write(tmp_path / f"{role}.toml", text), role)[1]


@pytest.mark.parametrize("role, text, expected", [
    ("agent", AGENT.format(publish='connect = ["tcp://h:1"]', security='mode = "curve"'),
     'agent.toml: security.secret_key: required with mode = "curve"'),
    ("agent", AGENT.format(publish='connect = ["tcp://h:1"]',
                           security='mode = "curve"\nsecret_key = "a.key_secret"'),
     'agent.toml: security.server_key: required with mode = "curve" to connect'),
    ("agent", AGENT.format(publish='bind = ["tcp://*:1"]',
                           security='mode = "curve"\nsecret_key = "a"\nserver_key = "b"'),
     "agent.toml: security.authorized_keys: required"),
    ("agent", AGENT.format(publish='connect = ["tcp://h:1"]', security='mode = "tls"'),
     'agent.toml: security.mode: expected one of "curve", "none", got "tls"'),
    ("agent", AGENT.format(publish='connect = ["tcp://h:1"]', security='secret_kee = "x"'),
     "agent.toml: security.secret_kee: unknown key (a typo of secret_key?)"),
    ("proxy", PROXY.format(security='mode = "curve"\nsecret_key = "p"'),
     "proxy.toml: security.authorized_keys: required"),
    ("proxy", PROXY.format(security='mode = "curve"\nsecret_key = "p"\nauthorized_keys = "a"\n'
                                    'server_key = "s"'),
     "proxy.toml: security.server_key: unknown key (a typo?)"),
    ("collector", COLLECTOR.format(subscribe='connect = ["tcp://h:1"]',
                                   security='mode = "curve"\nsecret_key = "c"\nserver_key = "p"\n'
                                            'authorized_keys = "a"'),
     "collector.toml: security.authorized_keys: not used: nothing is bound"),
    ("collector", COLLECTOR.format(subscribe='bind = ["tcp://*:1"]',
                                   security='mode = "curve"\nsecret_key = "c"'),
     "collector.toml: security.authorized_keys: required"),
    ("proxy", 'frontend = "tcp://*:1"\nbackend = "tcp://*:2"\n[limits]\nmax_message_bytes = 0\n',
     "proxy.toml: limits.max_message_bytes: expected an integer >= 1 and <= "
     "9223372036854775807, got 0"),
    ("collector",
     '[subscribe]\nconnect = ["tcp://h:1"]\n[limits]\nmax_frames_per_s_per_device = -1\n',
     "collector.toml: limits.max_frames_per_s_per_device: expected an integer >= 0, got -1"),
    ("collector", '[subscribe]\nconnect = ["tcp://h:1"]\n[limits]\nmax_devices = 0\n',
     "collector.toml: limits.max_devices: expected an integer >= 1, got 0"),
])
def test_bad_security_and_limits_are_explained(tmp_path: Path, role: str, text: str,
                                               expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        load(tmp_path, role, text)
    assert str(err.value).startswith(expected), str(err.value)


def test_mode_none_ignores_the_other_keys(tmp_path: Path) -> None:
    """Switching to "none" for a test keeps the paths: no edit twice to go back."""
    cfg = load(tmp_path, "proxy", PROXY.format(security='mode = "none"\nsecret_key = "p"'))
    assert cfg.security.mode == "none"  # type: ignore[attr-defined]


def commented_tables(text: str) -> dict[str, str]:
    """The commented-out ``# [table]`` blocks of an example file, uncommented."""
    out: dict[str, str] = {}
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"# \[(security|limits)\]", line)
        if not m:
            continue
        block = []
        for body in lines[i:]:
            if not body.startswith("#"):
                break
            block.append(body[2:] if body.startswith("# ") else body[1:])
        out[m.group(1)] = "\n".join(block)
    return out


@pytest.mark.parametrize("name", ["agent.toml", "proxy.toml", "collector.toml"])
def test_the_commented_examples_are_valid_once_uncommented(tmp_path: Path, name: str) -> None:
    text = (ROOT / "config" / name).read_text()
    tables = commented_tables(text)
    assert "security" in tables
    full = write(tmp_path / name, text + "\n" + "\n".join(tables.values()))
    role, cfg = checkconfig.load_any(full)
    assert cfg.security.mode == "curve"  # type: ignore[attr-defined]


def test_mode_none_warns_about_endpoints_beyond_this_host(caplog: pytest.LogCaptureFixture) -> None:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sec = Security(None, "test")
    socks = [ctx.socket(zmq.PUB) for _ in range(3)]
    try:
        sec.open(ctx)
        with caplog.at_level(logging.WARNING):
            sec.bind(socks[0], tcp(), "loopback")
            sec.bind(socks[1], "tcp://*:0", "everywhere")
            sec.connect(socks[2], f"ipc://{Path.cwd()}/x.sock", "ipc")
    finally:
        for s in socks:
            s.close(linger=0)
        sec.close()
        ctx.term()
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 1
    assert 'mode = "none" and everywhere tcp://*:0 is not loopback or ipc' in warned[0]


def test_keygen_writes_a_pair_with_a_private_secret_and_refuses_to_overwrite(
        tmp_path: Path) -> None:
    r = run_cli("keygen", "pi-07", "--dir", str(tmp_path / "keys"))
    assert r.returncode == 0, r.stderr
    public, secret = tmp_path / "keys" / "pi-07.key", tmp_path / "keys" / "pi-07.key_secret"
    assert secret.stat().st_mode & 0o777 == 0o600
    pair = keys.load_secret(secret)
    assert keys.load_public(public) == pair.public and pair.name == "pi-07"
    assert pair.public.decode() in r.stdout
    left = sorted(p.name for p in (tmp_path / "keys").iterdir())
    assert left == ["pi-07.key", "pi-07.key_secret"]  # and no temporary folder

    again = run_cli("keygen", "pi-07", "--dir", str(tmp_path / "keys"))
    assert again.returncode == 1 and "exists; pass --force" in again.stderr
    assert keys.load_secret(secret) == pair

    forced = run_cli("keygen", "pi-07", "--dir", str(tmp_path / "keys"), "--force")
    assert forced.returncode == 0
    assert keys.load_secret(secret).public != pair.public

    bad = run_cli("keygen", "pi 07", "--dir", str(tmp_path / "keys"))
    assert bad.returncode == 2 and "may hold only letters" in bad.stderr


def test_key_file_problems_name_the_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    public, secret = keys.generate("proxy", tmp_path)
    with pytest.raises(keys.KeyFileError, match=r"proxy\.key holds no secret key"):
        keys.load_secret(public)
    junk = write(tmp_path / "junk.key", "hello\n")
    with pytest.raises(keys.KeyFileError, match=r"junk\.key: not a CURVE key file"):
        keys.load_public(junk)
    short = write(tmp_path / "short.key", 'curve\n    public-key = "abc"\n')
    with pytest.raises(keys.KeyFileError, match="not 40 Z85 characters"):
        keys.load_public(short)
    secret.chmod(0o644)
    with caplog.at_level(logging.WARNING):
        keys.load_secret(secret)
    assert "can be read by other users" in caplog.text


def test_tail_needs_both_keys() -> None:
    r = run_cli("tail", "--secret-key", "x.key_secret", "--count", "1")
    assert r.returncode == 2 and "both --secret-key and --server-key" in r.stderr


def test_client_security_requires_a_secret_key() -> None:
    with pytest.raises(ValueError, match="secret_key: required"):
        ClientSecurity(mode="curve", server_key="s")


def test_keygen_does_not_replace_a_symlink_whose_key_is_not_there_now(tmp_path: Path) -> None:
    folder = tmp_path / "keys"
    folder.mkdir()
    # the secret lives on a volume that is not mounted at the moment
    (folder / "pi-07.key_secret").symlink_to(tmp_path / "unmounted" / "pi-07.key_secret")
    r = run_cli("keygen", "pi-07", "--dir", str(folder))
    assert r.returncode == 1 and "pi-07.key_secret exists; pass --force" in r.stderr
    assert (folder / "pi-07.key_secret").is_symlink() and not (folder / "pi-07.key").exists()


def test_keygen_modes_do_not_depend_on_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        public, secret = keys.generate("pi-07", tmp_path / "keys")
    finally:
        os.umask(old)
    assert secret.stat().st_mode & 0o777 == 0o600
    assert public.stat().st_mode & 0o777 == 0o644
