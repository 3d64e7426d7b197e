"""Without a SQLite store (``[storage] kind = "postgres"`` or ``"none"``) alert state lives in
memory: the sink says so, naming the storage kind, and a restart fires a firing alert again."""

from __future__ import annotations

import gc
import logging
from types import SimpleNamespace

import pytest
from alerting_support import at, checked, rule

from sensorwire.collector.alerting.sink import AlertSink
from sensorwire.collector.frames import CheckedFrame, Layout

HOT = rule(name="hot", match="greenhouse/*/env", metric="temperature", above=35.0)


def run_once(caplog: pytest.LogCaptureFixture, **kw: str) -> tuple[int, str]:
    """Open a sink with no database, feed it one hot reading, close it: (notifications, warning)."""
    sink = AlertSink([HOT], [], None, **kw)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sensorwire.collector.alerting.sink"):
        sink.open()
    try:
        sink.write([(checked({"temperature": 36.0}, 0), at(0))])
        return sink.notifications, caplog.records[0].getMessage()
    finally:
        sink.close()


def test_postgres_storage_keeps_no_alert_state_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    fired, warning = run_once(caplog, storage_kind="postgres")
    assert fired == 1
    assert warning.startswith('alerting: [storage] kind = "postgres": alert state and history are '
                              "kept in memory only")
    assert 'notifies "firing" again' in warning
    # a restart: the alert that was firing is not known, so it fires (and notifies) again
    assert run_once(caplog, storage_kind="postgres")[0] == 1


def test_the_warning_is_true_when_the_storage_kind_is_not_given(
        caplog: pytest.LogCaptureFixture) -> None:
    _, warning = run_once(caplog)
    assert warning.startswith('alerting: [storage] kind is not "sqlite": alert state')
    assert 'kind = "none"' not in warning


def test_a_reload_carries_firing_alerts_over_in_memory() -> None:
    sink = AlertSink([HOT], [], None, storage_kind="none")
    sink.open()
    try:
        sink.write([(checked({"temperature": 36.0}, 0), at(0))])
        sink.reload(SimpleNamespace(alerts=[HOT], notifiers=[]))  # SIGHUP
        sink.write([(checked({"temperature": 36.5}, 10), at(10))])  # still firing: nothing new
        sink.write([(checked({"temperature": 30.0}, 20), at(20))])  # clears
    finally:
        sink.close()
    assert sink.notified == {("hot", "firing"): 1, ("hot", "resolved"): 1}
    assert sink.engine.firing() == []


def test_a_reload_leaves_no_garbage_for_the_cyclic_collector() -> None:
    """The collector makes full collections rare (gcpolicy): a replaced engine left in reference
    cycles (an instance and its rule's idle list, a pattern's cache of its own method) stayed
    in memory, about 130 KiB a reload at 1,000 series (bench.soak, a reload every 10 s)."""
    stale = rule(name="stale", match="**", stale_s=60.0)
    sink = AlertSink([HOT, stale], [], None, storage_kind="none")
    sink.open()
    try:
        sink.write([(checked({"temperature": 36.0 if i % 2 else 20.0}, 0, device=f"pi-{i}"), at(0))
                    for i in range(200)])
        gc.collect()
        sink.reload(SimpleNamespace(alerts=[HOT, stale], notifiers=[]))  # SIGHUP
        left = gc.collect()
        sink.write([(checked({"temperature": 30.0}, 20, device="pi-1"), at(20))])  # still works
    finally:
        sink.close()
    assert left < 20  # 320 before: the replaced engine's instances, rules, windows and patterns
    assert sink.notified[("hot", "firing")] == 100 and sink.notified[("hot", "resolved")] == 1


def test_a_frame_the_engine_fails_on_costs_that_frame_not_the_batch(
        caplog: pytest.LogCaptureFixture) -> None:
    sink = AlertSink([HOT], [], None, storage_kind="none")
    sink.open()
    # a frame whose values do not match its layout: the engine raises on it
    broken = CheckedFrame("greenhouse", "pi-08", 1, 1, at(0), "env", 0,
                          Layout([("temperature", "")]), ())
    try:
        with caplog.at_level(logging.ERROR, logger="sensorwire.collector.alerting.sink"):
            sink.write([(checked({"temperature": 36.0}, 0), at(0)), (broken, at(0)),
                        (checked({"temperature": 36.0}, 0, device="pi-09"), at(0))])
    finally:
        sink.close()
    assert sink.notified == {("hot", "firing"): 2} and sink.engine_errors == 1
    [error] = [r for r in caplog.records if "rules not applied" in r.getMessage()]
    assert "greenhouse/pi-08/env seq 1" in error.getMessage() and error.exc_info
