"""The sensorwire collector: subscribes to frames and hands them to sinks."""
