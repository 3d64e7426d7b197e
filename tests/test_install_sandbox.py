"""Each role started inside its unit's sandbox, as far as one can be built without systemd.

The unit's ``SystemCallFilter=`` lines, expanded by ``systemd-analyze syscall-filter`` and
applied in their order with libseccomp (``SystemCallErrorNumber=``), its
``RestrictAddressFamilies=`` (EAFNOSUPPORT, as systemd answers) and
``MemoryDenyWriteExecute=yes`` (the kernel's own ``PR_SET_MDWE``, Linux 6.3 and later).
libzmq asserts when a system call fails in a way it does not expect, and an abort
there is a service that never starts: every test elsewhere runs the roles without the
sandbox. This module is also the wrapper that builds it: ``python THIS UNIT ARGV...``
(``python THIS --check``: can it be built here?), which tests/test_install_docs.py uses.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1


@functools.cache
def expand(name: str) -> frozenset[str]:
    """The system calls of ``name`` (a call, or a @group, nested groups included)."""
    if not name.startswith("@"):
        return frozenset([name])
    out = subprocess.run(["systemd-analyze", "syscall-filter", name], capture_output=True,
                         text=True, check=True).stdout
    calls: set[str] = set()
    for line in out.splitlines():
        word = line.strip()
        if word and not word.startswith("#") and word != name:
            calls |= expand(word)
    return frozenset(calls)


def settings(unit: list[str], key: str) -> list[str]:
    return [line.split("=", 1)[1] for line in unit if line.startswith(key + "=")]


def allowed_calls(unit: list[str]) -> set[str]:
    """systemd's reading of the SystemCallFilter= lines: the first an allow-list (with
    @default), each later one adding to it, or taking away with ``~``."""
    allowed: set[str] = set(expand("@default"))
    for i, line in enumerate(settings(unit, "SystemCallFilter")):
        deny = line.startswith("~")
        assert i > 0 or not deny, "the first SystemCallFilter= line is an allow-list"
        names = set().union(*(expand(w) for w in line.lstrip("~").split()))
        allowed = allowed - names if deny else allowed | names
    return allowed


def sandbox_main(unit_file: str, argv: list[str]) -> None:
    import pyseccomp as seccomp  # type: ignore[import-untyped]  # noqa: PLC0415 - libseccomp, ctypes

    unit = Path(unit_file).read_text().splitlines()
    [err] = settings(unit, "SystemCallErrorNumber")
    flt = seccomp.SyscallFilter(defaction=seccomp.ERRNO(getattr(errno, err)))
    for call in sorted(allowed_calls(unit) - {"socket"}):
        try:
            flt.add_rule(seccomp.ALLOW, call)
        except (RuntimeError, ValueError, OSError):  # pyseccomp: OSError(EINVAL)
            pass  # not a system call of this architecture
    [families] = settings(unit, "RestrictAddressFamilies")
    allowed = {getattr(socket, f) for f in families.split()}
    for family in range(64):
        action = seccomp.ALLOW if family in allowed else seccomp.ERRNO(errno.EAFNOSUPPORT)
        flt.add_rule(action, "socket", seccomp.Arg(0, seccomp.EQ, family))
    if "MemoryDenyWriteExecute=yes" in unit:  # refused by kernels before 6.3: then not checked
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0)
    flt.load()
    os.execv(argv[0], argv)


def sandbox_missing() -> str | None:
    if shutil.which("systemd-analyze") is None:
        return "systemd-analyze is missing (apt-get install systemd)"
    r = subprocess.run([sys.executable, "-c", "import pyseccomp"], capture_output=True, timeout=30)
    if r.returncode != 0:
        return ("pyseccomp or libseccomp is missing (pip install pyseccomp, from the [test] extra; "
                f"apt-get install libseccomp2): {r.stderr.decode(errors='replace').strip()[-200:]}")
    return None


def role_config(role: str, tmp_path: Path) -> Path:
    """Sockets bound to an address (not ``*``), as on a host with several interfaces."""
    from support import free_port

    def tcp() -> str:
        return f"tcp://127.0.0.1:{free_port()}"

    text = {
        "proxy": f'frontend = "{tcp()}"\nbackend = "{tcp()}"\n'
                 f'[metrics]\nlisten = "127.0.0.1:{free_port()}"\n',
        "collector": f'[subscribe]\nconnect = ["{tcp()}"]\n[storage]\npath = "{tmp_path}/t.db"\n'
                     f'[metrics]\nlisten = "127.0.0.1:{free_port()}"\n',
        "agent": f'site = "gh"\ndevice_id = "pi-1"\n[publish]\nbind = ["{tcp()}"]\n'
                 f'heartbeat_s = 0.5\n[spool]\ndir = "{tmp_path}/spool"\n'
                 f'[metrics]\nlisten = "127.0.0.1:{free_port()}"\n'
                 '[[sensors]]\nname = "health"\nkind = "system"\ninterval_s = 0.2\n',
    }[role]
    path = tmp_path / f"{role}.toml"
    path.write_text(text)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("role", ["agent", "proxy", "collector"])
def test_each_role_starts_works_and_stops_inside_its_units_sandbox(
        role: str, tmp_path: Path) -> None:
    from sensorwire import units
    from sensorwire.sdnotify import NotifyListener

    if (missing := sandbox_missing()) is not None:
        pytest.skip(missing)
    unit = tmp_path / units.unit_name(role)
    unit.write_text(units.render(role))
    folder = tempfile.mkdtemp(prefix="sw-")  # a unix socket path holds at most 108 bytes
    listener = NotifyListener(f"{folder}/notify")
    log = tmp_path / f"{role}.log"
    env = dict(os.environ, NOTIFY_SOCKET=listener.path, WATCHDOG_USEC="400000")
    env.pop("JOURNAL_STREAM", None)
    argv = [sys.executable, __file__, str(unit), sys.executable, "-m", "sensorwire", role,
            "-c", str(role_config(role, tmp_path))]
    with open(log, "wb") as f:
        p = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, env=env)
    try:
        assert listener.wait_for("READY=1", 30, alive=lambda: p.poll() is None), log.read_text()
        deadline = time.monotonic() + 10
        while sum(m == "WATCHDOG=1" for m in listener.messages) < 3:  # its loop runs
            assert time.monotonic() < deadline, log.read_text()
            listener.wait_for("\0never", 0.1)
        p.send_signal(signal.SIGTERM)
        assert p.wait(15) == 0, log.read_text()
        assert listener.wait_for("STOPPING=1", 1)
        text = log.read_text()
        assert " WARNING " not in text and " ERROR " not in text, text  # a sensor that failed
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        listener.close()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    if sys.argv[1:] == ["--check"]:  # can the sandbox be built here? (else: why not)
        sys.exit((missing := sandbox_missing()) and f"no sandbox: {missing}")
    sandbox_main(sys.argv[1], sys.argv[2:])
