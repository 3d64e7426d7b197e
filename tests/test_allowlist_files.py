"""Hostile and unlucky files in an allow-list folder, and key files read at start.

Real files throughout: a key file of 1 GB (sparse), /dev/zero linked in,
symlinks that dangle or loop, a file that may not be read for a while
(made unreadable to a real process that cannot get round permissions), a
secret key put in the folder by mistake, names that would inject log lines.
"""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path

import pytest

from sensorwire import keys
from sensorwire.allowlist import AllowList


@pytest.fixture
def made(tmp_path: Path) -> Path:
    for name in ("pi-1", "pi-2", "pi-3"):
        keys.generate(name, tmp_path / "made")
    return tmp_path / "made"


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "allow").mkdir()
    return tmp_path / "allow"


def raw(made: Path, name: str) -> bytes:
    return keys.z85_to_raw(keys.load_public(made / f"{name}.key"))


def names(allow: AllowList) -> list[str]:
    return sorted(allow.by_raw.values())


def test_a_key_file_of_a_gigabyte_is_refused_without_being_read(tmp_path: Path) -> None:
    big = tmp_path / "big.key"
    with open(big, "wb") as f:  # sparse: 1 GB of zeros, no newline, costs no disk
        f.truncate(1 << 30)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.monotonic()
    with pytest.raises(keys.KeyFileError, match="not a CURVE key file .more than 4096 bytes"):
        keys.load_public(big)
    assert time.monotonic() - t0 < 1.0
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 64 * 1024  # KiB


def test_a_device_or_a_fifo_is_not_a_key_file(tmp_path: Path) -> None:
    zero = tmp_path / "zero.key"
    zero.symlink_to("/dev/zero")
    with pytest.raises(keys.KeyFileError, match="zero.key: not a regular file"):
        keys.load_public(zero)
    fifo = tmp_path / "fifo.key"
    os.mkfifo(fifo)  # opening a fifo with no writer would block the reader for ever
    with pytest.raises(keys.KeyFileError, match="fifo.key: not a regular file"):
        keys.load_public(fifo)


def test_a_key_file_that_is_not_z85_or_has_no_key_is_refused(tmp_path: Path, made: Path) -> None:
    text = (made / "pi-1.key").read_text()
    public = keys.load_public(made / "pi-1.key").decode("ascii")
    for bad in ("~" * 40, public[:39], public + "0", "\x00" * 40):
        (tmp_path / "bad.key").write_text(text.replace(public, bad))
        with pytest.raises(keys.KeyFileError, match="not 40 Z85 characters|not a CURVE key"):
            keys.load_public(tmp_path / "bad.key")
    (tmp_path / "bad.key").write_bytes(os.urandom(300))
    with pytest.raises(keys.KeyFileError, match="no public-key line"):
        keys.load_public(tmp_path / "bad.key")
