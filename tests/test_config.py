"""Configuration is validated once, strictly, with messages that say where and what."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import run_cli, write

from sensorwire import checkconfig, configload
from sensorwire.agent import config as agent_config
from sensorwire.collector.config import CollectorConfig
from sensorwire.configload import ConfigError

ROOT = Path(__file__).resolve().parents[1]

AGENT = """\
site = "greenhouse"
device_id = "pi-07"
[publish]
connect = ["tcp://127.0.0.1:5556"]
[[sensors]]
name = "env"
kind = "simulated"
metrics = [{ name = "t", signal = "constant", value = 1.0 }]
[[sensors]]
name = "health"
kind = "system"
interval_s = %s
"""


@pytest.mark.parametrize("path", sorted((ROOT / "config").glob("*.toml")), ids=lambda p: p.name)
def test_every_example_config_loads(path: Path) -> None:
    role, cfg = checkconfig.load_any(path)
    assert role in path.name and cfg is not None


def test_wrong_type_names_file_key_path_and_value(tmp_path: Path) -> None:
    p = write(tmp_path / "agent.toml", AGENT % '"fast"')
    with pytest.raises(ConfigError) as err:
        agent_config.load(p)
    assert str(err.value) == 'agent.toml: sensors[1].interval_s: expected a number > 0, got "fast"'


@pytest.mark.parametrize(
    "text, expected",
    [
        (AGENT % "-1", "agent.toml: sensors[1].interval_s: expected a number > 0, got -1"),
        (AGENT % "1" + "bogus = 1\n", "agent.toml: sensors[1].bogus: unknown key (a typo?)"),
        # the nearest key not given already
        ((AGENT % "1").replace('kind = "simulated"', 'kind = "simulated"\nintervall_s = 2'),
         "agent.toml: sensors[0].intervall_s: unknown key (a typo of interval_s?)"),
        ((AGENT % "1").replace('site = "greenhouse"', 'sitee = "greenhouse"\nsite = "greenhouse"'),
         "agent.toml: sitee: unknown key (a typo?)"),
        ((AGENT % "1").replace('site = "greenhouse"\n', ""), "agent.toml: site: required key is missing"),
        ((AGENT % "1").replace('kind = "system"', 'kind = "nope"'),
         "agent.toml: sensors[1].kind: unknown sensor kind 'nope'"),
        ((AGENT % "1").replace('"pi-07"', '"pi 07"'), "agent.toml: device_id: 'pi 07' may hold only"),
        ((AGENT % "1").replace('signal = "constant"', 'signal = "cosine"'),
         'agent.toml: sensors[0].metrics[0].signal: expected one of "sine", "random_walk", '
         '"constant", "step", got "cosine"'),
        (AGENT % "1" + '[spool]\noverflow = "drop_all"\n',
         'agent.toml: spool.overflow: expected one of "drop_newest", "drop_oldest", '
         'got "drop_all"'),
        ((AGENT % "1").replace('name = "health"', 'name = "env"'),
         "agent.toml: sensors[1].name: 'env' is already"),
        # values TOML allows that no key can take: each once started a role that then crashed
        (AGENT % "inf", "agent.toml: sensors[1].interval_s: expected a finite number, got inf"),
        (AGENT % "nan", "agent.toml: sensors[1].interval_s: expected a finite number, got nan"),
        ((AGENT % "1").replace("[publish]\n", "[publish]\nsndhwm = 99999999999999\n"),
         "agent.toml: publish.sndhwm: expected"),
        ((AGENT % "1").replace("[publish]\n", "[publish]\nheartbeat_s = 100000\n"),
         "agent.toml: publish.heartbeat_s: expected"),
    ],
)
def test_bad_agent_files_are_explained(tmp_path: Path, text: str, expected: str) -> None:
    p = write(tmp_path / "agent.toml", text)
    with pytest.raises(ConfigError) as err:
        agent_config.load(p)
    assert str(err.value).startswith(expected), str(err.value)


def test_toml_syntax_error_names_the_line(tmp_path: Path) -> None:
    p = write(tmp_path / "agent.toml", 'site = "x"\n[publish\n')
    with pytest.raises(ConfigError) as err:
        agent_config.load(p)
    assert "agent.toml: TOML syntax error" in str(err.value) and "line 2" in str(err.value)


def test_environment_variables_are_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SW_SITE", "farm")
    monkeypatch.delenv("SW_EP", raising=False)
    p = write(tmp_path / "agent.toml", (AGENT % "1")
              .replace('"greenhouse"', '"${SW_SITE}"')
              .replace('"tcp://127.0.0.1:5556"', '"${SW_EP:-tcp://10.0.0.1:1}"'))
    cfg = agent_config.load(p)
    assert cfg.site == "farm" and cfg.publish.connect == ["tcp://10.0.0.1:1"]


def test_an_unset_variable_without_default_is_an_error() -> None:
    with pytest.raises(ConfigError, match="site: environment variable NOPE_X is not set"):
        configload.expand_env({"site": "${NOPE_X}"}, env={})


def test_check_config_exits_2_with_the_message(tmp_path: Path) -> None:
    p = write(tmp_path / "agent.toml", AGENT % '"fast"')
    r = run_cli("check-config", str(p))
    assert r.returncode == 2
    assert 'agent.toml: sensors[1].interval_s: expected a number > 0, got "fast"' in r.stderr


@pytest.mark.parametrize("role", ["agent", "proxy", "collector"])
def test_each_role_refuses_a_bad_config_with_exit_2(tmp_path: Path, role: str) -> None:
    p = write(tmp_path / f"{role}.toml", "log_level = 3\n")
    r = run_cli(role, "-c", str(p), timeout=30)
    assert r.returncode == 2, r.stderr
    assert f"{role}.toml: " in r.stderr


def test_check_config_accepts_the_collector_limits(tmp_path: Path) -> None:
    p = write(tmp_path / "collector.toml", '[subscribe]\nconnect = ["tcp://127.0.0.1:1"]\n'
              "[limits]\nmax_devices = 500\nmax_frames_per_s_per_device = 0\n")
    r = run_cli("check-config", str(p))
    assert r.returncode == 0, r.stderr
    assert "a valid collector configuration" in r.stdout
    _, cfg = checkconfig.load_any(p)
    assert isinstance(cfg, CollectorConfig) and cfg.limits.max_devices == 500


def test_collector_prefix_is_validated(tmp_path: Path) -> None:
    p = write(tmp_path / "collector.toml",
              '[subscribe]\nconnect = ["tcp://127.0.0.1:1"]\nprefixes = ["a b"]\n')
    with pytest.raises(ConfigError, match=r"collector.toml: subscribe.prefixes\[0\]: prefix 'a b'"):
        checkconfig.load_any(p)


@pytest.mark.parametrize("endpoint, expected", [
    ("tcp://127.0.0.1:99999", "port '99999' is not a number from 1 to 65535"),  # libzmq wraps it
    ("tcp://", "needs a host and a port"),
    ("tcp://127.0.0.1", "needs a host and a port"),
    ("ipc://" + "/tmp/" + "x" * 200, "the path is 205 bytes, a Unix socket allows 107"),
])
def test_an_endpoint_libzmq_would_misread_is_a_config_error(tmp_path: Path, endpoint: str,
                                                            expected: str) -> None:
    p = write(tmp_path / "collector.toml", f'[subscribe]\nconnect = ["{endpoint}"]\n')
    with pytest.raises(ConfigError, match=r"collector.toml: subscribe.connect\[0\]: ") as err:
        checkconfig.load_any(p)
    assert expected in str(err.value)
    proxy = write(tmp_path / "proxy.toml", f'frontend = "{endpoint}"\nbackend = "tcp://*:5557"\n')
    with pytest.raises(ConfigError, match="proxy.toml: frontend: ") as err:
        checkconfig.load_any(proxy)
    assert expected in str(err.value)


@pytest.mark.parametrize("endpoint, expected", [
    ("127.0.0.1:5557", "'127.0.0.1:5557' names no transport: write it like tcp://127.0.0.1:5556 or "
                       "ipc:///run/sensorwire/proxy.sock"),
    ("tcp://*:5557", "'tcp://*:5557': * binds every address, it names no host to connect to: "
                     "write the proxy's host, like tcp://127.0.0.1:5557"),
])
def test_an_endpoint_that_cannot_be_connected_to_is_a_config_error_not_a_failure_at_start(
        tmp_path: Path, endpoint: str, expected: str) -> None:
    # both were "valid" for check-config, then the role exited 1 at start ("Invalid argument")
    for role, text in (("collector", f'[subscribe]\nconnect = ["{endpoint}"]\n'),
                       ("agent", f'site = "gh"\ndevice_id = "pi-1"\n[publish]\n'
                                 f'connect = ["{endpoint}"]\n')):
        p = write(tmp_path / f"{role}.toml", text)
        r = run_cli("check-config", str(p))
        key = "subscribe" if role == "collector" else "publish"
        assert (r.returncode, r.stderr) == (2, f"sensorwire: {role}.toml: {key}.connect[0]: {expected}\n")
        r = run_cli(role, "-c", str(p), timeout=30, cwd=tmp_path)
        assert r.returncode == 2 and expected in r.stderr, r.stderr
    r = run_cli("tail", "--connect", endpoint)
    assert r.returncode == 2 and f"sensorwire: tail: --connect {expected}" in r.stderr, r.stderr
    bound = write(tmp_path / "collector.toml", '[subscribe]\nbind = ["tcp://*:5557"]\n')
    assert run_cli("check-config", str(bound)).returncode == 0  # * is for binding


def test_proxy_hwm_is_a_count_of_frames(tmp_path: Path) -> None:
    base = 'frontend = "tcp://127.0.0.1:1"\nbackend = "tcp://127.0.0.1:2"\n'
    role, cfg = checkconfig.load_any(write(tmp_path / "proxy.toml", base + "hwm = 5000\n"))
    assert (role, getattr(cfg, "hwm", None)) == ("proxy", 5000)
    with pytest.raises(ConfigError,
                       match=r"proxy.toml: hwm: expected an integer >= 0 and <= 2147483647, got -1"):
        checkconfig.load_any(write(tmp_path / "proxy.toml", base + "hwm = -1\n"))
