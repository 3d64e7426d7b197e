"""``kind = "exec"``: run a command per notification, the JSON object on its stdin.

``command`` is a list (no shell); its items may use placeholders
(``["/usr/local/bin/notify", "{name}", "{state}"]``).  Exit status 0 is
success; any other status or a timeout is a failure (retried only if
``retries`` > 0, the default being 0: a command may have half-worked).  The
command runs in a session of its own, so a timeout kills it and every
process it started (a shell's ``sleep``), not only the first one.
"""

from __future__ import annotations

import os
import signal
import subprocess
from typing import Annotated

import msgspec

from sensorwire.collector.alerting import notification
from sensorwire.collector.alerting.notification import Notification
from sensorwire.collector.alerting.notifiers import NotifierConfig, NotifyError


class ExecConfig(NotifierConfig, tag="exec", kw_only=True):
    command: list[str]
    timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 10.0
    retries: Annotated[int, msgspec.Meta(ge=0)] = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.command or not self.command[0]:
            raise ValueError("command: give the program and its arguments, "
                             'e.g. ["/usr/local/bin/notify", "{name}"]')
        for i, arg in enumerate(self.command):
            try:
                notification.check_template(arg)
            except ValueError as exc:
                raise ValueError(f"command: [{i}] {exc}") from None


# systemd's hand-over to the collector itself: a script must not answer for it (a stray
# READY=1 or WATCHDOG=1 from a script would speak for the collector, or keep a hung one alive)
_SERVICE_ONLY = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID",
                 "LISTEN_FDNAMES")


def script_env() -> dict[str, str]:
    """The collector's environment without what systemd handed to the collector alone."""
    return {k: v for k, v in os.environ.items() if k not in _SERVICE_ONLY}


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the command's process group (its children too), then reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        proc.communicate(timeout=1.0)  # a child that left the group may hold the pipes
    except subprocess.TimeoutExpired:
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
        proc.wait()


class ExecNotifier:
    def __init__(self, config: ExecConfig) -> None:
        self.name = config.name
        self.config = config

    def open(self) -> None:
        pass

    def send(self, n: Notification) -> None:
        c = self.config
        argv = [notification.render(a, n) for a in c.command]
        try:
            # a session of its own: on timeout the whole group goes, not only the first process
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, start_new_session=True, env=script_env())
        except FileNotFoundError:
            raise NotifyError(f"{argv[0]}: no such program", retryable=False) from None
        except PermissionError:
            raise NotifyError(f"{argv[0]}: not executable", retryable=False) from None
        except OSError as exc:
            raise NotifyError(f"{argv[0]}: {exc}", retryable=True) from None
        try:
            _, stderr = proc.communicate(n.to_json().encode() + b"\n", timeout=c.timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            raise NotifyError(f"{argv[0]}: still running after {c.timeout_s:g} s: killed with "
                              "the processes it started", retryable=True) from None
        if proc.returncode != 0:
            err = stderr.decode("utf-8", "replace").strip().splitlines()
            raise NotifyError(f"{argv[0]}: exit status {proc.returncode}"
                              + (f": {err[-1][:200]}" if err else ""), retryable=True)

    def close(self) -> None:
        pass
