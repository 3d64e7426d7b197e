"""Rules and notifiers are validated at start; every error names the rule."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import run_cli, write

from sensorwire.collector import config as collector_config
from sensorwire.collector.alerting.patterns import Pattern
from sensorwire.configload import ConfigError

TOP = '[subscribe]\nconnect = ["tcp://127.0.0.1:5557"]\n'
HOOK = '[[notifiers]]\nname = "hook"\nkind = "webhook"\nurl = "http://127.0.0.1:8080/alerts"\n'


def rule(body: str, name: str = "greenhouse-hot") -> str:
    return f'[[alerts]]\nname = "{name}"\n{body}\n'


@pytest.mark.parametrize(
    "text, expected",
    [
        (rule('metric = "t"\nabove = 35.0\nabove_s = 3'),
         "collector.toml: alerts[0].above_s: rule 'greenhouse-hot': unknown key (a typo?)"),
        (rule('metric = "t"'),
         "collector.toml: alerts[0]: rule 'greenhouse-hot': no condition: give one of above, below"),
        (rule('metric = "t"\nabove = 35.0\nclear = 36.0'),
         "collector.toml: alerts[0].clear: rule 'greenhouse-hot': 36 is above the threshold above = 35"),
        (rule('metric = "t"\nbelow = 2.0\nclear = 1.0'),
         "collector.toml: alerts[0].clear: rule 'greenhouse-hot': 1 is below the threshold below = 2"),
        (rule('metric = "t"\nrate_above = 0.5\nclear = 0.8'),
         "collector.toml: alerts[0].clear: rule 'greenhouse-hot': 0.8 is above the threshold rate_above"),
        (rule('metric = "t"\noutside = [10.0, 30.0]\nclear = [5.0, 20.0]'),
         "collector.toml: alerts[0].clear: rule 'greenhouse-hot': [5, 20] must lie within outside [10, 30]"),
        (rule('metric = "t"\noutside = [30.0, 10.0]'),
         "collector.toml: alerts[0].outside: rule 'greenhouse-hot': [30, 10]: lo must be below hi"),
        (rule('stale_s = 60.0\nclear = 1.0'),
         "collector.toml: alerts[0].clear: rule 'greenhouse-hot': only above, below, outside"),
        (rule('metric = "t"\nabove = 35.0\nnotify = ["log", "hok"]') + HOOK,
         "collector.toml: alerts[0].notify: rule 'greenhouse-hot': "
         "[1] no notifier named 'hok' (declared: hook, log)"),
        (rule('metric = "t"\nabove = 35.0\nmatch = "greenhouse/pi-*"'),
         "collector.toml: alerts[0].match: rule 'greenhouse-hot': "
         "'greenhouse/pi-*': segment 'pi-*': a segment is"),
        (rule('metric = "t"\nabove = 35.0\nmatch = "a/b/c/d"'),
         "collector.toml: alerts[0].match: rule 'greenhouse-hot': 'a/b/c/d' can never match"),
        (rule('above = 35.0'),
         "collector.toml: alerts[0].metric: rule 'greenhouse-hot': required for an above rule"),
        (rule('metric = "t"\nabove = 35.0\nstale_s = 9.0'),
         "collector.toml: alerts[0].stale_s: rule 'greenhouse-hot': a rule has one condition"),
        (rule('metric = "t"\ndevice_offline = true'),
         "collector.toml: alerts[0].metric: rule 'greenhouse-hot': "
         "a device_offline rule watches a whole device"),
        (rule('metric = "t"\nabove = 1.0\nwindow_s = 5.0'),
         "collector.toml: alerts[0].window_s: rule 'greenhouse-hot': only rate_above and rate_below"),
        (rule('metric = "t"\nabove = 1.0\nrepeat_s = 0.001'),
         "collector.toml: alerts[0].repeat_s: rule 'greenhouse-hot': 0.001 would remind more than "
         "once a minute: give at least 60 s"),
        (rule('metric = "t"\nrate_above = 1.0\nwindow_s = 1e-10'),
         "collector.toml: alerts[0].window_s: rule 'greenhouse-hot': 1e-10 is too short: give at "
         "least 1 s"),
        (rule('metric = "t"\nabove = 1.0\nseverity = "high"'),
         "collector.toml: alerts[0].severity: rule 'greenhouse-hot': "
         'expected one of "critical", "info", "warning", got "high"'),
        (rule('metric = "t"\nabove = 1.0\nfor_s = -1'),
         "collector.toml: alerts[0].for_s: rule 'greenhouse-hot': expected a number >= 0, got -1"),
        (rule('metric = "t"\nabove = 1.0') + rule("stale_s = 5.0", name="greenhouse-hot"),
         "collector.toml: alerts[1].name: rule 'greenhouse-hot': "
         "'greenhouse-hot' is already the name of alerts[0]"),
        ('[[notifiers]]\nname = "pager"\nkind = "pagerduty"\n',
         "collector.toml: notifiers[0].kind: notifier 'pager': expected one of \"log\", "
         '"webhook", "exec", "publish", "email", got "pagerduty"'),
        ('[[notifiers]]\nname = "log"\nkind = "exec"\ncommand = ["x"]\n',
         "collector.toml: notifiers[0].name: notifier 'log': 'log' is the built-in log notifier"),
        (HOOK + 'template = \'{"text": "{sumary}"}\'\n',
         "collector.toml: notifiers[0].template: notifier 'hook': unknown placeholder {sumary}"),
        ('[[notifiers]]\nname = "hook"\nkind = "webhook"\nurl = "ftp://x/"\n',
         "collector.toml: notifiers[0].url: notifier 'hook': ftp://x/ is not an http:// or https:// URL"),
        ('[[notifiers]]\nname = "hook"\nkind = "webhook"\nurl = "ftp://u:s3cret@x/t0ken?k=s3cret"\n',
         "collector.toml: notifiers[0].url: notifier 'hook': ftp://x/… is not an http:// or https://"),
        ('[[notifiers]]\nname = "hook"\nkind = "webhook"\nurl = "http://h/a\\r\\nX-Evil: 1"\n',
         "collector.toml: notifiers[0].url: notifier 'hook': http://h/… has a space, a control"),
        ('[[notifiers]]\nname = "hook"\nkind = "webhook"\nurl = "http://h:99999/"\n',
         "collector.toml: notifiers[0].url: notifier 'hook': http://h:99999/: the port is not"),
        (HOOK + 'headers = { Title = "hot\\r\\nX-Evil: 1" }\n',
         "collector.toml: notifiers[0].headers: notifier 'hook': Title: the value has a "
         "control character"),
        (HOOK + 'headers = { "Bad Name" = "x" }\n',
         "collector.toml: notifiers[0].headers: notifier 'hook': 'Bad Name' is not a "
         "header name"),
        ('[[notifiers]]\nname = "mail"\nkind = "email"\nhost = "h"\nfrom = "a@b"\n'
         'to = ["ops@example.com\\r\\nBcc: x@evil"]\n',
         "collector.toml: notifiers[0].to: notifier 'mail': [0]: 'ops@example.com\\r\\nBcc: "
         "x@evil' has a control character"),
        ('[[notifiers]]\nname = "mail"\nkind = "email"\nhost = "smtp.example.com"\nfrom = "a@b"\n'
         'to = ["c@d"]\nusername = "u"\npassword = "p"\n',
         "collector.toml: notifiers[0].username: notifier 'mail': logging in to smtp.example.com "
         "without TLS would send the password in clear: set starttls = true"),
        ('[[notifiers]]\nname = "mail"\nkind = "email"\nhost = "h"\nto = ["a@b"]\n',
         "collector.toml: notifiers[0].from: notifier 'mail': required key is missing"),
    ],
)
def test_bad_rules_are_explained_naming_the_rule(tmp_path: Path, text: str, expected: str) -> None:
    p = write(tmp_path / "collector.toml", TOP + text)
    with pytest.raises(ConfigError) as err:
        collector_config.load(p)
    assert str(err.value).startswith(expected), str(err.value)


def test_the_issue_example_loads(tmp_path: Path) -> None:
    text = TOP + """
[[alerts]]
name = "greenhouse-hot"
match = "greenhouse/*/env"
metric = "temperature"
above = 35.0
clear = 33.0
for_s = 30.0
severity = "critical"
notify = ["log", "hook"]

[[alerts]]
name = "sensor-stale"
match = "**"
stale_s = 120.0

[[alerts]]
name = "pi-offline"
match = "greenhouse/**"
device_offline = true

[[alerts]]
name = "fast-rise"
match = "cold-store/*/freezer"
metric = "temperature"
rate_above = 0.5
window_s = 60.0

[[notifiers]]
name = "hook"
kind = "webhook"
url = "http://127.0.0.1:8080/alerts"
timeout_s = 5.0
retries = 3
"""
    cfg = collector_config.load(write(tmp_path / "collector.toml", text))
    assert [r.kind for r in cfg.alerts] == ["above", "stale", "offline", "rate_above"]
    assert cfg.alerts[0].clear_value == 33.0 and cfg.alerts[1].notify == ["log"]


def test_the_collector_refuses_a_bad_rule_with_exit_2(tmp_path: Path) -> None:
    p = write(tmp_path / "collector.toml", TOP + rule('metric = "t"\nabove = 35.0\nnotify = ["hok"]'))
    r = run_cli("collector", "-c", str(p), timeout=30)
    assert r.returncode == 2
    assert "collector.toml: alerts[0].notify: rule 'greenhouse-hot': [0] no notifier named 'hok'" in r.stderr
    r = run_cli("check-config", str(p), timeout=30)
    assert r.returncode == 2 and "no notifier named 'hok'" in r.stderr


@pytest.mark.parametrize(
    "pattern, topic, matches",
    [
        ("greenhouse/*/env", "greenhouse/pi-07/env", True),
        ("greenhouse/*/env", "greenhouse/pi-07/env2", False),
        ("greenhouse/*/env", "greenhouse2/pi-07/env", False),
        ("greenhouse/**", "greenhouse/pi-07/env", True),
        ("**", "a/b/c", True),
        ("**/env", "greenhouse/pi-07/env", True),
        ("**/env", "greenhouse/env/x", False),
        ("*/pi-07/**", "greenhouse/pi-07/env", True),
        ("greenhouse/**/env", "greenhouse/pi-07/env", True),
        ("*/*", "a/b/c", False),
        ("*/*/*/**", "a/b/c", True),
    ],
)
def test_topic_patterns(pattern: str, topic: str, matches: bool) -> None:
    assert Pattern(pattern).matches(*topic.split("/")) is matches


def test_a_device_matches_when_some_sensor_of_it_could() -> None:
    assert Pattern("greenhouse/**").matches_device("greenhouse", "pi-07")
    assert Pattern("greenhouse/*/env").matches_device("greenhouse", "pi-07")
    assert not Pattern("greenhouse/pi-08/**").matches_device("greenhouse", "pi-07")
    assert not Pattern("cold-store/**").matches_device("greenhouse", "pi-07")


def test_the_commented_examples_in_config_collector_toml_are_valid(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import re

    for var in ("HOOK_TOKEN", "SLACK_WEBHOOK_URL", "SMTP_PASSWORD"):
        monkeypatch.setenv(var, "https://example.org/x")
    example = (Path(__file__).resolve().parents[3] / "config" / "collector.toml").read_text()
    section = example[example.index("# -- Alerting"):]
    lines = [line[2:] for line in section.splitlines() if re.match(r"# (\[|[a-z_]+ = )", line)]
    cfg = collector_config.load(write(tmp_path / "collector.toml", TOP + "\n".join(lines) + "\n"))
    assert len(cfg.alerts) == 4 and len(cfg.notifiers) == 6
