"""Logs fit for journald under systemd, readable on a terminal; levels from flag or file."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from support import tcp, write

LOG = ("import logging, sys\n"
       "from sensorwire import logs\n"
       "logs.setup('info')\n"
       "log = logging.getLogger('sensorwire.x')\n"
       "log.info('hello %s', 'there')\n"
       "log.debug('hidden')\n"
       "try:\n"
       "    1 / 0\n"
       "except ZeroDivisionError:\n"
       "    log.exception('it broke')\n")


def run_logging(tmp_path: Path, journal: bool) -> str:
    out = tmp_path / "stderr"
    with open(out, "wb") as f:
        env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
        if journal:  # what systemd sets: device and inode of the stream it connected
            st = os.fstat(f.fileno())
            env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
        subprocess.run([sys.executable, "-c", LOG], stderr=f, env=env, check=True, timeout=30)
    return out.read_text()


def test_under_journald_priorities_on_every_line_and_no_timestamps(tmp_path: Path) -> None:
    lines = run_logging(tmp_path, journal=True).splitlines()
    assert lines[0] == "<6>sensorwire.x: hello there"
    assert lines[1] == "<3>sensorwire.x: it broke"
    assert lines[2] == "<3>Traceback (most recent call last):"
    assert all(line.startswith("<3>") for line in lines[1:])
    assert not any("hidden" in line for line in lines)


def test_journal_stream_of_another_stream_is_ignored(tmp_path: Path) -> None:
    code = ("import os, sys\nos.environ['JOURNAL_STREAM'] = '1:2'\n" + LOG)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z INFO    sensorwire.x: hello there$",
                    r.stderr.splitlines()[0]), r.stderr


def test_on_a_terminal_timestamps_and_levels(tmp_path: Path) -> None:
    first = run_logging(tmp_path, journal=False).splitlines()[0]
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z INFO    sensorwire.x: hello there$",
                    first)


@pytest.mark.slow
@pytest.mark.parametrize("flag, file_level, info_logged", [
    ([], "warning", False),                         # the file's log_level
    (["--log-level", "info"], "warning", True),      # the flag, before the subcommand, wins
    (["--log-level", "error"], "debug", False),
])
def test_log_level_from_the_flag_or_the_file(tmp_path: Path, procs: Any, flag: list[str],
                                             file_level: str, info_logged: bool) -> None:
    cfg = write(tmp_path / "agent.toml", f'site = "gh"\nlog_level = "{file_level}"\n'
                f'[publish]\nbind = ["{tcp()}"]\n')
    p = procs("agent", *flag, "agent", "-c", str(cfg))
    assert p.terminate() == 0
    assert ("agent gh/" in p.log()) == info_logged, p.log()
