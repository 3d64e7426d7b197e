"""``sensorwire keygen --force`` interrupted: by a full disk, or killed between its steps.

Each key file is replaced whole (a temporary file, flushed, renamed), the secret
first: whatever stops it leaves the old pair, or the new secret key (which holds
its public key) beside the old public key, which ``keygen`` then points out.
Real failures: a small tmpfs filled to the brim (needs root, else skipped), and a
real SIGKILL of the process at the step (an audit hook in the process itself).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import run_cli, small_tmpfs

from sensorwire import keys

PAGE = 4096


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of four pages mounted at a folder of this test's own."""
    with small_tmpfs(tmp_path / "fs", 4 * PAGE) as where:
        yield where


def fill(fs: Path, leave: int) -> None:
    """Take all of ``fs`` but ``leave`` bytes (whole pages) with one file."""
    filler = fs / "filler"
    with open(filler, "wb") as f:
        try:
            f.write(b"\0" * 8 * PAGE)
            f.flush()
        except OSError:
            pass
    with open(filler, "r+b") as f:
        f.truncate(max(0, filler.stat().st_size - leave))


def pair(folder: Path, name: str = "pi-07") -> tuple[bytes, bytes]:
    """(the public key in NAME.key, the public key NAME.key_secret holds)."""
    return (keys.load_public(folder / f"{name}.key"),
            keys.load_secret(folder / f"{name}.key_secret").public)


@pytest.mark.parametrize("room", [0, PAGE], ids=["no room", "room for the secret only"])
def test_a_full_disk_leaves_the_old_pair_and_says_so(small_fs: Path, room: int) -> None:
    folder = small_fs / "keys"
    keys.generate("pi-07", folder)
    old = pair(folder)
    fill(small_fs, leave=room)
    r = run_cli("keygen", "pi-07", "--dir", str(folder), "--force")
    assert r.returncode == 1
    assert (f"cannot write the new pair in {folder}: No space left on device "
            "(the old pair as it was)") in r.stderr
    assert pair(folder) == old and old[0] == old[1]
    assert sorted(p.name for p in folder.iterdir()) == ["pi-07.key", "pi-07.key_secret"]
    (small_fs / "filler").unlink()
    assert run_cli("keygen", "pi-07", "--dir", str(folder), "--force").returncode == 0
    new = pair(folder)
    assert new[0] == new[1] != old[0]


KILLED_AT = """\
import os, signal, sys
from sensorwire import keys

event, nth = sys.argv[2], int(sys.argv[3])
seen = 0

def hook(name, args):
    global seen
    if name == event and (name != "open" or str(args[0]).endswith(".pi-07.key.tmp")):
        seen += 1
        if seen == nth:
            os.kill(os.getpid(), signal.SIGKILL)

sys.addaudithook(hook)
keys.generate("pi-07", sys.argv[1], force=True)
"""


def killed_at(folder: Path, event: str, nth: int) -> None:
    r = subprocess.run([sys.executable, "-c", KILLED_AT, str(folder), event, str(nth)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == -9, r.stderr


@pytest.mark.parametrize("event, nth", [("open", 1), ("os.rename", 1)],
                         ids=["writing the public key", "before the first rename"])
def test_killed_before_the_renames_the_old_pair_stays(tmp_path: Path, event: str, nth: int) -> None:
    folder = tmp_path / "keys"
    keys.generate("pi-07", folder)
    old = pair(folder)
    killed_at(folder, event, nth)
    assert pair(folder) == old and old[0] == old[1]
    leftover = folder / ".pi-07.key_secret.tmp"
    assert leftover.stat().st_mode & 0o777 == 0o600  # a secret: never readable by others
    # the next keygen removes what the killed one left, whether it replaces the pair or not
    again = run_cli("keygen", "pi-07", "--dir", str(folder))
    assert again.returncode == 1 and "exists; pass --force" in again.stderr
    assert "is not the public key" not in again.stderr
    assert sorted(p.name for p in folder.iterdir()) == ["pi-07.key", "pi-07.key_secret"]


def test_killed_between_the_renames_the_new_secret_holds_its_public_key(tmp_path: Path) -> None:
    folder = tmp_path / "keys"
    keys.generate("pi-07", folder)
    old = pair(folder)
    killed_at(folder, "os.rename", 2)
    public, secret_holds = pair(folder)   # both whole files, each loads
    assert public == old[0] and secret_holds != old[0]
    r = run_cli("keygen", "pi-07", "--dir", str(folder))
    assert r.returncode == 1
    assert ("pi-07.key is not the public key of pi-07.key_secret (a keygen --force interrupted "
            "between writing the two?); pass --force") in r.stderr
    assert run_cli("keygen", "pi-07", "--dir", str(folder), "--force").returncode == 0
    new = pair(folder)
    assert new[0] == new[1] not in (old[0], secret_holds)
    assert sorted(p.name for p in folder.iterdir()) == ["pi-07.key", "pi-07.key_secret"]


def test_the_files_are_what_zmq_auth_writes_and_reads(tmp_path: Path) -> None:
    import zmq.auth

    public, secret = keys.generate("pi-07", tmp_path / "ours")
    (tmp_path / "theirs").mkdir()
    made_public, made_secret = zmq.auth.create_certificates(tmp_path / "theirs", "pi-07")
    for ours, theirs in ((public, made_public), (secret, made_secret)):
        ours_lines = [line for line in ours.read_text().splitlines() if "key =" not in line]
        theirs_lines = [line for line in Path(theirs).read_text().splitlines() if "key =" not in line]
        assert ours_lines[1:] == theirs_lines[1:]   # all but the time in the first line
    pub, sec = zmq.auth.load_certificate(secret)
    assert zmq.auth.load_certificate(public) == (pub, None) and sec is not None
    assert keys.load_secret(secret).secret == sec
