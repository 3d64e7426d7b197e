"""docs/install.md, followed step by step in a clean environment.

Every command of the "Install on the server" and "Install on a Raspberry Pi"
sections is carried out in order, in a fresh venv (for ``/opt/sensorwire``)
and a scratch root (for ``/etc`` and ``/var/lib``).  What needs the machine's
package manager (``apt``) is skipped; what needs a running systemd is done the
way systemd would: ``daemon-reload`` verifies the units, ``enable --now``
starts each unit's ``ExecStart`` with a notify socket (inside the unit's
system-call filter, when ``test_install_sandbox`` can build it) and waits for
``READY=1``, ``reload`` sends SIGHUP.  The editor steps are where the test,
as the operator, moves the ports to free ones.  A command this test does not
know fails it, so the document and the test cannot drift apart.
"""

from __future__ import annotations

import functools
import os
import re
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import free_port, wait_until

from sensorwire.sdnotify import NotifyListener

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "install.md"
SANDBOX = Path(__file__).with_name("test_install_sandbox.py")  # run as a script: UNIT ARGV...


@functools.cache
def sandbox_ready() -> bool:
    r = subprocess.run([sys.executable, str(SANDBOX), "--check"], capture_output=True,
                       timeout=60)
    return r.returncode == 0


def section_commands(title: str) -> list[str]:
    text = DOC.read_text()
    body = text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]
    out: list[str] = []
    for block in re.findall(r"```sh\n(.*?)```", body, re.S):
        out += [line.strip() for line in block.splitlines() if line.strip()]
    return out


class Unit:
    def __init__(self, name: str, popen: subprocess.Popen[bytes], listener: NotifyListener,
                 log: Path) -> None:
        self.name, self.popen, self.listener, self.log = name, popen, listener, log


class Machine:
    """A scratch root, a venv, and the units started from it."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.root = tmp / "root"
        self.venv = tmp / "opt" / "sensorwire"
        self.src = tmp / "sensorwire"
        self.units: dict[str, Unit] = {}
        self.ports = {"5556": str(free_port()), "5557": str(free_port()),
                      "9108": str(free_port()), "9109": str(free_port())}
        self.root.mkdir(parents=True)

    def path(self, text: str) -> str:
        text = re.sub(r"(?<![\w/])/opt/sensorwire", str(self.venv), text)
        for top in ("/etc/", "/var/lib/"):
            text = re.sub(rf"(?<![\w/]){re.escape(top)}", f"{self.root}{top}", text)
        return text

    def run(self, argv: list[str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=self.tmp)
        assert r.returncode == 0, f"{argv}:\n{r.stdout}\n{r.stderr}"
        return r

    # -- the steps --------------------------------------------------------------
    def do(self, line: str) -> None:
        words = shlex.split(line.removeprefix("sudo "))
        cmd = words[0]
        if cmd == "apt":
            return  # python3-venv and git are on this machine
        if cmd == "git" and words[1] == "clone":
            self.clone()
        elif words[:3] == ["python3", "-m", "venv"]:
            self.run([sys.executable, "-m", "venv", self.path(words[3])])
        elif cmd.endswith("/bin/pip"):
            assert words[1:] == ["install", "./sensorwire"], line
            self.run([self.path(cmd), "install", "--quiet", str(self.src)])
        elif cmd.endswith("/bin/sensorwire"):
            self.sensorwire([self.path(w) for w in words])
        elif cmd == "nano":
            self.edit(Path(self.path(words[1])))
        elif cmd == "systemctl":
            self.systemctl(words[1:])
        elif cmd == "curl":
            self.curl(line)
        else:
            raise AssertionError(f"docs/install.md: a command this test does not know: {line}")

    def clone(self) -> None:
        files = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=ROOT,
                               capture_output=True, check=True).stdout.decode().split("\0")
        for name in filter(None, files):
            src = ROOT / name
            if src.is_file():
                dst = self.src / name
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst)

    def sensorwire(self, argv: list[str]) -> None:
        if argv[1] == "install-service":
            argv += ["--root", str(self.root)]
        r = self.run(argv, timeout=60)
        if argv[1] == "agent" and "--once" in argv:
            assert r.stdout.count('"type": "data"') == len(r.stdout.splitlines()) >= 1, r.stdout

    def edit(self, file: Path) -> None:
        text = file.read_text()
        for default, port in self.ports.items():
            text = text.replace(f":{default}", f":{port}")
        if file.name == "agent.toml":
            text = text.replace("heartbeat_s = 5.0", "heartbeat_s = 0.5")
            text = text.replace("interval_s = 10.0", "interval_s = 0.2")
        file.write_text(text)

    def systemctl(self, args: list[str]) -> None:
        verb, names = args[0], [n for n in args[1:] if not n.startswith("-")]
        if verb == "daemon-reload":
            analyze = shutil.which("systemd-analyze")
            if analyze is None and os.environ.get("SENSORWIRE_REQUIRE_ALL"):
                pytest.fail("systemd-analyze is missing")
            units = sorted((self.root / "etc/systemd/system").glob("sensorwire-*.service"))
            assert units
            if analyze:
                r = subprocess.run([analyze, "verify", *[u.name for u in units]],
                                   cwd=units[0].parent, capture_output=True, text=True, timeout=60)
                assert r.returncode == 0 and not r.stderr.strip(), r.stderr
        elif verb == "enable":
            assert "--now" in args
            for name in names:
                self.start(name)
        elif verb == "status":
            for name in names:
                assert self.units[name].popen.poll() is None, self.units[name].log.read_text()
        elif verb == "reload":
            for name in names:
                self.reload(self.units[name])
        else:
            raise AssertionError(f"systemctl {verb}: not known to this test")

    def reload(self, u: Unit) -> None:
        n = sum("READY=1" in m for m in u.listener.messages)
        u.popen.send_signal(signal.SIGHUP)
        assert u.listener.wait_for("RELOADING=1", 10)
        wait_until(lambda: u.listener.wait_for("\0never", 0.05)
                   or sum("READY=1" in m for m in u.listener.messages) > n,
                   timeout_s=10, what=f"READY=1 after reloading {u.name}")
        assert "reload failed" not in u.log.read_text()

    def start(self, name: str) -> None:
        unit = (self.root / "etc/systemd/system" / f"{name}.service").read_text()

        def setting(pattern: str) -> str:
            m = re.search(pattern, unit, re.M)
            assert m, f"{name}.service has no line matching {pattern}"
            return m[1]
        argv = [self.path(a) for a in shlex.split(setting(r"^ExecStart=(.*)$"))]
        if sandbox_ready():  # inside the unit's system-call filter, as systemd would run it
            unit_file = self.root / "etc/systemd/system" / f"{name}.service"
            argv = [sys.executable, str(SANDBOX), str(unit_file), *argv]
        state = setting(r"^StateDirectory=(.*)$")
        usec = int(setting(r"^WatchdogSec=(\d+)s$")) * 1_000_000
        cwd = self.root / "var/lib" / state
        cwd.mkdir(parents=True, exist_ok=True)
        sock = str(self.tmp / f"{name}.notify")
        listener = NotifyListener(sock)
        env = dict(os.environ, NOTIFY_SOCKET=sock, WATCHDOG_USEC=str(usec))
        env.pop("JOURNAL_STREAM", None)
        log = self.tmp / f"{name}.log"
        with open(log, "wb") as f:
            popen = subprocess.Popen(argv, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT)
        self.units[name] = Unit(name, popen, listener, log)
        assert listener.wait_for("READY=1", 30, alive=lambda: popen.poll() is None), log.read_text()

    def curl(self, line: str) -> None:
        m = re.fullmatch(r"curl -s (http://127\.0\.0\.1:(\d+)/metrics) \| grep (\w+)", line)
        assert m, line
        url = m[1].replace(f":{m[2]}", f":{self.ports[m[2]]}")
        with urllib.request.urlopen(url, timeout=10) as r:
            assert m[3] in r.read().decode()

    def stop(self) -> None:
        for u in reversed(list(self.units.values())):
            if u.popen.poll() is None:
                u.popen.send_signal(signal.SIGTERM)
            try:
                rc = u.popen.wait(30)
            except subprocess.TimeoutExpired:
                u.popen.kill()
                u.popen.wait()
                rc = -9
            u.listener.close()
            assert rc == 0, u.log.read_text()
        self.units.clear()


@pytest.fixture
def machine(tmp_path: Path) -> Iterator[Machine]:
    m = Machine(tmp_path)
    try:
        yield m
    finally:
        for u in m.units.values():
            if u.popen.poll() is None:
                u.popen.kill()
                u.popen.wait()
            u.listener.close()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_install_sections_work_as_written(machine: Machine) -> None:
    server = section_commands("Install on the server")
    pi = section_commands("Install on a Raspberry Pi")
    assert any("install-service collector" in c for c in server)
    assert any("install-service agent" in c for c in pi)
    for line in server:
        machine.do(line)
    for line in pi:
        machine.do(line)
    # the whole path: the Pi's frames are in the server's database
    db = machine.root / "var/lib/sensorwire-collector/telemetry.db"

    def stored() -> int:
        with sqlite3.connect(db) as conn:
            return int(conn.execute("SELECT count(*) FROM frames").fetchone()[0])

    wait_until(lambda: stored() >= 3, timeout_s=30, what="the agent's frames in the database")
    machine.stop()
