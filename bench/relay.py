"""Relay benchmark: delivered messages/s, latency and server CPU per delivered message.

N sender/receiver pairs of real devices (real Ed25519/Curve25519 keys, real Olm
envelopes) go through the server under test: the sender sends one envelope per
``send`` frame, the server stores it and pushes it to the receiver, the receiver
acks it and the server deletes it. Latency runs from the sender's ``send`` to the
receiver's ``deliver``. Each run is bounded: warm-up, then ``--seconds`` measured,
then at most a few seconds of draining.

The same load is driven through three targets, one after the other, each a fresh
process pinned to core 0 while this load generator runs on core 1:

- ``obrolan``: the real relay (``python -m obrolan.server serve``): challenge-signature
  auth, validation, durable SQLite mailbox, delete on ack;
- ``minimal``: bench/minimal_relay.py, the floor: the same frames over aiohttp, in
  memory, no auth, no storage;
- ``mosquitto``: Debian's mosquitto, a QoS 1 PUBLISH to the receiver's topic per
  message (the C anchor for acknowledged delivery), when the binary is installed.

At a fixed ``--rate`` a 1 ms ticker spreads the sends over the pairs (open loop);
at rate 0 every pair keeps ``--window`` envelopes in flight (flat out). The stable
figure is the server's user+system CPU time over the measured window divided by the
messages delivered in it; messages/s depends on the machine's mood.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from _common import (
    CpuWindow,
    ServerProcess,
    describe_machine,
    free_port,
    percentile,
    pin_load_generator,
    print_table,
    raise_fd_limit,
)
from _device import DEVICE_ID, BenchDevice, expect_frame
from _mqttclient import RawMqtt
from _wsclient import RawWebSocket

from obrolan.crypto import OlmSession
from obrolan.errors import RemoteProtocolError
from obrolan.protocol import content, frames

__all__ = ["Load", "Measurement", "main"]

BENCH_DIR = Path(__file__).resolve().parent
TARGETS = ("obrolan", "minimal", "mosquitto")
POOL_SIZE = 32
"""Envelopes pre-encrypted per pair and sent in turn (each time under a new envelope id)."""
TICK = 0.001
"""Seconds between two wake-ups of the fixed-rate sender."""
RATE_WINDOW = 1000
"""At a fixed rate, most envelopes one pair may have in flight; beyond, a send is skipped."""
DRAIN_SECONDS = 5.0
"""How long to wait, after the window, for envelopes still in flight."""
SETUP_TIMEOUT = 120.0
MAX_SECONDS = 120
READY_LINE = r"listening on (http://\S+)"

CPU_TARGET_US = 40.0
P50_TARGET_MS = 5.0
P99_TARGET_MS = 20.0
LATENCY_TARGET_RATE = 2000

# Hot-path framing: byte templates cut from obrolan's own codec output, checked below,
# so the load generator sends exactly what frames.encode would without encoding per message.
_SEND_HEAD = b'{"type":"send","id":'
_DELIVER_HEAD = b'{"type":"deliver"'
_SENT_HEAD = b'{"type":"sent"'
_ACK_HEAD, _ACK_JOIN, _ACK_TAIL = b'{"type":"ack","envelope_ids":["', b'","', b'"]}'
_ENVELOPE_ID = re.compile(rb'"envelope_id":"([A-Za-z0-9_-]+)"')
_PLACEHOLDER = "P" * 17


def encode_ack(envelope_ids: list[bytes]) -> bytes:
    """The ``ack`` frame for these ids, byte for byte what ``frames.encode`` gives."""
    return _ACK_HEAD + _ACK_JOIN.join(envelope_ids) + _ACK_TAIL


if encode_ack([b"a" * 16, b"b" * 16]) != frames.encode(
    frames.Ack(envelope_ids=["a" * 16, "b" * 16])
):
    raise RuntimeError("obrolan's ack frame changed: update bench/relay.py's template")


class Link(Protocol):
    """A sender's way to put one envelope on the wire for its receiver."""

    def send(self, envelope_id: bytes, seq: int) -> None:
        """Queue the ``seq``-th envelope of this pair under ``envelope_id``."""


@dataclass
class Measurement:
    """What one target did over one measured window."""

    target: str
    rate: int
    delivered: int
    window: CpuWindow
    rss_bytes: int
    latencies: list[float]
    undelivered: int
    skipped: int
    errors: list[str]

    @property
    def per_second(self) -> float:
        """Messages delivered per second of the window."""
        return self.delivered / self.window.wall

    @property
    def cpu_us_per_message(self) -> float:
        """Server CPU microseconds per delivered message."""
        return self.window.server_cpu * 1e6 / self.delivered if self.delivered else float("nan")

    def row(self) -> list[str]:
        """The table row of this run."""
        wall = self.window.wall
        return [
            self.target,
            str(self.rate) if self.rate else "max",
            str(self.delivered),
            f"{self.per_second:,.0f}",
            f"{percentile(self.latencies, 0.50) * 1e3:.2f}",
            f"{percentile(self.latencies, 0.99) * 1e3:.2f}",
            f"{self.cpu_us_per_message:.1f}",
            f"{self.window.server_cpu / wall * 100:.0f}",
            f"{self.window.load_cpu / wall * 100:.0f}",
            f"{self.window.others_cpu / wall * 100:.0f}",
            f"{self.rss_bytes / 2**20:.1f}",
        ]


HEADERS = [
    "target",
    "rate",
    "delivered",
    "msgs/s",
    "p50 ms",
    "p99 ms",
    "server CPU µs/msg",
    "server CPU %",
    "load gen CPU %",
    "others on core 0 %",
    "server RSS MB",
]


@dataclass
class Load:
    """Sends at a fixed total rate (or flat out) over the pairs' links, and the deliveries."""

    pairs: int
    rate: int
    """Total envelopes per second to offer; 0 means flat out."""
    window: int
    """Flat out: envelopes each pair keeps in flight."""
    links: list[Link] = field(default_factory=list)
    in_flight: dict[bytes, tuple[float, int]] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    skipped: int = 0
    measuring: bool = False
    sending: bool = False
    _seq: int = 0

    def __post_init__(self) -> None:
        self.credits = [self.window if self.rate == 0 else RATE_WINDOW] * self.pairs

    def delivered(self, envelope_ids: Iterable[bytes]) -> None:
        """Record deliveries at the receiver (a redelivered id counts once)."""
        now = time.perf_counter()
        for envelope_id in envelope_ids:
            entry = self.in_flight.pop(envelope_id, None)
            if entry is None:
                continue
            sent_at, pair = entry
            self.credits[pair] += 1
            if self.measuring:
                self.latencies.append(now - sent_at)
            if self.rate == 0 and self.sending:
                self._send(pair)

    def _send(self, pair: int) -> bool:
        if not self.credits[pair]:
            return False
        self.credits[pair] -= 1
        self._seq += 1
        envelope_id = b"b%05ds%010d" % (pair, self._seq)
        self.in_flight[envelope_id] = (time.perf_counter(), pair)
        self.links[pair].send(envelope_id, self._seq)
        return True

    async def _tick(self, start: float, stop_at: float) -> None:
        issued = 0
        pair = 0
        while (now := time.perf_counter()) < stop_at:
            due = int((now - start) * self.rate) - issued
            for _ in range(due):
                if not self._send(pair):
                    self.skipped += 1
                pair = (pair + 1) % self.pairs
            issued += due
            await asyncio.sleep(TICK)

    async def run(
        self, target: str, server: ServerProcess, warmup: float, seconds: float
    ) -> Measurement:
        """Send for ``warmup`` + ``seconds``, measuring the last ``seconds``, then drain."""
        start = time.perf_counter()
        self.sending = True
        ticker = None
        if self.rate:
            ticker = asyncio.create_task(self._tick(start, start + warmup + seconds))
        else:
            for pair in range(self.pairs):
                for _ in range(self.window):
                    self._send(pair)
        await asyncio.sleep(warmup)
        window = CpuWindow(server)
        self.measuring = True
        window.start()
        await asyncio.sleep(seconds)
        window.stop()
        self.measuring = False
        self.sending = False
        delivered = len(self.latencies)
        rss = server.rss_bytes()
        if ticker is not None:
            ticker.cancel()
            await asyncio.gather(ticker, return_exceptions=True)
        deadline = time.perf_counter() + DRAIN_SECONDS
        while self.in_flight and time.perf_counter() < deadline:
            await asyncio.sleep(0.05)
        return Measurement(
            target=target,
            rate=self.rate,
            delivered=delivered,
            window=window,
            rss_bytes=rss,
            latencies=sorted(self.latencies),
            undelivered=len(self.in_flight),
            skipped=self.skipped,
            errors=self.errors,
        )


# --- envelopes ----------------------------------------------------------------------------


def make_pool(
    sender: BenchDevice, receiver: BenchDevice, session: OlmSession, text_bytes: int
) -> list[bytes]:
    """Real envelopes' ciphertexts from ``sender`` to ``receiver``, as a client makes them."""
    text = ("obrolan benchmark message, " * (text_bytes // 27 + 1))[:text_bytes]
    pool = []
    for number in range(POOL_SIZE):
        plaintext = content.Plaintext(
            sender=sender.username,
            sender_device=DEVICE_ID,
            recipient=receiver.username,
            recipient_device=DEVICE_ID,
            content=content.Text(
                message_id=f"m{number:015d}", sent_at_ms=int(time.time() * 1000), text=text
            ),
        )
        ciphertext = session.encrypt(
            content.encode(plaintext), sender_key=sender.identity.curve25519
        )
        pool.append(content.encode(ciphertext))
    return pool


def make_pairs(count: int) -> list[tuple[BenchDevice, BenchDevice]]:
    """``count`` (sender, receiver) devices with fresh identities."""
    return [(BenchDevice(f"bs{i:05d}"), BenchDevice(f"br{i:05d}")) for i in range(count)]


# --- obrolan frames (the real relay and the minimal one) ----------------------------------


class FrameLink:
    """Sends one envelope per ``send`` frame over the sender's WebSocket."""

    def __init__(self, ws: RawWebSocket, to_user: str, pool: list[bytes]) -> None:
        self.ws = ws
        self.middle = b""
        self.tails: list[bytes] = []
        for ciphertext in pool:
            envelope = frames.OutboundEnvelope(
                envelope_id=_PLACEHOLDER,
                to_user=to_user,
                to_device=DEVICE_ID,
                ciphertext=ciphertext,
            )
            sample = frames.encode(frames.Send(id=0, envelopes=[envelope]))
            if not sample.startswith(_SEND_HEAD + b"0,"):
                raise RuntimeError("obrolan's send frame changed: update bench/relay.py's template")
            self.middle, tail = sample[len(_SEND_HEAD) + 1 :].split(_PLACEHOLDER.encode())
            self.tails.append(tail)

    def send(self, envelope_id: bytes, seq: int) -> None:
        """Queue the pool's next ciphertext under a new envelope id (request id ``seq``)."""
        self.ws.send_text(
            _SEND_HEAD + b"%d" % seq + self.middle + envelope_id + self.tails[seq % POOL_SIZE]
        )


def _decode_or_record(payload: bytes, load: Load, who: str) -> frames.ServerFrame | None:
    try:
        frame = frames.decode_server_frame(payload)
    except RemoteProtocolError as exc:
        load.errors.append(f"{who} got a bad frame: {exc}")
        return None
    if isinstance(frame, frames.Error):
        load.errors.append(f"{who} got {frame.code}: {frame.message}")
        return None
    return frame


def sender_handler(load: Load) -> Callable[[bytes], None]:
    """Read the sender's ``sent`` answers, keeping any error."""

    def handle(payload: bytes) -> None:
        if not payload.startswith(_SENT_HEAD):
            _decode_or_record(payload, load, "sender")

    return handle


def receiver_handler(load: Load, ws: RawWebSocket) -> Callable[[bytes], None]:
    """Record each ``deliver`` and ack it at once, as a client does after storing it."""

    def handle(payload: bytes) -> None:
        if payload.startswith(_DELIVER_HEAD):
            ids = _ENVELOPE_ID.findall(payload)
        else:
            frame = _decode_or_record(payload, load, "receiver")
            if not isinstance(frame, frames.Deliver):
                return
            ids = [envelope.envelope_id.encode() for envelope in frame.envelopes]
        load.delivered(ids)
        ws.send_text(encode_ack(ids))

    return handle


async def check_first_delivery(
    pair: int,
    sender: BenchDevice,
    sender_ws: RawWebSocket,
    receiver: BenchDevice,
    receiver_ws: RawWebSocket,
    first: bytes,
) -> None:
    """Send the session's first envelope and have the receiver really decrypt it.

    Raises:
        RuntimeError: the envelope did not arrive intact or does not decrypt to a
            message for this receiver.
    """
    envelope = frames.OutboundEnvelope(
        envelope_id=f"check{pair:011d}",
        to_user=receiver.username,
        to_device=DEVICE_ID,
        ciphertext=first,
    )
    sender_ws.send_text(frames.encode(frames.Send(id=0, envelopes=[envelope])))
    await expect_frame(sender_ws, frames.Sent)
    deliver = await expect_frame(receiver_ws, frames.Deliver)
    assert isinstance(deliver, frames.Deliver)
    [received] = deliver.envelopes
    olm = content.decode_olm_ciphertext(received.ciphertext)
    _, plaintext = receiver.identity.inbound_session(olm.sender_key, olm)
    decoded = content.decode_plaintext(plaintext)
    if (decoded.sender, decoded.recipient) != (sender.username, receiver.username):
        raise RuntimeError(f"pair {pair}: delivered envelope decrypts to the wrong conversation")
    receiver_ws.send_text(frames.encode(frames.Ack(envelope_ids=[received.envelope_id])))


async def connect_frames(
    target: str, base_url: str, load: Load, opened: list[RawWebSocket | RawMqtt], text_bytes: int
) -> list[Link]:
    """Connect every pair (registering on obrolan), check one real delivery each, hook the handlers."""
    ws_base = base_url.replace("http://", "ws://", 1)
    concurrency = asyncio.Semaphore(16)

    async def connect(pair: int, sender: BenchDevice, receiver: BenchDevice) -> Link:
        async with concurrency:
            if target == "obrolan":
                url = f"{ws_base}/v1/ws"
                receiver_ws = await receiver.register(url, one_time_keys=1)
                opened.append(receiver_ws)
                sender_ws = await sender.register(url)
                opened.append(sender_ws)
                session = await sender.claim_session(sender_ws, receiver.username)
            else:
                receiver_ws = await RawWebSocket.connect(
                    f"{ws_base}/ws?device={receiver.username}/{DEVICE_ID}"
                )
                opened.append(receiver_ws)
                sender_ws = await RawWebSocket.connect(
                    f"{ws_base}/ws?device={sender.username}/{DEVICE_ID}"
                )
                opened.append(sender_ws)
                session = sender.local_session(receiver)
            pool = make_pool(sender, receiver, session, text_bytes)
            await check_first_delivery(pair, sender, sender_ws, receiver, receiver_ws, pool[0])
        sender_ws.on_text = sender_handler(load)
        receiver_ws.on_text = receiver_handler(load, receiver_ws)
        return FrameLink(sender_ws, receiver.username, pool)

    return await asyncio.gather(
        *(connect(i, s, r) for i, (s, r) in enumerate(make_pairs(load.pairs)))
    )


# --- mosquitto ----------------------------------------------------------------------------


def mosquitto_binary() -> str | None:
    """Debian's mosquitto, whether or not /usr/sbin is on PATH."""
    return shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")


class MqttLink:
    """Publishes one envelope per QoS 1 PUBLISH to the receiver's topic."""

    def __init__(self, client: RawMqtt, topic: str, pool: list[bytes]) -> None:
        self.client = client
        self.topic = topic.encode()
        self.pool = pool

    def send(self, envelope_id: bytes, seq: int) -> None:
        """Queue the envelope id and the pool's next ciphertext; the PUBACK is read aside."""
        self.client.publish(self.topic, envelope_id + b" " + self.pool[seq % POOL_SIZE])


def mqtt_handler(load: Load) -> Callable[[bytes], None]:
    """Record each message (the client sends the PUBACK that acknowledges it)."""

    def handle(payload: bytes) -> None:
        load.delivered((payload[: payload.index(b" ")],))

    return handle


async def connect_mqtt(
    port: int, load: Load, opened: list[RawWebSocket | RawMqtt], text_bytes: int
) -> list[Link]:
    """Connect a subscribed receiver and a sender client per pair."""
    links: list[Link] = []
    for sender, receiver in make_pairs(load.pairs):
        topic = f"obrolan-bench/{receiver.username}"
        receiving = await RawMqtt.connect("127.0.0.1", port, receiver.username)
        opened.append(receiving)
        await receiving.subscribe(topic)
        receiving.on_message = mqtt_handler(load)
        sending = await RawMqtt.connect("127.0.0.1", port, sender.username)
        opened.append(sending)
        pool = make_pool(sender, receiver, sender.local_session(receiver), text_bytes)
        links.append(MqttLink(sending, topic, pool))
    return links


# --- one run ------------------------------------------------------------------------------


def start_target(target: str, workdir: Path) -> tuple[ServerProcess, str]:
    """Start the target's server pinned to the server core; returns it and its base URL."""
    if target == "obrolan":
        data = Path(tempfile.mkdtemp(prefix="obrolan-data-", dir=workdir))
        argv = [sys.executable, "-m", "obrolan.server", "serve", "--port", "0", "--data", str(data)]
        server = ServerProcess(target, argv, workdir)
        return server, server.wait_for_line(READY_LINE).group(1)
    if target == "minimal":
        argv = [sys.executable, str(BENCH_DIR / "minimal_relay.py"), "--port", "0"]
        server = ServerProcess(target, argv, workdir)
        return server, server.wait_for_line(READY_LINE).group(1)
    binary = mosquitto_binary()
    assert binary is not None
    port = free_port()
    config = workdir / "mosquitto.conf"
    config.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        "log_dest stderr\nlog_type error\nmax_queued_messages 100000\n"
    )
    server = ServerProcess(target, [binary, "-c", str(config)], workdir)
    server.wait_for_port(port)
    return server, f"mqtt://127.0.0.1:{port}"


async def measure(target: str, rate: int, args: argparse.Namespace, workdir: Path) -> Measurement:
    """Start the target, connect the pairs, run the load, stop everything."""
    server, url = start_target(target, workdir)
    load = Load(pairs=args.pairs, rate=rate, window=args.window)
    opened: list[RawWebSocket | RawMqtt] = []
    try:
        async with asyncio.timeout(SETUP_TIMEOUT):
            if target == "mosquitto":
                port = int(url.rsplit(":", 1)[1])
                load.links = await connect_mqtt(port, load, opened, args.text_bytes)
            else:
                load.links = await connect_frames(target, url, load, opened, args.text_bytes)
        return await load.run(target, server, args.warmup, args.seconds)
    finally:
        for connection in opened:
            connection.close()
        server.stop()


# --- command line -------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line; ``--help`` describes every option."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Example: python bench/relay.py --pairs 50 --rate 2000,0 --seconds 10",
    )
    parser.add_argument(
        "--pairs", type=int, default=50, help="concurrent sender/receiver pairs (default 50)"
    )
    parser.add_argument(
        "--rate",
        default="2000,0",
        help="total msgs/s to offer, comma-separated for several runs; 0 = flat out (default 2000,0)",
    )
    parser.add_argument(
        "--seconds",
        type=float,
        default=10.0,
        help=f"measured window per run, at most {MAX_SECONDS} (default 10)",
    )
    parser.add_argument(
        "--warmup", type=float, default=2.0, help="unmeasured seconds before the window (default 2)"
    )
    parser.add_argument(
        "--window",
        type=int,
        default=16,
        help="flat out: envelopes each pair keeps in flight (default 16)",
    )
    parser.add_argument(
        "--text-bytes", type=int, default=100, help="text length of each message (default 100)"
    )
    parser.add_argument(
        "--targets",
        default=",".join(TARGETS),
        help=f"comma-separated, from {', '.join(TARGETS)} (default all)",
    )
    args = parser.parse_args(argv)
    try:
        args.rates = [int(rate) for rate in args.rate.split(",")]
    except ValueError:
        parser.error(f"--rate must be comma-separated integers, not {args.rate!r}")
    args.target_list = [t for t in args.targets.split(",") if t]
    unknown = set(args.target_list) - set(TARGETS)
    if unknown:
        parser.error(
            f"unknown target(s) {', '.join(sorted(unknown))}; choose from {', '.join(TARGETS)}"
        )
    if not 0 < args.seconds <= MAX_SECONDS or not 0 <= args.warmup <= MAX_SECONDS:
        parser.error(f"--seconds must be in (0, {MAX_SECONDS}] and --warmup in [0, {MAX_SECONDS}]")
    if (
        args.pairs < 1
        or args.window < 1
        or any(rate < 0 for rate in args.rates)
        or args.text_bytes < 1
    ):
        parser.error("--pairs, --window and --text-bytes must be positive, --rate not negative")
    return args


def verdict(value: float, limit: float) -> str:
    """``met`` or ``NOT met``, with the margin."""
    if value <= limit:
        return f"met ({value:.1f} <= {limit:g})"
    return f"NOT met ({value:.1f} > {limit:g}, {value / limit:.1f}x)"


def summarize(results: list[Measurement]) -> None:
    """Print the ratios to the floor and to mosquitto, and obrolan against its targets."""
    by_key = {(m.target, m.rate): m for m in results}
    for rate in dict.fromkeys(m.rate for m in results):
        obrolan = by_key.get(("obrolan", rate))
        if obrolan is None:
            continue
        label = f"{rate} msgs/s" if rate else "flat out"
        for other in ("minimal", "mosquitto"):
            anchor = by_key.get((other, rate))
            if anchor is not None:
                ratio = obrolan.cpu_us_per_message / anchor.cpu_us_per_message
                print(f"{label}: server CPU per message, obrolan/{other} = {ratio:.1f}x")
        print(
            f"{label}: obrolan <= {CPU_TARGET_US:g} µs/msg: {verdict(obrolan.cpu_us_per_message, CPU_TARGET_US)}"
        )
        mosquitto = by_key.get(("mosquitto", rate))
        if mosquitto is not None:
            stretch = 2 * mosquitto.cpu_us_per_message
            print(
                f"{label}: stretch, within 2x of mosquitto QoS 1: {verdict(obrolan.cpu_us_per_message, stretch)}"
            )
        if rate == LATENCY_TARGET_RATE:
            p50, p99 = (
                percentile(obrolan.latencies, 0.5) * 1e3,
                percentile(obrolan.latencies, 0.99) * 1e3,
            )
            print(f"{label}: obrolan p50 <= {P50_TARGET_MS:g} ms: {verdict(p50, P50_TARGET_MS)}")
            print(f"{label}: obrolan p99 <= {P99_TARGET_MS:g} ms: {verdict(p99, P99_TARGET_MS)}")


async def run(args: argparse.Namespace) -> list[Measurement]:
    """Every (rate, target) run in turn, each on a fresh server."""
    results = []
    with tempfile.TemporaryDirectory(prefix="obrolan-bench-") as tmp:
        for rate in args.rates:
            for target in args.target_list:
                if target == "mosquitto" and mosquitto_binary() is None:
                    print(
                        "mosquitto is not installed (apt-get install mosquitto): skipped",
                        flush=True,
                    )
                    continue
                label = f"{rate} msgs/s" if rate else "flat out"
                print(
                    f"running {target} at {label}: {args.pairs} pairs, {args.seconds:g} s ...",
                    flush=True,
                )
                results.append(await measure(target, rate, args, Path(tmp)))
    return results


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the machine, the table, the ratios and the verdicts."""
    args = parse_args(argv)
    print(describe_machine(), flush=True)
    pin_load_generator()
    raise_fd_limit()
    results = asyncio.run(run(args))
    print()
    print_table(HEADERS, [m.row() for m in results])
    print()
    summarize(results)
    problems = [(m, e) for m in results for e in m.errors] + [
        (m, f"{m.undelivered} envelopes still undelivered {DRAIN_SECONDS:g} s after the window")
        for m in results
        if m.undelivered
    ]
    problems += [
        (m, f"{m.skipped} scheduled sends skipped: the window was full")
        for m in results
        if m.skipped
    ]
    for m, problem in problems:
        print(f"problem in {m.target} at rate {m.rate or 'max'}: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
