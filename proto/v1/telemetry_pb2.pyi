from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Sample(_message.Message):
    __slots__ = ("metric", "value", "unit")
    METRIC_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    metric: str
    value: float
    unit: str
    def __init__(self, metric: _Optional[str] = ..., value: _Optional[float] = ..., unit: _Optional[str] = ...) -> None: ...

class SeqRange(_message.Message):
    __slots__ = ("boot_id", "first", "last")
    BOOT_ID_FIELD_NUMBER: _ClassVar[int]
    FIRST_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    boot_id: int
    first: int
    last: int
    def __init__(self, boot_id: _Optional[int] = ..., first: _Optional[int] = ..., last: _Optional[int] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("agent_version", "uptime_s", "interval_s", "last_seq", "stopping", "counters", "clock_synced", "unavailable")
    class CountersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    UPTIME_S_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    STOPPING_FIELD_NUMBER: _ClassVar[int]
    COUNTERS_FIELD_NUMBER: _ClassVar[int]
    CLOCK_SYNCED_FIELD_NUMBER: _ClassVar[int]
    UNAVAILABLE_FIELD_NUMBER: _ClassVar[int]
    agent_version: str
    uptime_s: float
    interval_s: float
    last_seq: int
    stopping: bool
    counters: _containers.ScalarMap[str, int]
    clock_synced: bool
    unavailable: _containers.RepeatedCompositeFieldContainer[SeqRange]
    def __init__(self, agent_version: _Optional[str] = ..., uptime_s: _Optional[float] = ..., interval_s: _Optional[float] = ..., last_seq: _Optional[int] = ..., stopping: _Optional[bool] = ..., counters: _Optional[_Mapping[str, int]] = ..., clock_synced: _Optional[bool] = ..., unavailable: _Optional[_Iterable[_Union[SeqRange, _Mapping]]] = ...) -> None: ...

class Frame(_message.Message):
    __slots__ = ("site", "device_id", "boot_id", "seq", "time_unix_nano", "sensor", "samples", "heartbeat", "flags")
    SITE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    BOOT_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TIME_UNIX_NANO_FIELD_NUMBER: _ClassVar[int]
    SENSOR_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    site: str
    device_id: str
    boot_id: int
    seq: int
    time_unix_nano: int
    sensor: str
    samples: _containers.RepeatedCompositeFieldContainer[Sample]
    heartbeat: Heartbeat
    flags: int
    def __init__(self, site: _Optional[str] = ..., device_id: _Optional[str] = ..., boot_id: _Optional[int] = ..., seq: _Optional[int] = ..., time_unix_nano: _Optional[int] = ..., sensor: _Optional[str] = ..., samples: _Optional[_Iterable[_Union[Sample, _Mapping]]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., flags: _Optional[int] = ...) -> None: ...

class RepairRequest(_message.Message):
    __slots__ = ("device_id", "ranges")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    RANGES_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    ranges: _containers.RepeatedCompositeFieldContainer[SeqRange]
    def __init__(self, device_id: _Optional[str] = ..., ranges: _Optional[_Iterable[_Union[SeqRange, _Mapping]]] = ...) -> None: ...
