"""sensorwire: brokerless IoT telemetry over ZeroMQ.

The ``sensorwire`` package holds what every role needs and that is not wire
protocol: name rules, time formats, configuration loading, logging and process
lifecycle. The roles live in ``sensorwire.agent``, ``sensorwire.collector`` and
``sensorwire.proxy``; the wire protocol in ``sensorwire.proto``.
"""

__version__ = "0.1.0"
