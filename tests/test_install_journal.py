"""What the journal makes of a role's output under systemd: its log records carry their own
priority (``<6>``), and the unit's ``SyslogLevel=err`` takes the rest, which is what a role
prints when its configuration does not load, or a traceback."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from support import free_port, write

from sensorwire import units
from sensorwire.install import default_config_text


def proxy_config(tmp_path: Path) -> Path:
    return write(tmp_path / "p.toml", f'frontend = "tcp://127.0.0.1:{free_port()}"\n'
                 f'backend = "tcp://127.0.0.1:{free_port()}"\n[metrics]\nlisten = ""\n')


def journal_lines(log: Path) -> list[str]:
    return [x for x in log.read_text().splitlines() if x]


@pytest.mark.parametrize("role", units.ROLES)
def test_what_a_role_prints_outside_its_log_records_is_an_error_in_the_journal(
        role: str, tmp_path: Path, procs: Any) -> None:
    """Under systemd the log records carry their own priority (``<6>``); what a role prints
    otherwise (a configuration that does not load, a traceback) gets the unit's
    SyslogLevel=, which must say error, or ``journalctl -p warning`` hides why it stopped."""
    assert "SyslogLevel=err" in units.render(role).splitlines()
    # a configuration that does not load: one unprefixed line, exit status 2
    bad = write(tmp_path / f"{role}.toml", "no_such_key = 1\n")
    log = tmp_path / "bad.log"
    with open(log, "wb") as f:
        st = os.fstat(f.fileno())
        rc = subprocess.run([sys.executable, "-m", "sensorwire", role, "-c", str(bad)],
                            stdout=f, stderr=f, timeout=60,
                            env=dict(os.environ, JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}"))
    assert rc.returncode == 2
    assert [x for x in journal_lines(log) if not re.match(r"<[0-7]>", x)], log.read_text()
    # a role at work: every line it writes is a log record with its priority
    if role == "proxy":
        argv = ["proxy", "-c", str(proxy_config(tmp_path))]
    elif role == "collector":
        cfg = write(tmp_path / "c.toml", f'[subscribe]\nconnect = ["tcp://127.0.0.1:'
                    f'{free_port()}"]\n[storage]\npath = "{tmp_path}/t.db"\n'
                    '[metrics]\nlisten = ""\n')
        argv = ["collector", "-c", str(cfg)]
    else:
        text = default_config_text("agent").replace("127.0.0.1:5556", f"127.0.0.1:{free_port()}")
        cfg = write(tmp_path / "a.toml", text + f'[spool]\ndir = "{tmp_path}/spool"\n')
        argv = ["agent", "-c", str(cfg)]
    log = tmp_path / f"{role}.log"
    log.touch()  # Proc writes into this file: the same inode
    st = log.stat()
    p = procs(role, *argv, env={"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
    assert p.terminate() == 0, p.log()
    lines = journal_lines(log)
    assert lines and all(re.match(r"<[0-7]>", x) for x in lines), lines


def test_a_watchdog_kill_leaves_where_each_thread_was_in_the_journal(
        tmp_path: Path, procs: Any) -> None:
    """systemd kills a role whose loop stopped pinging with SIGABRT (WatchdogSignal=): the
    journal should say where it hung, not only that it was killed."""
    unit = units.render("proxy").splitlines()
    env = dict(line.removeprefix("Environment=").split("=", 1) for line in unit
               if line.startswith("Environment="))
    p = procs("proxy", "proxy", "-c", str(proxy_config(tmp_path)), env=env)
    p.popen.send_signal(signal.SIGABRT)
    assert p.popen.wait(10) == -signal.SIGABRT
    log = p.log()
    assert "Fatal Python error: Aborted" in log, log
    assert "Current thread" in log and 'File "' in log and "sensorwire" in log, log
