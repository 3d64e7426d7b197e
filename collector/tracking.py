"""Loss accounting, device presence and gap repair, in the collector's receive thread.

For every device the tracker follows the ``seq`` stream of each ``boot_id``:
frames received, gaps (seqs missing: holes, and a tail that a heartbeat's
``last_seq`` reveals), duplicates (dropped here, before any sink sees them),
out-of-order frames (a replay or repair filling a gap), restarts (a new
``boot_id``), and frames the agent said are lost for good.

It also decides presence: ``online`` on any frame, ``offline`` after
``offline_after_s`` of silence (default three of the device's announced
heartbeat intervals), ``stopped`` on a heartbeat marked ``stopping``; each
transition becomes a :class:`~sensorwire.collector.events.Presence` event.

And it asks for missing frames: a :class:`RepairRequest` per device with gaps,
first after ``repair_delay_s`` (a replay may fill them by itself), then with
exponential backoff, up to ``repair_attempts`` times.

At start (:meth:`Tracker.resume`) the seqs storage misses are asked for
again, but an agent saying they are gone does not count them as lost: storage
keeps how many frames were lost, not which, so the collector before this one
may have counted them already.  They stay gaps (``sensorwire status``).
A frame the agent said is gone that comes all the same (a copy held up past
the agent's ``ring_s``, in a stopped proxy) is taken, out of order; it stays
counted as lost, as storage has no way to take a count back.

Per-frame work is a few dictionary and attribute reads; everything else
happens in :meth:`Tracker.tick`, about once a second.

The table of devices is bounded (``max_devices``, ``[limits] max_devices``):
anyone who may send frames could otherwise grow it with made-up device ids.
A device not in a full table makes room by *evicting* the device silent
longest, if that one is not online (offline or stopped: its state already
went to the sinks as a :class:`~sensorwire.collector.events.Presence`
event); its duplicate and out-of-order counts are handed on first, and its
totals stay in :meth:`Tracker.totals`.  When every device is online there is
no room: :meth:`Tracker.on_frame` raises :class:`DeviceTableFull` and the
collector rejects the frame, counted (``too_many_devices``).

An evicted device is remembered by its current boot and the highest seq seen
(:attr:`Tracker.evicted_boots`, at most ``max_devices`` of them, oldest
dropped first).  When it sends again, its boot continues from there: no
restart is counted and the seqs after that one are followed as before
(a hole after it is a gap: we were listening); a seq at or below it is
accepted as out of order, never a duplicate (the tracker no longer knows
which of them it had; storage stores each frame once).  A new ``boot_id``
from it is a restart, as it would have been.  Its gaps from before the
eviction are no longer asked for (storage still counts them: ``sensorwire
status``).  Once a remembered boot had to be dropped, a device never seen is
indistinguishable from one forgotten, so from then on (until a restart) a
device not in the table is followed from its first frame, as at start-up:
what came before it is never reported as a gap.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from sensorwire.collector.events import Counts, Event, Lost, Presence, State
from sensorwire.collector.frames import CheckedFrame
from sensorwire.collector.ranges import RangeSet
from sensorwire.logs import RateLimited
from sensorwire.proto import wire
from sensorwire.proto.v1.telemetry_pb2 import RepairRequest, SeqRange
from sensorwire.proto.wire import FLAG_SKEWED, FLAG_TIME_REPLACED

log = logging.getLogger(__name__)
_full = RateLimited(log, period_s=60.0)
# one line per kind every 10 s, with a count of the rest: after a proxy restart every device of a
# fleet asks for its frames in flight at once (10,000 lines a round otherwise)
_repairs = RateLimited(log, period_s=10.0)
_twins = RateLimited(log, period_s=60.0)  # two agents publishing as one device: per device

MAX_BOOTS = 8              # boots followed per device (the newest)
PRESENCE_LOG_BURST = 50     # presence changes logged one by one per window; the rest are counted
PRESENCE_LOG_WINDOW_S = 10.0  # (a fleet starting at once, or made-up devices, not 10,000 lines)
JOIN_GRACE_S = 10.0        # boots first seen this soon after start may have begun before us
MIN_VALID_NS = 1_577_836_800_000_000_000   # 2020-01-01: anything earlier is a clock that never set
MAX_RANGES_PER_REQUEST = 256
MAX_GAP_RANGES = 4096      # ranges of seqs not received kept per boot; then the oldest half go
DEFAULT_HEARTBEAT_S = 5.0
MAX_DEVICES = 100_000      # the default of [limits] max_devices
_TOTALS = ("frames", "gaps", "duplicates", "out_of_order", "restarts", "lost")


class DeviceTableFull(Exception):
    """A frame from a device not followed yet, and no room for it: every device followed is
    online.  Raised only on the new-device path of :meth:`Tracker.on_frame`."""


@dataclass(slots=True)
class BootTrack:
    max_seq: int = 0
    floor: int = 0          # seqs below this may have come already: accepted, never gaps
    # seqs sent before we joined this boot's stream: never gaps; the first copy of each that
    # comes (a replay) is taken, out of order, and any other copy is a duplicate (None: none)
    before: RangeSet | None = None
    missing: RangeSet = field(default_factory=RangeSet)
    lost: RangeSet = field(default_factory=RangeSet)
    # seqs storage had not at start: asked for again, but not counted lost again when the agent
    # says they are gone (the collector before us may have counted them; storage cannot tell)
    resumed: RangeSet | None = None
    last_seen: float = 0.0
    heartbeat_at: float = 0.0   # monotonic receive time of its newest heartbeat
    heartbeat_ns: int = 0       # the agent's time of its newest heartbeat (copies are not newer)


@dataclass(slots=True)
class DeviceTrack:
    site: str
    device: str
    boots: dict[int, BootTrack] = field(default_factory=dict)
    current_boot: int = 0
    state: State | None = None
    last_seen: float = 0.0        # monotonic
    last_seen_ns: int = 0
    heartbeat_s: float | None = None
    frames: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    restarts: int = 0
    lost: int = 0
    duplicates_sent: int = 0      # handed to the sinks in Counts events so far
    out_of_order_sent: int = 0
    gaps_retired: int = 0         # gaps of boots no longer followed
    repair_due: float | None = None
    repair_attempt: int = 0
    changed: bool = False
    tracked: bool = True          # False when the filters cover only some of its sensors
    clock_offset_s: float | None = None   # device clock minus collector clock, from heartbeats
    clock_synced: bool | None = None
    skewed: bool = False

    @property
    def gaps(self) -> int:
        return self.gaps_retired + sum(b.missing.count + b.lost.count for b in self.boots.values())


@dataclass(frozen=True)
class ResumeBoot:
    """What storage knows about one boot when the collector starts."""

    site: str
    device: str
    boot_id: int
    max_seq: int
    missing: list[tuple[int, int]]
    last_seen_ns: int
    state: State | None = None


class Tracker:
    def __init__(self, filters: Iterable[bytes], emit: Callable[[Event], None],
                 send_request: Callable[[bytes], None], offline_after_s: float | None = None,
                 repair: bool = True, repair_delay_s: float = 0.5, repair_attempts: int = 6,
                 max_skew_s: float = 300.0, max_devices: int = MAX_DEVICES) -> None:
        self._filters = list(filters)
        self.emit = emit
        self.send_request = send_request
        self.offline_after_s = offline_after_s
        self.repair = repair
        self.repair_delay_s = repair_delay_s
        self.repair_attempts = repair_attempts
        self.max_skew_s = max_skew_s
        self._ahead_ns = int(max_skew_s * 1e9)  # a frame stamped this far in the future: skewed
        self.max_devices = max_devices
        self.devices: dict[str, DeviceTrack] = {}
        self.started = time.monotonic()
        self.requests_sent = 0
        self.times_replaced = 0
        self.frames_skewed = 0
        self.evicted = 0   # devices evicted from the table, in all
        # evicted device -> (its current boot, the highest seq seen of it), oldest first
        self.evicted_boots: dict[str, tuple[int, int]] = {}
        self._unsure = False  # an evicted device's boot was dropped: new devices may be old ones
        # (last_seen, device) of every device not online, for eviction; entries of devices that
        # came back online since are skipped when popped (and pruned when there are many)
        self._idle: list[tuple[float, str]] = []
        self._retired = dict.fromkeys(_TOTALS, 0)  # the totals of devices evicted
        self._presence_log_ns = 0  # when the current window of presence lines began
        self._presence_logged = 0
        self._presence_hidden: collections.Counter[str] = collections.Counter()

    def set_filters(self, filters: Iterable[bytes]) -> None:
        """New subscription filters (a reload): which devices are followed whole changes."""
        self._filters = list(filters)
        for dev in self.devices.values():
            prefix = f"{dev.site}/{dev.device}/".encode()
            dev.tracked = any(prefix.startswith(f) for f in self._filters)

    # -- start-up ---------------------------------------------------------------------
    def resume(self, boots: Iterable[ResumeBoot]) -> None:
        now, now_ns = time.monotonic(), time.time_ns()
        boots = self._within_bound(list(boots))
        for rb in boots:
            dev = self._device(rb.site, rb.device)
            b = dev.boots.setdefault(rb.boot_id, BootTrack())
            b.max_seq = max(b.max_seq, rb.max_seq)
            for first, last in rb.missing:
                b.missing.add(first, last)
                if b.resumed is None:
                    b.resumed = RangeSet()
                b.resumed.add(first, last)
            seen = now - max(0, now_ns - rb.last_seen_ns) / 1e9
            b.last_seen = seen
            self._bound_gaps(dev, b)
            if rb.last_seen_ns >= dev.last_seen_ns:
                dev.current_boot = rb.boot_id
                dev.last_seen_ns = rb.last_seen_ns
                dev.last_seen = seen
                dev.state = rb.state
            if b.missing and dev.tracked and self.repair:
                dev.repair_due = now + self.repair_delay_s
        for dev in self.devices.values():
            if dev.state != "online":
                heapq.heappush(self._idle, (dev.last_seen, dev.device))
        if self.devices:
            gaps = sum(d.gaps for d in self.devices.values())
            log.info("resumed seq tracking of %d devices from storage (%d frames missing)",
                     len(self.devices), gaps)

    def _within_bound(self, boots: list[ResumeBoot]) -> list[ResumeBoot]:
        """The boots of the ``max_devices`` devices seen last; the others are remembered as
        evicted (their current boot and its highest seq)."""
        latest: dict[str, ResumeBoot] = {}
        for rb in boots:
            seen = latest.get(rb.device)
            if seen is None or rb.last_seen_ns >= seen.last_seen_ns:
                latest[rb.device] = rb
        if len(latest) + len(self.devices) <= self.max_devices:
            return boots
        room = max(0, self.max_devices - len(self.devices))
        by_age = sorted(latest.values(), key=lambda rb: rb.last_seen_ns)
        keep = {rb.device for rb in by_age[len(by_age) - room:]} if room else set()
        for rb in by_age[:len(by_age) - room]:
            self._remember(rb.device, rb.boot_id, rb.max_seq)
        log.warning("storage knows %d devices seen in the last [repair] resume_s, more than "
                    "[limits] max_devices (%d): following the %d seen last; the others are "
                    "followed again when they send", len(latest), self.max_devices, len(keep))
        return [rb for rb in boots if rb.device in keep]

    def _device(self, site: str, device: str) -> DeviceTrack:
        dev = self.devices.get(device)
        if dev is None:
            dev = self.devices[device] = DeviceTrack(site, device)
            prefix = f"{site}/{device}/".encode()
            dev.tracked = any(prefix.startswith(f) for f in self._filters)
        return dev

    # -- every frame ----------------------------------------------------------------------
    def on_frame(self, frame: CheckedFrame, now: float, now_ns: int) -> bool:
        """Account for one checked frame; False when it is a duplicate to drop."""
        dev = self.devices.get(frame.device_id)
        if dev is None:
            dev = self._admit(frame, now)
        boot_id = frame.boot_id
        b = dev.boots.get(boot_id)
        fresh = b is None
        if b is None:
            b = self._new_boot(dev, boot_id, frame, now)
        dev.last_seen = b.last_seen = now
        dev.last_seen_ns = now_ns
        dev.changed = True
        if dev.state != "online" and (fresh or dev.state != "stopped"):
            # a boot that stopped sends nothing new: a frame of it now is a late copy (through
            # a slower proxy, a repair), and only a new boot brings the device back
            self._transition(dev, "online", now_ns)
        seq = frame.seq
        if seq == 0:
            hb = frame.heartbeat
            assert hb is not None  # seq 0: a heartbeat
            dev.heartbeat_s = hb.interval_s or None
            self._clock(dev, hb.clock_synced, (frame.time_unix_nano - now_ns) / 1e9)
            if hb.last_seq > b.max_seq and dev.tracked:
                self._gap(dev, b, b.max_seq + 1, hb.last_seq, now)
                b.max_seq = hb.last_seq
            for r in hb.unavailable:
                self._unavailable(dev, r)
            if hb.stopping and boot_id == dev.current_boot and dev.state != "stopped":
                self._transition(dev, "stopped", now_ns)
            if frame.time_unix_nano > b.heartbeat_ns and not hb.stopping:
                self._twin(dev, boot_id, b, now)
                b.heartbeat_ns = frame.time_unix_nano
                b.heartbeat_at = now
            return True
        if seq == b.max_seq + 1:
            b.max_seq = seq
        elif seq > b.max_seq:
            if dev.tracked:
                self._gap(dev, b, b.max_seq + 1, seq - 1, now)
            b.max_seq = seq
        elif (b.missing.discard(seq) or b.lost.discard(seq) or seq < b.floor
              or (b.before is not None and b.before.discard(seq))):
            dev.out_of_order += 1
            if b.resumed:
                b.resumed.discard(seq)
            self._bound_gaps(dev, b)  # a frame into a gap splits it
        else:
            dev.duplicates += 1
            return False
        dev.frames += 1
        t = frame.time_unix_nano
        if t < MIN_VALID_NS:
            frame.time_unix_nano = now_ns  # never store 1970 as if it were true
            frame.flags |= FLAG_TIME_REPLACED
            self.times_replaced += 1
        elif dev.skewed or t > now_ns + self._ahead_ns:
            # (a time in the future is a wrong clock even before a heartbeat says so; one in
            # the past may be an old frame: a replay, a repair)
            frame.flags |= FLAG_SKEWED
            self.frames_skewed += 1
        return True

    # -- the bound on the table (only for devices not in it) --------------------------------
    def _admit(self, frame: CheckedFrame, now: float) -> DeviceTrack:
        """A device not in the table: make room for it, or raise DeviceTableFull."""
        known = self.evicted_boots.pop(frame.device_id, None)  # before making room, which adds one
        if len(self.devices) >= self.max_devices and not self._evict_idle(now):
            if known is not None:
                self.evicted_boots[frame.device_id] = known
            raise DeviceTableFull(
                f"device {frame.site}/{frame.device_id} is new and all {len(self.devices)} "
                f"devices followed are online ([limits] max_devices = {self.max_devices}): "
                "raise max_devices if the fleet is this large")
        dev = self._device(frame.site, frame.device_id)
        if known is not None:
            boot_id, max_seq = known
            dev.current_boot = boot_id
            dev.boots[boot_id] = BootTrack(max_seq=max_seq, floor=max_seq + 1, last_seen=now)
        elif self._unsure:
            self._new_boot(dev, frame.boot_id, frame, now, late=True)
        return dev

    def _evict_idle(self, now: float) -> bool:
        """Evict the device silent longest among those not online; False when all are."""
        idle = self._idle
        while idle:
            seen, name = heapq.heappop(idle)
            dev = self.devices.get(name)
            if dev is not None and dev.state != "online" and dev.last_seen == seen:
                self._evict(dev, now)
                return True
        return False

    def _evict(self, dev: DeviceTrack, now: float) -> None:
        self._hand_counts(dev)  # what the sinks have not been told yet
        del self.devices[dev.device]
        for k in _TOTALS:
            self._retired[k] += getattr(dev, k)
        b = dev.boots.get(dev.current_boot)
        self._remember(dev.device, dev.current_boot, b.max_seq if b is not None else 0)
        self.evicted += 1
        _full.warning("evict", "the device table is full ([limits] max_devices = %d): evicted "
                      "%s/%s (%s, silent for %.0f s) to follow a new device; %d evicted in all",
                      self.max_devices, dev.site, dev.device, dev.state or "state unknown",
                      now - dev.last_seen, self.evicted)

    def _remember(self, device: str, boot_id: int, max_seq: int) -> None:
        kept = self.evicted_boots
        if len(kept) >= self.max_devices:
            del kept[next(iter(kept))]  # the one evicted first
            if not self._unsure:
                self._unsure = True
                log.warning("more than [limits] max_devices (%d) devices evicted: devices not "
                            "in the table are now followed from their first frame (earlier "
                            "frames are not reported as gaps)", self.max_devices)
        kept[device] = (boot_id, max_seq)

    def set_max_devices(self, max_devices: int) -> None:
        """A new bound (a reload): devices not online are evicted down to it at once."""
        self.max_devices = max_devices
        now = time.monotonic()
        while len(self.devices) > max_devices and self._evict_idle(now):
            pass
        while len(self.evicted_boots) > max_devices:
            del self.evicted_boots[next(iter(self.evicted_boots))]
            self._unsure = True

    def _clock(self, dev: DeviceTrack, synced: bool, offset_s: float) -> None:
        """Follow a device's clock offset (smoothed over heartbeats) and flag a skew."""
        old = dev.clock_offset_s
        dev.clock_offset_s = (offset_s if old is None or abs(offset_s - old) > 60
                              else 0.7 * old + 0.3 * offset_s)
        dev.clock_synced = synced
        skewed = abs(dev.clock_offset_s) > self.max_skew_s
        if skewed != dev.skewed:
            dev.skewed = skewed
            if skewed:
                log.warning("device %s: its clock is %.1f s off (more than max_skew_s %.0f; clock "
                            "synchronised: %s): its frames are flagged", dev.device,
                            dev.clock_offset_s, self.max_skew_s, "yes" if synced else "no")
            else:
                log.info("device %s: its clock is within %.0f s again", dev.device, self.max_skew_s)

    def _new_boot(self, dev: DeviceTrack, boot_id: int, frame: CheckedFrame, now: float,
                  late: bool = False) -> BootTrack:
        b = dev.boots[boot_id] = BootTrack()
        if late or now - self.started < JOIN_GRACE_S:
            # We may have joined this boot's stream late: what came before its first frame we
            # see was not ours to miss.  Later than this, a new boot is followed from seq 1.
            if frame.seq == 0:
                assert frame.heartbeat is not None  # seq 0: a heartbeat
                first = frame.heartbeat.last_seq + 1
            else:
                first = frame.seq
            if first > 1:
                b.before = RangeSet()
                b.before.add(1, first - 1)
            b.max_seq = first - 1
        if dev.current_boot and dev.current_boot != boot_id:
            dev.restarts += 1
        dev.current_boot = boot_id
        if len(dev.boots) > MAX_BOOTS:
            oldest = min(dev.boots, key=lambda k: dev.boots[k].last_seen)
            gone = dev.boots.pop(oldest)
            dev.gaps_retired += gone.missing.count + gone.lost.count
        return b

    def _twin(self, dev: DeviceTrack, boot_id: int, b: BootTrack, now: float) -> None:
        """A new heartbeat of a boot that is not the device's newest, while the newest sends them
        too: two agents run with one device_id (an agent restarted sends none of its old boot)."""
        cur = dev.boots.get(dev.current_boot)
        if boot_id == dev.current_boot or cur is None or not b.heartbeat_ns or not cur.heartbeat_at:
            return
        if now - cur.heartbeat_at <= 3 * (dev.heartbeat_s or 5.0):
            _twins.warning(dev.device, "device %s/%s: two agents publish with this device_id (boots "
                           "%d and %d both send heartbeats); their frames are stored as one "
                           "device's: give each agent its own device_id", dev.site, dev.device,
                           boot_id, dev.current_boot)

    def _gap(self, dev: DeviceTrack, b: BootTrack, first: int, last: int, now: float) -> None:
        b.missing.add(first, last)
        self._bound_gaps(dev, b)
        if self.repair and dev.repair_due is None:
            dev.repair_due = now + self.repair_delay_s
            dev.repair_attempt = 0

    def _unavailable(self, dev: DeviceTrack, r: SeqRange) -> None:
        b = dev.boots.get(r.boot_id)
        if b is None:
            return
        # only what is missing here: the answer may cover seqs received since they were asked
        # for (another collector's request, a copy through another proxy)
        for first, last in self._new_losses(b, b.missing.take(r.first, r.last)):
            n = last - first + 1
            dev.lost += n
            log.warning("device %s: %d frames (boot %d, seq %d-%d) are lost for good: the agent "
                        "no longer has them", dev.device, n, r.boot_id, first, last)
            self.emit(Lost(dev.site, dev.device, r.boot_id, first, last))
        self._bound_gaps(dev, b)

    def _bound_gaps(self, dev: DeviceTrack, b: BootTrack) -> None:
        """Keep at most MAX_GAP_RANGES ranges of seqs not received in a boot (missing, lost,
        from before we joined): a lossy link over months, or a device skipping every other seq,
        would grow them without end.  The oldest half go: counted on as gaps, no longer asked
        for, and a seq below them is then taken as out of order, never a duplicate (which of
        them came is no longer known; storage stores each frame once)."""
        before = b.before or ()
        if len(b.missing) + len(b.lost) + len(before) <= MAX_GAP_RANGES:
            return
        lasts = sorted(last for _, last in itertools.chain(b.missing, b.lost, before))
        below = lasts[len(lasts) // 2] + 1
        n = b.missing.remove(0, below - 1) + b.lost.remove(0, below - 1)
        for gone in (b.resumed, b.before):
            if gone is not None:
                gone.remove(0, below - 1)
        b.floor = max(b.floor, below)
        dev.gaps_retired += n
        _full.warning(f"gaps:{dev.device}", "device %s: more than %d ranges of missing frames in "
                      "a boot: %d frames missing below seq %d are no longer asked for (still "
                      "counted as gaps)", dev.device, MAX_GAP_RANGES, n, below)

    @staticmethod
    def _new_losses(b: BootTrack, gone: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """Move ``gone`` (seqs that were missing) to the boot's lost; returns the part not
        missing already at start (the rest may have been counted lost before a restart)."""
        for first, last in gone:
            b.lost.add(first, last)
        if not b.resumed:
            return gone
        new = RangeSet()
        for first, last in gone:
            new.add(first, last)
            for a, z in b.resumed.take(first, last):
                new.remove(a, z)
        return list(new)

    def forget(self, frame: CheckedFrame, now: float) -> None:
        """A frame accepted earlier never reached storage: treat it as missing again."""
        dev = self.devices.get(frame.device_id)
        if dev is None or frame.seq == 0 or not dev.tracked:
            return
        b = dev.boots.get(frame.boot_id)
        if b is not None:
            b.missing.add(frame.seq, frame.seq)
            self._bound_gaps(dev, b)
            dev.frames -= 1
            if self.repair and dev.repair_due is None:
                dev.repair_due = now + self.repair_delay_s
                dev.repair_attempt = 0

    def _transition(self, dev: DeviceTrack, state: State, now_ns: int) -> None:
        previous = dev.state
        dev.state = state
        if state != "online":
            idle = self._idle
            heapq.heappush(idle, (dev.last_seen, dev.device))
            if len(idle) > 2 * len(self.devices) + 1024:  # mostly devices online again: prune
                self._idle = [(d.last_seen, d.device) for d in self.devices.values()
                              if d.state != "online"]
                heapq.heapify(self._idle)
        if previous is not None or state == "online":
            self._log_presence(dev, state, previous, now_ns)
        self.emit(Presence(dev.site, dev.device, state, previous, now_ns, dev.last_seen_ns))

    def _log_presence(self, dev: DeviceTrack, state: State, previous: str | None,
                      now_ns: int) -> None:
        """One line per change, up to PRESENCE_LOG_BURST in a window; then a count of the rest
        (every change is stored and handed to the sinks all the same)."""
        if now_ns - self._presence_log_ns >= PRESENCE_LOG_WINDOW_S * 1e9:
            self._log_hidden_presence()
            self._presence_log_ns, self._presence_logged = now_ns, 0
        if self._presence_logged >= PRESENCE_LOG_BURST:
            self._presence_hidden[state] += 1
            return
        self._presence_logged += 1
        level = logging.INFO if state != "offline" else logging.WARNING
        log.log(level, "device %s/%s is %s (was %s)", dev.site, dev.device, state, previous or "unknown")

    def _log_hidden_presence(self) -> None:
        hidden = self._presence_hidden
        if hidden:
            log.warning("%d more presence changes in %.0f s not logged one by one (%s): "
                        "`sensorwire status` and the presence table have every one",
                        sum(hidden.values()), PRESENCE_LOG_WINDOW_S,
                        ", ".join(f"{state} {n}" for state, n in sorted(hidden.items())))
            hidden.clear()

    # -- about once a second -----------------------------------------------------------------
    def tick(self, now: float, now_ns: int) -> None:
        if self._presence_hidden and now_ns - self._presence_log_ns >= PRESENCE_LOG_WINDOW_S * 1e9:
            self._log_hidden_presence()
        for dev in self.devices.values():
            if dev.state == "online":
                limit = self.offline_after_s or 3 * (dev.heartbeat_s or DEFAULT_HEARTBEAT_S)
                if now - dev.last_seen > limit:
                    self._transition(dev, "offline", now_ns)
            if dev.repair_due is not None and now >= dev.repair_due:
                self._request(dev, now)

    def _request(self, dev: DeviceTrack, now: float) -> None:
        req = RepairRequest(device_id=dev.device)
        n = 0
        for boot_id, b in dev.boots.items():
            for first, last in itertools.islice(b.missing, MAX_RANGES_PER_REQUEST - len(req.ranges)):
                req.ranges.add(boot_id=boot_id, first=first, last=last)
                n += last - first + 1
        if not req.ranges:
            dev.repair_due = None
            dev.repair_attempt = 0
            return
        dev.repair_attempt += 1
        if dev.repair_attempt > self.repair_attempts:
            _repairs.warning("gave_up", "device %s: %d frames still missing after %d repair "
                             "requests; giving up until new gaps appear", dev.device, n,
                             self.repair_attempts)
            dev.repair_due = None
            dev.repair_attempt = 0
            return
        self.send_request(wire.REPAIR + req.SerializeToString())
        self.requests_sent += 1
        _repairs.log(logging.INFO, "asked", "device %s: asked for %d missing frames in %d ranges "
                     "(attempt %d)", dev.device, n, len(req.ranges), dev.repair_attempt)
        dev.repair_due = now + min(30.0, 2.0 ** dev.repair_attempt)

    def flush_counts(self) -> None:
        """Hand duplicate and out-of-order counts that changed to the sinks (Counts events)."""
        for dev in self.devices.values():
            if dev.changed:
                dev.changed = False
                self._hand_counts(dev)

    def _hand_counts(self, dev: DeviceTrack) -> None:
        dups = dev.duplicates - dev.duplicates_sent
        ooo = dev.out_of_order - dev.out_of_order_sent
        if dups or ooo:
            dev.duplicates_sent, dev.out_of_order_sent = dev.duplicates, dev.out_of_order
            self.emit(Counts(dev.site, dev.device, dups, ooo))

    # -- summaries -----------------------------------------------------------------------------
    def totals(self) -> dict[str, int]:
        """Devices in the table, online; frames, gaps, ... of every device followed since start
        (the evicted ones' too)."""
        out = dict(devices=len(self.devices), online=0, evicted=self.evicted, **self._retired)
        for d in list(self.devices.values()):  # also called from the metrics server's thread
            out["online"] += d.state == "online"
            out["frames"] += d.frames
            out["gaps"] += d.gaps
            out["duplicates"] += d.duplicates
            out["out_of_order"] += d.out_of_order
            out["restarts"] += d.restarts
            out["lost"] += d.lost
        return out
