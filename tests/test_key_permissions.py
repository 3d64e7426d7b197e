"""A key file that may not be read says so, and what to do; systemd's copy of a secret key
(a credential) is taken without a warning about its mode.

The unreadable files are real: made unreadable with chmod, and read by a real
``sensorwire`` process.  As root, which chmod does not stop, that process runs
without the capabilities that let root read anything (``setpriv`` drops
CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from its bounding set), as a
service's own user would.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support import free_port, write

from sensorwire import keys


def run_unprivileged(*argv: str) -> subprocess.CompletedProcess[str]:
    """``sensorwire ARGV`` with no way around file permissions."""
    prefix: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv (util-linux): root reads any file")
        prefix = [setpriv, "--bounding-set", "-dac_override,-dac_read_search"]
    return subprocess.run([*prefix, sys.executable, "-m", "sensorwire", *argv],
                          capture_output=True, text=True, timeout=60)


def proxy_config(tmp_path: Path, secret: Path) -> Path:
    (tmp_path / "agents").mkdir(exist_ok=True)
    return write(tmp_path / "proxy.toml", f"""\
frontend = "tcp://127.0.0.1:{free_port()}"
backend = "tcp://127.0.0.1:{free_port()}"
[security]
mode = "curve"
secret_key = "{secret}"
authorized_keys = "{tmp_path / 'agents'}"
""")


def test_a_secret_key_the_service_may_not_read_says_how_to_hand_it_over(tmp_path: Path) -> None:
    _, secret = keys.generate("proxy", tmp_path / "keys")
    secret.chmod(0)
    r = run_unprivileged("proxy", "-c", str(proxy_config(tmp_path, secret)))
    assert r.returncode == 2, r.stderr
    assert f"[security] secret_key: {secret}: permission denied: " in r.stderr
    assert "not a CURVE key file" not in r.stderr
    assert (f'write secret_key = "${{CREDENTIALS_DIRECTORY:-{secret.parent}}}/proxy.key_secret"'
            in r.stderr)
    assert "`sudo sensorwire install-service proxy` again" in r.stderr
    assert f"LoadCredential=proxy.key_secret:{secret}" in r.stderr
    assert "Traceback" not in r.stderr


def test_a_key_folder_that_may_not_be_searched_is_a_permission_problem_too(
        tmp_path: Path) -> None:
    _, secret = keys.generate("proxy", tmp_path / "keys")
    (tmp_path / "keys").chmod(0o600)  # no x: the file cannot even be looked at
    try:
        r = run_unprivileged("proxy", "-c", str(proxy_config(tmp_path, secret)))
    finally:
        (tmp_path / "keys").chmod(0o700)
    assert r.returncode == 2, r.stderr
    assert f"{secret}: permission denied: " in r.stderr and "no such file" not in r.stderr
    assert "Traceback" not in r.stderr


def test_an_unreadable_public_key_says_it_is_no_secret(tmp_path: Path) -> None:
    _, secret = keys.generate("pi-07", tmp_path)
    server, _ = keys.generate("proxy", tmp_path / "server")
    server.chmod(0)
    cfg = write(tmp_path / "agent.toml", f"""\
site = "gh"
device_id = "pi-07"
[publish]
connect = ["tcp://127.0.0.1:{free_port()}"]
[security]
mode = "curve"
secret_key = "{secret}"
server_key = "{server}"
[[sensors]]
name = "env"
kind = "simulated"
metrics = [{{ name = "t", signal = "constant", value = 1.0 }}]
""")
    r = run_unprivileged("agent", "-c", str(cfg))
    assert r.returncode == 2, r.stderr
    assert f"[security] server_key: {server}: permission denied: " in r.stderr
    assert f"A public key is no secret: let everyone read it and search its folders: sudo " \
           f"chmod 644 {server}; sudo chmod 755 {server.parent}" in r.stderr


def test_systemds_copy_of_a_secret_key_is_taken_without_a_mode_warning(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    _, secret = keys.generate("proxy", tmp_path / "keys")
    creds = tmp_path / "credentials"
    creds.mkdir()
    copy = creds / "proxy.key_secret"
    shutil.copyfile(secret, copy)
    copy.chmod(0o440)  # as systemd's copy shows it: an ACL grants the service's user read
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    with caplog.at_level(logging.WARNING):
        assert keys.load_secret(copy).secret == keys.load_secret(secret).secret
    assert "can be read by other users" not in caplog.text

    # the same mode outside that folder still warns
    secret.chmod(0o440)
    with caplog.at_level(logging.WARNING):
        keys.load_secret(secret)
    assert "can be read by other users (mode 440)" in caplog.text

    # a key systemd was not told to hand over
    with pytest.raises(keys.KeyFileError, match=r"systemd did not hand this key over .*"
                       r"LoadCredential=pi-07\.key_secret:.*install-service proxy"):
        keys.load_secret(creds / "pi-07.key_secret", role="proxy")
