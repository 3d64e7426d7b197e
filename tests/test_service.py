"""The watchdog and the loop's conversation with systemd, without processes."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from sensorwire.configload import ConfigError
from sensorwire.lifecycle import StopSignal
from sensorwire.sdnotify import NotifyListener
from sensorwire.service import Rate, Service
from sensorwire.watchdog import Watchdog


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def listener(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[NotifyListener]:
    path = f"/tmp/sw-test-{os.getpid()}-{id(tmp_path)}"
    listen = NotifyListener(path)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    yield listen
    listen.close()


def drain(listener: NotifyListener) -> list[str]:
    listener.wait_for("\0never", 0.2)
    out, listener.messages = listener.messages, []
    return out


def test_watchdog_follows_the_environment() -> None:
    assert not Watchdog.from_env({}).enabled
    assert not Watchdog.from_env({"WATCHDOG_USEC": "400000"}).enabled  # no NOTIFY_SOCKET
    wd = Watchdog.from_env({"WATCHDOG_USEC": "400000", "NOTIFY_SOCKET": "/x"})
    assert wd.interval_s == pytest.approx(0.2)
    other = Watchdog.from_env({"WATCHDOG_USEC": "400000", "NOTIFY_SOCKET": "/x",
                               "WATCHDOG_PID": "1"})
    assert not other.enabled  # meant for pid 1, not for us
    mine = {"WATCHDOG_USEC": "400000", "NOTIFY_SOCKET": "/x", "WATCHDOG_PID": str(os.getpid())}
    assert Watchdog.from_env(mine).enabled


def test_watchdog_pings_at_most_once_per_interval(listener: NotifyListener) -> None:
    clock = Clock()
    wd = Watchdog(0.25, clock=clock)
    assert wd.due_in() == 0.0 and wd.kick()
    assert wd.due_in() == 0.25
    clock.t += 0.125
    assert not wd.kick() and wd.due_in() == 0.125
    clock.t += 0.125
    assert wd.kick()
    assert drain(listener) == ["WATCHDOG=1", "WATCHDOG=1"]
    assert Watchdog(None).due_in() is None and not Watchdog(None).kick()


def test_watchdog_withholds_pings_while_a_check_names_something_stuck(
        listener: NotifyListener, caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    wd = Watchdog(0.25, clock=clock)
    stuck: list[str] = []
    with wd.watching(lambda: stuck[0] if stuck else None):
        assert wd.kick()
        stuck.append("sink x: a write into it has been running for 130.0 s")
        clock.t += 0.25
        assert not wd.kick() and wd.withheld == 1
        assert wd.due_in() == 0.25  # asked again a half period later: no busy loop meanwhile
        clock.t += 0.25
        assert not wd.kick() and wd.withheld == 2
        stuck.clear()
        clock.t += 0.25
        assert wd.kick()
    stuck.append("no longer asked")
    clock.t += 0.25
    assert wd.kick()  # the check is gone with the block
    assert drain(listener) == ["WATCHDOG=1"] * 3
    assert caplog.text.count("no longer telling systemd that all is well: sink x: a write") == 1
    assert "pinging systemd again, 2 pings were withheld (sink x" in caplog.text


def test_poll_timeout_is_capped_by_the_watchdog_and_rounded_up(listener: NotifyListener) -> None:
    clock = Clock()
    svc = Service(watchdog=Watchdog(0.25, clock=clock))
    svc.tick()  # the first ping
    assert svc.timeout_ms(None) == 250.0
    assert svc.timeout_ms(50.0) == 50.0
    assert svc.timeout_ms(5000.0) == 250.0
    clock.t += 0.2499
    assert svc.timeout_ms(None) == 1.0  # not 0: a 0 ms poll would spin until the deadline
    assert Service().timeout_ms(None) is None and Service().timeout_ms(7.0) == 7.0


def test_ready_carries_a_status_and_status_is_refreshed(listener: NotifyListener) -> None:
    n = iter(range(100))
    clock = Clock()
    svc = Service(status=lambda: f"{next(n)} frames/s", status_s=10.0, clock=clock)
    svc.ready()
    assert drain(listener) == ["READY=1\nSTATUS=0 frames/s"]
    assert svc.timeout_ms(None) == 10_000.0
    clock.t += 5.0
    svc.tick()
    assert svc.timeout_ms(60_000.0) == 5_000.0
    clock.t += 5.0
    svc.tick()
    svc.tick()
    assert drain(listener) == ["STATUS=1 frames/s"]


def test_reload_brackets_with_reloading_and_ready(listener: NotifyListener) -> None:
    applied: list[int] = []
    stop = StopSignal()
    svc = Service(stop, status=lambda: "ok", reload=lambda: applied.append(1))
    stop.hup.set()
    svc.tick()
    msgs = drain(listener)
    assert msgs[0].startswith("RELOADING=1\nMONOTONIC_USEC=") and msgs[1] == "READY=1\nSTATUS=ok"
    assert applied == [1] and svc.reloads_ok == 1 and not stop.hup.is_set()
    stop.close()


def test_a_failed_reload_is_logged_counted_and_keeps_running(
        listener: NotifyListener, caplog: pytest.LogCaptureFixture) -> None:
    def bad() -> None:
        raise ConfigError("agent.toml: sensors[1].interval_s: expected a number > 0, got -1")

    svc = Service(StopSignal(), reload=bad)
    with caplog.at_level(logging.ERROR):
        assert not svc.reload()
    assert svc.reloads_failed == 1 and not svc.last_reload_ok
    [rec] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert rec.getMessage() == ("reload failed, still running the previous configuration: "
                                "agent.toml: sensors[1].interval_s: expected a number > 0, got -1")
    assert drain(listener)[-1] == "READY=1"


def test_rate_is_per_second_between_readings() -> None:
    clock = Clock()
    r = Rate(clock)
    clock.t += 2.0
    assert r.per_s(10) == 5.0
    clock.t += 1.0
    assert r.per_s(13) == 3.0
