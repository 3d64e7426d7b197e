"""A real CURVE proxy whose allow-list folder is changed under it, with real agents.

As root the proxy runs without the capabilities that get round file
permissions (as a service's own user would), so a key file made unreadable
with chmod is unreadable to it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from securestack import KeyRing, agent_toml, proxy_toml, security_block
from support import tcp, wait_until, write

pytestmark = pytest.mark.slow


class Proxy:
    def __init__(self, popen: subprocess.Popen[bytes], log_path: Path) -> None:
        self.popen, self.log_path = popen, log_path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[Callable[[Path], Proxy]]:
    """Start ``sensorwire proxy -c CONFIG`` with no way around file permissions."""
    started: list[Proxy] = []

    def start(config: Path) -> Proxy:
        prefix: list[str] = []
        if os.geteuid() == 0:
            setpriv = shutil.which("setpriv")
            if setpriv is None:
                pytest.skip("running as root without setpriv (util-linux): root reads any file")
            prefix = [setpriv, "--bounding-set", "-dac_override,-dac_read_search"]
        log_path = tmp_path / f"proxy-{len(started)}.log"
        with open(log_path, "wb") as log:
            popen = subprocess.Popen([*prefix, sys.executable, "-m", "sensorwire", "proxy", "-c",
                                      str(config)], stdout=log, stderr=subprocess.STDOUT,
                                     env=dict(os.environ, PYTHONUNBUFFERED="1"))
        p = Proxy(popen, log_path)
        started.append(p)
        wait_until(lambda: "CURVE on" in p.log() or popen.poll() is not None, timeout_s=15,
                   what="the proxy started")
        assert popen.poll() is None, p.log()
        return p

    yield start
    for p in started:
        p.popen.kill()
        p.popen.wait()


def start_agent(procs: Any, tmp: Path, keys: KeyRing, device: str, front: str) -> Any:
    sec = security_block(secret_key=keys.secret(device), server_key=keys.public("proxy"))
    cfg = write(tmp / f"agent-{device}.toml",
                agent_toml(device, front, tmp / f"spool-{device}", sec, interval_s=0.5))
    return procs(f"agent-{device}", "agent", "-c", str(cfg))


def proxy_config(tmp: Path, keys: KeyRing, agents: Path, front: str) -> Path:
    return write(tmp / "proxy.toml", proxy_toml(front, tcp(), security_block(
        secret_key=keys.secret("proxy"), authorized_keys=agents,
        authorized_collectors=keys.collectors)))


def test_a_key_file_unreadable_when_it_arrived_is_taken_once_it_can_be_read(
        tmp_path: Path, procs: Any, proxy: Callable[[Path], Proxy]) -> None:
    keys = KeyRing(tmp_path)
    keys.make("proxy", "pi-1")
    front = tcp()
    p = proxy(proxy_config(tmp_path, keys, keys.agents, front))
    start_agent(procs, tmp_path, keys, "pi-1", front)
    pi1 = keys.z85("pi-1")
    wait_until(lambda: f"unknown public key {pi1}" in p.log(), what="pi-1 refused")

    # copied in as an unreadable file (a copy made under a strict umask, a half-done install)
    tmp = keys.agents / ".pi-1.key.part"
    shutil.copy(keys.public("pi-1"), tmp)
    tmp.chmod(0)
    tmp.rename(keys.agents / "pi-1.key")
    wait_until(lambda: "pi-1.key: permission denied" in p.log(), what="the unreadable key noticed")
    assert "accepted pi-1" not in p.log()

    (keys.agents / "pi-1.key").chmod(0o644)  # nothing else changes: not its name, size or mtime
    wait_until(lambda: "accepted pi-1" in p.log(), timeout_s=15,
               what="pi-1 accepted once its key file can be read")
    assert "added pi-1" in p.log()


def test_an_allow_list_folder_that_is_a_symlink_follows_the_link_when_it_is_swapped(
        tmp_path: Path, procs: Any, proxy: Callable[[Path], Proxy]) -> None:
    keys = KeyRing(tmp_path)
    keys.make("proxy", "pi-1", "pi-2")
    v1, v2 = tmp_path / "agents-v1", tmp_path / "agents-v2"
    v1.mkdir()
    shutil.copy(keys.public("pi-1"), v1)
    link = tmp_path / "agents"
    link.symlink_to(v1)
    front = tcp()
    p = proxy(proxy_config(tmp_path, keys, link, front))
    start_agent(procs, tmp_path, keys, "pi-2", front)
    pi2 = keys.z85("pi-2")
    wait_until(lambda: f"unknown public key {pi2}" in p.log(), what="pi-2 refused")

    # a deployment made beside the old one and switched to at once: pi-1 retired, pi-2 added
    v2.mkdir()
    shutil.copy(keys.public("pi-2"), v2)
    (tmp_path / "agents.new").symlink_to(v2)
    os.replace(tmp_path / "agents.new", link)
    wait_until(lambda: "accepted pi-2" in p.log(), timeout_s=15,
               what="pi-2 accepted once the link names the folder that holds its key")
    assert "removed pi-1" in p.log()


def test_hostile_files_in_the_folder_cost_nothing_and_stop_no_other_key(
        tmp_path: Path, procs: Any, proxy: Callable[[Path], Proxy]) -> None:
    keys = KeyRing(tmp_path)
    keys.make("proxy", "pi-1", "pi-2")
    front = tcp()
    p = proxy(proxy_config(tmp_path, keys, keys.agents, front))
    start_agent(procs, tmp_path, keys, "pi-1", front)
    pi1 = keys.z85("pi-1")
    wait_until(lambda: f"unknown public key {pi1}" in p.log(), what="pi-1 refused")

    folder = keys.agents
    with open(folder / "big.key", "wb") as f:  # sparse: 1 GB of zeros, one line
        f.truncate(1 << 30)
    (folder / "zero.key").symlink_to("/dev/zero")
    os.mkfifo(folder / "fifo.key")
    (folder / "gone.key").symlink_to(tmp_path / "nowhere.key")
    (folder / "loop.key").symlink_to("loop.key")
    shutil.copy(keys.secret("pi-2"), folder / "pi-2.key")
    shutil.copy(keys.public("pi-2"), folder / "x\nINFO accepted pi-9.key")
    keys.allow(folder, "pi-1")
    wait_until(lambda: "accepted pi-1" in p.log(), timeout_s=15,
               what="pi-1 accepted, whatever else is in the folder")
    log = p.log()
    assert "pi-2.key holds a secret key; refusing it" in log
    assert "\nINFO accepted pi-9" not in log and "cannot be listed" not in log
    status = Path(f"/proc/{p.popen.pid}/status").read_text()
    peak_kib = int(status.split("VmHWM:")[1].split()[0])
    assert peak_kib < 200 * 1024, status  # nothing was read whole
