"""The agent's publishing sockets: frames, heartbeats, spool, replay and repair.

Each socket is an XPUB: a PUB that also sees the subscriptions of the
collectors behind the proxy.  With ``ZMQ_IMMEDIATE`` a lost connection drops
its subscriptions, so the agent always knows whether anybody listens for a
topic.  Every data frame then takes one of three roads:

- somebody listens: it is sent, and kept in a bounded *ring* of recent frames
  for gap repair;
- nobody listens, or ZeroMQ refuses it at the send high-water mark
  (``XPUB_NODROP`` makes that visible): it goes to the :class:`Spool`
  (with the spool disabled it is sent anyway, or counted as dropped);
- it is replayed later from the spool, oldest first, at ``replay_rate``,
  interleaved with live frames, keeping its ``boot_id``, ``seq`` and time.

Each ``[publish] connect`` endpoint (a proxy) has an XPUB socket of its own,
and the ``bind`` endpoints share one: with one socket for several proxies, a
proxy that hangs with its connection open (stopped, or a link that drops
packets) fills its queue, and ``XPUB_NODROP`` then refuses every send, to the
healthy proxies too.  A frame counts as sent when at least one socket whose
peers listen for it takes it; it is spooled only when none does.  A socket
that refuses is named in a WARNING (at most one per endpoint every 10 s) and
counted, per endpoint in :attr:`Publisher.refused`, in all as ``send_refused``.

Collectors ask for missing ``seq`` ranges with a :class:`RepairRequest` that
travels upstream through the proxy (0x02 + protobuf).  The agent resends what
its ring holds, through the socket the request came on, leaves what its spool
holds to the replay, and reports the rest as unavailable in an immediate
heartbeat.  Whoever asks, it resends at most ``replay_rate`` frames a second
and looks at most at REPAIR_SEQS_PER_S requested seqs a second: a request
beyond that budget is answered in part (``repairs_cut``), the rest left to
the collector's next request.

Subscriptions cost memory: libzmq keeps every one a socket's peers hold in a
trie (15 to 85 bytes per subscribed byte), and ``ZMQ_XPUB_MANUAL`` does not
change that (libzmq 4.3.5 keeps a second trie of them in manual mode, to
unsubscribe a peer that leaves).  What bounds them here: ``ZMQ_MAXMSGSIZE``
(UPSTREAM_MAX_BYTES) disconnects a peer that sends a longer message, and a
socket whose peers hold more than MAX_SUBSCRIPTIONS distinct subscriptions,
or MAX_SUBSCRIPTION_BYTES of them, drops its connections (disconnects from
its proxy, or unbinds), which frees them, and connects (binds) again after
RESET_MIN_S, doubling to RESET_MAX_S while it goes on: the collectors
subscribe again by themselves, and what is built meanwhile is spooled (nobody
listens).  Each reset is an ERROR and counted (``subscription_resets``, and
``subscriptions_refused`` for the subscriptions past the budget, and for
those that arrive while the connections are being dropped).  The agent's own
view (:attr:`Publisher.subscriptions`) mirrors libzmq's trie (a non-manual
XPUB reports a prefix's first subscription and its last unsubscription, and
unsubscribes a peer that leaves), but for what arrives during a reset, which
it leaves out: so it is bounded by the same budget, however many messages
libzmq took in before the drop.

Frames and heartbeats are encoded by hand (:mod:`sensorwire.proto.encoder`);
protobuf is imported only when the first repair request arrives, to parse it.
"""

from __future__ import annotations

import collections
import logging
import os
import time
from collections.abc import Callable, Collection, Iterable, KeysView, Sequence

import zmq

from sensorwire import __version__, zmqutil
from sensorwire.agent.clock import ClockState
from sensorwire.agent.config import PublishConfig, SpoolConfig
from sensorwire.agent.sensors import Reading
from sensorwire.agent.spool import Spool
from sensorwire.configload import ConfigError
from sensorwire.logs import RateLimited
from sensorwire.proto import wire
from sensorwire.proto.encoder import DataEncoder, HeartbeatEncoder, SeqSpan
from sensorwire.security import COLLECTORS, AgentSecurity, Security

log = logging.getLogger(__name__)
_limited = RateLimited(log, 10.0)

REPAIR_MAX_SEQS = 100_000   # per request: bounds the work one message can cause
REPAIR_MAX_BYTES = 64 * 1024
REPAIR_SEQS_PER_S = 100_000  # seqs of repair requests looked at per second, all requests together
REPAIR_BURST_S = 10.0       # frames resent: replay_rate per second, bursts of this many seconds of it
REPAIR_LOG_S = 10.0         # at most one INFO line about repairs this often
INCOMING_MAX = 1000         # messages read from a socket per handle_incoming call
MAX_ENCODERS = 1024         # one per sensor; bounded all the same
RING_AGE_CHECK_S = 1.0      # how often the ring drops frames older than ring_s
# What a socket's peers may hold (libzmq's trie costs 15 to 85 bytes per subscribed byte:
# 256 KiB of subscriptions is at most about 21 MiB).  10,000 leaves room for a collector
# subscribing per device in a fleet of thousands (each agent receives every subscription
# its proxy forwards, its own device's or not: 10,000 such prefixes are about 210 KiB).
MAX_SUBSCRIPTIONS = 10_000
MAX_SUBSCRIPTION_BYTES = 256 * 1024
# ZMQ_MAXMSGSIZE: collectors send subscriptions (at most 196 bytes), pings (65) and repair
# requests (at most 8,515 bytes); a peer sending a longer message is disconnected
UPSTREAM_MAX_BYTES = 16 * 1024
# ZMQ_RCVHWM: messages from a peer queued at once.  libzmq stores a subscription in its trie
# when it takes it off this queue, at each look at the socket, whether or not the agent has
# read the one before: with more than 1, a flood while the agent is busy (or the Pi loaded) gets
# that many times past the budget before the agent reads its way to it (100: 103 MB against 37
# for 1, in the flood test).  A peer's burst waits in TCP's buffers instead: nothing is lost
UPSTREAM_HWM = 1
RESET_MIN_S = 1.0    # a socket that dropped its peers connects again after this, doubling
RESET_MAX_S = 60.0   # up to this while resets follow one another
RESET_CALM_S = 600.0  # a reset this long after the last starts again at RESET_MIN_S
MAX_TOPICS_KNOWN = 4096  # topics whose "listened?" answer is cached (own sensors, spooled ones)
# what became of a message a full socket refused, for its WARNING
OTHERS = "sending through the others"
SPOOLING = "nothing takes frames: spooling them"
DROPPING = "nothing takes frames: counting them as dropped"


class Publisher:
    """Owns the XPUB sockets and the spool; used only by the agent's main thread.

    ``sock`` is the first socket (the only one with one endpoint), ``socks``
    all of them; ``subscriptions`` is what all of them see.
    """

    def __init__(self, site: str, device_id: str, config: PublishConfig,
                 spool: Spool | None = None, replay_rate: float = 500.0,
                 clock: ClockState | None = None,
                 security: AgentSecurity | None = None) -> None:
        self.site = site
        self.device_id = device_id
        self.config = config
        # os.urandom, not secrets: secrets pulls in hashlib/OpenSSL (3.5 MB of RSS on a Pi)
        self.boot_id = int.from_bytes(os.urandom(8), "little") or 1
        self.seq = 0
        self.started = time.monotonic()
        self.spool = spool
        self.replay_rate = replay_rate
        self.counters: dict[str, int] = collections.Counter(
            frames_sent=0, heartbeats_sent=0, bytes_sent=0, dropped_hwm=0, spooled=0,
            replayed=0, repaired=0, unavailable=0, sent_unsubscribed=0, repairs_cut=0,
            send_refused=0, subscription_resets=0, subscriptions_refused=0,
        )
        self._holders: dict[bytes, int] = {}     # prefix -> sockets whose peers subscribed it
        self._subs: list[set[bytes]] = []        # per socket, as its peers subscribed
        self._sub_bytes: list[int] = []          # per socket: bytes of its subscriptions
        self._attach: list[tuple[list[str], list[str]]] = []  # per socket: bound (resolved), connected
        self._reset_at: list[float] = []         # per socket: monotonic time it is to attach again; 0.0
        self._reset_wait: list[float] = []       # per socket: the wait after its next reset
        self._last_reset: list[float] = []
        self._listened: dict[bytes, bool] = {}
        self._listening: dict[bytes, frozenset[int]] = {}  # topic -> sockets listened on
        self._topics: dict[str, bytes] = {}
        self._encoders: dict[str, DataEncoder] = {}
        self._heartbeats = HeartbeatEncoder(wire.heartbeat_topic(site, device_id), site, device_id,
                                            self.boot_id, __version__)
        self._ring: collections.OrderedDict[int, tuple[float, bytes]] = collections.OrderedDict()
        self._ring_frames = config.ring_frames
        self._ring_age_check = 0.0   # monotonic time of the next look for frames past ring_s
        self._pass_left = 0          # spool records still to look at in this replay pass
        self._tokens = 0.0
        self._last_replay = time.monotonic()
        self._held: tuple[int, int, bytes] | None = None   # a replayed frame ZeroMQ refused
        self._unavailable: list[SeqSpan] = []
        self._resend_tokens = replay_rate * REPAIR_BURST_S   # the repair budget, full at start
        self._look_tokens = float(REPAIR_MAX_SEQS)
        self._repair_at = time.monotonic()
        self._repair_log = [0, 0, 0, 0]   # requests, ranges, resent, unavailable since the last line
        self._repair_log_at = 0.0
        self.sock: zmq.Socket[bytes] | None = None
        self.socks: list[zmq.Socket[bytes]] = []
        self._peers: list[tuple[str, str]] = []   # per socket: ("proxy", endpoint), for warnings
        self.refused: dict[str, int] = {}  # messages refused at a full queue, per endpoint
        self.clock = clock
        self.clock_synced = clock.synced() if clock is not None else True
        self._flags = 0 if self.clock_synced else 1
        self.security = Security(security, "agent", monitor=True)  # logs failed handshakes

    @staticmethod
    def make_spool(config: SpoolConfig, folder: os.PathLike[str] | str) -> Spool | None:
        if not config.enabled:
            return None
        return Spool(folder, max_bytes=int(config.max_mb * 1024 * 1024), overflow=config.overflow,
                     fsync=config.fsync, fsync_interval_s=config.fsync_interval_s)

    def open(self, ctx: zmq.Context[zmq.Socket[bytes]]) -> zmq.Socket[bytes]:
        """Open the spool and the sockets: one per ``connect`` endpoint, one for the ``bind``
        endpoints; returns the first."""
        if self.spool is not None:
            self.spool.open()
        groups: list[tuple[list[str], list[str]]] = [(self.config.bind, [])] if self.config.bind else []
        groups += [([], [ep]) for ep in self.config.connect]
        try:
            self.security.open(ctx)
            for binds, connects in groups:
                sock = ctx.socket(zmq.XPUB)
                self.socks.append(sock)
                sock.setsockopt(zmq.LINGER, 1000)
                sock.setsockopt(zmq.SNDHWM, self.config.sndhwm)
                sock.setsockopt(zmq.XPUB_NODROP, 1)
                sock.setsockopt(zmq.IMMEDIATE, 1)  # no queueing for absent peers: their subscriptions go
                sock.setsockopt(zmq.MAXMSGSIZE, UPSTREAM_MAX_BYTES)
                sock.setsockopt(zmq.RCVHWM, UPSTREAM_HWM)
                bound: list[str] = []
                for ep in binds:
                    self.security.bind(sock, ep, "publish", domain=COLLECTORS)
                    bound.append(_last_endpoint(sock))  # the port libzmq chose, to bind it again
                for ep in connects:
                    self.security.connect(sock, ep, "publish")
                self._peers.append(("proxy", connects[0]) if connects
                                   else ("subscribers on", ", ".join(binds)))
                self._subs.append(set())
                self._sub_bytes.append(0)
                self._attach.append((bound, list(connects)))
                self._reset_at.append(0.0)
                self._reset_wait.append(RESET_MIN_S)
                self._last_reset.append(-RESET_CALM_S)
        except (zmqutil.EndpointError, ConfigError):
            for sock in self.socks:
                sock.close(linger=0)
            self.socks, self._peers = [], []
            self._forget_sockets()
            self.security.close()
            raise
        self.sock = self.socks[0]
        if len(self.socks) > 1:
            # the instance's own _send: one socket keeps the plain method, a hot path unchanged
            self._send = self._send_all  # type: ignore[method-assign]
        return self.sock

    def close(self) -> None:
        if self._held is not None and self.spool is not None:
            self.spool.append(*self._held)  # back where it came from, for the next start
            self._held = None
        for sock in self.socks:
            sock.close()
        self.socks, self._peers = [], []
        self._forget_sockets()
        self.sock = None
        self.security.close()
        if self.spool is not None:
            self.spool.close()

    def _forget_sockets(self) -> None:
        self._subs, self._sub_bytes, self._attach = [], [], []
        self._reset_at, self._reset_wait, self._last_reset = [], [], []
        self._holders.clear()
        self._listened.clear()
        self._listening.clear()

    @property
    def subscriptions(self) -> KeysView[bytes]:
        """The subscriptions the sockets' peers hold, all sockets together."""
        return self._holders.keys()

    # -- what arrives on the socket: subscriptions and repair requests ----------
    def handle_incoming(self) -> None:
        """Read what the sockets have: subscriptions, repair requests, pings; at most
        INCOMING_MAX messages from each, so a flood cannot keep the loop (and a stop) waiting:
        the poller wakes the loop again at once for the rest."""
        changed = False
        for i, sock in enumerate(self.socks):
            subs = self._subs[i]
            for _ in range(INCOMING_MAX):
                try:
                    msg = sock.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                if not msg:
                    continue
                kind = msg[0]
                if kind == 1:
                    prefix = msg[1:]
                    if self._reset_at[i]:
                        # its peers are being dropped, and with them what libzmq took in before
                        # the drop (it reports each as gone then): not counted as listening meanwhile
                        self.counters["subscriptions_refused"] += 1
                    elif prefix not in subs:
                        subs.add(prefix)
                        self._sub_bytes[i] += len(prefix)
                        self._holders[prefix] = self._holders.get(prefix, 0) + 1
                        changed = True
                        if len(subs) > MAX_SUBSCRIPTIONS or self._sub_bytes[i] > MAX_SUBSCRIPTION_BYTES:
                            self.counters["subscriptions_refused"] += 1
                            self._reset(i)
                elif kind == 0:
                    prefix = msg[1:]
                    if prefix in subs:
                        subs.remove(prefix)
                        self._sub_bytes[i] -= len(prefix)
                        n = self._holders[prefix] - 1
                        if n:
                            self._holders[prefix] = n
                        else:
                            del self._holders[prefix]
                        changed = True
                elif kind == 2:
                    self._repair(msg[1:], i)
                elif kind == 3:  # a subscriber asks whether it is subscribed: answered where it is
                    self._send_on(i, wire.ACK + msg[1:65])
        if changed:
            self._listened.clear()
            self._listening.clear()
            log.debug("subscriptions now: %d", len(self._holders))
            if self.spool is not None and self.spool.pending and self._holders:
                self._pass_left = self.spool.pending  # look at every spooled frame once more
                log.info("subscriber present: replaying %d spooled frames at up to %.0f/s",
                         self._pass_left, self.replay_rate)

    def _reset(self, i: int) -> None:
        """Socket ``i``'s peers hold more subscriptions than the budget: drop its connections
        (libzmq then forgets their subscriptions and reports each as unsubscribed), and attach
        it again after a wait (:meth:`_reattach`)."""
        now = time.monotonic()
        if now - self._last_reset[i] >= RESET_CALM_S:
            self._reset_wait[i] = RESET_MIN_S
        wait = self._reset_wait[i]
        self._reset_wait[i] = min(RESET_MAX_S, wait * 2)
        self._last_reset[i] = now
        self._reset_at[i] = now + wait
        self.counters["subscription_resets"] += 1
        sock = self.socks[i]
        bound, connects = self._attach[i]
        for ep in connects:
            _quietly(sock.disconnect, ep)
        for ep in bound:
            _quietly(sock.unbind, ep)
        what, endpoint = self._peers[i]
        _limited.error(f"reset:{endpoint}", "%s %s hold more than %d subscriptions or %d KiB "
                       "of them (%d, %d bytes): dropping the connections, which frees them, "
                       "and connecting again in %g s (%d times so far). Each costs memory "
                       "here and in the proxy; without CURVE anyone who reaches the proxy's "
                       "backend can subscribe: set the proxy's [security] "
                       "authorized_collectors", what, endpoint, MAX_SUBSCRIPTIONS,
                       MAX_SUBSCRIPTION_BYTES // 1024, len(self._subs[i]), self._sub_bytes[i],
                       wait, self.counters["subscription_resets"])

    def _reattach(self) -> float | None:
        """Connect (bind) again the sockets whose reset wait is over; seconds until the next
        one is due, or None."""
        nxt: float | None = None
        now = time.monotonic()
        for i, at in enumerate(self._reset_at):
            if not at:
                continue
            if now < at:
                nxt = at - now if nxt is None else min(nxt, at - now)
                continue
            sock = self.socks[i]
            bound, connects = self._attach[i]
            try:
                for ep in bound:
                    sock.bind(ep)
                for ep in connects:
                    sock.connect(ep)
            except zmq.ZMQError as exc:  # e.g. the port taken meanwhile: tried again
                self._reset_at[i] = now + self._reset_wait[i]
                _limited.error(f"reattach:{i}", "could not attach the socket of %s %s again "
                               "(%s); trying again in %.0f s", *self._peers[i], exc,
                               self._reset_wait[i])
                nxt = self._reset_wait[i] if nxt is None else min(nxt, self._reset_wait[i])
                continue
            self._reset_at[i] = 0.0
            log.info("%s %s: connected again after dropping its subscriptions", *self._peers[i])
        return nxt

    def listened(self, topic: bytes) -> bool:
        """Is at least one subscriber listening for ``topic``?"""
        known = self._listened.get(topic)
        if known is None:
            known = _matches(topic + wire.DELIM, self._holders)
            if len(self._listened) >= MAX_TOPICS_KNOWN:
                self._listened.clear()
            self._listened[topic] = known
        return known

    # -- data frames --------------------------------------------------------------
    def topic(self, sensor: str) -> bytes:
        t = self._topics.get(sensor)
        if t is None:
            t = self._topics[sensor] = wire.data_topic(self.site, self.device_id, sensor)
        return t

    def forget(self, sensors: Iterable[str]) -> None:
        """Drop what is kept per sensor (its topic, its encoder) for sensors a reload removed."""
        for name in sensors:
            self._topics.pop(name, None)
            self._encoders.pop(name, None)

    def build_data(self, sensor: str, readings: Sequence[Reading], time_ns: int) -> tuple[bytes, bytes]:
        """Number the next data frame and return ``(topic, message)``.

        A sensor's frames are encoded by a :class:`DataEncoder` kept for it while
        its metrics and units stay the same (they usually do).
        """
        self.seq += 1
        enc = self._encoders.get(sensor)
        if readings:
            metrics, values, units = zip(*readings, strict=True)
        else:  # the host never publishes an empty read; an empty frame all the same
            metrics = values = units = ()
        if enc is None or enc.metrics != metrics or enc.units != units:
            enc = DataEncoder(self.topic(sensor), self.site, self.device_id, self.boot_id, sensor,
                              list(zip(metrics, units, strict=True)))
            if len(self._encoders) >= MAX_ENCODERS:
                self._encoders.clear()
            self._encoders[sensor] = enc
        return enc.topic, enc.encode(self.seq, time_ns, values, self._flags)

    def publish(self, topic: bytes, msg: bytes) -> None:
        """Send the data frame just built (``self.seq``), or spool it."""
        seq = self.seq
        listened = self._listened.get(topic)
        if listened is None:
            listened = self.listened(topic)
        if not listened:
            if self.spool is not None:
                if self.spool.append(self.boot_id, seq, msg):
                    self.counters["spooled"] += 1
                return
            self.counters["sent_unsubscribed"] += 1
        if self._send(msg):
            self.counters["frames_sent"] += 1
            self._remember(seq, msg)
        elif self.spool is not None:
            if self.spool.append(self.boot_id, seq, msg):
                self.counters["spooled"] += 1
        else:
            self.counters["dropped_hwm"] += 1

    # -- sending: ``_send`` with one socket, ``_send_all`` in its place with several --------
    def _send(self, msg: bytes) -> bool:
        assert self.sock is not None
        try:
            self.sock.send(msg, zmq.NOBLOCK)
        except zmq.Again:
            self._full(0, SPOOLING if self.spool is not None else DROPPING)
            return False
        self.counters["bytes_sent"] += len(msg)  # everything handed to ZeroMQ, answers included
        return True

    def _send_all(self, msg: bytes) -> bool:
        """Offer ``msg`` to every socket; True when one whose peers listen for it took it.

        With no socket known to listen (a subscription not read yet) any socket that
        takes it will do, as with one socket.
        """
        topic = msg[: msg.find(wire.DELIM)]
        listening = self._listening.get(topic)
        if listening is None:
            if len(self._listening) >= MAX_TOPICS_KNOWN:
                self._listening.clear()
            listening = self._listening[topic] = frozenset(
                i for i, subs in enumerate(self._subs) if _matches(topic + wire.DELIM, subs))
        taken = False
        refused: list[int] = []
        for i, sock in enumerate(self.socks):
            try:
                sock.send(msg, zmq.NOBLOCK)
            except zmq.Again:
                refused.append(i)
                continue
            if not listening or i in listening:
                taken = True
        if refused:
            then = OTHERS if taken else SPOOLING if self.spool is not None else DROPPING
            for i in refused:
                self._full(i, then)
        if taken:
            self.counters["bytes_sent"] += len(msg)
        return taken

    def _send_on(self, i: int, msg: bytes) -> bool:
        """Send on socket ``i`` only: an answer to what arrived there."""
        try:
            self.socks[i].send(msg, zmq.NOBLOCK)
        except zmq.Again:
            self._full(i, "an answer to it dropped")
            return False
        self.counters["bytes_sent"] += len(msg)
        return True

    def _full(self, i: int, then: str) -> None:
        """Socket ``i`` refused a message: its queue (``sndhwm``) is full; ``then`` says what
        became of the message."""
        what, endpoint = self._peers[i]
        n = self.refused[endpoint] = self.refused.get(endpoint, 0) + 1
        self.counters["send_refused"] += 1
        _limited.warning(f"full:{endpoint}", "%s %s is not taking frames: its queue of %d is "
                         "full; %s (%d refused so far)", what, endpoint, self.config.sndhwm, then, n)

    # -- the ring of recently sent frames, for gap repair -------------------------
    # At most ``ring_frames`` frames (one pop per insert keeps that exact), none
    # older than ``ring_s`` returned (``_recent`` checks the age of what it finds);
    # frames past ``ring_s`` are dropped at most every RING_AGE_CHECK_S.
    def _remember(self, seq: int, msg: bytes) -> None:
        ring = self._ring
        now = time.monotonic()
        ring[seq] = (now, msg)
        if len(ring) > self._ring_frames:
            ring.popitem(last=False)
        if now >= self._ring_age_check:
            self._prune_ring(now)

    def _prune_ring(self, now: float) -> None:
        ring = self._ring
        oldest = now - self.config.ring_s
        while ring and next(iter(ring.values()))[0] < oldest:
            ring.popitem(last=False)
        self._ring_age_check = now + RING_AGE_CHECK_S

    def _recent(self, seq: int, oldest: float) -> bytes | None:
        """The frame ``seq`` if the ring holds it and it was sent at ``oldest`` or later."""
        hit = self._ring.get(seq)
        return hit[1] if hit is not None and hit[0] >= oldest else None

    # -- replay ------------------------------------------------------------------
    @property
    def replaying(self) -> bool:
        return self._pass_left > 0 or self._held is not None

    def replay(self) -> float | None:
        """Send what the pace allows, and attach again the sockets whose reset wait is over
        (:meth:`_reset`); returns seconds until the next step of either, or None."""
        reattach = self._reattach() if any(self._reset_at) else None
        step = self._replay()
        return step if reattach is None else reattach if step is None else min(step, reattach)

    def _replay(self) -> float | None:
        spool = self.spool
        if spool is None or not self.replaying:
            return None
        now = time.monotonic()
        burst = max(1.0, self.replay_rate / 20)
        self._tokens = min(burst, self._tokens + (now - self._last_replay) * self.replay_rate)
        self._last_replay = now
        while self._tokens >= 1.0:
            if self._held is not None:
                boot_id, seq, msg = self._held
            else:
                if self._pass_left <= 0:
                    break
                rec = spool.next()
                self._pass_left -= 1
                if rec is None:
                    self._pass_left = 0
                    break
                boot_id, seq, msg = rec.boot_id, rec.seq, rec.message
            topic = msg[: msg.find(wire.DELIM)]
            if not self.listened(topic):
                self._held = None
                spool.requeue(boot_id, seq, msg)  # still nobody for it: back to the tail
                continue
            if not self._send(msg):
                self._held = (boot_id, seq, msg)
                return 0.01
            self._held = None
            self._tokens -= 1.0
            self.counters["replayed"] += 1
            if boot_id == self.boot_id:
                self._remember(seq, msg)
        if not self.replaying:
            log.info("replay done: %d frames replayed so far; %d still spooled",
                     self.counters["replayed"], spool.pending)
            return None
        return max(0.001, (1.0 - self._tokens) / self.replay_rate)

    # -- gap repair -----------------------------------------------------------------
    # Two token buckets bound what requests can cost, whoever sends them: frames resent
    # (``replay_rate`` per second, REPAIR_BURST_S of it deep) and seqs looked at
    # (REPAIR_SEQS_PER_S, one full request deep).  A request met with an empty bucket is
    # answered as far as the budget goes: the rest is neither resent nor called
    # unavailable, and the collector asks for it again (it retries with backoff).
    def _refill_repair_budget(self) -> None:
        now = time.monotonic()
        dt = now - self._repair_at
        self._repair_at = now
        self._resend_tokens = min(self.replay_rate * REPAIR_BURST_S,
                                  self._resend_tokens + dt * self.replay_rate)
        self._look_tokens = min(float(REPAIR_MAX_SEQS), self._look_tokens + dt * REPAIR_SEQS_PER_S)

    def _repair(self, payload: bytes, on: int = 0) -> None:
        if len(payload) > REPAIR_MAX_BYTES:
            _limited.warning("repair-size", "ignored a repair request of %d bytes", len(payload))
            return
        # protobuf's parser for what may be hostile input; imported on the first request only
        from google.protobuf.message import DecodeError

        from sensorwire.proto.v1.telemetry_pb2 import RepairRequest

        try:
            req = RepairRequest.FromString(payload)
        except DecodeError:
            _limited.warning("repair-decode", "ignored an undecodable repair request")
            return
        if req.device_id != self.device_id:
            return
        self._refill_repair_budget()
        look = min(REPAIR_MAX_SEQS, int(self._look_tokens))  # seqs this request may look at
        frames = int(self._resend_tokens)                     # frames it may have resent
        looked = resent = 0
        cut = False
        oldest = time.monotonic() - self.config.ring_s
        unavailable: list[SeqSpan] = []
        for r in req.ranges:
            first = r.first
            mine = r.boot_id == self.boot_id
            wanted = min(r.last, self.seq) if mine else r.last  # nothing to say about seqs to come
            if first < 1 or wanted < first:
                continue
            if looked >= look:
                cut = True
                break
            last = min(wanted, first + (look - looked) - 1)
            run_start: int | None = None
            seq = first
            while seq <= last:
                have = False
                if mine:
                    hit = self._recent(seq, oldest)
                    if hit is not None:
                        # a full queue is no answer: the rest is left to the next request
                        if resent >= frames or not self._send_on(on, hit):
                            cut = True
                            break
                        resent += 1
                        have = True
                if not have and self.spool is not None and (
                        self.spool.holds(r.boot_id, seq) or self._holding(r.boot_id, seq)):
                    have = True  # the replay will bring it
                if have:
                    if run_start is not None:
                        unavailable.append(SeqSpan(r.boot_id, run_start, seq - 1))
                        run_start = None
                elif run_start is None:
                    run_start = seq
                seq += 1
            looked += seq - first
            if run_start is not None:
                unavailable.append(SeqSpan(r.boot_id, run_start, seq - 1))
            if cut or last < wanted:
                cut = True
                break
        self._look_tokens -= looked
        self._resend_tokens -= resent
        self.counters["repaired"] += resent
        n_gone = sum(u.last - u.first + 1 for u in unavailable)
        self.counters["unavailable"] += n_gone
        if cut:
            self.counters["repairs_cut"] += 1
            _limited.warning("repair-budget", "repair requests ask for more than the agent resends "
                             "(%.0f frames/s, %d seqs looked at/s): %d requests answered only in "
                             "part so far; the rest is left to the next requests", self.replay_rate,
                             REPAIR_SEQS_PER_S, self.counters["repairs_cut"])
        self._log_repair(len(req.ranges), resent, n_gone)
        if unavailable:
            self._unavailable.extend(unavailable)

    def _holding(self, boot_id: int, seq: int) -> bool:
        """Is ``seq`` of ``boot_id`` the replayed frame ZeroMQ refused, out of the spool and
        waiting to be sent again?"""
        held = self._held
        return held is not None and held[0] == boot_id and held[1] == seq

    def _log_repair(self, ranges: int, resent: int, gone: int) -> None:
        """The repair INFO line, at most one every REPAIR_LOG_S (summing the requests between)."""
        acc = self._repair_log
        acc[0] += 1
        acc[1] += ranges
        acc[2] += resent
        acc[3] += gone
        now = time.monotonic()
        if now < self._repair_log_at:
            log.debug("repair request for %d ranges: %d frames sent again, %d no longer "
                      "available", ranges, resent, gone)
            return
        if acc[0] == 1:
            log.info("repair request for %d ranges: %d frames sent again, %d no longer "
                     "available", ranges, resent, gone)
        else:
            log.info("%d repair requests for %d ranges in the last %.0f s: %d frames sent again, "
                     "%d no longer available", acc[0], acc[1], REPAIR_LOG_S, acc[2], acc[3])
        self._repair_log = [0, 0, 0, 0]
        self._repair_log_at = now + REPAIR_LOG_S

    def take_unavailable(self) -> list[SeqSpan]:
        out, self._unavailable = self._unavailable, []
        return out

    # -- heartbeats -----------------------------------------------------------------
    def build_heartbeat(self, interval_s: float, stopping: bool = False,
                        extra: Iterable[tuple[str, int]] = (),
                        unavailable: Iterable[tuple[int, int, int]] = ()) -> bytes:
        """The heartbeat message: the publisher's and the spool's counters, then ``extra``.

        A counter name given twice keeps its last value.  ``unavailable`` holds
        ``(boot_id, first, last)`` ranges (:class:`SeqSpan`).
        """
        if self.clock is not None:
            self.clock_synced = self.clock.synced()
            self._flags = 0 if self.clock_synced else 1
        counters = dict(self.counters)
        self._prune_ring(time.monotonic())
        counters["ring_frames"] = len(self._ring)
        if self.spool is not None:
            counters.update(self.spool.stats())
        counters.update(extra)
        return self._heartbeats.encode(time.time_ns(), time.monotonic() - self.started, interval_s,
                                       self.seq, stopping, counters.items(), self.clock_synced,
                                       unavailable)

    def send_heartbeat(self, msg: bytes) -> None:
        if self._send(msg):
            self.counters["heartbeats_sent"] += 1
        else:
            self.counters["dropped_hwm"] += 1

    def flush(self) -> None:
        """Once per loop iteration: what was spooled reaches the OS."""
        if self.spool is not None:
            self.spool.flush()


def _matches(msg: bytes, prefixes: Collection[bytes]) -> bool:
    """Does one of ``prefixes`` start ``msg``?  Looks up each start of ``msg`` when there are
    fewer of those than prefixes: the cost stays that of the topic's length however many
    subscriptions a flood brings."""
    if len(prefixes) <= len(msg):
        return any(msg.startswith(p) for p in prefixes)
    return any(msg[:n] in prefixes for n in range(len(msg) + 1))


def _last_endpoint(sock: zmq.Socket[bytes]) -> str:
    last = sock.getsockopt(zmq.LAST_ENDPOINT)
    return last.decode() if isinstance(last, bytes) else str(last)


def _quietly(detach: Callable[[str], None], endpoint: str) -> None:
    """Disconnect or unbind; an endpoint libzmq no longer knows is no error here."""
    try:
        detach(endpoint)
    except zmq.ZMQError as exc:
        log.debug("detaching %s: %s", endpoint, exc)
