"""Checks of the ``[storage]`` keys that belong to ``kind = "postgres"``.

Kept beside the PostgreSQL store so that ``config.py`` only grows by the keys
themselves.  Raises ``ValueError("key: what is wrong")`` as every config check
does; the loader joins the key onto ``storage.``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote

import msgspec

if TYPE_CHECKING:
    from sensorwire.collector.config import StorageConfig

# a plain, unquoted PostgreSQL identifier: what `schema` may be
_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_POSTGRES_ONLY = ("dsn", "schema", "retention_days", "compress_after_days", "spool_dir")
_POSTGRES_ONLY_WITH_DEFAULTS = ("timescaledb", "buffer_max", "spool_max_mb")  # set: not default

# the connection keywords of libpq (17, with older and newer names): a ``key=value`` DSN starts
# with one of them (libpq itself refuses any other key)
LIBPQ_KEYWORDS = frozenset((
    "host", "hostaddr", "port", "dbname", "user", "password", "passfile", "require_auth",
    "channel_binding", "connect_timeout", "client_encoding", "options", "application_name",
    "fallback_application_name", "keepalives", "keepalives_idle", "keepalives_interval",
    "keepalives_count", "tcp_user_timeout", "replication", "gssencmode", "sslmode", "requiressl",
    "sslnegotiation", "sslcompression", "sslcert", "sslkey", "sslkeylogfile", "sslpassword",
    "sslcertmode", "sslrootcert", "sslcrl", "sslcrldir", "sslsni", "requirepeer",
    "ssl_min_protocol_version", "ssl_max_protocol_version", "min_protocol_version",
    "max_protocol_version", "krbsrvname", "gsslib", "gssdelegation", "service",
    "target_session_attrs", "load_balance_hosts", "scram_client_key", "scram_server_key",
    "oauth_issuer", "oauth_client_id", "oauth_client_secret", "oauth_scope",
))
# a URI's scheme, any case (RFC 3986: schemes are case-insensitive; libpq takes lower case only)
_URI_SCHEME = re.compile(r"^\s*(postgres(?:ql)?)://", re.IGNORECASE)
_KV_PASSWORD = re.compile(r"password\s*=\s*('(?:[^'\\]|\\.)*'?|\S+)")
_QUOTED = re.compile(r'"([^"]*)"|\'([^\']*)\'')
UNPARSABLE = ("the DSN cannot be parsed: check its syntax, e.g. postgresql://USER@HOST:PORT/DBNAME "
              "or host=HOST dbname=DBNAME; in a URI a password with % @ / : or [ must be "
              "percent-encoded (%25 %40 %2F %3A %5B) (libpq's message is not shown: it may contain "
              "the password)")


def is_uri(text: str) -> bool:
    """Does ``text`` start like a PostgreSQL URI (``postgresql://``, ``postgres://``, any case)?"""
    return _URI_SCHEME.match(text) is not None


def looks_like_dsn(text: str) -> bool:
    """A PostgreSQL URI, or a libpq ``key=value`` string whose first key is a libpq keyword."""
    text = text.strip()
    if is_uri(text):
        return True
    return "=" in text and text.split("=", 1)[0].strip() in LIBPQ_KEYWORDS


def normalise_dsn(dsn: str) -> str:
    """``dsn`` with a URI's scheme in lower case, as libpq needs it."""
    m = _URI_SCHEME.match(dsn)
    if m is None:
        return dsn
    return m.group(1).lower() + "://" + dsn[m.end():]


def parse_dsn(dsn: str) -> dict[str, str]:
    """The parameters of ``dsn`` (libpq's parser, through psycopg).

    Raises ``ValueError(UNPARSABLE)``: libpq's own message quotes the DSN, password and
    all (``invalid percent-encoded token: "Top%zzSecret2"``), so it is never passed on.
    """
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    try:
        params = conninfo_to_dict(normalise_dsn(dsn))
    except psycopg.Error:
        raise ValueError(UNPARSABLE) from None
    return {k: str(v) for k, v in params.items()}


def dsn_secrets(dsn: str) -> set[str]:
    """Every text that may be the password of ``dsn``, parsable or not: the parsed password,
    and from the raw text the part of a URI between ':' and '@' (as libpq splits it, and up
    to the last '@') and the value of a ``password=`` key, each as written and decoded."""
    found: set[str] = set()
    try:
        password = parse_dsn(dsn).get("password")
    except (ValueError, ImportError):
        password = None
    if password:
        found.add(password)
    m = _URI_SCHEME.match(dsn)
    if m is not None:
        rest = dsn[m.end():]
        ends = [i for i in (rest.find("/"), rest.find("?")) if i >= 0]
        libpq_part = rest[:min(ends)] if ends else rest
        for userinfo in (libpq_part.rpartition("@")[0], rest.rpartition("@")[0]):
            if ":" in userinfo:
                found.add(userinfo.split(":", 1)[1])
    for value in _KV_PASSWORD.findall(dsn):
        found.add(value)
        found.add(value.strip("'"))
        found.add(value.strip("'").replace("\\'", "'").replace("\\\\", "\\"))
    found |= {unquote(s) for s in found}
    return {s for s in found if s}


def _forms(text: str) -> set[str]:
    stripped = text.strip("'")
    return {text, unquote(text), stripped, stripped.replace("\\'", "'").replace("\\\\", "\\")}


def spilled(dsn: str) -> set[str]:
    """The texts of :func:`dsn_secrets` that are not the password libpq parsed (in any of its
    written forms): a password it split elsewhere (an unencoded '@' spills part of it into
    the host or port), or every one when ``dsn`` is unparsable; usually none."""
    try:
        password = parse_dsn(dsn).get("password")
    except (ValueError, ImportError):
        password = None
    return {s for s in dsn_secrets(dsn) if password is None or password not in _forms(s)}


def reveals(value: str, secrets: set[str]) -> bool:
    """Does ``value`` show part of one of ``secrets``: three characters in a row of one, or
    (shorter) a whole one, or is it a piece of one?"""
    if not value:
        return False
    for s in secrets:
        if value in s or (len(s) < 3 and s in value) or any(
                s[i:i + 3] in value for i in range(len(s) - 2)):
            return True
    return False


def scrub(text: str, dsn: str) -> str:
    """``text`` (an error message) with every possible password of ``dsn`` replaced by ``***``,
    and, where libpq split the password elsewhere (:func:`spilled`), every quoted value in it
    that shows part of one (libpq quotes the host or port it cannot use)."""
    for secret in sorted(dsn_secrets(dsn), key=len, reverse=True):
        if len(secret) >= 4:
            text = text.replace(secret, "***")
        else:  # a short one only where it stands alone, not inside every word
            text = re.sub(rf"(?<![\w]){re.escape(secret)}(?![\w])", "***", text)
    suspects = spilled(dsn)
    if not suspects:
        return text

    def quoted(m: re.Match[str]) -> str:
        value = m.group(1) if m.group(1) is not None else m.group(2)
        return '"***"' if reveals(value, suspects) else m.group(0)

    return _QUOTED.sub(quoted, text)


def check_storage(s: StorageConfig) -> None:
    if s.kind != "postgres":
        for key in _POSTGRES_ONLY:
            if key == "retention_days" and s.kind == "sqlite":
                continue  # the SQLite sink deletes old frames itself
            if getattr(s, key) is not None:
                raise ValueError(f'{key}: only used with kind = "postgres" (kind is "{s.kind}")')
        defaults = {f.name: f.default for f in msgspec.structs.fields(s)}
        for key in _POSTGRES_ONLY_WITH_DEFAULTS:
            if getattr(s, key) != defaults[key]:
                raise ValueError(f'{key}: only used with kind = "postgres" (kind is "{s.kind}")')
        return
    if not s.dsn or not s.dsn.strip():
        raise ValueError('dsn: required with kind = "postgres", e.g. '
                         '"postgresql://sensorwire@db.example/telemetry" (the password may come '
                         "from $PGPASSWORD or a passfile, as libpq reads them)")
    try:
        parse_dsn(s.dsn)  # after ${VAR} expansion: the loader expands before it converts
    except ImportError:
        pass  # no psycopg: the collector says at start that kind = "postgres" needs it
    except ValueError as exc:
        raise ValueError(f"dsn: {exc}") from None
    if s.schema is not None and not _IDENT.match(s.schema):
        raise ValueError(f"schema: {s.schema!r} is not a plain PostgreSQL name (lower-case letters, "
                         "digits and _, not starting with a digit, at most 63)")
    if (s.retention_days is not None or s.compress_after_days is not None) and s.timescaledb == "off":
        raise ValueError("timescaledb: retention_days and compress_after_days are TimescaleDB "
                         'policies; they need timescaledb = "auto" or "on"')
    if s.spool_dir is not None and not s.spool_dir.strip():
        raise ValueError("spool_dir: give a folder, or leave the key out for no disk spool")


def spool_folder(s: StorageConfig) -> Path | None:
    """Where the PostgreSQL sink spools frames while the database is down: ``spool_dir``;
    without it, for a collector that systemd started as a service (``$INVOCATION_ID`` and
    ``$STATE_DIRECTORY`` set: one state folder per unit), ``$STATE_DIRECTORY/pgspool``;
    otherwise none.  Not a folder of the user's own by default: two collectors started by
    hand on one host would share it, and its lock would stop the second."""
    if s.spool_dir is not None:
        return Path(s.spool_dir).expanduser()
    state = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    if state and os.environ.get("INVOCATION_ID"):
        return Path(state) / "pgspool"
    return None
