"""Alerting: rules over live telemetry, delivered to notifiers.

The pieces, in the order data flows through them:

- :mod:`.rules` — the ``[[alerts]]`` tables of collector.toml, validated at start;
  :mod:`.patterns` matches their ``match`` topic patterns.
- :mod:`.engine` — one state machine per alert instance (rule, site, device,
  sensor, metric): ok → pending → firing → resolved.  Pure: time is passed in,
  it never reads a clock, never does I/O.
- :mod:`.store` — alert state and history in SQLite, beside the samples.
- :mod:`.notifiers` — the ``[[notifiers]]`` kinds (log, webhook, exec, publish, email)
  and :mod:`.delivery`, the host that runs each notifier in a thread of its own
  behind a bounded queue, with retries and backoff.
- :mod:`.sink` — the collector sink that joins them; :mod:`.replay` runs
  stored samples through the rules for ``sensorwire alerts test``;
  :mod:`.listing` prints stored alerts for ``sensorwire alerts``.
"""
