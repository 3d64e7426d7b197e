"""Hostile and unlucky files in an allow-list folder, and key files read at start.

Real files throughout: a key file of 1 GB (sparse), /dev/zero linked in,
symlinks that dangle or loop, a file that may not be read for a while
(made unreadable to a real process that cannot get round permissions), a
secret key put in the folder by mistake, names that would inject log lines.
"""

from __future__ import annotations

import logging
import os
import resource
import shutil
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


def test_a_key_that_could_not_be_read_for_want_of_file_descriptors_is_read_once_it_can(
        folder: Path, made: Path, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    allow = AllowList(folder)
    allow.load()
    shutil.copy(made / "pi-1.key", folder)
    held: list[int] = []
    scan = allow._scan

    def scan_then_use_up_descriptors() -> dict[str, tuple[int, int, int, int] | None]:
        listing = scan()  # as another thread of the role might, between listing and reading
        while True:
            try:
                held.append(os.open(os.devnull, os.O_RDONLY))
            except OSError:
                return listing

    monkeypatch.setattr(allow, "_scan", scan_then_use_up_descriptors)
    try:
        with caplog.at_level(logging.INFO):
            allow.refresh()
    finally:
        for fd in held:
            os.close(fd)
    monkeypatch.undo()
    assert names(allow) == []
    assert "pi-1.key: cannot be read (Too many open files)" in caplog.text
    assert "keys in" not in caplog.text  # nothing to say about the keys: none changed
    assert allow.refresh()  # the file is as it was: only the process's trouble has passed
    assert allow.name_of(raw(made, "pi-1")) == "pi-1"


def test_a_dangling_or_looping_symlink_refuses_that_file_only(
        folder: Path, made: Path, caplog: pytest.LogCaptureFixture) -> None:
    shutil.copy(made / "pi-1.key", folder)
    (folder / "pi-2.key").symlink_to(made / "later" / "pi-2.key")
    (folder / "pi-3.key").symlink_to("pi-3.key")
    allow = AllowList(folder)
    with caplog.at_level(logging.WARNING):
        allow.load()
    assert names(allow) == ["pi-1"]
    assert "pi-2.key: no such file" in caplog.text
    assert "pi-3.key: cannot be read (Too many levels of symbolic links)" in caplog.text

    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert not allow.refresh() and not allow.refresh()
    assert caplog.text == ""  # said once, not every second
    (made / "later").mkdir()
    shutil.copy(made / "pi-2.key", made / "later")
    assert allow.refresh()  # the link's target appeared: read now
    assert names(allow) == ["pi-1", "pi-2"]


def test_a_link_to_a_huge_file_a_device_or_a_fifo_refuses_that_file_only(
        folder: Path, made: Path, tmp_path: Path) -> None:
    shutil.copy(made / "pi-1.key", folder)
    with open(folder / "big.key", "wb") as f:
        f.truncate(1 << 30)
    (folder / "zero.key").symlink_to("/dev/zero")
    os.mkfifo(folder / "fifo.key")
    (folder / "outside.key").symlink_to(made / "pi-2.key")  # a link out of the folder is fine
    allow = AllowList(folder)
    allow.load()
    assert names(allow) == ["outside", "pi-1"]


def test_a_secret_key_in_the_folder_is_refused_loudly(
        folder: Path, made: Path, caplog: pytest.LogCaptureFixture) -> None:
    shutil.copy(made / "pi-1.key_secret", folder / "pi-1.key")  # the wrong file of the pair
    shutil.copy(made / "pi-2.key", folder)
    allow = AllowList(folder)
    with caplog.at_level(logging.WARNING):
        allow.load()
    assert names(allow) == ["pi-2"]
    [error] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "pi-1.key holds a secret key; refusing it" in error.getMessage()

    caplog.clear()
    shutil.copy(made / "pi-3.key_secret", folder)  # later, beside the public keys
    with caplog.at_level(logging.WARNING):
        allow.refresh()
        allow.refresh()
    [error] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "holds secret keys ('pi-3.key_secret'); only public keys belong" in error.getMessage()


def test_file_names_with_control_characters_cannot_forge_log_lines(
        folder: Path, made: Path, caplog: pytest.LogCaptureFixture) -> None:
    forged = "x\n2026-01-01T00:00:00Z INFO    accepted pi-9\x1b[2K.key"
    shutil.copy(made / "pi-1.key", folder / forged)
    shutil.copy(made / "pi-2.key_secret", folder / "y\nz.key_secret")
    allow = AllowList(folder)
    with caplog.at_level(logging.WARNING):
        allow.load()
    assert names(allow) == []
    for r in caplog.records:
        assert "\n" not in r.getMessage() and "\x1b" not in r.getMessage(), r.getMessage()


def test_a_key_replaced_by_rename_or_rewritten_in_place_is_read_again(
        folder: Path, made: Path) -> None:
    shutil.copy(made / "pi-1.key", folder / "pi-1.key")
    allow = AllowList(folder)
    allow.load()
    tmp = folder / ".pi-1.key.tmp"  # hidden while written, then renamed over
    shutil.copy(made / "pi-2.key", tmp)
    os.replace(tmp, folder / "pi-1.key")
    assert allow.refresh()
    assert allow.name_of(raw(made, "pi-2")) == "pi-1"

    # rewritten in place, seen half-written; the rest lands within the same tick of the file
    # system's clock and keeps the size: the stat then looks the same as the one read
    whole = (made / "pi-3.key").read_bytes()
    with open(folder / "pi-1.key", "r+b") as f:
        f.write(whole[:len(whole) // 2])
        f.flush()
        allow.refresh()
        f.write(whole[len(whole) // 2:])
    wait = time.monotonic() + 3
    while allow.name_of(raw(made, "pi-3")) != "pi-1" and time.monotonic() < wait:
        allow.refresh()
        time.sleep(0.05)
    assert allow.name_of(raw(made, "pi-3")) == "pi-1"


def test_one_changed_file_among_thousands_is_the_one_read(
        folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import zmq

    for i in range(2000):
        public, _ = zmq.curve_keypair()
        (folder / f"pi-{i}.key").write_text(f'curve\n    public-key = "{public.decode()}"\n')
        os.utime(folder / f"pi-{i}.key", ns=(1, 1))  # old: not read again for being new
    allow = AllowList(folder)
    allow.load()
    assert len(allow.by_raw) == 2000
    read: list[Path] = []
    load_keys = keys.load_keys

    def counted(p: Path, what: str) -> tuple[bytes, bytes | None]:
        read.append(p)
        return load_keys(p, what)

    monkeypatch.setattr(keys, "load_keys", counted)
    (folder / "pi-7.key").unlink()
    assert allow.refresh()
    assert read == [] and len(allow.by_raw) == 1999
    public, _ = zmq.curve_keypair()
    (folder / "pi-7.key").write_text(f'curve\n    public-key = "{public.decode()}"\n')
    assert allow.refresh()
    assert read == [folder / "pi-7.key"] and len(allow.by_raw) == 2000


def test_a_folder_deleted_and_made_again_is_read_again(folder: Path, made: Path) -> None:
    shutil.copy(made / "pi-1.key", folder)
    allow = AllowList(folder)
    allow.load()
    shutil.rmtree(folder)
    assert not allow.refresh() and names(allow) == ["pi-1"]  # kept while it is gone
    folder.mkdir()
    shutil.copy(made / "pi-2.key", folder)
    assert allow.refresh() and names(allow) == ["pi-2"]
    shutil.rmtree(folder)
    allow.refresh()
    folder.mkdir()
    shutil.copy(made / "pi-2.key", folder)  # the same again: nothing changed
    assert not allow.refresh() and names(allow) == ["pi-2"]


def test_a_folder_others_may_write_to_is_warned_about(
        folder: Path, made: Path, caplog: pytest.LogCaptureFixture) -> None:
    shutil.copy(made / "pi-1.key", folder)
    folder.chmod(0o777)  # anyone on the machine could let any key in
    with caplog.at_level(logging.WARNING):
        AllowList(folder).load()
    assert f"{folder} can be written by other users (mode 777): anyone who can write there " \
           "can let a key in; make it 0755" in caplog.text
    caplog.clear()
    folder.chmod(0o755)
    with caplog.at_level(logging.WARNING):
        AllowList(folder).load()
    assert "can be written" not in caplog.text
