"""``device_id``'s default, the host name up to its first dot, read in a UTS namespace of its own
(``unshare --uts``, as root) whose host name the test sets."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

CAN_UNSHARE = os.geteuid() == 0 and shutil.which("unshare") is not None

LOAD = """
import socket, sys
socket.sethostname(sys.argv[1])
from sensorwire.agent import config
from sensorwire.configload import ConfigError
raw = {"site": "gh", "publish": {"connect": ["tcp://127.0.0.1:1"]}}
try:
    print(config.from_raw(raw, "agent.toml").device_id)
except ConfigError as exc:
    print(exc)
"""


def device_id_on(host: str) -> str:
    r = subprocess.run(["unshare", "--uts", "--", sys.executable, "-c", LOAD, host],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


@pytest.mark.skipif(not CAN_UNSHARE, reason="needs root and unshare(1) to set a host name")
def test_the_host_name_up_to_its_first_dot() -> None:
    assert device_id_on("pi-07.greenhouse.lan") == "pi-07"


@pytest.mark.skipif(not CAN_UNSHARE, reason="needs root and unshare(1) to set a host name")
def test_a_host_name_that_is_no_valid_device_id_is_refused_not_replaced() -> None:
    """It was replaced by "device": two such devices published as one, their frames mixed."""
    assert device_id_on("_pi07") == (
        "agent.toml: device_id is not set and the host name '_pi07' is not a valid device id "
        "(a letter or digit, then letters, digits, '.', '_' or '-', at most 64): set device_id")
