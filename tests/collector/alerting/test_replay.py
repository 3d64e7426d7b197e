"""``sensorwire alerts test`` replays stored presence too: a device that went offline in the
live run goes offline in the replay, at the same time, with the same notification."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

import pytest
from alerting_support import Live, frame
from support import run_cli, wait_until

from sensorwire.proto import wire
from sensorwire.proto.v1.telemetry_pb2 import Frame, Heartbeat

RULES = """
[presence]
offline_after_s = 0.5

[[alerts]]
name = "hot"
match = "greenhouse/*/env"
metric = "temperature"
above = 35.0
clear = 33.0

[[alerts]]
name = "pi-offline"
match = "greenhouse/**"
device_offline = true
"""


def stored_alerts(c: Live) -> list[dict[str, Any]]:
    r = run_cli("alerts", "--db", str(c.db), "--format", "json")
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines()]


def replayed(c: Live) -> list[dict[str, Any]]:
    config = str(c.db.parent / "collector.toml")
    r = run_cli("alerts", "test", "-c", config, "--db", str(c.db), "--since", "1h", "--format", "json")
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""  # no rule is left out
    return [json.loads(line) for line in r.stdout.splitlines()]


def send_boot(c: Live, boot_id: int, seq: int, values: dict[str, float] | None = None,
              heartbeat: bool = False) -> None:
    """A frame (or a heartbeat) of greenhouse/pi-07 from boot ``boot_id``."""
    f: Frame = frame(values or {}, 0, seq=0 if heartbeat else seq)
    f.boot_id, f.time_unix_nano = boot_id, time.time_ns()
    if heartbeat:
        f.sensor = ""
        f.heartbeat.CopyFrom(Heartbeat(interval_s=0.1, last_seq=seq, clock_synced=True))
        topic = wire.heartbeat_topic("greenhouse", "pi-07")
    else:
        topic = wire.data_topic("greenhouse", "pi-07", "env")
    c.pub.send(wire.encode(topic, f))


@pytest.mark.slow
def test_an_offline_device_replays_as_it_happened_live(live: Callable[..., Live]) -> None:
    c = live(RULES)
    c.send({"temperature": 30.0})
    c.send({"temperature": 36.0})  # hot fires
    wait_until(lambda: c.history() == [("hot", "firing"), ("pi-offline", "firing")],
               what="hot, then pi-offline firing")
    c.send({"temperature": 32.0})  # back online (pi-offline resolved), then hot resolved
    wait_until(lambda: len(c.history()) == 4, what="both resolved")
    c.close()

    live_objs = stored_alerts(c)
    assert [(o["rule"], o["state"]) for o in live_objs] == [
        ("hot", "firing"), ("pi-offline", "firing"), ("pi-offline", "resolved"), ("hot", "resolved")]
    offline = live_objs[1]
    assert (offline["site"], offline["device"], offline["sensor"]) == ("greenhouse", "pi-07", None)
    assert offline["summary"].startswith("greenhouse/pi-07 is offline (silent for ")
    back = live_objs[2]
    assert back["value"] >= offline["value"] >= 0.5  # the silence, up to the frame that ended it
    assert back["summary"].startswith("greenhouse/pi-07 is back after ")
    assert replayed(c) == live_objs


@pytest.mark.slow
def test_a_restarted_agent_replays_with_the_silence_counted_from_its_last_heartbeat(
        live: Callable[..., Live]) -> None:
    """The last contact before the outage was a heartbeat (not stored as a row of its own);
    the agent came back with a new boot, whose end ``boots`` keeps."""
    c = live(RULES)
    first, second = (int.from_bytes(os.urandom(4), "little") | 1 for _ in range(2))
    send_boot(c, first, 1, {"temperature": 30.0})
    wait_until(lambda: c.stored() == 1, what="the first frame stored")
    send_boot(c, first, 1, heartbeat=True)
    wait_until(lambda: c.history() == [("pi-offline", "firing")], what="pi-offline firing")
    send_boot(c, second, 1, {"temperature": 30.0})
    wait_until(lambda: len(c.history()) == 2, what="pi-offline resolved")
    c.close()

    live_objs = stored_alerts(c)
    assert [(o["rule"], o["state"]) for o in live_objs] == [
        ("pi-offline", "firing"), ("pi-offline", "resolved")]
    [last_frame] = c.rows("SELECT received_ns FROM frames WHERE seq = 1 AND boot_id = ?", first)
    fired_ns = c.rows("SELECT time_ns FROM presence WHERE state = 'offline' AND device_key = "
                      "(SELECT id FROM devices WHERE device = 'pi-07')")[0][0]
    # live, the silence began at the heartbeat, after the frame
    assert live_objs[0]["value"] < (fired_ns - last_frame[0]) / 1e9
    assert replayed(c) == live_objs
