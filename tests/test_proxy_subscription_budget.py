"""The distinct subscriptions a real proxy forwards to its agents, and what it says of them.

Forwarding in Python (here: the last-value cache on), the proxy forwards at most the
agents' budget of distinct subscriptions and drops and counts the rest; forwarding in
libzmq (the default) it cannot drop one, and says so loudly once past the budget.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import zmq
from support import Proc, tcp, wait_until, write

from sensorwire import libzmqproxy

BUDGET_KIB = libzmqproxy.MAX_SUBSCRIPTION_BYTES // 1024


def start(procs: Callable[..., Proc], tmp_path: Path, extra: str) -> tuple[Proc, str, str]:
    front, back = tcp(), tcp()
    cfg = write(tmp_path / "proxy.toml", f'frontend = "{front}"\nbackend = "{back}"\n'
                f'summary_s = 0.5\n{extra}\n[metrics]\nlisten = ""\n')
    return procs("proxy", "proxy", "-c", str(cfg)), front, back


def socket(ctx: zmq.Context[zmq.Socket[bytes]], kind: int, endpoint: str) -> zmq.Socket[bytes]:
    s = ctx.socket(kind)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(endpoint)
    return s


def read_subscriptions(agent: zmq.Socket[bytes], quiet_ms: int = 1000) -> list[bytes]:
    out = []
    while agent.poll(quiet_ms):
        out.append(agent.recv())
    return out


def read_n(agent: zmq.Socket[bytes], n: int, timeout_s: float = 20) -> list[bytes]:
    """n messages (failing after timeout_s without one), then any more within half a second."""
    out: list[bytes] = []
    while len(out) < n:
        assert agent.poll(int(timeout_s * 1000)), f"{len(out)} of {n} messages, then none"
        out.append(agent.recv())
    return out + read_subscriptions(agent, 500)


@pytest.mark.parametrize("extra", ["", "last_value_cache = true"], ids=["libzmq", "python"])
def test_an_agent_slow_to_read_gets_every_subscription(
        procs: Callable[..., Proc], tmp_path: Path, ctx: zmq.Context[zmq.Socket[bytes]],
        extra: str) -> None:
    """libzmq's default send queue of 1,000 dropped (un)subscriptions to an agent that did not
    take them in at once, without a word: it went on sending frames nobody took, or spooled
    those a collector waited for."""
    proxy, front, back = start(procs, tmp_path, extra)
    agent = ctx.socket(zmq.XPUB)
    agent.setsockopt(zmq.LINGER, 0)
    agent.setsockopt(zmq.RCVHWM, 1)  # as a real agent's (sensorwire.agent.publisher)
    agent.setsockopt(zmq.RCVBUF, 4096)  # and a kernel buffer that holds little
    agent.connect(front)
    collector = socket(ctx, zmq.XSUB, back)
    collector.setsockopt(zmq.SNDHWM, 0)
    collector.send(b"\x01gh/")
    assert agent.poll(10_000) and agent.recv() == b"\x01gh/"
    n = 9000
    for i in range(n):
        collector.send(b"\x01gh/dev-%05d/" % i)
    wait_until(lambda: f"subscriptions: {n + 1} held" in proxy.log(), timeout_s=20,
               what="the proxy's summary")
    assert sorted(read_n(agent, n)) == sorted(b"\x01gh/dev-%05d/" % i for i in range(n))
    collector.close()  # and every one taken back
    assert len(read_n(agent, n + 1)) == n + 1


def test_in_python_the_proxy_forwards_at_most_the_agents_budget(
        procs: Callable[..., Proc], tmp_path: Path, ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
    proxy, front, back = start(procs, tmp_path, "last_value_cache = true")
    agent = socket(ctx, zmq.XPUB, front)
    flood = ctx.socket(zmq.XSUB)
    flood.setsockopt(zmq.LINGER, 0)
    flood.setsockopt(zmq.SNDHWM, 0)  # libzmq's 1,000 would drop part of the flood here, under load
    flood.connect(back)
    first = socket(ctx, zmq.XSUB, back)
    first.send(b"\x01gh/")
    assert agent.poll(10_000) and agent.recv() == b"\x01gh/"
    n = libzmqproxy.MAX_SUBSCRIPTION_BYTES // 190 + 20  # each as long as a topic may be
    for i in range(n):
        flood.send(b"\x01%04d" % i + os.urandom(186))
    got = read_subscriptions(agent)
    held = len(b"gh/")
    for m in got:
        held += len(m) - 1
    assert held <= libzmqproxy.MAX_SUBSCRIPTION_BYTES
    assert len(got) < n  # some dropped
    wait_until(lambda: "too_many_subscriptions" in proxy.log(), timeout_s=10,
               what="the drops in the summary line")
    assert "set [security] authorized_collectors" in proxy.log()
    # the flood leaves: what it held is taken back from the agents, room for others again
    flood.close()
    gone = read_n(agent, len(got))
    assert len(gone) == len(got) and all(m[:1] == b"\x00" for m in gone)
    second = socket(ctx, zmq.XSUB, back)
    second.send(b"\x01gh/pi-3/")
    assert agent.poll(10_000) and agent.recv() == b"\x01gh/pi-3/"
    first.close()
    second.close()


def test_in_libzmq_past_the_budget_the_proxy_says_so(
        procs: Callable[..., Proc], tmp_path: Path, ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
    proxy, front, back = start(procs, tmp_path, "")
    agent = socket(ctx, zmq.XPUB, front)
    flood = socket(ctx, zmq.XSUB, back)
    flood.send(b"\x01gh/")
    assert agent.poll(10_000)
    for i in range(BUDGET_KIB + 20):
        flood.send(b"\x01%04d" % i + os.urandom(1020))
    wait_until(lambda: "collectors hold more than 10000 distinct subscriptions or "
               f"{BUDGET_KIB} KiB" in proxy.log(), timeout_s=10, what="the ERROR")
    wait_until(lambda: "past the budget" in proxy.log(), timeout_s=10, what="the summary line")
    flood.close()
    wait_until(lambda: "subscriptions: 0 held (0 bytes)" in proxy.log().rsplit("\n", 3)[-2],
               timeout_s=10, what="the subscriptions gone with the flood")


def test_in_python_the_agents_lose_a_prefix_when_its_last_collector_leaves(
        procs: Callable[..., Proc], tmp_path: Path, ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
    """With the last-value cache on the backend sees every subscription (XPUB_VERBOSE), two
    collectors' of one prefix included, but only the last unsubscription: the agents must get
    the prefix once, and lose it when both have left (or they would go on sending frames that
    nobody takes, instead of spooling them)."""
    proxy, front, back = start(procs, tmp_path, "last_value_cache = true")
    agent = socket(ctx, zmq.XPUB, front)
    agent.setsockopt(zmq.XPUB_VERBOSE, 1)  # every subscription that reaches it, repeats too
    one, two = socket(ctx, zmq.XSUB, back), socket(ctx, zmq.XSUB, back)
    one.send(b"\x01gh/")
    assert agent.poll(10_000) and agent.recv() == b"\x01gh/"
    two.send(b"\x01gh/")
    wait_until(lambda: "subscriptions: 1 held" in proxy.log(), timeout_s=10,
               what="the proxy's summary")
    one.close()
    two.close()
    assert read_subscriptions(agent, 3000) == [b"\x00gh/"]
