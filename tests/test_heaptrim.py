"""heaptrim gives what a process freed back to the system (glibc)."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc_trim")

# 40 MB of 4 kB blocks (below glibc's mmap threshold: in its heap), then all but every 50th
# freed: the kept ones pin the heap, so glibc keeps the freed pages until trimmed
FRAGMENTED = """
from sensorwire import heaptrim

def rss_kib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))

size = 4000  # a variable: b"x" * 4000 would be one constant
blocks = [b"x" * size for _ in range(10_000)]
kept = blocks[::50]
del blocks
before = rss_kib()
trimmed = heaptrim.trim()
print(trimmed, before - rss_kib(), len(kept))
"""


def test_the_pages_a_process_freed_go_back_to_the_system() -> None:
    out = subprocess.run([sys.executable, "-c", FRAGMENTED], capture_output=True, text=True,
                         check=True, timeout=60).stdout.split()
    assert out[0] == "True"
    assert int(out[1]) > 20_000, f"RSS went down by {out[1]} KiB only"
