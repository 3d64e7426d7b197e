"""The metric families of each role, read from its counters at scrape time.

One function per role turns the role object's plain counters into
:class:`~sensorwire.metrics.Family` objects; nothing here runs on a hot path.
To export a new counter, add one ``Family`` line where the role's others are
(counters end in ``_total``, units in the name: ``_bytes``, ``_seconds``).

Names, by role:

- every role: ``sensorwire_build_info``, ``sensorwire_config_reloads_total{result}``,
  ``sensorwire_config_last_reload_successful``, ``sensorwire_metrics_refused_total{reason}``
  (from the endpoint itself, :mod:`sensorwire.metricsserver`), and the process's own
  (``process_resident_memory_bytes``, ...);
- agent: ``sensorwire_frames_sent_total``, ``sensorwire_heartbeats_sent_total``,
  ``sensorwire_bytes_sent_total``, ``sensorwire_frames_dropped_total{reason}``,
  ``sensorwire_sensor_readings_total{sensor}``, ``sensorwire_sensor_errors_total{sensor}``,
  ``sensorwire_sensor_failing{sensor}``, ``sensorwire_subscriptions``,
  ``sensorwire_last_seq``, what the publisher counts beside
  (``sensorwire_frames_spooled_total``, ...), and with a spool ``sensorwire_spool_frames``,
  ``sensorwire_spool_bytes_written_total``, ``sensorwire_spool_bytes_written_today``;
- proxy: ``sensorwire_frames_forwarded_total``, ``sensorwire_bytes_forwarded_total``,
  ``sensorwire_subscriptions_forwarded_total``, ``sensorwire_frames_dropped_total{reason}``,
  ``sensorwire_upstream_dropped_total{reason}``, and with the last-value cache
  ``sensorwire_last_value_topics``, ``sensorwire_last_value_bytes``,
  ``sensorwire_last_value_evicted_total``, ``sensorwire_last_value_refused_total``,
  ``sensorwire_last_value_replays_total``, ``sensorwire_last_value_replays_skipped_total``,
  ``sensorwire_last_value_replayed_frames_total``;
- proxy and collector, per socket, from the guard thread (:mod:`sensorwire.guard`):
  ``sensorwire_connections_accepted_total{socket}``,
  ``sensorwire_connections_refused_total{socket,reason}``,
  ``sensorwire_handshakes_failed_total{socket}``, ``sensorwire_connections_closed_total{socket}``,
  ``sensorwire_accept_failures_total{socket}`` (the agent's too, ``socket="publish"``);
- collector: ``sensorwire_frames_received_total`` (data frames),
  ``sensorwire_messages_received_total`` (everything), ``sensorwire_bytes_received_total``,
  ``sensorwire_subscriber_lag_seconds``, ``sensorwire_subscriber_behind``,
  ``sensorwire_subscriber_fell_behind_total``,
  ``sensorwire_frames_accepted_total``, ``sensorwire_frames_cached_ignored_total``,
  ``sensorwire_decode_errors_total{reason}``,
  per sink ``sensorwire_sink_frames_written_total``, ``sensorwire_sink_frames_dropped_total``,
  ``sensorwire_sink_queue_frames``, ``sensorwire_sink_queue_capacity_frames``,
  ``sensorwire_sink_write_duration_seconds`` (histogram), and from the metrics sink
  ``sensorwire_end_to_end_latency_seconds`` (histogram), ``sensorwire_devices_online``,
  ``sensorwire_heartbeats_received_total``,
  ``sensorwire_sensor_value{site,device,sensor,metric}`` (with ``export_values``), and from
  the alerting sink ``sensorwire_alert_instances``,
  ``sensorwire_alert_series_evicted_total{rule}``, ``sensorwire_alert_series_refused_total{rule}``,
  ``sensorwire_alerts_firing{rule,severity}``, ``sensorwire_alert_notifications_total{rule,state}``,
  ``sensorwire_alert_deliveries_total{notifier,result}``,
  ``sensorwire_alert_delivery_retries_total{notifier}``,
  ``sensorwire_alert_delivery_queue_notifications{notifier}``,
  ``sensorwire_alert_store_errors_total``.

Labels stay bounded: reasons, sockets, rules and notifiers are fixed or configured; only
``sensorwire_sensor_value`` has device labels (and its own bound, ``values_max``).
"""

from __future__ import annotations

import collections
import math
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from sensorwire import __version__
from sensorwire.metrics import Family
from sensorwire.security import AGENTS, COLLECTORS

if TYPE_CHECKING:
    from sensorwire.agent.runtime import Agent
    from sensorwire.collector.runtime import Collector
    from sensorwire.proxy import Proxy
    from sensorwire.security import Security
    from sensorwire.service import Service

# Every reason the collector rejects a message for: sensorwire.proto.wire.WireError's, the
# CURVE identity check's (sensorwire.security.Refused) and the collector's own checks; exported
# at 0 from the start, so that rate() works before the first error.  A test finds every reason
# the code raises or counts and checks it is here.
DECODE_REASONS = ("no_delimiter", "bad_topic", "decode", "topic_mismatch", "bad_name",
                  "too_many_samples", "bad_seq", "bad_heartbeat", "oversized", "multipart",
                  "too_many_devices", "rate_limited", "no_identity", "revoked_key",
                  "device_mismatch", "bad_ack")

# Every reason the proxy drops a message from an agent for (sensorwire.proxyfilter's and the
# identity check's, sensorwire.security.Refused); exported at 0 from the start.  A test finds
# every reason the code drops for and checks it is here.
PROXY_DROP_REASONS = ("multipart", "too_many_samples", "no_identity", "revoked_key",
                      "device_mismatch", "bad_ack")
# Every reason the proxy does not pass a message from a collector on (sensorwire.proxy).
PROXY_UPSTREAM_REASONS = ("subscription_too_long", "unknown_kind", "too_many_subscriptions")

# The guard's counts (sensorwire.guard.Guard.counts) -> the reason label of
# sensorwire_connections_refused_total; their prefix is a ZAP domain, not a socket.
REFUSALS = {"refused_keys": "unknown_key", "refused_mechanism": "not_curve"}
# The guard's other counts -> (name, help), by socket.
SOCKET_COUNTS = {
    "accepted": ("sensorwire_connections_accepted_total",
                 "CURVE connections whose key was in the allow-list."),
    "handshake_failed": ("sensorwire_handshakes_failed_total",
                         "Handshakes that failed, refused connections included (on a socket "
                         "that connects: its own connections that failed)."),
    "disconnects": ("sensorwire_connections_closed_total", "Connections that closed."),
    "accept_failed": ("sensorwire_accept_failures_total",
                      "Failed accept()s on a listening socket, most often too many open files "
                      "(the log says which): new peers cannot connect meanwhile, and libzmq "
                      "tries again at once, so this grows by thousands a second."),
}

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
    spool = pub.spool
    yield (Family("sensorwire_frames_dropped_total", "counter",
                  "Frames the agent dropped, by where.", ("reason",))
           .add(counters.get("dropped_hwm", 0), "send_queue_full")
           .add(agent.stream_dropped, "stream_queue_full")
           .add(spool.dropped - spool.write_failed if spool is not None else 0, "spool_full")
           .add(spool.write_failed if spool is not None else 0, "spool_write_failed")
           .add(spool.corrupt if spool is not None else 0, "spool_corrupt"))
    if spool is not None:
        yield Family("sensorwire_spool_frames", "gauge",
                     "Frames waiting in the spool.").add(spool.pending)
        yield Family("sensorwire_spool_bytes_written_total", "counter",
                     "Bytes the spool wrote to its folder (flash wear).").add(
                         spool.bytes_written_total)
        yield Family("sensorwire_spool_bytes_written_today", "gauge",
                     "Bytes the spool wrote to its folder since 00:00 UTC.").add(
                         spool.written_today())
    yield Family("sensorwire_subscriptions", "gauge",
                 "Subscriptions the agent's socket has seen (collectors listening)."
                 ).add(len(pub.subscriptions))
    yield Family("sensorwire_last_seq", "gauge",
                 "The seq of the last data frame built.").add(pub.seq)
    accept_failures, help_ = SOCKET_COUNTS["accept_failed"]
    yield Family(accept_failures, "counter", help_, ("socket",)).add(
        pub.security.counts().get("publish.accept_failed", 0), "publish")
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


def by_reason(name: str, help_text: str, known: Iterable[str],
              counts: Mapping[str, int]) -> Family:
    """A counter by ``reason``: every known reason from the start (at 0), and any other counted."""
    counted = dict(counts)  # a copy: another thread counts
    family = Family(name, "counter", help_text, ("reason",))
    for reason in sorted(set(known) | set(counted)):
        family.add(counted.get(reason, 0), reason)
    return family


def proxy_families(proxy: Proxy) -> Iterable[Family]:
    yield Family("sensorwire_frames_forwarded_total", "counter",
                 "Messages forwarded from agents to collectors.").add(proxy.frames)
    yield Family("sensorwire_bytes_forwarded_total", "counter",
                 "Bytes forwarded from agents to collectors.").add(proxy.bytes)
    yield Family("sensorwire_subscriptions_forwarded_total", "counter",
                 "Subscription messages forwarded from collectors to agents."
                 ).add(proxy.subscriptions)
    yield by_reason("sensorwire_frames_dropped_total",
                    "Messages from agents the proxy dropped, by reason (only when it forwards "
                    "in Python: with the last-value cache or CURVE on).",
                    PROXY_DROP_REASONS, proxy.filter.dropped)
    yield by_reason("sensorwire_upstream_dropped_total",
                    "Messages from collectors the proxy did not pass on to agents, by reason "
                    "(only when it forwards in Python).", PROXY_UPSTREAM_REASONS,
                    proxy.upstream_dropped)
    cache = proxy.cache
    if cache is not None:
        yield Family("sensorwire_last_value_topics", "gauge",
                     "Topics in the last-value cache.").add(len(cache))
        yield Family("sensorwire_last_value_bytes", "gauge",
                     "Bytes of the messages in the last-value cache.").add(cache.bytes)
        yield Family("sensorwire_last_value_evicted_total", "counter",
                     "Topics evicted to stay within last_value_topics and last_value_bytes."
                     ).add(cache.evicted)
        yield Family("sensorwire_last_value_refused_total", "counter",
                     "Messages not cached: not frames a collector would accept.").add(cache.refused)
        yield Family("sensorwire_last_value_replays_total", "counter",
                     "Subscriptions answered with the cached frames they match.").add(cache.replays)
        yield Family("sensorwire_last_value_replays_skipped_total", "counter",
                     "Subscriptions not answered: the prefix replayed within a second, or the "
                     "replay budget spent.").add(cache.replays_skipped)
        yield Family("sensorwire_last_value_replayed_frames_total", "counter",
                     "Frames sent from the last-value cache.").add(cache.sent)
    yield from _guard_families(proxy.security, {AGENTS: "frontend", COLLECTORS: "backend"})


def collector_families(collector: Collector) -> Iterable[Family]:
    yield Family("sensorwire_messages_received_total", "counter",
                 "Messages received: data frames, heartbeats, and the ones rejected."
                 ).add(collector.received)
    yield Family("sensorwire_bytes_received_total", "counter",
                 "Bytes of messages received.").add(getattr(collector, "bytes_received", 0))
    yield Family("sensorwire_frames_accepted_total", "counter",
                 "Messages decoded, checked and handed to the sinks.").add(collector.accepted)
    yield Family("sensorwire_frames_cached_ignored_total", "counter",
                 "Frames marked as a copy from a proxy's last-value cache (flag 8): not stored "
                 "or counted again.").add(getattr(collector, "cached_ignored", 0))
    yield by_reason("sensorwire_decode_errors_total", "Messages rejected, by reason.",
                    DECODE_REASONS, collector.rejected)
    written = Family("sensorwire_sink_frames_written_total", "counter",
                     "Frames written by each sink.", ("sink",))
    dropped = Family("sensorwire_sink_frames_dropped_total", "counter",
                     "Frames a sink dropped (queue full, a write given up, a database's outage "
                     "backlog full, or held frames the database refused).", ("sink",))
    held = Family("sensorwire_sink_held_frames", "gauge",
                  "Frames a database sink holds (memory and disk spool) while its database "
                  "cannot take them.", ("sink",))
    depth = Family("sensorwire_sink_queue_frames", "gauge",
                   "Frames queued for each sink.", ("sink",))
    capacity = Family("sensorwire_sink_queue_capacity_frames", "gauge",
                      "The most frames a sink's queue holds.", ("sink",))
    latency = Family("sensorwire_sink_write_duration_seconds", "histogram",
                     "Time taken by each batch a sink wrote.", ("sink",))
    for r in collector.runners:
        name = r.sink.name
        written.add(r.written, name)
        dropped.add(r.dropped_total, name)
        held.add(r.held, name)
        depth.add(r.depth, name)
        capacity.add(r.queue_max, name)
        hist = getattr(r, "write_latency", None)
        if hist is not None:
            latency.add(hist, name)
    yield from (written, dropped, held, depth, capacity)
    if latency.samples:
        yield latency
    for sink in collector.sinks:
        yield from _metrics_sink_families(sink)
        yield from _alert_sink_families(sink)
    yield from _tracking_families(collector)
    yield from _guard_families(collector.security, {AGENTS: "subscribe"})


def _guard_families(security: Security, sockets: dict[str, str]) -> Iterable[Family]:
    """Connections, from the guard's counts: ``<domain>.refused_keys``, ``.refused_mechanism``
    and ``.accepted`` are per ZAP domain (``sockets`` names the socket bound for each);
    ``<socket>.handshake_failed``, ``.disconnects`` and ``.accept_failed`` per socket.  Every
    socket in ``sockets`` is exported from the start, at 0."""
    names = sorted(set(sockets.values()))
    refused = collections.Counter({(s, r): 0 for s in names for r in REFUSALS.values()})
    per_socket = {what: collections.Counter(dict.fromkeys(names, 0)) for what in SOCKET_COUNTS}
    for key, n in security.counts().items():
        where, _, what = key.rpartition(".")
        if what in REFUSALS:
            refused[sockets.get(where, where), REFUSALS[what]] += n
        elif what == "accepted":
            per_socket[what][sockets.get(where, where)] += n
        elif what in per_socket:
            per_socket[what][where] += n
    family = Family("sensorwire_connections_refused_total", "counter",
                    "Connections refused by the allow-list check, by reason: unknown_key (a CURVE "
                    "key not in the allow-list), not_curve (a client without CURVE).",
                    ("socket", "reason"))
    for (socket, reason), n in sorted(refused.items()):
        family.add(n, socket, reason)
    yield family
    for what, (name, help_) in SOCKET_COUNTS.items():
        family = Family(name, "counter", help_, ("socket",))
        for socket, n in sorted(per_socket[what].items()):
            family.add(n, socket)
        yield family


def _tracking_families(collector: Collector) -> Iterable[Family]:
    """Loss accounting (the same numbers as `sensorwire status`, live)."""
    t = collector.tracker.totals()
    yield Family("sensorwire_frames_received_total", "counter",
                 "Data frames received and accepted, duplicates included (heartbeats and "
                 "rejected messages are not frames here): with none duplicated, the frames stored."
                 ).add(t["frames"] + t["duplicates"])
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
    lag = collector.lag
    yield Family("sensorwire_subscriber_lag_seconds", "gauge",
                 "Receive time minus sample time of the newest heartbeat read in the last half "
                 "second (sensorwire.lag; NaN before the first).").add(
                     math.nan if lag.lag_s is None else lag.lag_s)
    yield Family("sensorwire_subscriber_behind", "gauge",
                 "1 while the lag is past [subscribe] max_lag_s.").add(int(lag.behind))
    yield Family("sensorwire_subscriber_fell_behind_total", "counter",
                 "Times the lag went past [subscribe] max_lag_s.").add(lag.fell_behind)


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
    firing = Family("sensorwire_alerts_firing", "gauge", "Alert instances firing now, per rule.",
                    ("rule", "severity"))
    for name, (severity, n) in sorted(sink.firing_by_rule().items()):
        firing.add(n, name, severity)
    notified = Family("sensorwire_alert_notifications_total", "counter",
                      "Alert notifications sent to the notifiers, per rule and state (firing, "
                      "resolved; a repeat_s reminder is one more firing).", ("rule", "state"))
    for (name, state), n in sorted(sink.notified_by_rule().items()):
        notified.add(n, name, state)
    yield from (firing, notified)
    deliveries = Family("sensorwire_alert_deliveries_total", "counter",
                        "Notifications per notifier and result: delivered; failed (given up "
                        "after its retries); dropped (its queue was full, or at shutdown).",
                        ("notifier", "result"))
    retries = Family("sensorwire_alert_delivery_retries_total", "counter",
                     "Failed attempts of a notifier that were tried again.", ("notifier",))
    queued = Family("sensorwire_alert_delivery_queue_notifications", "gauge",
                    "Notifications waiting for each notifier.", ("notifier",))
    for name, counts in sorted(sink.deliveries().items()):
        for result in ("delivered", "failed", "dropped"):
            deliveries.add(counts[result], name, result)
        retries.add(counts["retried"], name)
        queued.add(counts["queued"], name)
    yield from (deliveries, retries, queued)
    yield Family("sensorwire_alert_store_errors_total", "counter",
                 "Times alert transitions could not be stored (kept, and stored later)."
                 ).add(sink.store_errors)


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
