"""A running agent sends frames and heartbeats without loading what it does not need.

protobuf (descriptor pool, message classes, text format) costs an agent about
2.4 MiB of RSS, so the agent encodes by hand and imports protobuf only to
parse a repair request.  A real ``sensorwire agent`` process is checked from
outside: protobuf's C extension must not be in its memory map (Linux
``/proc/<pid>/maps``) until a repair request arrives, and must be there after.

inspect (with ast and dis, about 1 MiB) comes with dataclasses and with
typing_extensions, which msgspec imports when it is installed: a real agent
with a sensor of every built-in kind is run with ``PYTHONPROFILEIMPORTTIME``,
and the imports it logs are checked.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import zmq
from support import Proc, tcp, wait_until, write

from sensorwire.proto import wire
from sensorwire.proto.v1.telemetry_pb2 import Frame, RepairRequest, SeqRange
from sensorwire.serialsim import Pty

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/<pid>/maps")


@pytest.fixture
def protobuf_extension() -> str:
    """The file of protobuf's C extension, which a process that imports protobuf maps."""
    from google.protobuf.internal import api_implementation

    if api_implementation.Type() != "upb":
        pytest.skip(f"protobuf's {api_implementation.Type()!r} backend: no C extension to look for")
    import google._upb._message as upb

    path = str(Path(upb.__file__).resolve())
    assert path in Path("/proc/self/maps").read_text()  # the check sees it where it is loaded
    return path


@pytest.fixture
def upstream() -> Iterator[zmq.Socket[bytes]]:
    """A proxy's side of the agent's connection: an XSUB that subscribes to everything."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = ctx.socket(zmq.XSUB)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        yield sock
    finally:
        sock.close()
        ctx.term()


def mapped(proc: Proc, path: str) -> bool:
    return path in Path(f"/proc/{proc.popen.pid}/maps").read_text()


def test_protobuf_is_loaded_only_when_a_repair_request_arrives(
        tmp_path: Path, procs: Callable[..., Proc], upstream: zmq.Socket[bytes],
        protobuf_extension: str) -> None:
    ep = tcp()
    cfg = write(tmp_path / "agent.toml", f"""\
site = "gh"
device_id = "pi-1"
[publish]
bind = ["{ep}"]
heartbeat_s = 0.2
[[sensors]]
name = "env"
kind = "simulated"
interval_s = 0.05
metrics = [{{ name = "t", unit = "C", signal = "constant", value = 1.0 }}]
""")
    agent = procs("agent", "agent", "-c", str(cfg))
    upstream.connect(ep)
    upstream.send(b"\x01")  # subscribe to everything
    decoder = wire.Decoder()

    def next_heartbeat(check: Callable[[Frame], bool] = lambda f: True) -> Frame:
        def got() -> Frame | None:
            while upstream.poll(100):
                f = decoder.decode(upstream.recv())
                if f.HasField("heartbeat") and check(f):
                    return f
            return None
        return wait_until(got, what="a heartbeat from the agent")

    hb = next_heartbeat(lambda f: f.heartbeat.last_seq > 0)  # data frames and heartbeats flow
    assert hb.heartbeat.counters["frames_sent"] > 0
    assert not mapped(agent, protobuf_extension), "the agent loaded protobuf before any repair"

    other_boot = hb.boot_id ^ 1   # frames of a boot it never had: all unavailable
    req = RepairRequest(device_id="pi-1", ranges=[SeqRange(boot_id=other_boot, first=1, last=3)])
    upstream.send(wire.REPAIR + req.SerializeToString())
    hb = next_heartbeat(lambda f: len(f.heartbeat.unavailable) > 0)
    assert [(r.boot_id, r.first, r.last) for r in hb.heartbeat.unavailable] == [(other_boot, 1, 3)]
    assert mapped(agent, protobuf_extension), "the repair request was parsed without protobuf?"
    assert agent.terminate() == 0


def imported(log: str) -> set[str]:
    """The modules a process imported, from its ``-X importtime`` lines on stderr."""
    return {line.rsplit("|", 1)[1].strip() for line in log.splitlines()
            if line.startswith("import time:") and line.count("|") == 2}


def test_a_running_agent_never_imports_inspect(
        tmp_path: Path, procs: Callable[..., Proc], upstream: zmq.Socket[bytes]) -> None:
    ep = tcp()
    with Pty() as pty:
        cfg = write(tmp_path / "agent.toml", f"""\
site = "gh"
device_id = "pi-1"
[publish]
bind = ["{ep}"]
heartbeat_s = 0.2
[[sensors]]
name = "env"
kind = "simulated"
interval_s = 0.1
metrics = [{{ name = "t", unit = "C", signal = "sine", noise = 0.1 }}]
[[sensors]]
name = "health"
kind = "system"
interval_s = 0.1
[[sensors]]
name = "uart"
kind = "serial"
port = "{pty.path}"
format = "csv"
fields = ["a", "b"]
""")
        agent = procs("agent", "agent", "-c", str(cfg), env={"PYTHONPROFILEIMPORTTIME": "1"})
        upstream.connect(ep)
        upstream.send(b"\x01")  # subscribe to everything
        decoder = wire.Decoder()
        sensors: set[str] = set()

        def every_sensor_published() -> bool:
            pty.write(b"1.5,2.5\n")
            # at most one wait per line written: with 25 frames/s from the other sensors,
            # `while poll(100)` would never return to write the next line
            if upstream.poll(100):
                while upstream.poll(0):
                    sensors.add(decoder.decode(upstream.recv()).sensor)
            return {"env", "health", "uart"} <= sensors

        wait_until(every_sensor_published, what="frames from every sensor")
        modules = imported(agent.log())
        assert agent.terminate() == 0
    # the check sees the imports: msgspec at start, psutil and pyserial when their sensors open
    assert {"msgspec", "psutil", "serial"} <= modules, sorted(modules)
    assert "inspect" not in modules, (
        "the agent imported inspect (about 1 MiB): through dataclasses, or typing_extensions "
        "when msgspec was imported without sensorwire.msgspecload")
    assert "dataclasses" not in modules
