"""An allow-list: a folder of clients' public key files, ``<name>.key``.

The file name is the client's identity: for an agent it is the device id the
key may publish for, for a collector any name that tells operators which
collector it is.  The folder is looked at again whenever :meth:`refresh` is
called (the guard thread does it every second) and re-read when its listing
changed: keys added are accepted for new connections, keys removed refused.

The two lookup tables are replaced whole on a reload, never changed in
place, so the guard thread may reload while the receive path reads them.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import NamedTuple

from sensorwire import keys, names

log = logging.getLogger(__name__)

MAX_KEYS = 100_000
_SHOWN = 20


class Client(NamedTuple):
    """Who a key belongs to, as the receive path needs it."""

    name: str
    segment: bytes  # b"<name>/": what follows "<site>/" in the topics this client may publish


class AllowList:
    def __init__(self, folder: str | Path, setting: str = "authorized_keys") -> None:
        self.folder = Path(folder).expanduser()
        self.setting = setting
        self.by_raw: dict[bytes, str] = {}      # 32-byte public key -> name (for ZAP)
        self.by_uid: dict[str, Client] = {}     # Z85 public key (the ZAP user id) -> client
        self._signature: tuple[tuple[str, int, int, int], ...] | None = None

    def __repr__(self) -> str:
        return f"AllowList({str(self.folder)!r}, {len(self.by_raw)} keys)"

    def load(self) -> None:
        """The first read, at start: a missing folder is a configuration error."""
        if not self.folder.is_dir():
            raise keys.KeyFileError(
                f"[security] {self.setting}: {self.folder}: no such folder (create it and put "
                "the clients' public .key files in it)")
        self.refresh()
        if self._signature is None:
            raise keys.KeyFileError(f"[security] {self.setting}: {self.folder}: cannot be listed "
                                    "(check its permissions)")

    def refresh(self) -> bool:
        """Re-read the folder if its listing changed; True when it was re-read.

        A folder that cannot be listed keeps the previous list (a transient
        error must not lock every device out); the problem is logged.
        """
        try:
            signature = self._scan()
        except OSError as exc:
            if self._signature is not None:
                log.warning("[security] %s: cannot list %s (%s); keeping the %d keys read before",
                            self.setting, self.folder, exc.strerror or exc, len(self.by_raw))
                self._signature = None  # log again, and re-read once it can be listed
            return False
        if signature == self._signature:
            return False
        first = self._signature is None and not self.by_raw
        self._signature = signature
        by_raw: dict[bytes, str] = {}
        twice: set[bytes] = set()
        for name, *_ in signature:
            client = name.removesuffix(keys.PUBLIC_SUFFIX)
            problem = names.segment_problem(client)
            if problem:
                log.warning("[security] %s: ignored %s: the name %r %s", self.setting,
                            self.folder / name, client, problem)
                continue
            try:
                raw = keys.z85_to_raw(keys.load_public(self.folder / name, self.setting))
            except keys.KeyFileError as exc:
                log.warning("%s; ignored", exc)
                continue
            if raw in by_raw:
                twice.add(raw)
                log.warning("[security] %s: %s.key and %s.key hold the same public key; refusing "
                            "it (a key must name one client)", self.setting, by_raw[raw], client)
            by_raw[raw] = client
        for raw in twice:
            del by_raw[raw]
        before = set(self.by_raw.values())
        self._install(by_raw, "" if first else self._diff(before, set(by_raw.values())))
        return True

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

    def _scan(self) -> tuple[tuple[str, int, int, int], ...]:
        out = []
        secrets = 0
        with os.scandir(self.folder) as it:
            for e in it:
                if e.name.endswith(keys.SECRET_SUFFIX):
                    secrets += 1
                if not e.name.endswith(keys.PUBLIC_SUFFIX) or e.name.startswith("."):
                    continue
                st = e.stat()
                out.append((e.name, st.st_mtime_ns, st.st_size, st.st_ino))
                if len(out) >= MAX_KEYS:
                    break
        if secrets and self._signature is None:
            log.warning("[security] %s: %s holds %d secret keys (.key_secret); only public keys "
                        "belong in an allow-list", self.setting, self.folder, secrets)
        return tuple(sorted(out))

    def name_of(self, raw: bytes) -> str | None:
        return self.by_raw.get(raw)
