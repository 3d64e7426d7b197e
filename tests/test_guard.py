"""The guard thread and the identity check, in one process with real CURVE sockets."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
from support import tcp, wait_until

from sensorwire import keys
from sensorwire.security import AGENTS, CollectorSecurity, Refused, Security


class Bench:
    """A CURVE server socket (XSUB) with an allow-list, and clients made on demand."""

    def __init__(self, tmp: Path) -> None:
        self.keys, self.allow = tmp / "keys", tmp / "allow"
        self.allow.mkdir()
        for name in ("server", "pi-1", "pi-2"):
            keys.generate(name, self.keys)
        shutil.copy(self.keys / "pi-1.key", self.allow)
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        cfg = CollectorSecurity(mode="curve", secret_key=str(self.keys / "server.key_secret"),
                                authorized_keys=str(self.allow))
        self.sec = Security(cfg, "test")
        self.sec.open(self.ctx)
        self.server = self.ctx.socket(zmq.XSUB)
        self.server.setsockopt(zmq.LINGER, 0)
        self.ep = tcp()
        self.sec.bind(self.server, self.ep, "server", domain=AGENTS)
        self.server.send(b"\x01")
        self.clients: list[zmq.Socket[bytes]] = []

    def client(self, key: str) -> zmq.Socket[bytes]:
        pair = keys.load_secret(self.keys / f"{key}.key_secret")
        c = self.ctx.socket(zmq.XPUB)
        c.setsockopt(zmq.LINGER, 0)
        c.curve_secretkey, c.curve_publickey = pair.secret, pair.public
        c.curve_serverkey = keys.load_public(self.keys / "server.key")
        c.connect(self.ep)
        self.clients.append(c)
        return c

    def subscribed(self, c: zmq.Socket[bytes]) -> bool:
        self.server.poll(0)  # the server socket handles its pending connections when used
        return bool(c.poll(50))

    def close(self) -> None:
        for s in [*self.clients, self.server]:
            s.close(linger=0)
        self.sec.close()
        self.ctx.term()


@pytest.fixture
def bench(tmp_path: Path) -> Iterator[Bench]:
    b = Bench(tmp_path)
    yield b
    b.close()


def test_a_key_may_publish_only_for_its_device(bench: Bench) -> None:
    c = bench.client("pi-1")
    wait_until(lambda: bench.subscribed(c), what="pi-1 accepted")
    identity = bench.sec.identity(AGENTS)
    assert identity is not None
    c.send(b"gh/pi-1/env\x00ok")
    c.send(b"gh/pi-2/env\x00stolen")
    assert bench.server.poll(5000)
    assert identity.recv(bench.server) == b"gh/pi-1/env\x00ok"
    assert bench.server.poll(5000)
    with pytest.raises(Refused) as refused:
        identity.recv(bench.server)
    assert refused.value.reason == "device_mismatch" and refused.value.who == "pi-1"


@pytest.mark.slow
def test_an_unknown_key_is_refused_until_it_is_added(bench: Bench) -> None:
    c = bench.client("pi-2")
    wait_until(lambda: bench.sec.counts().get("agents.refused_keys", 0) >= 1, what="pi-2 refused")
    assert not bench.subscribed(c)
    shutil.copy(bench.keys / "pi-2.key", bench.allow)
    bench.sec.reload()
    # a refused client is let go after the handshake timeout (5 s) and tries again
    wait_until(lambda: bench.subscribed(c), timeout_s=15, what="pi-2 accepted once added")
    assert bench.sec.counts()["agents.accepted"] == 1


def test_a_removed_key_is_dropped_on_its_open_connection(bench: Bench) -> None:
    c = bench.client("pi-1")
    wait_until(lambda: bench.subscribed(c), what="pi-1 accepted")
    identity = bench.sec.identity(AGENTS)
    assert identity is not None
    (bench.allow / "pi-1.key").unlink()
    bench.sec.reload()
    wait_until(lambda: not identity.allow.by_uid, what="the removal read")
    c.send(b"gh/pi-1/env\x00late")
    assert bench.server.poll(5000)
    with pytest.raises(Refused, match="no longer in"):
        identity.recv(bench.server)
