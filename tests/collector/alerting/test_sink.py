"""The alerting sink inside a running collector: stores, notifies, survives restarts,
and never holds up storage."""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import msgspec
import pytest
from alerting_support import Hook, Live, at, checked, rule
from support import wait_until

from sensorwire.collector import config as collector_config
from sensorwire.collector.alerting.notifiers import AnyNotifierConfig
from sensorwire.collector.alerting.sink import AlertSink

HOT = """
[[alerts]]
name = "greenhouse-hot"
match = "greenhouse/*/env"
metric = "temperature"
above = 35.0
clear = 33.0
severity = "critical"
notify = ["hook"]

[[notifiers]]
name = "hook"
kind = "webhook"
url = "{url}"
timeout_s = {timeout}
retries = 0
"""


def test_a_firing_alert_is_stored_and_posted_once(live: Callable[..., Live], hook: Hook) -> None:
    c = live(HOT.format(url=hook.url, timeout=5))
    for v in (30.0, 36.0, 37.0, 36.0, 34.0, 36.0):
        c.send({"temperature": v})
    wait_until(lambda: c.history() == [("greenhouse-hot", "firing")], what="firing stored")
    c.send({"temperature": 32.0})
    wait_until(lambda: len(hook.delivered()) == 2, what="firing and resolved posted")
    firing, resolved = hook.delivered()
    assert (firing["state"], firing["value"], resolved["state"], resolved["value"]) == \
        ("firing", 36.0, "resolved", 32.0)
    assert resolved["started"] == firing["started"] and resolved["resolved"] is not None
    assert c.history() == [("greenhouse-hot", "firing"), ("greenhouse-hot", "resolved")]
    assert c.rows("SELECT count(*) FROM alert_instances") == [(0,)]


@pytest.mark.slow
def test_a_hanging_webhook_does_not_delay_storage_of_samples(live: Callable[..., Live], hook: Hook) -> None:
    hook.then = "hang"
    c = live(HOT.format(url=hook.url, timeout=60))
    c.send({"temperature": 36.0})
    wait_until(lambda: hook.count() == 1, what="the webhook to be called (and hang)")
    for i in range(300):
        c.send({"temperature": 32.0 if i % 2 else 36.0})
    # every sample is stored, and every transition recorded, while the webhook still hangs
    wait_until(lambda: c.stored() == 301, what="all 301 frames stored")
    wait_until(lambda: len(c.history()) == 300, what="all 300 transitions stored")
    assert hook.count() == 1 and not hook.release.is_set()
    assert c.alerting.dispatcher is not None
    assert c.alerting.dispatcher.couriers["hook"].depth > 100


@pytest.mark.slow
def test_a_restart_while_firing_sends_no_second_firing(live: Callable[..., Live], hook: Hook) -> None:
    first = live(HOT.format(url=hook.url, timeout=5))
    first.send({"temperature": 36.0})
    wait_until(lambda: len(hook.delivered()) == 1, what="the firing notification")
    first.close()
    second = live(HOT.format(url=hook.url, timeout=5), name="restarted")
    for v in (36.5, 37.0, 34.0):
        second.send({"temperature": v})
    wait_until(lambda: second.stored() == 4, what="the new frames stored")
    second.send({"temperature": 30.0})
    wait_until(lambda: len(hook.delivered()) == 2, what="the resolved notification")
    assert [d["state"] for d in hook.delivered()] == ["firing", "resolved"]
    first_started = hook.delivered()[0]["started"]
    assert hook.delivered()[1]["started"] == first_started


STALE = """
[[alerts]]
name = "sensor-stale"
match = "greenhouse/**"
stale_s = 0.3
"""


def test_stale_fires_when_no_frames_arrive_at_all_and_resolves(live: Callable[..., Live]) -> None:
    c = live(STALE)
    c.send({"temperature": 20.0})
    wait_until(lambda: c.history() == [("sensor-stale", "firing")], timeout_s=15,
               what="stale firing with no frames arriving")
    c.send({"temperature": 20.0})
    wait_until(lambda: c.history()[-1:] == [("sensor-stale", "resolved")], what="resolved")
    [(summary,)] = c.rows("SELECT summary FROM alert_history WHERE state = 'firing'")
    assert summary.startswith("greenhouse/pi-07/env: no sample for")


def test_alerts_listing_shows_history_and_active(live: Callable[..., Live], hook: Hook) -> None:
    from io import StringIO

    from sensorwire.collector.alerting import listing

    c = live(HOT.format(url=hook.url, timeout=5))
    c.send({"temperature": 36.0})
    c.send({"temperature": 36.0}, device="pi-08")
    c.send({"temperature": 30.0})
    wait_until(lambda: len(c.history()) == 3, what="3 transitions")
    out = StringIO()
    listing.run(str(c.db), active=True, since_ns=None, fmt="json", out=out)
    [active] = [json.loads(line) for line in out.getvalue().splitlines()]
    assert active["device"] == "pi-08" and active["state"] == "firing" and active["resolved"] is None
    out = StringIO()
    listing.run(str(c.db), active=False, since_ns=None, fmt="table", out=out)
    lines = out.getvalue().splitlines()
    assert lines[0].split()[:5] == ["time", "state", "severity", "rule", "where"]
    assert len(lines) == 5 and "greenhouse/pi-08/env temperature" in lines[3]


def test_a_reload_keeps_firing_alerts_and_applies_new_rules(live: Callable[..., Live], hook: Hook,
                                                            tmp_path: Path) -> None:
    c = live(HOT.format(url=hook.url, timeout=5))
    c.send({"temperature": 36.0})
    wait_until(lambda: len(hook.delivered()) == 1, what="the firing notification")
    text = HOT.format(url=hook.url, timeout=5).replace("above = 35.0", "above = 35.5") + """
[[alerts]]
name = "greenhouse-dry"
match = "greenhouse/*/env"
metric = "humidity"
below = 30.0
notify = ["hook"]
"""
    path = tmp_path / "reloaded.toml"
    path.write_text(c.config_text.replace(c.alerts_text, text))
    c.collector.reload(collector_config.load(path))
    c.send({"temperature": 36.0, "humidity": 20.0})   # still firing: no second "firing"
    wait_until(lambda: len(hook.delivered()) == 2, what="the new rule firing")
    assert [(d["rule"], d["state"]) for d in hook.delivered()] == [
        ("greenhouse-hot", "firing"), ("greenhouse-dry", "firing")]
    c.send({"temperature": 32.0, "humidity": 50.0})
    wait_until(lambda: len(hook.delivered()) == 4, what="both resolved")
    assert {(d["rule"], d["state"]) for d in hook.delivered()[2:]} == {
        ("greenhouse-hot", "resolved"), ("greenhouse-dry", "resolved")}


def test_a_rule_at_max_instances_is_logged_counted_in_the_summary_and_exported(
        live: Callable[..., Live], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from sensorwire import rolemetrics

    stale = ('[[alerts]]\nname = "stale-bounded"\nmatch = "greenhouse/**"\nstale_s = 3600.0\n'
             'max_instances = 2\n')
    c = live(stale)
    with caplog.at_level(logging.INFO):
        for device in ("d1", "d2", "d3", "d4"):
            c.send({"v": 1.0}, device=device)
        wait_until(lambda: c.alerting.limited() == (2, 0), what="d1 and d2 forgotten")
        # one WARNING for the rule (rate-limited), naming it and the series (the last one
        # forgotten when the sink looked: d1, or d2 when all four frames came in one batch)
        warnings = [r for r in caplog.records if "stale-bounded" in r.getMessage()]
        assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
        assert re.fullmatch(
            r"alerting: rule 'stale-bounded' has max_instances = 2 alert instances: forgot "
            r"series greenhouse/(d1/env, idle longest, to watch a new one; 1|d2/env, idle "
            r"longest, to watch a new one; 2) forgotten so far; raise max_instances of the rule "
            r"or narrow its match", warnings[0].getMessage())
        c.collector._summary()
        assert ("alerting: 2 series forgotten and 0 not watched to stay within the rules' "
                "max_instances") in caplog.text
    families = {f.name: f for f in rolemetrics.collector_families(c.collector)}
    assert families["sensorwire_alert_instances"].samples == [((), 2)]
    assert families["sensorwire_alert_series_evicted_total"].samples == [(("stale-bounded",), 2)]
    assert families["sensorwire_alert_series_refused_total"].samples == [(("stale-bounded",), 0)]
    # the counts carry over a reload (a new engine)
    old = c.alerting.engine
    path = tmp_path / "reloaded.toml"
    path.write_text(c.config_text)
    c.collector.reload(collector_config.load(path))
    wait_until(lambda: c.alerting.engine is not old, what="the reload applied")
    # 2 before it, and 2 more as the new engine was seeded with the 4 series stored
    assert c.alerting.limited() == (4, 0)
    assert c.alerting.limited_by_rule() == {"stale-bounded": (4, 0)}
    assert c.alerting.instances() == 2


def test_a_reload_does_not_wait_for_the_old_notifiers_and_counts_them(
        hook: Hook, caplog: pytest.LogCaptureFixture) -> None:
    hook.then = "hang"
    hot = rule(name="hot", match="greenhouse/*/env", metric="temperature", above=35.0,
               notify=["hook"])
    hooked = msgspec.convert({"name": "hook", "kind": "webhook", "url": hook.url,
                              "retries": 0, "timeout_s": 30.0}, AnyNotifierConfig)
    sink = AlertSink([hot], [hooked], None, storage_kind="none")
    sink.open()
    try:
        sink.write([(checked({"temperature": 36.0}, 0), at(0)),
                    (checked({"temperature": 36.0}, 0, device="pi-08"), at(0))])
        wait_until(lambda: hook.count() == 1, what="the first request")
        t0 = time.monotonic()
        sink.reload(SimpleNamespace(alerts=[hot], notifiers=[hooked]))
        assert time.monotonic() - t0 < 1.0  # the hanging endpoint does not hold evaluation
        hook.then = "200"
        hook.release.set()  # the first request ends without an answer; the second is answered
    finally:
        with caplog.at_level(logging.INFO, logger="sensorwire.collector.alerting.sink"):
            sink.close()
    assert "alerting: 2 notifications; hook: 1 delivered, 1 failed, 0 dropped" in caplog.text


def test_a_rate_window_started_again_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    rise = rule(name="rise", metric="temperature", rate_above=1.0, window_s=60.0)
    sink = AlertSink([rise], [], None, storage_kind="none")
    sink.open()
    try:
        with caplog.at_level(logging.INFO, logger="sensorwire.collector.alerting.sink"):
            sink.write([(checked({"temperature": 20.0}, 86_400.0), at(0))])  # a clock a day ahead
            for t in range(1, 4):  # then the right time: a day back, three times
                sink.write([(checked({"temperature": 20.0}, float(t)), at(t))])
    finally:
        sink.close()
    lines = [r.getMessage() for r in caplog.records if "rate window" in r.getMessage()]
    assert lines == ["alerting: rule 'rise': a sample of greenhouse/pi-07/env temperature is "
                     "86399 s older than the newest one: the device's clock stepped back (or a "
                     "frame came from the future), so its rate window starts again; 1 windows "
                     "started again so far"]
