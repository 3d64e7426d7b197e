"""The systemd unit of each role, as text.

``systemd/sensorwire-<role>.service`` in the repository is :func:`render`
with the defaults (a venv in ``/opt/sensorwire``, configuration in
``/etc/sensorwire``); ``sensorwire install-service`` renders the same unit
with the path of the ``sensorwire`` actually installed.  A test keeps the two
equal.

What every unit does:

- ``Type=notify``: systemd waits for ``READY=1`` (sockets bound or connected,
  sinks open); ``WatchdogSec=30s``: the main loop pings every 15 s, a hung loop
  is killed (SIGABRT, on which ``PYTHONFAULTHANDLER=1`` has Python write every
  thread's stack to the journal) and restarted; ``ExecReload`` sends SIGHUP (``systemctl reload``);
- ``Restart=on-failure`` after 5 s, except after exit status 2 (a bad
  configuration: restarting would not fix it);
- the journal: log records carry their own priority (``<3>``, :mod:`sensorwire.logs`);
  ``SyslogLevel=err`` is for the rest, what is printed when a configuration does not
  load or a traceback, so that ``journalctl -p warning`` shows why a service stopped;
- hardening: a dynamic user (or ``--user NAME``), a read-only system, no
  home, a private /tmp, no privileges, no capabilities, system calls limited
  to ``@system-service`` (with ``sched_setscheduler``, below), sockets limited to
  AF_UNIX/AF_INET/AF_INET6 and AF_NETLINK (below);
  writable only ``StateDirectory`` (``/var/lib/sensorwire-<role>``, also the
  working directory, so a relative ``path = "telemetry.db"`` lands there);
  configuration read from ``ConfigurationDirectory`` (``/etc/sensorwire``);
- the agent also gets the ``dialout`` group and the serial devices
  (``/dev/ttyUSB*``, ``ttyACM*``, ``ttyAMA*``, ``ttyS*``); proxy and
  collector get no devices at all and a user namespace of their own.  Every
  role sees only its own processes in /proc, but all of /proc's other files
  (the ``system`` sensor and the ``process_*`` metrics read them);
- the clock: proxy and collector have ``ProtectClock=yes``.  The agent has
  not, because that also forbids *reading* the kernel's NTP state
  (``adjtimex`` with no mode bits set), which the agent needs on a device
  without systemd-timesyncd to tell whether its clock is synchronised
  (:mod:`sensorwire.agent.clock`).  It is allowed ``adjtimex`` and
  ``clock_adjtime`` (glibc's ``adjtimex()`` is the latter) and no other clock
  call; changing the clock needs ``CAP_SYS_TIME``, which no unit can
  ever hold (empty ``CapabilityBoundingSet=``, ``NoNewPrivileges=yes``), and
  ``DevicePolicy=closed`` keeps ``/dev/rtc`` out, so the clock stays as
  protected as ``ProtectClock=yes`` would keep it;
- libzmq aborts the process (an assertion) where these rules refuse it something:
  each of its threads calls ``pthread_setschedparam`` with the policy it already has
  (``sched_setscheduler``, which ``@resources`` holds), and binding to an address
  or interface name lists the interfaces with ``getifaddrs`` (a netlink socket).  Both
  are allowed; ``RestrictRealtime=yes`` and the empty capability set still keep
  real-time scheduling out.  ``tests/test_install_sandbox.py`` starts each role under
  its unit's seccomp filter;
- CURVE secret keys: the service's user may not read a key that is root's
  with mode 0600, and should not.  systemd reads it at start and hands it
  over in ``$CREDENTIALS_DIRECTORY`` (``LoadCredential=NAME:PATH``, one per
  key in ``credentials``; ``sensorwire install-service`` finds them in the
  configuration).  Public keys and allow-list folders are read where they
  are: ``ProtectSystem=strict`` leaves ``/etc`` readable and
  ``PrivateUsers=yes`` leaves a file's permissions for others in force.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

ROLES = ("agent", "proxy", "collector")
DEFAULT_EXECUTABLE = "/opt/sensorwire/bin/sensorwire"
CONFIG_DIR = "/etc/sensorwire"
UNIT_DIR = "/etc/systemd/system"

_DESCRIPTION = {
    "agent": "sensorwire agent: reads sensors and publishes their frames",
    "proxy": "sensorwire proxy: joins agents to collectors",
    "collector": "sensorwire collector: subscribes to frames and stores them",
}
_STOP_TIMEOUT = {"agent": "15s", "proxy": "10s", "collector": "30s"}

_HARDENING = """\
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateMounts=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
{protect_clock}ProtectHostname=yes
ProtectProc=invisible
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
MemoryDenyWriteExecute=yes
RemoveIPC=yes
UMask=0077
CapabilityBoundingSet=
AmbientCapabilities=
# AF_NETLINK: to bind to an address or an interface's name, libzmq lists the interfaces
# (getifaddrs), and aborts when it cannot
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged @resources
# libzmq's threads set their scheduling policy (the one they have) and abort when that
# fails; real-time policies stay refused (RestrictRealtime=yes, no capabilities)
SystemCallFilter=sched_setscheduler
SystemCallErrorNumber=EPERM
"""

_AGENT_CLOCK = """\
# not ProtectClock=yes: it refuses even reading the clock's NTP state, which the agent
# does with adjtimex() (clock_adjtime in glibc); setting the clock needs CAP_SYS_TIME,
# which this unit never has
SystemCallFilter=adjtimex clock_adjtime clock_adjtime64
"""

_AGENT_DEVICES = """\
# serial sensors: the dialout group and the serial devices, nothing else
SupplementaryGroups=dialout
DevicePolicy=closed
DeviceAllow=char-ttyUSB rw
DeviceAllow=char-ttyACM rw
DeviceAllow=char-ttyAMA rw
DeviceAllow=char-ttyS rw
"""

_SERVER_DEVICES = """\
PrivateDevices=yes
PrivateUsers=yes
# not ProcSubset=pid: process_* metrics need /proc/stat (the boot time)
"""


def _hardening(role: str) -> str:
    if role == "agent":
        return _HARDENING.format(protect_clock="") + _AGENT_CLOCK
    return _HARDENING.format(protect_clock="ProtectClock=yes\n")


def unit_name(role: str) -> str:
    return f"sensorwire-{role}.service"


def default_config(role: str) -> str:
    return f"{CONFIG_DIR}/{role}.toml"


def _quote(arg: str) -> str:
    """An ExecStart= argument: quoted when it holds spaces or quotes; % and $ doubled (else
    systemd expands them: specifiers, environment variables)."""
    if any(ord(c) < 32 or ord(c) == 127 for c in arg):
        raise ValueError(f"{arg!r}: a control character cannot be written into a unit")
    arg = arg.replace("%", "%%").replace("$", "$$")
    if re.fullmatch(r"[A-Za-z0-9_@%+=:,./-]+", arg):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _load_credential(name: str, path: str) -> str:
    """A ``LoadCredential=`` line; ``name`` is a file name, ``path`` absolute and normal."""
    if not name or "/" in name or ":" in name or name in (".", ".."):
        raise ValueError(f"{name!r} cannot name a credential (a file name without ':')")
    if not path.startswith("/") or os.path.normpath(path) != path:
        raise ValueError(f"{path!r}: a credential is read from an absolute, normal path")
    return f"LoadCredential={name.replace('%', '%%')}:{path.replace('%', '%%')}\n"


# a descriptor per connected agent or collector: systemd's soft limit of 1024 would refuse
# connections past about a thousand (libzmq then retries accept() in a loop)
_FILES = {role: "LimitNOFILE=65536\n" for role in ("proxy", "collector")}


def render(role: str, executable: str = DEFAULT_EXECUTABLE, config: str | None = None,
           user: str | None = None, credentials: Sequence[tuple[str, str]] = ()) -> str:
    """The unit file for ``role``; ``user`` None means ``DynamicUser=yes``.

    ``credentials``: ``(name, path)`` of each file systemd hands over in
    ``$CREDENTIALS_DIRECTORY/name`` (the CURVE secret key).
    """
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; one of {', '.join(ROLES)}")
    loads = "".join(_load_credential(name, path) for name, path in credentials)
    config = config or default_config(role)
    state = f"sensorwire-{role}"
    identity = f"User={user}\n" if user else "DynamicUser=yes\n"
    devices = _AGENT_DEVICES if role == "agent" else _SERVER_DEVICES
    exec_start = " ".join(_quote(a) for a in (executable, role, "-c", config))
    return f"""\
# {_DESCRIPTION[role]}.
# Written by `sensorwire install-service {role}`; check the configuration with
#   {_quote(executable)} check-config {_quote(config)}
# and apply a change with `systemctl reload {unit_name(role)}` (SIGHUP).
[Unit]
Description={_DESCRIPTION[role]}
After=network-online.target
Wants=network-online.target

[Service]
Type=notify
ExecStart={exec_start}
ExecReload=/bin/kill -HUP $MAINPID
WatchdogSec=30s
# a hung loop is killed with SIGABRT: Python then writes where each thread was (the journal)
Environment=PYTHONFAULTHANDLER=1
TimeoutStopSec={_STOP_TIMEOUT[role]}
Restart=on-failure
RestartSec=5s
# exit status 2 is a bad configuration: restarting would not fix it
RestartPreventExitStatus=2
# log records carry their own level (<N>); anything else printed (why a configuration does
# not load, a traceback) is an error, or `journalctl -p warning` would not show it
SyslogLevel=err
{_FILES.get(role, "")}{identity}StateDirectory={state}
WorkingDirectory=%S/{state}
ConfigurationDirectory=sensorwire
# a CURVE secret key is root's alone: systemd hands it over in $CREDENTIALS_DIRECTORY,
# for secret_key = "${{CREDENTIALS_DIRECTORY:-/etc/sensorwire/keys}}/NAME.key_secret"
# (install-service adds the LoadCredential= line for the configuration's secret_key)
{loads}{devices}{_hardening(role)}
[Install]
WantedBy=multi-user.target
"""
