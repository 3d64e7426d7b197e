"""An offline alert's ``value`` is the silence: so far when it fires, the whole of it when it
resolves, also after a restart. Presence events as the collector's tracker makes them: the
event that ends an outage carries the time of the frame that ended it as ``last_seen_ns``."""

from __future__ import annotations

from alerting_support import at, rule

from sensorwire.collector.alerting.engine import ActiveAlert, Engine
from sensorwire.collector.events import Presence

OFFLINE = rule(name="pi-offline", match="gh/**", device_offline=True)


def test_resolved_says_how_long_the_device_was_silent() -> None:
    e = Engine([OFFLINE])
    [fired] = e.presence(Presence("gh", "pi-1", "offline", "online", at(20), at(5)))
    [back] = e.presence(Presence("gh", "pi-1", "online", "offline", at(65), at(65)))
    assert (fired.value, back.value) == (15.0, 60.0)
    assert back.summary.startswith("gh/pi-1 is back after 1m00s; alert lasted 45 s")


def test_after_a_restart_too() -> None:
    e = Engine([OFFLINE])
    [fired] = e.presence(Presence("gh", "pi-1", "offline", "online", at(20), at(5)))
    restarted = Engine([OFFLINE])
    restarted.restore([ActiveAlert("pi-offline", "gh", "pi-1", None, None, fired.started_ns,
                                   fired.time_ns, fired.value)])
    [back] = restarted.presence(Presence("gh", "pi-1", "stopped", "offline", at(125), at(125)))
    assert (back.state, back.value, back.started_ns) == ("resolved", 120.0, at(20))
