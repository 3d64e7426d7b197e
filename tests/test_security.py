"""CURVE end to end: real proxy, collector and agent processes on loopback.

Only authorized keys get data stored; a key publishes only for its own
device; the allow-list follows its folder without a restart; what crosses
the wire is ciphertext.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from relay import TcpRelay
from securestack import (
    KeyRing,
    agent_toml,
    collector_toml,
    proxy_toml,
    security_block,
    seqs,
    stored,
)
from support import run_cli, tcp, wait_until, write

pytestmark = pytest.mark.slow


def start_agent(procs: Any, tmp: Path, device: str, connect: str, keys: KeyRing | None = None,
                key: str = "", server_key: str = "proxy", name: str | None = None) -> Any:
    """An agent for ``device`` with key pair ``key``; without ``keys``, mode = "none"."""
    sec = "" if keys is None else security_block(
        secret_key=keys.secret(key), server_key=keys.public(server_key))
    name = name or f"agent-{device}"
    cfg = write(tmp / f"{name}.toml", agent_toml(device, connect, tmp / f"spool-{name}", sec))
    return procs(name, "agent", "-c", str(cfg))


def start_collector(procs: Any, tmp: Path, name: str, db: Path, security: str,
                    connect: list[str] | None = None, bind: list[str] | None = None) -> Any:
    cfg = write(tmp / f"{name}.toml", collector_toml(db, connect, bind, security))
    return procs(name, "collector", "-c", str(cfg))


class Secure:
    """A CURVE proxy and a collector; the tests add agents."""

    def __init__(self, tmp: Path, procs: Any, allowed: tuple[str, ...] = (),
                 others: tuple[str, ...] = ()) -> None:
        """Key pairs for ``allowed`` agents (in the allow-list from the start) and ``others``."""
        self.tmp, self.procs = tmp, procs
        self.keys = k = KeyRing(tmp)
        k.make("proxy", "collector-1", *allowed, *others)
        k.allow(k.collectors, "collector-1")
        for name in allowed:
            k.allow(k.agents, name)
        self.front, self.back, self.db = tcp(), tcp(), tmp / "telemetry.db"
        self.proxy = procs("proxy", "proxy", "-c", str(write(tmp / "proxy.toml", proxy_toml(
            self.front, self.back, security_block(
                secret_key=k.secret("proxy"), authorized_keys=k.agents,
                authorized_collectors=k.collectors)))))
        self.collector = start_collector(procs, tmp, "collector", self.db, security_block(
            secret_key=k.secret("collector-1"), server_key=k.public("proxy")), connect=[self.back])

    def agent(self, device: str, key: str | None, name: str | None = None) -> Any:
        """An agent for ``device`` using key pair ``key`` (None: mode = "none")."""
        return start_agent(self.procs, self.tmp, device, self.front, self.keys if key else None,
                           key or "", name=name)


def test_an_authorized_agent_is_stored_an_unknown_key_and_a_plain_agent_are_refused(
        tmp_path: Path, procs: Any) -> None:
    s = Secure(tmp_path, procs, allowed=("pi-1",), others=("intruder",))
    s.agent("pi-1", "pi-1")
    s.agent("pi-2", "intruder")        # a valid CURVE key that nobody put in the allow-list
    plain = s.agent("pi-3", None)      # no security at all
    wait_until(lambda: stored(s.db, "pi-1") >= 20, timeout_s=20, what="pi-1 stored")
    intruder = s.keys.z85("intruder")
    wait_until(lambda: re.search(r"agents\.refused_keys [1-9]", s.proxy.log())
               and re.search(r"frontend\.handshake_failed [1-9]", s.proxy.log()),
               timeout_s=10, what="both refusals counted in the proxy's summary")
    assert stored(s.db, "pi-2") == 0 and stored(s.db, "pi-3") == 0
    log = s.proxy.log()
    assert re.search(r"refused a connection from 127\.0\.0\.1 to the agents socket: unknown "
                     r"public key " + re.escape(intruder), log)
    assert "frontend: handshake on" in log
    assert "accepted pi-1" in log
    try:  # either side may notice the mismatch first; the plain agent says so either way
        wait_until(lambda: "security mechanism mismatch" in plain.log(), timeout_s=20,
                   what="the plain agent says why it gets nowhere")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; its log ends:\n{plain.log()[-3000:]}") from None


def test_a_collector_with_the_wrong_server_key_receives_nothing(tmp_path: Path, procs: Any) -> None:
    s = Secure(tmp_path, procs, allowed=("pi-1",), others=("collector-2", "not-the-proxy"))
    s.keys.allow(s.keys.collectors, "collector-2")   # allowed, but it trusts the wrong server
    db2 = tmp_path / "wrong.db"
    wrong = start_collector(procs, tmp_path, "collector-2", db2, security_block(
        secret_key=s.keys.secret("collector-2"), server_key=s.keys.public("not-the-proxy")),
        connect=[s.back])
    s.agent("pi-1", "pi-1")
    wait_until(lambda: stored(s.db, "pi-1") >= 30, timeout_s=20, what="the right collector stores")
    assert stored(db2, "pi-1") == 0
    wait_until(lambda: "is server_key" in wrong.log(), timeout_s=10,
               what="the wrong collector says its handshake fails")
    wait_until(lambda: re.search(r"backend\.handshake_failed [1-9]", s.proxy.log()), timeout_s=10,
               what="the proxy counts the failed handshakes")
    plain_tail = procs("tail", "tail", "--connect", s.back, "gh", ready=False)  # no keys at all
    try:  # either side may notice the mismatch first; tail says so either way
        wait_until(lambda: "security mechanism mismatch" in plain_tail.log(), timeout_s=20,
                   what="a plain tail says why it gets nothing")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; its log ends:\n{plain_tail.log()[-3000:]}") from None


@pytest.mark.parametrize("mode", ["curve", "none"])
def test_the_bytes_on_the_wire_are_not_plaintext(tmp_path: Path, procs: Any, mode: str) -> None:
    keys: KeyRing | None = None
    if mode == "curve":
        s = Secure(tmp_path, procs, allowed=("pi-1",))
        front, db, keys = s.front, s.db, s.keys
    else:  # the control: the same path without security shows the relay sees everything
        front, back, db = tcp(), tcp(), tmp_path / "plain.db"
        procs("proxy", "proxy", "--frontend", front, "--backend", back)
        start_collector(procs, tmp_path, "collector", db, "", connect=[back])
    relay = TcpRelay(int(front.rsplit(":", 1)[1]))
    try:
        start_agent(procs, tmp_path, "pi-1", relay.endpoint, keys, "pi-1")
        wait_until(lambda: stored(db, "pi-1") >= 20, timeout_s=20, what="frames through the relay")
    finally:
        relay.close()
    wire = relay.recorded
    assert len(wire) > 1000
    plaintext = [w for w in (b"pi-1", b"temperature", b"gh/") if w in wire]
    if mode == "curve":
        assert plaintext == []
        assert b"CURVE" in wire  # the ZMTP greeting names the mechanism; nothing else is readable
    else:
        assert plaintext == [b"pi-1", b"temperature", b"gh/"]


def test_an_authorized_key_publishing_as_another_device_is_dropped(
        tmp_path: Path, procs: Any) -> None:
    s = Secure(tmp_path, procs, allowed=("pi-1", "pi-2"))
    s.agent("pi-1", "pi-1")
    s.agent("pi-2", "pi-1", name="agent-impostor")  # pi-1's stolen key, claiming to be pi-2
    wait_until(lambda: stored(s.db, "pi-1") >= 30, timeout_s=20, what="pi-1 stored")
    wait_until(lambda: re.search(r"dropped: device_mismatch [1-9]", s.proxy.log()), timeout_s=10,
               what="the mismatch counted")
    assert "the key of 'pi-1' sent a frame on topic 'gh/pi-2/" in s.proxy.log()
    assert stored(s.db, "pi-2") == 0


def test_a_collector_that_binds_checks_keys_and_devices(tmp_path: Path, procs: Any) -> None:
    keys = KeyRing(tmp_path)
    keys.make("collector-1", "pi-1", "pi-2", "intruder")
    keys.allow(keys.agents, "pi-1")
    keys.allow(keys.agents, "pi-2")
    ep, db = tcp(), tmp_path / "direct.db"
    collector = start_collector(procs, tmp_path, "collector", db, security_block(
        secret_key=keys.secret("collector-1"), authorized_keys=keys.agents), bind=[ep])
    for device, key in (("pi-1", "pi-1"), ("pi-3", "pi-2"), ("pi-4", "intruder")):
        start_agent(procs, tmp_path, device, ep, keys, key, server_key="collector-1")
    wait_until(lambda: stored(db, "pi-1") >= 30, timeout_s=20, what="pi-1 stored")
    intruder = keys.z85("intruder")
    wait_until(lambda: "device_mismatch" in collector.log() and intruder in collector.log(),
               timeout_s=10, what="both refusals logged")
    assert "the key of 'pi-2' sent a frame on topic 'gh/pi-3/" in collector.log(), collector.log()
    assert stored(db, "pi-3") == 0 and stored(db, "pi-4") == 0
    assert seqs(db, "pi-1")[:30] == list(range(1, 31))


def test_the_allow_list_follows_its_folder_without_a_restart(tmp_path: Path, procs: Any) -> None:
    s = Secure(tmp_path, procs, allowed=("pi-1",), others=("pi-2",))
    s.agent("pi-1", "pi-1")
    s.agent("pi-2", "pi-2")
    wait_until(lambda: stored(s.db, "pi-1") >= 20, timeout_s=20, what="pi-1 stored")
    wait_until(lambda: s.keys.z85("pi-2") in s.proxy.log(), timeout_s=10, what="pi-2 refused")
    assert stored(s.db, "pi-2") == 0

    # added: the refused pi-2 is let go, tries again by itself, and is accepted
    s.keys.allow(s.keys.agents, "pi-2")
    wait_until(lambda: stored(s.db, "pi-2") >= 20, timeout_s=20,
               what="pi-2 accepted after its key was added")
    assert "added pi-2" in s.proxy.log()

    # removed: frames on its open connection are dropped at once, a new connection refused
    s.keys.revoke(s.keys.agents, "pi-1")
    wait_until(lambda: "removed pi-1" in s.proxy.log(), timeout_s=10, what="the removal noticed")
    n2 = stored(s.db, "pi-2")
    wait_until(lambda: stored(s.db, "pi-2") >= n2 + 20, timeout_s=10, what="pi-2 goes on")
    n1, n2 = stored(s.db, "pi-1"), stored(s.db, "pi-2")
    wait_until(lambda: stored(s.db, "pi-2") >= n2 + 20, timeout_s=10, what="pi-2 goes on")
    assert stored(s.db, "pi-1") == n1
    assert "revoked_key" in s.proxy.log()
    pi1 = s.keys.z85("pi-1")
    s.agent("pi-1", "pi-1", name="agent-pi-1-again")
    wait_until(lambda: f"unknown public key {pi1}" in s.proxy.log(), timeout_s=10,
               what="the restarted pi-1 refused")
    assert stored(s.db, "pi-1") == n1


def test_tail_reads_a_curve_proxy_with_an_allowed_key(tmp_path: Path, procs: Any) -> None:
    s = Secure(tmp_path, procs, allowed=("pi-1",), others=("ops",))
    s.keys.allow(s.keys.collectors, "ops")
    s.agent("pi-1", "pi-1")
    wait_until(lambda: stored(s.db, "pi-1") >= 5, timeout_s=20, what="flow")
    r = run_cli("tail", "--connect", s.back, "--count", "3",
                "--secret-key", str(s.keys.secret("ops")),
                "--server-key", str(s.keys.public("proxy")), "gh/pi-1", timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count('"device": "pi-1"') == 3


def test_a_missing_key_file_stops_a_role_with_exit_2(tmp_path: Path) -> None:
    p = write(tmp_path / "proxy.toml", proxy_toml(tcp(), tcp(), security_block(
        secret_key=tmp_path / "nope.key_secret", authorized_keys=tmp_path)))
    r = run_cli("proxy", "-c", str(p), timeout=30)
    assert r.returncode == 2, r.stderr
    assert "secret_key" in r.stderr and "nope.key_secret: no such file" in r.stderr
