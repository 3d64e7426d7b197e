"""An allow-list folder: names from file names, re-read when its listing changes."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from sensorwire import keys
from sensorwire.allowlist import AllowList


@pytest.fixture
def made(tmp_path: Path) -> Path:
    for name in ("pi-1", "pi-2", "pi-3"):
        keys.generate(name, tmp_path / "made")
    return tmp_path / "made"


def raw(made: Path, name: str) -> bytes:
    return keys.z85_to_raw(keys.load_public(made / f"{name}.key"))


def test_names_come_from_the_files_and_changes_are_picked_up(tmp_path: Path, made: Path) -> None:
    folder = tmp_path / "allow"
    folder.mkdir()
    shutil.copy(made / "pi-1.key", folder)
    allow = AllowList(folder)
    allow.load()
    assert allow.name_of(raw(made, "pi-1")) == "pi-1"
    assert allow.name_of(raw(made, "pi-2")) is None
    assert not allow.refresh()  # nothing changed: not re-read

    shutil.copy(made / "pi-2.key", folder)
    (folder / "pi-1.key").unlink()
    assert allow.refresh()
    assert allow.name_of(raw(made, "pi-2")) == "pi-2"
    assert allow.name_of(raw(made, "pi-1")) is None
    [client] = allow.by_uid.values()
    assert client.name == "pi-2" and client.segment == b"pi-2/"


def test_a_key_under_two_names_and_bad_names_are_refused(tmp_path: Path, made: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "allow"
    folder.mkdir()
    shutil.copy(made / "pi-1.key", folder / "pi-1.key")
    shutil.copy(made / "pi-1.key", folder / "pi-1-copy.key")
    shutil.copy(made / "pi-2.key", folder / "pi 2.key")
    shutil.copy(made / "pi-3.key", folder / "pi-3.key")
    shutil.copy(made / "pi-3.key_secret", folder / "pi-3.key_secret")
    allow = AllowList(folder)
    with caplog.at_level(logging.WARNING):
        allow.load()
    assert sorted(allow.by_raw.values()) == ["pi-3"]
    assert "hold the same public key" in caplog.text
    assert "'pi 2'" in caplog.text
    assert "only public keys belong in an allow-list" in caplog.text


def test_a_missing_folder_is_a_configuration_error_at_start(tmp_path: Path) -> None:
    with pytest.raises(keys.KeyFileError, match="no such folder"):
        AllowList(tmp_path / "nope").load()


def test_a_folder_that_disappears_keeps_the_last_list(tmp_path: Path, made: Path) -> None:
    folder = tmp_path / "allow"
    folder.mkdir()
    shutil.copy(made / "pi-1.key", folder)
    allow = AllowList(folder)
    allow.load()
    shutil.rmtree(folder)
    assert not allow.refresh()
    assert allow.name_of(raw(made, "pi-1")) == "pi-1"
