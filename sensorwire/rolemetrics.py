"""The metric families of each role, read from its counters at scrape time.

One function per role turns the role object's plain counters into
:class:`~sensorwire.metrics.Family` objects; nothing here runs on a hot path.
To export a new counter, add one ``Family`` line where the role's others are
(counters end in ``_total``, units in the name: ``_bytes``, ``_seconds``).

Names, by role:

- every role: ``sensorwire_build_info``, ``sensorwire_config_reloads_total{result}``,
  ``sensorwire_config_last_reload_successful``, and the process's own
  (``process_resident_memory_bytes``, ...);
- agent: ``sensorwire_frames_sent_total``, ``sensorwire_heartbeats_sent_total``,
  ``sensorwire_bytes_sent_total``, ``sensorwire_frames_dropped_total{reason}``,
  ``sensorwire_sensor_readings_total{sensor}``, ``sensorwire_sensor_errors_total{sensor}``,
  ``sensorwire_sensor_failing{sensor}``, ``sensorwire_subscriptions``,
  ``sensorwire_last_seq``, and what the publisher counts beside
  (``sensorwire_frames_spooled_total``, ``sensorwire_spool_frames``, ...);
- proxy: ``sensorwire_frames_forwarded_total``, ``sensorwire_bytes_forwarded_total``,
  ``sensorwire_subscriptions_forwarded_total``;
- collector: ``sensorwire_frames_received_total``, ``sensorwire_bytes_received_total``,
  ``sensorwire_frames_accepted_total``, ``sensorwire_decode_errors_total{reason}``,
  per sink ``sensorwire_sink_frames_written_total``, ``sensorwire_sink_frames_dropped_total``,
  ``sensorwire_sink_queue_frames``, ``sensorwire_sink_queue_capacity_frames``,
  ``sensorwire_sink_write_duration_seconds`` (histogram), and from the metrics sink
  ``sensorwire_end_to_end_latency_seconds`` (histogram), ``sensorwire_devices_online``,
  ``sensorwire_heartbeats_received_total``,
  ``sensorwire_sensor_value{site,device,sensor,metric}`` (with ``export_values``), and from
  the alerting sink ``sensorwire_alert_instances``,
  ``sensorwire_alert_series_evicted_total{rule}``, ``sensorwire_alert_series_refused_total{rule}``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from sensorwire import __version__
from sensorwire.metrics import Family

if TYPE_CHECKING:
    from sensorwire.agent.runtime import Agent
    from sensorwire.collector.runtime import Collector
    from sensorwire.proxy import Proxy
    from sensorwire.service import Service

# Every reason the collector rejects a message for: sensorwire.proto.wire.WireError's, the
# CURVE identity check's (sensorwire.security.Refused) and the collector's own checks; exported
# at 0 from the start, so that rate() works before the first error.  A test finds every reason
# the code raises or counts and checks it is here.
DECODE_REASONS = ("no_delimiter", "bad_topic", "decode", "topic_mismatch", "bad_name",
                  "too_many_samples", "bad_heartbeat", "oversized", "multipart",
                  "too_many_devices", "rate_limited", "no_identity", "revoked_key",
                  "device_mismatch")

# The publisher's counters dict -> (name, help).  A key missing from the dict is not exported.
PUBLISHER_COUNTERS = {
    "frames_sent": ("sensorwire_frames_sent_total", "Data frames handed to ZeroMQ."),
    "heartbeats_sent": ("sensorwire_heartbeats_sent_total", "Heartbeats handed to ZeroMQ."),
    "bytes_sent": ("sensorwire_bytes_sent_total", "Bytes of messages handed to ZeroMQ."),
    "sent_unsubscribed": ("sensorwire_frames_sent_unsubscribed_total",
                          "Data frames sent while no subscriber listened for their topic."),
    "spooled": ("sensorwire_frames_spooled_total", "Data frames written to the spool."),
    "replayed": ("sensorwire_frames_replayed_total", "Spooled frames sent later."),
    "repaired": ("sensorwire_frames_repaired_total", "Frames sent again for a gap repair."),
    "unavailable": ("sensorwire_frames_unavailable_total",
                    "Frames asked for in a repair that the agent no longer had."),
}


def service_families(role: str, svc: Service) -> Iterable[Family]:
    yield Family("sensorwire_build_info", "gauge", "The sensorwire version and role; always 1.",
                 ("version", "role")).add(1, __version__, role)
    yield (Family("sensorwire_config_reloads_total", "counter",
                  "Configuration reloads (SIGHUP), by result.", ("result",))
           .add(svc.reloads_ok, "success").add(svc.reloads_failed, "failure"))
    yield Family("sensorwire_config_last_reload_successful", "gauge",
                 "1 when the last reload was applied (or none was tried), 0 when it failed."
                 ).add(1 if svc.last_reload_ok else 0)


def agent_families(agent: Agent) -> Iterable[Family]:
    pub = agent.publisher
    counters: dict[str, int] = pub.counters
    for key, (name, help_) in PUBLISHER_COUNTERS.items():
        if key in counters:
            yield Family(name, "counter", help_).add(counters[key])
    yield (Family("sensorwire_frames_dropped_total", "counter",
                  "Frames the agent dropped, by where.", ("reason",))
           .add(counters.get("dropped_hwm", 0), "send_queue_full")
           .add(agent.stream_dropped, "stream_queue_full"))
    spool: Any = getattr(pub, "spool", None)
    if spool is not None and hasattr(spool, "pending"):
        yield Family("sensorwire_spool_frames", "gauge",
                     "Frames waiting in the spool.").add(spool.pending)
    yield Family("sensorwire_subscriptions", "gauge",
                 "Subscriptions the agent's socket has seen (collectors listening)."
                 ).add(len(pub.subscriptions))
    yield Family("sensorwire_last_seq", "gauge",
                 "The seq of the last data frame built.").add(pub.seq)
    yield Family("sensorwire_agent_info", "gauge", "The agent's names and boot_id; always 1.",
                 ("site", "device", "boot_id")).add(1, pub.site, pub.device_id, str(pub.boot_id))
    readings = Family("sensorwire_sensor_readings_total", "counter",
                      "Successful readings per sensor.", ("sensor",))
    errors = Family("sensorwire_sensor_errors_total", "counter",
                    "Failed opens and reads per sensor.", ("sensor",))
    failing = Family("sensorwire_sensor_failing", "gauge",
                     "1 while a sensor's last attempt failed.", ("sensor",))
    for st in list(agent.states):
        readings.add(st.readings, st.name)
        errors.add(st.errors, st.name)
        failing.add(1 if st.failing else 0, st.name)
    yield from (readings, errors, failing)


def proxy_families(proxy: Proxy) -> Iterable[Family]:
    yield Family("sensorwire_frames_forwarded_total", "counter",
                 "Messages forwarded from agents to collectors.").add(proxy.frames)
    yield Family("sensorwire_bytes_forwarded_total", "counter",
                 "Bytes forwarded from agents to collectors.").add(proxy.bytes)
    yield Family("sensorwire_subscriptions_forwarded_total", "counter",
                 "Subscription messages forwarded from collectors to agents."
                 ).add(proxy.subscriptions)


def collector_families(collector: Collector) -> Iterable[Family]:
    yield Family("sensorwire_frames_received_total", "counter",
                 "Messages received (data frames and heartbeats, good and bad)."
                 ).add(collector.received)
    yield Family("sensorwire_bytes_received_total", "counter",
                 "Bytes of messages received.").add(getattr(collector, "bytes_received", 0))
    yield Family("sensorwire_frames_accepted_total", "counter",
                 "Messages decoded, checked and handed to the sinks.").add(collector.accepted)
    rejected = dict(collector.rejected)
    errors = Family("sensorwire_decode_errors_total", "counter",
                    "Messages rejected, by reason.", ("reason",))
    for reason in sorted(set(DECODE_REASONS) | set(rejected)):
        errors.add(rejected.get(reason, 0), reason)
    yield errors
    written = Family("sensorwire_sink_frames_written_total", "counter",
                     "Frames written by each sink.", ("sink",))
    dropped = Family("sensorwire_sink_frames_dropped_total", "counter",
                     "Frames a sink dropped (queue full, or a write given up).", ("sink",))
    depth = Family("sensorwire_sink_queue_frames", "gauge",
                   "Frames queued for each sink.", ("sink",))
    capacity = Family("sensorwire_sink_queue_capacity_frames", "gauge",
                      "The most frames a sink's queue holds.", ("sink",))
    latency = Family("sensorwire_sink_write_duration_seconds", "histogram",
                     "Time taken by each batch a sink wrote.", ("sink",))
    for r in collector.runners:
        name = r.sink.name
        written.add(r.written, name)
        dropped.add(r.dropped, name)
        depth.add(r.depth, name)
        capacity.add(r.queue_max, name)
        hist = getattr(r, "write_latency", None)
        if hist is not None:
            latency.add(hist, name)
    yield from (written, dropped, depth, capacity)
    if latency.samples:
        yield latency
    for sink in collector.sinks:
        yield from _metrics_sink_families(sink)
        yield from _alert_sink_families(sink)
    yield from _tracking_families(collector)


def _tracking_families(collector: Collector) -> Iterable[Family]:
    """Loss accounting (the same numbers as `sensorwire status`, live)."""
    t = collector.tracker.totals()
    yield Family("sensorwire_devices_known", "gauge", "Devices the collector follows.").add(t["devices"])
    yield Family("sensorwire_devices_evicted_total", "counter",
                 "Devices no longer followed to stay within [limits] max_devices."
                 ).add(t["evicted"])
    yield Family("sensorwire_frames_missing", "gauge",
                 "Frames missing from the devices' seq streams right now (gaps, not yet repaired)."
                 ).add(t["gaps"])
    yield Family("sensorwire_frames_duplicate_total", "counter",
                 "Frames received more than once and dropped before the sinks.").add(t["duplicates"])
    yield Family("sensorwire_frames_out_of_order_total", "counter",
                 "Frames that filled a gap (replays and repairs).").add(t["out_of_order"])
    yield Family("sensorwire_frames_lost_total", "counter",
                 "Frames the agents said they no longer have: lost for good.").add(t["lost"])
    yield Family("sensorwire_device_restarts_total", "counter",
                 "New boot_ids seen after a device's first.").add(t["restarts"])
    yield Family("sensorwire_repair_requests_total", "counter",
                 "Gap-repair requests sent upstream.").add(collector.tracker.requests_sent)


def _alert_sink_families(sink: Any) -> Iterable[Family]:
    from sensorwire.collector.alerting.sink import AlertSink

    if not isinstance(sink, AlertSink):
        return
    yield Family("sensorwire_alert_instances", "gauge",
                 "Alert instances (series) the rules follow now.").add(sink.instances())
    evicted = Family("sensorwire_alert_series_evicted_total", "counter",
                     "Series a rule at max_instances forgot (its ok one idle longest) to watch a "
                     "new one.", ("rule",))
    refused = Family("sensorwire_alert_series_refused_total", "counter",
                     "New series not watched: the rule was at max_instances, all pending or "
                     "firing.", ("rule",))
    for name, (n_evicted, n_refused) in sorted(sink.limited_by_rule().items()):
        evicted.add(n_evicted, name)
        refused.add(n_refused, name)
    yield from (evicted, refused)


def _metrics_sink_families(sink: Any) -> Iterable[Family]:
    from sensorwire.collector.sinks.metrics import MetricsSink

    if not isinstance(sink, MetricsSink):
        return
    yield Family("sensorwire_end_to_end_latency_seconds", "histogram",
                 "Receive time at the collector minus the frame's sample time (data frames)."
                 ).add(sink.latency)
    yield Family("sensorwire_heartbeats_received_total", "counter",
                 "Heartbeats accepted (also counted in sensorwire_frames_accepted_total)."
                 ).add(sink.heartbeats)
    yield Family("sensorwire_devices_online", "gauge",
                 "Devices whose frames keep coming and whose last heartbeat did not say stopping."
                 ).add(sink.devices_online())
    if sink.export_values:
        values = Family("sensorwire_sensor_value", "gauge",
                        "The latest value of each sensor metric.",
                        ("site", "device", "sensor", "metric"))
        for (site, device, sensor, metric), v in sorted(sink.values().items()):
            values.add(v, site, device, sensor, metric)
        yield values
        yield Family("sensorwire_sensor_values_dropped_total", "counter",
                     "Sensor values not exported: more series than [metrics] values_max."
                     ).add(sink.values_dropped)
