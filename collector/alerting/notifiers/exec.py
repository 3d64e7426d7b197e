"""``kind = "exec"``: run a command per notification, the JSON object on its stdin.

``command`` is a list (no shell); its items may use placeholders
(``["/usr/local/bin/notify", "{name}", "{state}"]``).  Exit status 0 is
success; any other status or a timeout is a failure (retried only if
``retries`` > 0, the default being 0: a command may have half-worked).
"""

from __future__ import annotations

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
            r = subprocess.run(argv, input=n.to_json().encode() + b"\n", capture_output=True,
                               timeout=c.timeout_s, check=False)
        except FileNotFoundError:
            raise NotifyError(f"{argv[0]}: no such program", retryable=False) from None
        except PermissionError:
            raise NotifyError(f"{argv[0]}: not executable", retryable=False) from None
        except subprocess.TimeoutExpired:
            raise NotifyError(f"{argv[0]}: still running after {c.timeout_s:g} s: killed",
                              retryable=True) from None
        except OSError as exc:
            raise NotifyError(f"{argv[0]}: {exc}", retryable=True) from None
        if r.returncode != 0:
            err = r.stderr.decode("utf-8", "replace").strip().splitlines()
            raise NotifyError(f"{argv[0]}: exit status {r.returncode}"
                              + (f": {err[-1][:200]}" if err else ""), retryable=True)

    def close(self) -> None:
        pass
