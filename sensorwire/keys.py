"""CURVE key files: ``sensorwire keygen`` and loading keys at start.

Keys use ZeroMQ's certificate format (the one czmq and ``zmq.auth`` write):
``NAME.key`` holds the public key, ``NAME.key_secret`` the public and the
secret key.  For a device, NAME is its device id: the proxy and the
collector take a client's identity from the name of its public key file in
their allow-list folder.

Problems with a key file at start are :class:`KeyFileError`, a
:class:`~sensorwire.configload.ConfigError`: the process exits with status 2
and the message names the file and what to do.

Under systemd a role runs as a user of its own, which may not read a secret
key that is root's with mode 0600 (and should not).  systemd reads the key
for it (``LoadCredential=``, added by ``sensorwire install-service``) and
hands it over in ``$CREDENTIALS_DIRECTORY``; the configuration names it
``secret_key = "${CREDENTIALS_DIRECTORY:-/etc/sensorwire/keys}/NAME.key_secret"``
(the same file, read in place, when the command is run by hand).  A key
that cannot be read for its permissions says so, and how to hand it over.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.utils.z85

from sensorwire import names
from sensorwire.configload import ConfigError

log = logging.getLogger(__name__)

PUBLIC_SUFFIX = ".key"
SECRET_SUFFIX = ".key_secret"
MAX_KEY_FILE_BYTES = 4096  # a certificate is about 300 bytes: never read a big file whole


class KeyFileError(ConfigError):
    """A key file or allow-list folder is missing, unreadable or not a CURVE key."""


class UnreadableKeyFile(KeyFileError):
    """A key file that could not be read: permissions, out of file descriptors, gone.

    Unlike a file that holds no key, it may be read the next time; an
    allow-list tries it again.
    """


class KeyExists(Exception):
    """``keygen`` would overwrite a key; the message says how to replace it on purpose."""


class KeyWriteError(OSError):
    """The folder refused a new key file (full, read-only); the message says what is left."""


@dataclass(frozen=True)
class KeyPair:
    public: bytes        # Z85, 40 bytes, as the socket options take it
    secret: bytes        # Z85, 40 bytes
    path: Path           # the .key_secret file, for messages

    @property
    def name(self) -> str:
        return self.path.name.removesuffix(SECRET_SUFFIX)


def z85_to_raw(key: bytes) -> bytes:
    return bytes(zmq.utils.z85.decode(key))


def raw_to_z85(key: bytes) -> str:
    return bytes(zmq.utils.z85.encode(key)).decode("ascii")


def generate(name: str, folder: str | Path, force: bool = False) -> tuple[Path, Path]:
    """Write ``NAME.key`` and ``NAME.key_secret`` (mode 0600) in ``folder``.

    Raises :class:`KeyExists` unless ``force``; :class:`KeyWriteError` when the
    folder refuses the new files (full, read-only), with the old pair as it was.

    Each file is written whole to a temporary file beside it (``.NAME.key.tmp``,
    ``.NAME.key_secret.tmp``) with its final mode from the start, flushed to
    disk, and renamed over the old one: a file is always either the old one or
    the new one, never half of one, and the secret never readable by others.
    Both are on disk before either is renamed, so a full disk leaves the old
    pair.  The secret is renamed first: the secret file holds the public key
    too, and is what a role reads, so it is the pair.  An interruption between
    the two renames (a crash, a power cut) leaves the new secret beside the old
    public key: never a public key whose secret is gone (handed out, it could
    never be used again).  ``keygen`` without ``--force`` then says the two do
    not match; run it again with ``--force``.  A crash before the renames
    leaves the old pair and temporary files, which the next ``keygen`` removes.
    """
    import datetime

    problem = names.segment_problem(name)
    if problem:
        raise ValueError(f"key name {name!r} {problem} (for a device, use its device_id)")
    dest = Path(folder)
    dest.mkdir(parents=True, exist_ok=True)
    public, secret = dest / f"{name}{PUBLIC_SUFFIX}", dest / f"{name}{SECRET_SUFFIX}"
    temporary = [dest / f".{p.name}.tmp" for p in (secret, public)]
    for tmp in temporary:  # left by a run that was interrupted
        with contextlib.suppress(OSError):
            tmp.unlink()
    if not force:
        for p in (public, secret):
            if os.path.lexists(p):  # a symlink counts, even to a key not there now
                raise KeyExists(f"{p} exists{_mismatch(public, secret)}; pass --force to replace "
                                "the pair (whoever uses the old key is then refused)")
    public_key, secret_key = (k.decode("ascii") for k in zmq.curve_keypair())
    now = datetime.datetime.now()
    left = "the old pair as it was"
    try:
        for tmp, mode, text in zip(temporary, (0o600, 0o644), (
                _certificate(_SECRET_BANNER, now, public_key, secret_key),
                _certificate(_PUBLIC_BANNER, now, public_key)), strict=True):
            _write_whole(tmp, text.encode("utf-8"), mode)
        os.replace(temporary[0], secret)
        left = "the new secret key beside the old public key: run keygen --force again"
        _fsync_folder(dest)  # the secret's rename on disk before the public key's
        os.replace(temporary[1], public)
        left = "the new pair, perhaps not yet on disk"
        _fsync_folder(dest)
    except OSError as exc:
        for tmp in temporary:
            with contextlib.suppress(OSError):
                tmp.unlink()
        raise KeyWriteError(f"cannot write the new pair in {dest}: {exc.strerror or exc} "
                            f"({left})") from None
    return public, secret


# ZeroMQ's certificate format, as zmq.auth writes it
_SECRET_BANNER = """#   ****  Generated on {0} by pyzmq  ****
#   ZeroMQ CURVE **Secret** Certificate
#   DO NOT PROVIDE THIS FILE TO OTHER USERS nor change its permissions.

"""
_PUBLIC_BANNER = """#   ****  Generated on {0} by pyzmq  ****
#   ZeroMQ CURVE Public Certificate
#   Exchange securely, or use a secure mechanism to verify the contents
#   of this file after exchange. Store public certificates in your home
#   directory, in the .curve subdirectory.

"""


def _certificate(banner: str, now: object, public_key: str, secret_key: str | None = None) -> str:
    text = banner.format(now) + "metadata\ncurve\n" + f'    public-key = "{public_key}"\n'
    return text + (f'    secret-key = "{secret_key}"\n' if secret_key else "")


def _write_whole(path: Path, data: bytes, mode: int) -> None:
    """``data`` in a new file ``path`` of ``mode`` (whatever the umask), on disk when it returns;
    a file left there by an interrupted run is replaced."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _mismatch(public: Path, secret: Path) -> str:
    """Why ``public`` is not the public key of ``secret`` ("" when it is, or either is not
    there to say): what an interrupted ``keygen --force`` can leave."""
    try:
        theirs, _ = _load(public, "key")
        ours, secret_key = _load(secret, "secret_key")
    except KeyFileError:
        return ""
    if secret_key is None or theirs == ours:
        return ""
    return (f", and {public.name} is not the public key of {secret.name} (a keygen --force "
            "interrupted between writing the two?)")


def load_secret(path: str | Path, what: str = "secret_key", role: str = "") -> KeyPair:
    """The key pair in a ``.key_secret`` file; warns when others may read it.

    ``role`` (agent, proxy, collector) names the service in the advice given
    when the file may not be read.
    """
    p = Path(path).expanduser()
    public, secret = _load(p, what, role, is_secret=True)
    if secret is None:
        raise KeyFileError(f"[security] {what}: {p} holds no secret key (give the .key_secret "
                           "file, not the public .key)")
    try:
        mode = p.stat().st_mode
    except OSError:
        mode = 0
    # systemd's copy may show group bits (an ACL for the service's user), in a folder
    # only the service may enter: the mode there says nothing about other users
    if mode & (stat.S_IRWXG | stat.S_IRWXO) and _credentials_dir(p) is None:
        log.warning("[security] %s: %s can be read by other users (mode %o); make it 0600: "
                    "chmod 600 %s", what, p, stat.S_IMODE(mode), p)
    return KeyPair(public=public, secret=secret, path=p)


def load_public(path: str | Path, what: str = "server_key") -> bytes:
    """The public key (Z85) in a ``.key`` or ``.key_secret`` file."""
    public, _ = _load(Path(path).expanduser(), what)
    return public


def load_keys(path: str | Path, what: str = "authorized_keys") -> tuple[bytes, bytes | None]:
    """The public key (Z85) in a key file, and its secret key if it holds one."""
    return _load(Path(path).expanduser(), what)


def _load(p: Path, what: str, role: str = "",
          is_secret: bool = False) -> tuple[bytes, bytes | None]:
    try:
        st = p.stat()
    except PermissionError:
        raise UnreadableKeyFile(_unreadable(p, what, role, is_secret)) from None
    except (FileNotFoundError, NotADirectoryError):
        raise UnreadableKeyFile(_missing(p, what, role)) from None
    except OSError as exc:  # a symlink loop, out of memory, I/O
        raise UnreadableKeyFile(f"[security] {what}: {p}: cannot be read ({exc.strerror or exc})"
                                ) from None
    if not stat.S_ISREG(st.st_mode):  # /dev/zero, a fifo: opening one may block or never end
        raise KeyFileError(f"[security] {what}: {p}: not a regular file, so not a key file")
    try:
        with open(os.open(p, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY), "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):  # replaced since the stat
                raise KeyFileError(f"[security] {what}: {p}: not a regular file, so not a key "
                                   "file")
            text = f.read(MAX_KEY_FILE_BYTES + 1)
    except PermissionError:
        raise UnreadableKeyFile(_unreadable(p, what, role, is_secret)) from None
    except OSError as exc:  # out of file descriptors, gone since the stat, I/O
        raise UnreadableKeyFile(f"[security] {what}: {p}: cannot be read ({exc.strerror or exc})"
                                ) from None
    if len(text) > MAX_KEY_FILE_BYTES:
        raise KeyFileError(f"[security] {what}: {p}: not a CURVE key file (more than "
                           f"{MAX_KEY_FILE_BYTES} bytes; a key file has about 300)")
    public, secret = _parse(text)
    if public is None:
        raise KeyFileError(f"[security] {what}: {p}: not a CURVE key file (no public-key line)")
    for key in (public, secret):
        if key is not None and not _valid_z85_key(key):
            raise KeyFileError(f"[security] {what}: {p}: the key is not 40 Z85 characters")
    return public, secret


def _parse(text: bytes) -> tuple[bytes | None, bytes | None]:
    """The keys in a certificate, read as ``zmq.auth.load_certificate`` reads them."""
    public: bytes | None = None
    secret: bytes | None = None
    for line in text.splitlines():
        line = line.strip()
        if line.startswith(b"public-key") and b"=" in line and public is None:
            public = line.split(b"=", 1)[1].strip(b" \t'\"")
        elif line.startswith(b"secret-key") and b"=" in line and secret is None:
            secret = line.split(b"=", 1)[1].strip(b" \t'\"")
    return public, secret


def _valid_z85_key(key: bytes) -> bool:
    if len(key) != 40:
        return False
    try:
        return len(z85_to_raw(key)) == 32
    except (ValueError, KeyError, IndexError, struct.error):
        return False


def _credentials_dir(p: Path) -> Path | None:
    """systemd's credentials folder of this service, when ``p`` is in it."""
    folder = os.environ.get("CREDENTIALS_DIRECTORY")
    if not folder:
        return None
    folder_path = Path(folder).resolve()
    return folder_path if p.resolve().is_relative_to(folder_path) else None


def _service_advice(p: Path, what: str, role: str) -> str:
    role = role if role in ("agent", "proxy", "collector") else "ROLE"
    return (f'write {what} = "${{CREDENTIALS_DIRECTORY:-{p.parent}}}/{p.name}" in the '
            f"configuration and run `sudo sensorwire install-service {role}` again: the unit "
            f"then has LoadCredential={p.name}:{p} (then: sudo systemctl daemon-reload; sudo "
            f"systemctl restart sensorwire-{role}; see \"Keys for the services\" in "
            "docs/security.md)")


def _missing(p: Path, what: str, role: str) -> str:
    if _credentials_dir(p) is not None:
        return (f"[security] {what}: {p}: systemd did not hand this key over (the unit has no "
                f"LoadCredential={p.name}:...): run `sudo sensorwire install-service "
                f"{role or 'ROLE'}` again, with {what} naming the key file in the "
                "configuration, then sudo systemctl daemon-reload and restart")
    return (f"[security] {what}: {p}: no such file (make a pair with: sensorwire keygen NAME "
            f"--dir {p.parent})")


def _unreadable(p: Path, what: str, role: str, is_secret: bool) -> str:
    uid = os.geteuid()
    try:
        import pwd

        who = f"user {pwd.getpwuid(uid).pw_name} (uid {uid})"
    except (ImportError, KeyError):
        who = f"uid {uid}"
    head = f"[security] {what}: {p}: permission denied: {who} may not read it"
    if not is_secret:
        return (f"{head}. A public key is no secret: let everyone read it and search its "
                f"folders: sudo chmod 644 {p}; sudo chmod 755 {p.parent}")
    return (f"{head}. A secret key stays root's (mode 0600); as a service, let systemd hand it "
            f"over: {_service_advice(p, what, role)}. By hand, run the command as the key's "
            "owner (sudo)")
