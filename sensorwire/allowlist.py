"""An allow-list: a folder of clients' public key files, ``<name>.key``.

The file name is the client's identity: for an agent it is the device id the
key may publish for, for a collector any name that tells operators which
collector it is.  The folder is looked at again whenever :meth:`refresh` is
called (the guard thread does it every second) and the files that changed
are read: keys added are accepted for new connections, keys removed refused.
A file that could not be read is tried again at every look until it can be.

The two lookup tables are replaced whole on a reload, never changed in
place, so the guard thread may reload while the receive path reads them.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from pathlib import Path
from typing import NamedTuple

from sensorwire import keys, names

log = logging.getLogger(__name__)

MAX_KEYS = 100_000
_SHOWN = 20
RACY_NS = 1_000_000_000  # a file changed this recently is read again at the next look


class Client(NamedTuple):
    """Who a key belongs to, as the receive path needs it."""

    name: str
    segment: bytes  # b"<name>/": what follows "<site>/" in the topics this client may publish


class _File(NamedTuple):
    """One ``.key`` file as last read."""

    stamp: tuple[int, int, int, int] | None  # (mtime, ctime, size, inode); None: stat failed
    raw: bytes | None   # its public key; None when refused
    problem: str        # why it was refused ("" when read)
    again: bool         # read it again at the next look (see _read)


def _accepted(files: dict[str, _File]) -> dict[str, bytes]:
    return {name: f.raw for name, f in files.items() if f.raw is not None}


class AllowList:
    def __init__(self, folder: str | Path, setting: str = "authorized_keys") -> None:
        self.folder = Path(folder).expanduser()
        self.setting = setting
        self.by_raw: dict[bytes, str] = {}      # 32-byte public key -> name (for ZAP)
        self.by_uid: dict[str, Client] = {}     # Z85 public key (the ZAP user id) -> client
        self._files: dict[str, _File] = {}      # file name -> what it held when last read
        self._listed = False                    # the last look could list the folder
        self._secrets: set[str] = set()         # .key_secret files seen (logged once)

    def __repr__(self) -> str:
        return f"AllowList({str(self.folder)!r}, {len(self.by_raw)} keys)"

    def load(self) -> None:
        """The first read, at start: a missing folder is a configuration error."""
        if not self.folder.is_dir():
            raise keys.KeyFileError(
                f"[security] {self.setting}: {self.folder}: no such folder (create it and put "
                "the clients' public .key files in it)")
        mode = self.folder.stat().st_mode
        if mode & stat.S_IWOTH:
            log.warning("[security] %s: %s can be written by other users (mode %o): anyone who "
                        "can write there can let a key in; make it 0755: chmod 755 %s",
                        self.setting, self.folder, stat.S_IMODE(mode), self.folder)
        self.refresh()
        if not self._listed:
            raise keys.KeyFileError(f"[security] {self.setting}: {self.folder}: cannot be listed "
                                    "(check its permissions)")

    def refresh(self) -> bool:
        """Look at the folder and read the files that changed; True when the keys changed.

        A folder that cannot be listed keeps the previous list (a transient
        error must not lock every device out); the problem is logged.  A file
        that could not be read (permissions, out of file descriptors, a
        dangling symlink) or that changed in the last second is read again
        at the next look, so a key is never missed for having been read at
        a bad moment; a file's problem is logged once, not at every look.
        """
        try:
            listing = self._scan()
        except OSError as exc:
            if self._listed:
                log.warning("[security] %s: cannot list %s (%s); keeping the %d keys read before",
                            self.setting, self.folder, exc.strerror or exc, len(self.by_raw))
                self._listed = False  # log again, and re-read once it can be listed
            return False
        first = not self._listed and not self._files
        if (self._listed and listing.keys() == self._files.keys()
                and all(not f.again and f.stamp == listing[n] for n, f in self._files.items())):
            return False
        self._listed = True
        now = time.time_ns()
        files = {name: self._read(name, stamp, self._files.get(name), now)
                 for name, stamp in listing.items()}
        changed = _accepted(files) != _accepted(self._files)  # a file refused changes nothing
        self._files = files
        if not changed and not first:
            return False
        by_raw: dict[bytes, str] = {}
        twice: set[bytes] = set()
        for name in sorted(files):
            key = files[name].raw
            if key is None:
                continue
            client = name.removesuffix(keys.PUBLIC_SUFFIX)
            if key in by_raw:
                twice.add(key)
                log.warning("[security] %s: %s.key and %s.key hold the same public key; refusing "
                            "it (a key must name one client)", self.setting, by_raw[key], client)
            by_raw[key] = client
        for key in twice:
            del by_raw[key]
        before = set(self.by_raw.values())
        self._install(by_raw, "" if first else self._diff(before, set(by_raw.values())))
        return True

    def _read(self, name: str, stamp: tuple[int, int, int, int] | None, was: _File | None,
              now: int) -> _File:
        """The key in file ``name``, or why not (logged when it is news).

        Read again at the next look: after an error that may pass (permission
        denied, out of file descriptors, a dangling symlink), and while the
        file changed less than a second ago, as a writer may not be done with
        it within the same tick of the file system's clock.
        """
        if was is not None and stamp is not None and was.stamp == stamp and not was.again:
            return was
        client = name.removesuffix(keys.PUBLIC_SUFFIX)
        raw: bytes | None = None
        again = stamp is None or 0 <= now - stamp[0] < RACY_NS
        problem, level = "", logging.WARNING
        bad_name = names.segment_problem(client)
        if bad_name:  # the name is shown as repr: a file name may hold "\n" and escapes
            problem = (f"[security] {self.setting}: ignored {name!r} in {self.folder}: the name "
                       f"{client!r} {bad_name}")
        else:
            try:
                public, secret = keys.load_keys(self.folder / name, self.setting)
            except keys.UnreadableKeyFile as exc:
                problem, again = f"{exc}; ignored until it can be read", True
            except keys.KeyFileError as exc:
                problem = f"{exc}; ignored"
            else:
                if secret is None:
                    raw = keys.z85_to_raw(public)
                else:  # loud: a secret key lies where public keys are copied around
                    level = logging.ERROR
                    problem = (f"[security] {self.setting}: {self.folder / name} holds a secret "
                               "key; refusing it: an allow-list takes public keys only (move the "
                               "file away, put the .key file made with it here, and as the secret "
                               "may have been seen, make a new pair for this client)")
        if problem and (was is None or was.problem != problem):
            log.log(level, "%s", problem)
        return _File(stamp, raw, problem, again)

    def _install(self, by_raw: dict[bytes, str], diff: str) -> None:
        self.by_uid = {keys.raw_to_z85(raw): Client(name, name.encode("ascii") + b"/")
                       for raw, name in by_raw.items()}
        self.by_raw = by_raw
        shown = sorted(by_raw.values())
        more = f" and {len(shown) - _SHOWN} more" if len(shown) > _SHOWN else ""
        log.info("[security] %s: %d keys in %s%s%s", self.setting, len(by_raw), self.folder,
                 f" ({', '.join(shown[:_SHOWN])}{more})" if shown else "", diff)

    @staticmethod
    def _diff(before: set[str], after: set[str]) -> str:
        added, removed = sorted(after - before), sorted(before - after)
        parts = []
        if added:
            parts.append("added " + ", ".join(added[:_SHOWN]))
        if removed:
            parts.append("removed " + ", ".join(removed[:_SHOWN]))
        return "; " + "; ".join(parts) if parts else "; the same names (a key changed)"

    def _scan(self) -> dict[str, tuple[int, int, int, int] | None]:
        """File name -> (mtime, ctime, size, inode) of every ``.key`` file; None when its stat
        fails (a dangling symlink, a loop): that file is refused, the others are read."""
        out: dict[str, tuple[int, int, int, int] | None] = {}
        secrets = []
        with os.scandir(self.folder) as it:
            for e in it:
                if e.name.endswith(keys.SECRET_SUFFIX):
                    secrets.append(e.name)
                if not e.name.endswith(keys.PUBLIC_SUFFIX) or e.name.startswith("."):
                    continue
                if len(out) >= MAX_KEYS:
                    if len(self._files) < MAX_KEYS:  # said once
                        log.warning("[security] %s: %s holds more than %d .key files; the others "
                                    "are ignored", self.setting, self.folder, MAX_KEYS)
                    break
                try:
                    st = e.stat()
                except OSError:
                    out[e.name] = None
                else:
                    out[e.name] = (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino)
        new = sorted(set(secrets) - self._secrets)
        if new:
            log.error("[security] %s: %s holds secret keys (%s); only public keys belong in an "
                      "allow-list: move them away, and as they may have been seen, make new "
                      "pairs for these clients", self.setting, self.folder,
                      ", ".join(repr(n) for n in new[:_SHOWN]))
        self._secrets = set(secrets)
        return out

    def name_of(self, raw: bytes) -> str | None:
        return self.by_raw.get(raw)
