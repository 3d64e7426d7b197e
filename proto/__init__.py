"""The sensorwire wire protocol: schema, generated code and message framing.

See ``proto/README.md`` (installed beside this file) for the specification.
``Frame``, ``Heartbeat`` and ``Sample`` are the generated protobuf classes,
imported on first use: an agent sends without protobuf and never pays for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sensorwire.proto.v1.telemetry_pb2 import Frame, Heartbeat, Sample

__all__ = ["Frame", "Heartbeat", "Sample"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from sensorwire.proto.v1 import telemetry_pb2

        return getattr(telemetry_pb2, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
