"""The agent's clock-sync check: timesyncd's marker where it runs, adjtimex elsewhere, and
"not known to be synchronised" when adjtimex cannot be read."""

from __future__ import annotations

import errno
import json
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from sensorwire.agent.clock import ClockState


def test_timesyncd_marker_decides_where_timesyncd_runs(tmp_path: Path) -> None:
    c = ClockState(str(tmp_path))
    assert c.synced() is False
    (tmp_path / "synchronized").touch()
    assert c.synced() is True
    assert c._adjtimex is None  # ctypes never needed


def test_without_timesyncd_the_kernel_is_asked(tmp_path: Path) -> None:
    c = ClockState(str(tmp_path / "absent"))
    assert isinstance(c.synced(), bool)
    assert "ctypes" in sys.modules


# The agent under a seccomp filter that refuses adjtimex and clock_adjtime (glibc's
# adjtimex()) with EPERM, as systemd's ProtectClock=yes does: a child process installs
# the filter on itself, then asks.
SYSCALLS = {"x86_64": [159, 305], "aarch64": [171, 266], "armv7l": [124, 372, 405],
            "armv6l": [124, 372, 405], "i686": [124, 343, 405]}

UNDER_FILTER = """
import ctypes, json, logging, struct, sys
from sensorwire.agent.clock import ClockState

libc = ctypes.CDLL(None, use_errno=True)
before = libc.adjtimex(ctypes.create_string_buffer(512))
EPERM, RET_ERRNO, RET_ALLOW = 1, 0x00050000, 0x7FFF0000
nrs = [int(n) for n in sys.argv[1].split(",")]
code = b"".join(struct.pack("HBBI", *ins) for ins in [
    (0x20, 0, 0, 0),                                    # load the system call number
    *[(0x15, len(nrs) - i, 0, nr) for i, nr in enumerate(nrs)],  # one of those? to EPERM
    (0x06, 0, 0, RET_ALLOW),                            # anything else
    (0x06, 0, 0, RET_ERRNO | EPERM),
])
filt = ctypes.create_string_buffer(code)
class Prog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
prog = Prog(len(code) // 8, ctypes.addressof(filt))
assert libc.prctl(38, 1, 0, 0, 0) == 0                       # PR_SET_NO_NEW_PRIVS
assert libc.prctl(22, 2, ctypes.byref(prog), 0, 0) == 0      # PR_SET_SECCOMP, FILTER
after = libc.adjtimex(ctypes.create_string_buffer(512))
logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="%(message)s")
no_timesyncd = ClockState(sys.argv[2])
marker = ClockState(sys.argv[3])
print(json.dumps({"before": before, "after": after, "errno": ctypes.get_errno(),
                  "synced": [no_timesyncd.synced(), no_timesyncd.synced()],
                  "marker": marker.synced()}))
"""


def test_an_unreadable_kernel_clock_state_is_not_synchronised(tmp_path: Path) -> None:
    nrs = SYSCALLS.get(platform.machine())
    if sys.platform != "linux" or nrs is None:
        pytest.skip(f"the clock's system call numbers on {platform.machine()} are not known here")
    timesync = tmp_path / "timesync"
    timesync.mkdir()
    (timesync / "synchronized").touch()
    argv = [",".join(map(str, nrs)), str(tmp_path / "absent"), str(timesync)]
    r = subprocess.run([sys.executable, "-c", UNDER_FILTER, *argv], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["before"] >= 0 and (out["after"], out["errno"]) == (-1, errno.EPERM), out
    assert out["synced"] == [False, False]   # unknown is not synchronised (it said True)
    assert out["marker"] is True             # timesyncd's marker still decides where it runs
    warnings = [line for line in r.stderr.splitlines() if "kernel's clock state" in line]
    assert len(warnings) == 1 and "Operation not permitted" in warnings[0], r.stderr
