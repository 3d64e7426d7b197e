"""``sensorwire install-service agent|proxy|collector``: the unit, a default config, the commands.

Writes ``/etc/systemd/system/sensorwire-<role>.service`` with ``ExecStart``
pointing at the ``sensorwire`` of the running installation (the venv's
``bin/`` beside ``sys.executable``), installs the default configuration
(``sensorwire/defaults/<role>.toml``) where none exists yet, and prints the
``systemctl`` commands that enable and start it; it runs none of them.

``--dry-run`` writes nothing and prints exactly the unit file to standard
output, everything else to standard error, so that
``sensorwire install-service agent --dry-run > x.service`` is the unit.
``--root DIR`` writes under ``DIR`` as if it were ``/`` (for tests and image
builds); the paths inside the unit stay the real ones.

Run again, it writes the unit anew (the configuration is kept) and lists the
lines of the unit it replaces that change: ``--user`` and ``--config`` are not
remembered from the first run, and an edit of the unit itself (rather than a
``systemctl edit`` drop-in) is lost.  Files are replaced whole (written beside,
then renamed), so a link where the unit goes is replaced, not written through;
a masked unit (a link to ``/dev/null``) is refused until it is unmasked.

CURVE: the service's user may not read a secret key that is root's (mode
0600).  When the configuration has ``[security] mode = "curve"``, the unit
gets ``LoadCredential=NAME:PATH`` for its ``secret_key`` (read with
``${CREDENTIALS_DIRECTORY}`` unset, so ``"${CREDENTIALS_DIRECTORY:-DIR}/NAME"``
gives ``DIR/NAME``): systemd reads the file at start and hands it over in
``$CREDENTIALS_DIRECTORY/NAME``.  When the configuration names the file
directly, the service could not read it: what to write instead is printed.
Run it again after turning CURVE on or changing the key.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shlex
import shutil
import stat
import sys
from importlib import resources
from pathlib import Path
from typing import TextIO

from sensorwire import units
from sensorwire.configload import ConfigError, expand_env, read_toml


class InstallError(Exception):
    """Installing failed; the message says what to do."""


def default_config_text(role: str) -> str:
    return (resources.files("sensorwire") / "defaults" / f"{role}.toml").read_text(encoding="utf-8")


def installed_executable() -> str:
    """The ``sensorwire`` script of this installation."""
    beside = Path(sys.executable).parent / "sensorwire"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside.absolute())
    found = shutil.which("sensorwire")
    if found:
        return str(Path(found).absolute())
    raise InstallError(f"cannot find the sensorwire command (looked in {beside.parent} and on "
                       "PATH); install sensorwire with pip first")


def _under(root: str | None, path: str) -> Path:
    return Path(root) / path.lstrip("/") if root else Path(path)


def run(role: str, user: str | None = None, config: str | None = None, dry_run: bool = False,
        root: str | None = None, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    config = str(Path(config).absolute()) if config else units.default_config(role)
    exe = installed_executable()
    unit_path = _under(root, f"{units.UNIT_DIR}/{units.unit_name(role)}")
    config_path = _under(root, config)
    info = err if dry_run else out
    would = "would " if dry_run else ""
    notes: list[str] = []
    credentials = _credentials(role, config_path, root, notes) if config_path.exists() else []
    if config_path.exists():
        notes += _read_only(role, config_path)
    try:
        unit = units.render(role, exe, config, user, credentials)
    except ValueError as exc:
        raise InstallError(str(exc)) from None

    if unit_path.is_symlink() and os.readlink(unit_path) == "/dev/null":
        name = units.unit_name(role)
        raise InstallError(f"{name} is masked ({unit_path} is a link to /dev/null); unmask "
                           f"it first: sudo systemctl unmask {name}")
    changed = _changes(unit_path, unit)
    if dry_run:
        out.write(unit)
        out.flush()
    else:
        _write(unit_path, unit)
    if changed:
        print(f"{would}write {unit_path}, replacing one that differs in these lines (to keep "
              "one, give the same --user and --config as when it was written):", file=info)
        print("\n".join(changed), file=info)
    else:
        print(f"{would}write {unit_path}", file=info)

    if config_path.exists():
        print(f"{would}keep the configuration {config_path} (it exists)", file=info)
        _check(config_path, role, info)
        if user is None and _hidden_from_others(config_path, root):
            print(f"warning: the service may not read {config_path}: its user is a dynamic "
                  "one (neither root nor the owner), so the file must be readable by others "
                  f"and its folders open to them: sudo chmod o+r {shlex.quote(config)}",
                  file=info)
    else:
        if not dry_run:
            _write(config_path, default_config_text(role))
        print(f"{would}install the default configuration at {config_path}; edit it, then check "
              f"it with: {shlex.quote(exe)} check-config {shlex.quote(config)}", file=info)

    if user is not None and root is None and not _user_exists(user):
        notes.append(f"warning: there is no user {user!r} here: the service will not start "
                     "(systemd: status=217/USER); create it (sudo adduser --system --group "
                     f"{shlex.quote(user)}), or leave out --user for a user systemd makes")
    for note in notes + _unreachable(exe, config):
        print(note, file=info)

    name = units.unit_name(role)
    print("\nthen:" if dry_run else "\nnow:", file=info)
    # a running service keeps the unit it was started with: enable --now would not change it
    start = ([f"systemctl enable {name}", f"systemctl restart {name}"] if changed
             else [f"systemctl enable --now {name}"])
    for cmd in ("systemctl daemon-reload", *start, f"systemctl status {name}",
                f"journalctl -u {name} -f"):
        print(f"  sudo {cmd}", file=info)
    return 0


# what the unit's sandbox hides from the service, and the setting that does
_HIDDEN = ((("/home", "/root", "/run/user"), "ProtectHome=yes hides /home, /root and /run/user"),
           (("/tmp", "/var/tmp"), "PrivateTmp=yes gives it a /tmp and /var/tmp of its own"))


def _hidden(path: str) -> str | None:
    for tops, why in _HIDDEN:
        if any(path == top or path.startswith(top + "/") for top in tops):
            return why
    return None


def _user_exists(user: str) -> bool:
    try:
        pwd.getpwnam(user)
    except KeyError:
        return user.isdigit()  # a number: systemd takes it as the user id
    return True


def _unreachable(exe: str, config: str) -> list[str]:
    """Warnings for the paths the service needs that its unit hides: the ``sensorwire``
    script, the Python it runs (a venv made with pyenv's Python links to /root or /home)
    and the configuration. systemd would fail the start with status=203/EXEC or exit 2."""
    notes = []
    programs = (exe, os.path.realpath(exe), os.path.realpath(sys.executable))
    for path in dict.fromkeys(programs):
        if why := _hidden(path):
            notes.append(f"warning: the service cannot run {path}: {why}; install sensorwire in "
                         "a venv under /opt made with the system's python3 (docs/install.md)")
    if why := _hidden(config):
        notes.append(f"warning: the service cannot read {config}: {why}; keep the "
                     "configuration under /etc/sensorwire")
    return notes


# what a role writes, by key: the unit leaves it only its state directory (ProtectSystem=strict)
_WRITES = {"agent": (("spool", "dir"),),
           "collector": (("storage", "path"), ("storage", "spool_dir"))}


def _read_only(role: str, config_path: Path) -> list[str]:
    """Warnings for the paths the configuration has the service write where it cannot: the
    unit makes all but ``/var/lib/sensorwire-<role>`` read-only, and /tmp its own (emptied at
    every start). Relative paths are relative to that directory (``WorkingDirectory=``)."""
    try:
        raw = read_toml(config_path)
    except ConfigError:
        return []
    state = f"/var/lib/sensorwire-{role}"
    notes = []
    for table, key in _WRITES.get(role, ()):
        section = raw.get(table)
        value = section.get(key) if isinstance(section, dict) else None
        if key == "path" and isinstance(section, dict) and section.get("kind", "sqlite") != "sqlite":
            continue  # a SQLite file's path, unused by the other kinds
        if not isinstance(value, str) or not value.startswith(("/", "~")):
            continue
        path = os.path.normpath(value)
        if path != state and not path.startswith(state + "/"):
            notes.append(f"warning: [{table}] {key} = {value!r} in {config_path}: the service "
                         f"may write only under {state} (ProtectSystem=strict, PrivateTmp=yes); "
                         "give a path relative to it, or none")
    return notes


def _changes(unit_path: Path, unit: str) -> list[str]:
    """The settings (not comments) an existing unit at ``unit_path`` has and ``unit`` has not
    (``  - ``), then those ``unit`` adds (``  + ``); none when there is no unit there yet."""
    try:
        old = unit_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return []

    def settings(text: str) -> list[str]:
        return [line for line in text.splitlines() if line and not line.startswith("#")]

    before, after = settings(old), settings(unit)
    return ([f"  - {line}" for line in before if line not in after]
            + [f"  + {line}" for line in after if line not in before])


def _mkdirs(folder: Path) -> None:
    """``folder`` and its missing parents, each 0755 whatever the umask: a dynamic user reads
    the configuration in them (systemd leaves ``ConfigurationDirectory=``'s mode alone)."""
    missing: list[Path] = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for made in reversed(missing):
        made.mkdir(exist_ok=True)
        made.chmod(0o755)


def _write(path: Path, text: str) -> None:
    """``path`` replaced whole (a file beside it, renamed): a link there is replaced, never
    followed, and an interrupted write leaves the old file."""
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        _mkdirs(path.parent)
        temp.write_text(text, encoding="utf-8")
        temp.chmod(0o644)
        os.replace(temp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            temp.unlink()
        hint = " (run it with sudo)" if isinstance(exc, PermissionError) else ""
        raise InstallError(f"cannot write {path}: {exc.strerror or exc}{hint}") from None


def _hidden_from_others(path: Path, root: str | None) -> bool:
    """May a user who is neither root nor the owner not read ``path`` (up to ``root``)?"""
    top = Path(root or "/").absolute()
    try:
        if not path.stat().st_mode & stat.S_IROTH:
            return True
        for folder in path.absolute().parents:
            if not folder.stat().st_mode & stat.S_IXOTH:
                return True
            if folder == top:
                break
    except OSError:
        return False  # _check has said what is wrong
    return False


def _check(path: Path, role: str, info: TextIO) -> None:
    from sensorwire import checkconfig

    try:
        checkconfig.load_any(path, role)
    except ConfigError as exc:
        print(f"warning: the configuration is not valid, the service will not start: {exc}",
              file=info)


def _credentials(role: str, config_path: Path, root: str | None,
                 notes: list[str]) -> list[tuple[str, str]]:
    """The ``LoadCredential=`` of the configuration's CURVE secret key; ``notes`` for the user."""
    try:
        raw = read_toml(config_path)
    except ConfigError:
        return []  # _check says what is wrong with it
    sec = raw.get("security")
    if not isinstance(sec, dict) or sec.get("mode") != "curve":
        return []
    setting = sec.get("secret_key")
    if not isinstance(setting, str) or not setting:
        return []
    here = {k: v for k, v in os.environ.items() if k != "CREDENTIALS_DIRECTORY"}
    try:
        path = expand_env(setting, "security.secret_key", here)
    except ConfigError as exc:
        notes.append(f"warning: cannot tell which secret key the service needs: {exc}")
        return []
    if not path.startswith("/"):
        notes.append(f"warning: [security] secret_key = {setting!r} in {config_path}: give an "
                     "absolute path (the service starts in its state directory), then run this "
                     "again so that systemd hands the key over")
        return []
    path = os.path.normpath(path)
    name = os.path.basename(path)
    if not name or ":" in name:
        notes.append(f"warning: [security] secret_key: {path}: not a file name systemd can "
                     "hand over (none, or with ':'); rename the file")
        return []
    notes.append(f"the unit has systemd hand the secret key {path} to the service "
                 f"(LoadCredential={name}:{path})")
    if not _under(root, path).is_file():
        notes.append(f"warning: {path} does not exist: the service will not start until it "
                     "does (systemd: status=243/CREDENTIALS)")
    inside = f"/run/credentials/{units.unit_name(role)}"
    try:
        as_service = expand_env(setting, "", dict(here, CREDENTIALS_DIRECTORY=inside))
    except ConfigError:
        as_service = ""
    if os.path.normpath(as_service) != f"{inside}/{name}":
        notes.append(f"warning: the service may not read {path} itself; in {config_path} write\n"
                     f'  secret_key = "${{CREDENTIALS_DIRECTORY:-{os.path.dirname(path)}}}/'
                     f'{name}"\n'
                     "(where systemd puts it; the file itself when run by hand)")
    return [(name, path)]
