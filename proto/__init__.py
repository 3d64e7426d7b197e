"""The sensorwire wire protocol: schema, generated code and message framing.

See ``proto/README.md`` (installed beside this file) for the specification.
"""

from sensorwire.proto.v1.telemetry_pb2 import Frame, Heartbeat, Sample

__all__ = ["Frame", "Heartbeat", "Sample"]
