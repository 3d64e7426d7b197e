"""Notifiers deliver to real endpoints: HTTP on loopback, an SMTP server, a
process, a ZeroMQ socket; the courier retries, backs off and never blocks."""

from __future__ import annotations

import dataclasses
import email.header
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest
import zmq
from alerting_support import NS, T0, Drip, Hook
from support import free_port, tcp, wait_until

from sensorwire.collector.alerting.delivery import Courier, Dispatcher
from sensorwire.collector.alerting.notification import Notification
from sensorwire.collector.alerting.notifiers import AnyNotifierConfig, NotifyError, build
from sensorwire.collector.alerting.notifiers.webhook import WebhookNotifier, redact, retry_after
from sensorwire.proto import wire
from sensorwire.proto.v1.telemetry_pb2 import Frame

FIRING = Notification(
    rule="greenhouse-hot", severity="critical", state="firing", site="greenhouse", device="pi-07",
    sensor="env", metric="temperature", value=36.5, threshold=35.0, started_ns=T0 + 456789_000,
    resolved_ns=None, summary='greenhouse/pi-07/env temperature is 36.5, above 35 "quoted"',
    time_ns=T0 + 456789_000,
)


def notifier(**kw: Any) -> AnyNotifierConfig:
    # a union, not a class: msgspec's stub types what it converts to as Any
    config: AnyNotifierConfig = msgspec.convert(kw, AnyNotifierConfig)
    return config


def courier_for(**kw: Any) -> Courier:
    cfg = notifier(**kw)
    c = Courier(build(cfg), retries=cfg.retries, backoff_s=cfg.backoff_s, queue_max=cfg.queue_max)
    c.start()
    return c


def test_the_notification_json_has_exactly_the_documented_fields() -> None:
    d = json.loads(FIRING.to_json())
    assert list(d) == ["rule", "severity", "state", "site", "device", "sensor", "metric", "value",
                       "threshold", "started", "resolved", "summary"]
    assert d["started"] == "2027-01-15T08:00:00.456789Z" and d["resolved"] is None


def test_webhook_answering_500_twice_then_200_delivers_exactly_once(hook: Hook) -> None:
    hook.script = ["500", "500"]
    c = courier_for(name="hook", kind="webhook", url=hook.url, retries=3, backoff_s=0.05)
    try:
        c.offer(FIRING)
        wait_until(lambda: c.delivered == 1, what="delivery")
        wait_until(c.idle, what="the courier to be idle")
    finally:
        c.close()
    assert [a for a, _, _ in hook.requests] == ["500", "500", "200"]
    assert hook.delivered() == [FIRING.to_dict()]
    assert (c.delivered, c.failed, c.retried) == (1, 0, 2)


def test_webhook_that_keeps_failing_is_counted_and_a_4xx_is_not_retried(hook: Hook) -> None:
    hook.then = "503"
    c = courier_for(name="hook", kind="webhook", url=hook.url, retries=2, backoff_s=0.01)
    try:
        c.offer(FIRING)
        wait_until(lambda: c.failed == 1, what="giving up")
        assert hook.count() == 3
        hook.then = "404"
        c.offer(FIRING)
        wait_until(lambda: c.failed == 2, what="a permanent failure")
        assert hook.count() == 4
    finally:
        c.close()


@pytest.mark.parametrize("url, shown", [
    ("https://hooks.slack.com/services/T000/B000/s3cret", "https://hooks.slack.com/…"),
    ("http://bot:s3cret@127.0.0.1:8080/", "http://127.0.0.1:8080/…"),
    ("http://127.0.0.1:8080/alerts?token=s3cret", "http://127.0.0.1:8080/…"),
    ("http://[::1]:8080/", "http://[::1]:8080/"),
    ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
])
def test_a_webhook_url_is_shown_without_its_secrets(url: str, shown: str) -> None:
    assert redact(url) == shown


def test_a_failing_webhook_logs_its_url_redacted(hook: Hook, caplog: pytest.LogCaptureFixture) -> None:
    hook.then = "503"
    c = courier_for(name="secret-hook", kind="webhook", url=hook.url + "/s3cret?token=s3cret",
                    retries=1, backoff_s=0.01)
    try:
        c.offer(FIRING)
        wait_until(lambda: c.failed == 1, what="giving up")
    finally:
        c.close()
    logged = "\n".join(r.getMessage() for r in caplog.records if "secret-hook" in r.getMessage())
    assert "HTTP 503" in logged and hook.url.rsplit("/", 1)[0] + "/…" in logged, logged
    assert "s3cret" not in logged


def test_a_redirect_is_a_failure_and_is_not_followed(hook: Hook,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    elsewhere = Hook()
    hook.then = "302"
    hook.location = elsewhere.url + "?token=s3cret"
    c = courier_for(name="moved-hook", kind="webhook", url=hook.url, retries=3, backoff_s=0.01,
                    headers={"Authorization": "Bearer s3cret"})
    try:
        c.offer(FIRING)
        wait_until(lambda: c.failed == 1, what="the redirect to count as a failure")
    finally:
        c.close()
        elsewhere.close()
    assert (c.delivered, c.failed, c.retried) == (0, 1, 0)
    assert hook.count() == 1 and elsewhere.count() == 0  # the credentials went nowhere else
    logged = [r.getMessage() for r in caplog.records if "moved-hook" in r.getMessage()]
    where = elsewhere.url.rsplit("/", 1)[0] + "/…"
    assert any(f"HTTP 302 Found: redirected to {where}, not followed" in m for m in logged), logged
    assert not any("s3cret" in m for m in logged)


@pytest.mark.parametrize("where", ["headers", "body"])
def test_an_endpoint_dripping_one_byte_at_a_time_fails_within_timeout_s(where: str) -> None:
    drip = Drip(where, every_s=0.2)  # each read gets a byte well within timeout_s
    c = courier_for(name=f"drip-{where}", kind="webhook", url=drip.url, timeout_s=1.0, retries=0)
    try:
        t0 = time.monotonic()
        c.offer(FIRING)
        wait_until(lambda: c.failed == 1, timeout_s=5.0, what="the attempt to time out")
        assert time.monotonic() - t0 < 3.0
    finally:
        c.close()
        drip.close()
    assert c.delivered == 0


def test_webhook_template_shapes_the_body_for_slack(hook: Hook) -> None:
    c = courier_for(name="slack", kind="webhook", url=hook.url,
                    template='{"text": ":fire: {summary} (value {value}, since {started})"}',
                    headers={"X-Alert": "{rule}/{state}"})
    try:
        c.offer(FIRING)
        wait_until(lambda: c.delivered == 1, what="delivery")
    finally:
        c.close()
    [(_, headers, body)] = hook.requests
    assert json.loads(body) == {"text": ':fire: greenhouse/pi-07/env temperature is 36.5, above 35 '
                                        '"quoted" (value 36.5, since 2027-01-15T08:00:00.456789Z)'}
    assert headers["X-Alert"] == "greenhouse-hot/firing"
    assert headers["Content-Type"] == "application/json"


def test_a_plain_text_template_is_not_json_escaped(hook: Hook) -> None:
    c = courier_for(name="ntfy", kind="webhook", url=hook.url, content_type="text/plain",
                    template="{summary}", headers={"Title": "{rule} {state}"})
    try:
        c.offer(FIRING)
        wait_until(lambda: c.delivered == 1, what="delivery")
    finally:
        c.close()
    assert hook.requests[0][2].decode() == FIRING.summary


@pytest.mark.slow
def test_a_hanging_webhook_does_not_hold_up_other_notifiers(hook: Hook) -> None:
    hook.then = "hang"
    fine = Hook()
    d = Dispatcher([notifier(name="stuck", kind="webhook", url=hook.url, timeout_s=30.0),
                    notifier(name="fine", kind="webhook", url=fine.url)])
    d.start()
    try:
        for _ in range(5):
            d.deliver(FIRING, ["stuck", "fine"])
        wait_until(lambda: len(fine.delivered()) == 5, what="the healthy hook's 5 deliveries")
        assert hook.count() == 1  # still waiting on its first
    finally:
        hook.release.set()
        t0 = time.monotonic()
        d.close(timeout_s=2.0)
        fine.close()
    assert time.monotonic() - t0 < 10


def test_a_full_queue_drops_and_counts_without_blocking(hook: Hook,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    hook.then = "hang"
    # a name of its own: the warning is rate-limited per notifier name, process-wide
    c = courier_for(name="full-queue", kind="webhook", url=hook.url, queue_max=3, timeout_s=30.0)
    try:
        def first_request() -> bool:
            c.offer(FIRING)
            return hook.count() == 1
        wait_until(first_request, what="the first request")
        caplog.clear()
        t0 = time.monotonic()
        for _ in range(1000):
            c.offer(FIRING)
        assert time.monotonic() - t0 < 0.5
        assert c.depth == 3 and c.dropped >= 997
        # every drop counted; one line says so, not one line per drop
        full = [r.getMessage() for r in caplog.records if "queue full" in r.getMessage()]
        assert len(full) == 1 and "notifier full-queue: queue full (3)" in full[0], full
    finally:
        hook.release.set()
        c.close(timeout_s=2.0)


def test_exec_gets_the_json_on_stdin_and_placeholders_in_argv(tmp_path: Path) -> None:
    out = tmp_path / "out"
    script = "import sys; open(sys.argv[1], 'w').write(sys.argv[2] + '|' + sys.stdin.read())"
    c = courier_for(name="run", kind="exec",
                    command=[sys.executable, "-c", script, str(out), "{name}:{state}"])
    try:
        c.offer(FIRING)
        wait_until(lambda: c.delivered == 1, what="the command")
    finally:
        c.close()
    args, stdin = out.read_text().split("|", 1)
    assert args == "greenhouse-hot:firing"
    assert json.loads(stdin) == FIRING.to_dict()


def test_exec_scripts_do_not_get_the_collectors_systemd_hand_over(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A script that found NOTIFY_SOCKET could send WATCHDOG=1 for a hung collector."""
    for key, value in {"NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": "20000000",
                       "WATCHDOG_PID": str(os.getpid()), "SW_SCRIPT_VAR": "kept"}.items():
        monkeypatch.setenv(key, value)
    out = tmp_path / "env"
    script = "import json, os, sys; open(sys.argv[1], 'w').write(json.dumps(dict(os.environ)))"
    build(notifier(name="e", kind="exec", command=[sys.executable, "-c", script, str(out)])).send(FIRING)
    env = json.loads(out.read_text())
    assert env["SW_SCRIPT_VAR"] == "kept" and env["PATH"] == os.environ["PATH"]
    assert not {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"} & set(env)


def test_exec_failures_are_classified() -> None:
    bad = build(notifier(name="x", kind="exec", command=["/nonexistent/notify"]))
    with pytest.raises(NotifyError) as err:
        bad.send(FIRING)
    assert not err.value.retryable
    failing = build(notifier(name="y", kind="exec", command=[sys.executable, "-c", "raise SystemExit(3)"]))
    with pytest.raises(NotifyError, match="exit status 3") as err:
        failing.send(FIRING)
    assert err.value.retryable


def test_publish_sends_an_alert_frame_on_its_topic() -> None:
    ep = tcp()
    pub = build(notifier(name="bus", kind="publish", bind=[ep]))
    pub.open()
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"alert/greenhouse/")
    sub.connect(ep)
    try:
        def received() -> bytes | None:
            pub.send(FIRING)
            return sub.recv() if sub.poll(100) else None
        msg = wait_until(received, what="an alert message")
    finally:
        sub.close()
        ctx.term()
        pub.close()
    topic, payload = msg.split(wire.DELIM, 1)
    assert topic == b"alert/greenhouse/pi-07/greenhouse-hot"
    f = Frame.FromString(payload)
    assert (f.site, f.device_id, f.sensor, f.time_unix_nano) == (
        "greenhouse", "pi-07", "greenhouse-hot", FIRING.started_ns)
    assert f.seq >= 1
    assert {s.metric: s.value for s in f.samples} == {
        "firing": 1.0, "severity": 3.0, "value": 36.5, "threshold": 35.0}


def test_email_is_delivered_to_a_local_smtp_server() -> None:
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult, LoginPassword

    class Inbox:
        def __init__(self) -> None:
            self.mails: list[tuple[str, list[str], bytes]] = []

        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
            self.mails.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
            return "250 OK"

    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (b"sw", b"secret")
        return AuthResult(success=ok)

    inbox = Inbox()
    port = free_port()
    smtpd = Controller(inbox, hostname="127.0.0.1", port=port, authenticator=authenticator,
                       auth_require_tls=False)
    smtpd.start()
    try:
        c = courier_for(name="mail", kind="email", host="127.0.0.1", port=port, to=["ops@example.org"],
                        username="sw", password="secret", retries=0, timeout_s=5.0,
                        **{"from": "sensorwire@example.org"})
        try:
            c.offer(FIRING)
            wait_until(lambda: c.delivered + c.failed == 1, what="the mail")
        finally:
            c.close()
        assert c.delivered == 1
        [(sender, to, content)] = inbox.mails
        assert sender == "sensorwire@example.org" and to == ["ops@example.org"]
        text = content.decode()
        assert "Subject: [firing] greenhouse-hot: greenhouse/pi-07/env temperature is 36.5" in text
        assert '"rule": "greenhouse-hot"' in text
    finally:
        smtpd.stop()


def test_an_email_notifier_without_a_port_uses_the_usual_one_for_its_security() -> None:
    def port(**kw: Any) -> int:
        cfg = notifier(name="m", kind="email", host="127.0.0.1", to=["a@b"], **{"from": "x@y"}, **kw)
        return cfg.smtp_port  # type: ignore[union-attr]

    assert (port(), port(starttls=True), port(tls=True)) == (25, 587, 465)
    assert port(tls=True, port=2465) == 2465


def test_an_unreachable_smtp_server_is_retryable() -> None:
    n = build(notifier(name="m", kind="email", host="127.0.0.1", port=free_port(), to=["a@b"],
                       timeout_s=2.0, **{"from": "x@y"}))
    with pytest.raises(NotifyError) as err:
        n.send(FIRING)
    assert err.value.retryable


def test_started_is_the_fire_time() -> None:
    assert FIRING.to_dict()["started"].endswith(".456789Z") and NS == 10**9


def test_what_a_stuck_courier_holds_at_shutdown_is_counted(hook: Hook) -> None:
    hook.then = "hang"
    c = courier_for(name="stuck-at-close", kind="webhook", url=hook.url, timeout_s=30.0)
    try:
        for _ in range(3):
            c.offer(FIRING)
        wait_until(lambda: hook.count() == 1, what="the first request")
    finally:
        c.close(timeout_s=0.1)
    # the one in flight failed, the two still queued were dropped
    assert (c.delivered, c.failed, c.dropped) == (0, 1, 2)
    hook.release.set()  # its late outcome is not counted again
    wait_until(c.idle, what="the abandoned request to end")
    assert (c.delivered, c.failed, c.dropped) == (0, 1, 2)


def test_a_header_template_with_an_emoji_is_sent_rfc_2047_encoded(hook: Hook) -> None:
    c = courier_for(name="ntfy", kind="webhook", url=hook.url, content_type="text/plain",
                    headers={"Title": "🔥 {rule}", "X-Summary": "{summary}"})
    line_break = dataclasses.replace(FIRING, summary="two\r\nlines")  # a field's value
    try:
        c.offer(FIRING)
        c.offer(line_break)
        wait_until(lambda: c.delivered == 2, what="both deliveries")
    finally:
        c.close()
    first, second = hook.requests[0][1], hook.requests[1][1]
    assert first["Title"].startswith("=?utf-8?")
    assert str(email.header.make_header(email.header.decode_header(first["Title"]))) \
        == "🔥 greenhouse-hot"
    assert second["X-Summary"] == "two  lines" and "X-Evil" not in second


def test_an_answer_that_is_not_http_is_a_retryable_failure() -> None:
    garbage = Drip(every_s=0.0, answer=b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
    try:
        with pytest.raises(NotifyError, match="not an HTTP answer: BadStatusLine") as err:
            build(notifier(name="x", kind="webhook", url=garbage.url)).send(FIRING)
    finally:
        garbage.close()
    assert err.value.retryable


class Broken:
    """A notifier with a bug: every send raises something that is not a NotifyError."""

    name = "broken"

    def open(self) -> None:
        pass

    def send(self, n: Notification) -> None:
        raise UnicodeEncodeError("latin-1", "🔥", 0, 1, "ordinal not in range(256)")

    def close(self) -> None:
        pass


def test_a_notifier_bug_logs_one_traceback_not_one_per_notification(
        caplog: pytest.LogCaptureFixture) -> None:
    c = Courier(Broken(), retries=3)
    c.start()
    try:
        for _ in range(5):
            c.offer(FIRING)
        wait_until(lambda: c.failed == 5, what="five failures")
    finally:
        c.close()
    lines = [r for r in caplog.records if "notifier broken" in r.getMessage()]
    assert len(lines) == 5 and c.retried == 0
    assert [r.exc_info is not None for r in lines] == [True, False, False, False, False]
    assert "unexpected UnicodeEncodeError" in lines[1].getMessage()


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_a_non_finite_value_is_json_null_in_the_body_and_in_a_json_template(value: float) -> None:
    n = dataclasses.replace(FIRING, value=value)
    assert json.loads(n.to_json())["value"] is None
    hook = build(notifier(name="x", kind="webhook", url="http://127.0.0.1:1/",
                          template='{"v": {value}, "t": "{value}"}'))
    assert isinstance(hook, WebhookNotifier)
    assert json.loads(hook.body(n)) == {"v": None, "t": "null"}
    text = build(notifier(name="y", kind="webhook", url="http://127.0.0.1:1/",
                          content_type="text/plain", template="{value}"))
    assert isinstance(text, WebhookNotifier)
    assert text.body(n).decode() == f"{value:g}"


def _alive(pid: int) -> bool:
    """A process that exists and is not a zombie (an orphan may wait long to be reaped)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def test_an_exec_timeout_kills_the_processes_the_command_started(tmp_path: Path) -> None:
    pidfile = tmp_path / "sleep.pid"
    script = f"sleep 60 & echo $! > {pidfile}; wait"
    slow = build(notifier(name="slow", kind="exec", command=["/bin/sh", "-c", script],
                          timeout_s=0.5))
    with pytest.raises(NotifyError, match="still running after 0.5 s: killed") as err:
        slow.send(FIRING)
    assert err.value.retryable
    sleep_pid = int(wait_until(lambda: pidfile.exists() and pidfile.read_text().strip() or None,
                               what="the pid of sleep"))
    wait_until(lambda: not _alive(sleep_pid), timeout_s=5.0, what="sleep to be killed")


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.0.53"])
def test_an_smtp_login_without_tls_is_allowed_on_loopback_only(host: str) -> None:
    login = {"username": "sw", "password": "secret", "to": ["a@b"], "from": "x@y"}
    notifier(name="m", kind="email", host=host, **login)  # loads
    with pytest.raises(msgspec.ValidationError, match="without TLS would send the password"):
        notifier(name="m", kind="email", host="mail.example.org", **login)
    notifier(name="m", kind="email", host="mail.example.org", starttls=True, **login)


def test_a_retry_after_header_is_honoured(hook: Hook) -> None:
    hook.script = ["503"]
    hook.retry_after = "1"
    c = courier_for(name="busy-hook", kind="webhook", url=hook.url, retries=2, backoff_s=0.01)
    try:
        c.offer(FIRING)
        wait_until(lambda: c.delivered == 1, what="delivery after the wait asked for")
    finally:
        c.close()
    assert hook.count() == 2 and c.retried == 1
    assert hook.times[1] - hook.times[0] >= 0.95  # not 0.01 s: the endpoint asked for 1 s


@pytest.mark.parametrize("value, seconds", [
    ("120", 120.0), ("0", 0.0), (" 7 ", 7.0), ("-5", None), ("soon", None), ("", None), (None, None),
    ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),  # in the past: now, never negative
    ("Wed, 21 Oct 2015 07:28:30 GMT", 30.0),
])
def test_retry_after_is_seconds_or_an_http_date(value: str | None, seconds: float | None) -> None:
    now = 1445412480.0  # 2015-10-21 07:28:00 UTC
    assert retry_after(value, now=now) == seconds


def test_a_long_retry_after_is_capped_by_the_courier(hook: Hook,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    hook.script = ["429"]
    hook.retry_after = "86400"
    c = courier_for(name="capped-hook", kind="webhook", url=hook.url, retries=1, backoff_s=0.01)
    try:
        c.offer(FIRING)
        wait_until(lambda: c.retried == 1, what="the first attempt")
    finally:
        c.close(timeout_s=0.1)  # a day's wait is not waited for at shutdown either
    assert any("retrying in 60.0 s" in r.getMessage() for r in caplog.records)
