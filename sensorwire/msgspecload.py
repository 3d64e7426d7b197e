"""msgspec, imported without typing_extensions.

msgspec's helpers (``msgspec._utils``) take ``get_type_hints``, ``Required``
and ``NotRequired`` from typing_extensions when it is installed and from
:mod:`typing` otherwise; on Python 3.11 and later both give the same answers
for every type sensorwire's configuration uses.  typing_extensions itself
imports inspect, ast and dis: about 1 MiB of RSS in an agent that never
needs them (it is often installed, by other packages or by the
distribution).  So the first import of msgspec happens here, with
typing_extensions hidden for that one import and put back straight after:
other code can import it as usual.

:mod:`sensorwire.configload`, the first module of every role to need
msgspec, imports it from here::

    from sensorwire.msgspecload import msgspec
"""

from __future__ import annotations

import sys

_HIDE = "msgspec" not in sys.modules and "typing_extensions" not in sys.modules
if _HIDE:
    sys.modules["typing_extensions"] = None  # type: ignore[assignment]  # import -> ImportError
try:
    import msgspec as msgspec  # noqa: E402 - after hiding typing_extensions, on purpose
finally:
    if _HIDE:
        del sys.modules["typing_extensions"]

__all__ = ["msgspec"]
