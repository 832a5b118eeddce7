"""Group fan-out benchmark: one Megolm ciphertext uploaded once (``send_multi``) to N devices,
against N Olm envelopes (``send``).

For each N in ``--members`` a fresh server (``python -m obrolan.server serve``) runs
pinned to core 0 while this load generator runs on core 1. N member devices are
registered with the raw protocol (real keys, bench/_device.py) and stay connected,
each acking every ``deliver`` at once, as a client does after storing it; one more
device sends.

- ``megolm`` (what a group message costs): per message the sender builds a
  ``GroupMessage``, signs its JSON with its device's Ed25519 key
  (``SignedGroupMessage``, as a real client does so that a report can prove who sent
  it), encrypts that once with its Megolm session (obrolan.crypto.megolm), wraps it in a
  ``GroupCiphertext`` and sends one ``send_multi`` frame naming every member device.
- ``olm`` (the contrast, for N in ``--olm-members``): per message one ``Plaintext``
  per member device, each encrypted with that device's Olm session (started from a
  one-time key claimed from the server), in ``send`` frames of at most
  ``max_envelopes_per_send`` envelopes.

Messages go one at a time: the next is sent once the previous one's ``sent`` came
back and every member has received it, so each figure is one message's own cost;
each run measures at least ``--messages`` messages for at least ``--seconds``.
Per N and mode: the sender's CPU time per message (build, sign, encrypt, encode
the frames; not persisting the advanced session), the bytes it uploads per message
(WebSocket payloads), the time from sending to the ``sent`` answer (for ``olm``, to
the last frame's), and the server's CPU time per message over the measured messages
(read from its process CPU clock). Each mode runs twice: with the members connected
(the server stores, pushes to every member, takes their acks and deletes; while a
message waits for its ``sent`` the members are not read, so that the answer is seen
when it comes), then with every member disconnected (the server only stores: the
cost of the enqueue alone). Before measuring, member 0 really decrypts the first
message of each mode and checks the sender's signature. Sharing the Megolm session
key (once per session, over Olm) is not measured.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
from _common import (
    CpuWindow,
    ServerProcess,
    describe_machine,
    percentile,
    pin_load_generator,
    print_table,
    raise_fd_limit,
)
from _device import DEVICE_ID, BenchDevice, expect_frame
from _wsclient import RawWebSocket

from obrolan.crypto import OlmSession, verify
from obrolan.crypto.megolm import InboundGroupSession, OutboundGroupSession
from obrolan.errors import RemoteProtocolError
from obrolan.protocol import content, frames, groups
from obrolan.protocol.limits import Limits
from obrolan.protocol.signing import group_message_bytes

__all__ = ["Measurement", "main"]

READY_LINE = r"listening on (http://\S+)"
SETUP_TIMEOUT = 600.0
"""Most seconds to register and connect every member (1,000 take well under a minute)."""
MESSAGE_TIMEOUT = 60.0
"""Most seconds one message may take to be answered and delivered to every member."""
OFFLINE_SETTLE_SECONDS = 1.0
"""After the members disconnect, how long to wait before measuring with them offline."""
MAX_MESSAGES = 2000
"""Most measured messages per size and mode, whatever ``--seconds`` asks."""
MAX_SECONDS = 60.0
MAX_MEMBERS = 2000

_signed_decoder = msgspec.json.Decoder(groups.SignedGroupMessage)


def process_cpu_clock(pid: int) -> int:
    """The clock id of another process's CPU time (Linux ``MAKE_PROCESS_CPUCLOCK(pid,
    CPUCLOCK_SCHED)``): user plus system time of all its threads, in nanoseconds. psutil's
    figures move in 10 ms ticks, too coarse for a message that costs one millisecond."""
    clock = ((~pid << 3) | 2) & 0xFFFFFFFF
    return clock - 2**32 if clock >= 2**31 else clock


@dataclass
class Measurement:
    """One mode at one group size, over the measured messages."""

    members: int
    mode: str
    online: bool
    """Whether the members were connected (and acking), or all offline."""
    messages: int
    sender_cpu: list[float]
    """Seconds of the sender's CPU per measured message."""
    uploaded: list[int]
    """WebSocket payload bytes the sender uploaded per measured message."""
    enqueue: list[float]
    """Seconds from the first frame sent to the (last) ``sent`` answer, sorted."""
    server_cpu: float
    """Seconds of the server's CPU over the measured messages."""
    window: CpuWindow
    """Wall time, and other processes' CPU on the server's core."""

    def row(self) -> list[str]:
        """The table row."""
        n = self.messages
        server_cpu = self.server_cpu / n
        return [
            f"{self.members:,}",
            self.mode,
            "yes" if self.online else "no",
            str(n),
            f"{sum(self.sender_cpu) / n * 1e6:,.0f}",
            f"{sum(self.uploaded) / n:,.0f}",
            f"{percentile(self.enqueue, 0.50) * 1e3:.2f}",
            f"{percentile(self.enqueue, 0.95) * 1e3:.2f}",
            f"{server_cpu * 1e3:,.2f}",
            f"{server_cpu * 1e6 / self.members:,.0f}",
            f"{self.window.others_cpu / self.window.wall * 100:.0f}",
        ]


HEADERS = [
    "members",
    "mode",
    "members online",
    "messages",
    "sender CPU µs/msg",
    "bytes up/msg",
    "send→sent p50 ms",
    "send→sent p95 ms",
    "server CPU ms/msg",
    "server CPU µs/member",
    "others on core 0 %",
]


@dataclass
class Traffic:
    """What the sender and the members receive: answers, deliveries, errors."""

    errors: list[str] = field(default_factory=list)
    answers: dict[int, asyncio.Future[frames.Sent]] = field(default_factory=dict)
    waiting: dict[str, int] = field(default_factory=dict)
    """Envelope id to the deliveries still expected."""
    all_delivered: asyncio.Future[None] | None = None
    outstanding: int = 0
    next_id: int = 1000
    """The sender's next request id."""

    def expect(self, envelope_ids: dict[str, int]) -> asyncio.Future[None]:
        """Expect these deliveries (envelope id to how many); resolves once all came."""
        self.waiting = dict(envelope_ids)
        self.outstanding = sum(envelope_ids.values())
        self.all_delivered = asyncio.get_running_loop().create_future()
        if not self.outstanding:
            self.all_delivered.set_result(None)
        return self.all_delivered

    def delivered(self, envelope_ids: list[str]) -> None:
        for envelope_id in envelope_ids:
            left = self.waiting.get(envelope_id, 0)
            if left <= 0:
                self.errors.append(f"unexpected delivery of {envelope_id}")
                continue
            self.waiting[envelope_id] = left - 1
            self.outstanding -= 1
        if self.outstanding == 0 and self.all_delivered and not self.all_delivered.done():
            self.all_delivered.set_result(None)

    def decode(self, payload: bytes, who: str) -> frames.ServerFrame | None:
        try:
            frame = frames.decode_server_frame(payload)
        except RemoteProtocolError as exc:
            self.errors.append(f"{who} got a bad frame: {exc}")
            return None
        if isinstance(frame, frames.Error):
            self.errors.append(f"{who} got {frame.code}: {frame.message}")
            return None
        return frame


def member_handler(traffic: Traffic, ws: RawWebSocket) -> Callable[[bytes], None]:
    """Record each ``deliver`` and ack it at once."""

    def handle(payload: bytes) -> None:
        frame = traffic.decode(payload, "member")
        if isinstance(frame, frames.Deliver):
            ids = [envelope.envelope_id for envelope in frame.envelopes]
            traffic.delivered(ids)
            ws.send_text(frames.encode(frames.Ack(envelope_ids=ids)))

    return handle


def sender_handler(traffic: Traffic) -> Callable[[bytes], None]:
    """Resolve each ``sent`` answer's future; anything skipped is an error."""

    def handle(payload: bytes) -> None:
        frame = traffic.decode(payload, "sender")
        if isinstance(frame, frames.Sent):
            if frame.skipped or frame.skipped_recipients:
                traffic.errors.append(f"sent {frame.id} skipped something: {frame}")
            answer = traffic.answers.pop(frame.id, None)
            if answer is not None and not answer.done():
                answer.set_result(frame)

    return handle


# --- what the sender does per message ---------------------------------------------------


class GroupSender:
    """A member device's outbound Megolm session for one group, as a client holds it."""

    def __init__(self, sender: BenchDevice, members: list[BenchDevice], text: str) -> None:
        self.sender = sender
        self.session = OutboundGroupSession.create()
        self.session_key = self.session.session_key
        """What a ``group_key`` would share with the members, before the first message."""
        self.group_id = secrets.token_urlsafe(16)
        self.recipients = [
            frames.Recipient(to_user=member.username, to_device=DEVICE_ID) for member in members
        ]
        self.text = text

    def frames(self, request_id: int) -> tuple[dict[str, int], list[bytes]]:
        """One group message as its ``send_multi`` frame: ({envelope id: deliveries
        expected}, [frame bytes])."""
        message = content.encode(
            groups.GroupMessage(
                group_id=self.group_id,
                sender=self.sender.username,
                sender_device=DEVICE_ID,
                message_id=secrets.token_urlsafe(16),
                sent_at_ms=int(time.time() * 1000),
                text=self.text,
                counter=request_id,
                state_seq=0,
                state_hash=bytes(32),
            )
        )
        signed = groups.SignedGroupMessage(
            message=message, signature=self.sender.identity.sign(group_message_bytes(message))
        )
        body = self.session.encrypt(content.encode(signed))
        ciphertext = content.encode(
            groups.GroupCiphertext(group_session=self.session.session_id, body=body)
        )
        envelope = frames.MultiEnvelope(
            envelope_id=secrets.token_urlsafe(16), recipients=self.recipients, ciphertext=ciphertext
        )
        frame = frames.encode(frames.SendMulti(id=request_id, envelope=envelope))
        return {envelope.envelope_id: len(self.recipients)}, [frame]


def check_group_message(
    member: BenchDevice, sender: BenchDevice, session_key: str, received: bytes
) -> None:
    """Member 0 decrypts a delivered group message and checks the sender's signature.

    Raises:
        RuntimeError: it does not decrypt to a message signed by the sender.
    """
    wrapped = groups.decode_group_ciphertext(received)
    plaintext, _ = InboundGroupSession.from_session_key(session_key).decrypt(wrapped.body)
    signed = _signed_decoder.decode(plaintext)
    verify(sender.identity.ed25519, group_message_bytes(signed.message), signed.signature)
    if groups.decode_group_message(signed.message).sender != sender.username:
        raise RuntimeError(f"{member.username}: the group message names another sender")


class OlmSender:
    """The same message to every member device, one Olm envelope each."""

    def __init__(
        self,
        sender: BenchDevice,
        members: list[BenchDevice],
        sessions: list[OlmSession],
        text: str,
        per_frame: int,
    ) -> None:
        self.sender = sender
        self.members = members
        self.sessions = sessions
        self.text = text
        self.per_frame = per_frame

    def frames(self, first_id: int) -> tuple[dict[str, int], list[bytes]]:
        """One message as ``send`` frames: ({envelope id: 1}, frame bytes)."""
        message = content.Text(
            message_id=secrets.token_urlsafe(16), sent_at_ms=int(time.time() * 1000), text=self.text
        )
        envelopes = []
        for member, session in zip(self.members, self.sessions, strict=True):
            plaintext = content.Plaintext(
                sender=self.sender.username,
                sender_device=DEVICE_ID,
                recipient=member.username,
                recipient_device=DEVICE_ID,
                content=message,
            )
            ciphertext = session.encrypt(
                content.encode(plaintext), sender_key=self.sender.identity.curve25519
            )
            envelopes.append(
                frames.OutboundEnvelope(
                    envelope_id=secrets.token_urlsafe(16),
                    to_user=member.username,
                    to_device=DEVICE_ID,
                    ciphertext=content.encode(ciphertext),
                )
            )
        chunks = [
            envelopes[i : i + self.per_frame] for i in range(0, len(envelopes), self.per_frame)
        ]
        encoded = [
            frames.encode(frames.Send(id=first_id + n, envelopes=chunk))
            for n, chunk in enumerate(chunks)
        ]
        return {e.envelope_id: 1 for e in envelopes}, encoded


def check_olm_message(member: BenchDevice, sender: BenchDevice, received: bytes) -> None:
    """Member 0 decrypts its first Olm envelope (a pre-key message).

    Raises:
        RuntimeError: it does not decrypt to a message from the sender to this member.
    """
    olm = content.decode_olm_ciphertext(received)
    _, plaintext = member.identity.inbound_session(olm.sender_key, olm)
    decoded = content.decode_plaintext(plaintext)
    if (decoded.sender, decoded.recipient) != (sender.username, member.username):
        raise RuntimeError("the Olm envelope decrypts to another conversation")


# --- one group size ----------------------------------------------------------------------


@dataclass
class Group:
    """A server with N connected members and a sender, for one group size."""

    server: ServerProcess
    sender: BenchDevice
    sender_ws: RawWebSocket
    members: list[BenchDevice]
    member_ws: list[RawWebSocket]


async def set_up(server: ServerProcess, url: str, count: int, olm: bool) -> Group:
    """Register the members (with a one-time key each for Olm) and the sender."""
    ws_url = url.replace("http://", "ws://", 1) + "/v1/ws"
    members = [BenchDevice(f"member{i:05d}") for i in range(count)]
    concurrency = asyncio.Semaphore(16)

    async def register(member: BenchDevice) -> RawWebSocket:
        async with concurrency:
            ws = await member.register(ws_url, one_time_keys=1 if olm else 0)
            await expect_frame(ws, frames.Drained)
            return ws

    member_ws = await asyncio.gather(*(register(member) for member in members))
    sender = BenchDevice("sender")
    sender_ws = await sender.register(ws_url)
    await expect_frame(sender_ws, frames.Drained)
    return Group(server, sender, sender_ws, members, list(member_ws))


async def first_delivery(ws: RawWebSocket) -> frames.Envelope:
    """The first envelope delivered on ``ws`` (before handlers are hooked)."""
    deliver = await expect_frame(ws, frames.Deliver)
    assert isinstance(deliver, frames.Deliver)
    [envelope] = deliver.envelopes
    ws.send_text(frames.encode(frames.Ack(envelope_ids=[envelope.envelope_id])))
    return envelope


async def measure(
    group: Group,
    traffic: Traffic,
    mode: str,
    make: Callable[[int], tuple[dict[str, int], list[bytes]]],
    *,
    online: bool,
    warmup: int,
    messages: int,
    seconds: float,
) -> Measurement:
    """Send ``warmup`` messages one at a time, then measure at least ``messages`` and for
    at least ``seconds`` (at most :data:`MAX_MESSAGES`).

    With ``online`` the members are connected: while a message waits for its ``sent``
    they are not read (the server's pushes wait in their sockets), so that this load
    generator sees the answer when it comes instead of after a thousand deliveries;
    then they are read, and ack, before the next message.
    """
    sender_cpu: list[float] = []
    uploaded: list[int] = []
    enqueue: list[float] = []
    window = CpuWindow(group.server)
    server_clock = process_cpu_clock(group.server.pid)
    server_start = 0.0
    loop = asyncio.get_running_loop()
    members = [ws.transport for ws in group.member_ws if ws.transport is not None]
    number = 0
    measuring_since = 0.0
    while number < warmup or not (
        len(enqueue) >= MAX_MESSAGES
        or (len(enqueue) >= messages and time.perf_counter() - measuring_since >= seconds)
    ):
        if number == warmup:
            window.start()
            server_start = time.clock_gettime(server_clock)
            measuring_since = time.perf_counter()
        request_id = traffic.next_id
        started = time.process_time()
        deliveries, encoded = make(request_id)
        cpu = time.process_time() - started
        traffic.next_id += len(encoded)
        all_delivered = traffic.expect(deliveries if online else {})
        answers = []
        for n in range(len(encoded)):
            answer: asyncio.Future[frames.Sent] = loop.create_future()
            traffic.answers[request_id + n] = answer
            answers.append(answer)
        if online:
            for transport in members:
                transport.pause_reading()
        sent_at = time.perf_counter()
        for frame in encoded:
            group.sender_ws.send_text(frame)
        async with asyncio.timeout(MESSAGE_TIMEOUT):
            await asyncio.gather(*answers)
            answered = time.perf_counter() - sent_at
            if online:
                for transport in members:
                    transport.resume_reading()
            await all_delivered
        if traffic.errors:
            raise RuntimeError(f"{mode}, {len(group.members)} members: {traffic.errors[0]}")
        if number >= warmup:
            sender_cpu.append(cpu)
            uploaded.append(sum(len(frame) for frame in encoded))
            enqueue.append(answered)
        number += 1
    server_cpu = time.clock_gettime(server_clock) - server_start
    window.stop()
    return Measurement(
        len(group.members),
        mode,
        online,
        len(enqueue),
        sender_cpu,
        uploaded,
        sorted(enqueue),
        server_cpu,
        window,
    )


async def run_size(
    count: int, olm: bool, args: argparse.Namespace, workdir: Path
) -> list[Measurement]:
    """Every mode for one group size on a fresh server: members connected, then not."""
    data = Path(tempfile.mkdtemp(prefix="obrolan-data-", dir=workdir))
    argv = [sys.executable, "-m", "obrolan.server", "serve", "--port", "0", "--data", str(data)]
    # The olm contrast uploads one envelope per member for each message, back to back:
    # far past one account's default --send-rate, which is not what this measures.
    argv += ["--send-rate", "1000000"]
    server = ServerProcess(f"obrolan-{count}", argv, workdir)
    group: Group | None = None
    try:
        url = server.wait_for_line(READY_LINE).group(1)
        async with asyncio.timeout(SETUP_TIMEOUT):
            group = await set_up(server, url, count, olm)
        text = ("obrolan benchmark message, " * (args.text_bytes // 27 + 1))[: args.text_bytes]
        senders: dict[str, Callable[[int], tuple[dict[str, int], list[bytes]]]] = {}
        group_sender = GroupSender(group.sender, group.members, text)
        senders["megolm"] = group_sender.frames
        if olm:  # claim the sessions while the sender's frames are still read in turn
            sessions: list[OlmSession] = []
            async with asyncio.timeout(SETUP_TIMEOUT):
                for peer in group.members:
                    sessions.append(
                        await group.sender.claim_session(group.sender_ws, peer.username)
                    )
            per_frame = Limits().max_envelopes_per_send  # the server runs with the defaults
            senders["olm"] = OlmSender(
                group.sender, group.members, sessions, text, per_frame
            ).frames

        # One real delivery of each kind to every member; member 0 decrypts it.
        member, member_ws = group.members[0], group.member_ws[0]
        for mode, make in senders.items():
            _, encoded = make(1)
            for frame in encoded:
                group.sender_ws.send_text(frame)
            for _ in encoded:
                await expect_frame(group.sender_ws, frames.Sent)
            received = (await first_delivery(member_ws)).ciphertext
            if mode == "megolm":
                check_group_message(member, group.sender, group_sender.session_key, received)
            else:
                check_olm_message(member, group.sender, received)
            for ws in group.member_ws[1:]:
                await first_delivery(ws)

        traffic = Traffic()
        group.sender_ws.on_text = sender_handler(traffic)
        for ws in group.member_ws:
            ws.on_text = member_handler(traffic, ws)
        results = []
        for online in (True, False):
            if not online:  # the members go away; give the server a moment to notice
                for ws in group.member_ws:
                    ws.close()
                await asyncio.sleep(OFFLINE_SETTLE_SECONDS)
            for mode, make in senders.items():
                results.append(
                    await measure(
                        group,
                        traffic,
                        mode,
                        make,
                        online=online,
                        warmup=args.warmup,
                        messages=args.messages,
                        seconds=args.seconds,
                    )
                )
        return results
    finally:
        if group is not None:
            for ws in [group.sender_ws, *group.member_ws]:
                ws.close()
        server.stop()


# --- command line ------------------------------------------------------------------------


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",") if part]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of counts"
        ) from None
    if any(not 1 <= size <= MAX_MEMBERS for size in sizes):
        raise argparse.ArgumentTypeError(f"group sizes must be between 1 and {MAX_MEMBERS}")
    return sizes


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line; ``--help`` describes every option."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Example: python bench/group_fanout.py --members 10,100,1000 --messages 50",
    )
    parser.add_argument(
        "--members",
        type=_sizes,
        default=[10, 100, 1000],
        help="group sizes (member devices), comma-separated (default 10,100,1000)",
    )
    parser.add_argument(
        "--olm-members",
        type=_sizes,
        default=[10, 100, 1000],
        help="sizes also measured with one Olm envelope per member (default 10,100,1000)",
    )
    parser.add_argument(
        "--messages",
        type=int,
        default=50,
        help="least measured messages per size and mode (default 50)",
    )
    parser.add_argument(
        "--seconds",
        type=float,
        default=2.0,
        help=f"least measured seconds per size and mode; at most {MAX_MESSAGES} messages "
        "either way (default 2)",
    )
    parser.add_argument(
        "--warmup", type=int, default=5, help="unmeasured messages before them (default 5)"
    )
    parser.add_argument(
        "--text-bytes", type=int, default=100, help="text length of each message (default 100)"
    )
    args = parser.parse_args(argv)
    if not 1 <= args.messages <= MAX_MESSAGES or not 0 <= args.warmup <= MAX_MESSAGES:
        parser.error(
            f"--messages must be in [1, {MAX_MESSAGES}] and --warmup in [0, {MAX_MESSAGES}]"
        )
    if not 0 <= args.seconds <= MAX_SECONDS:
        parser.error(f"--seconds must be in [0, {MAX_SECONDS}]")
    if not 1 <= args.text_bytes <= 4000:
        parser.error("--text-bytes must be in [1, 4000]")
    return args


async def run(args: argparse.Namespace) -> list[Measurement]:
    """Every group size in turn, each on a fresh server."""
    results: list[Measurement] = []
    with tempfile.TemporaryDirectory(prefix="obrolan-bench-") as tmp:
        for count in args.members:
            olm = count in args.olm_members
            modes = "megolm and olm" if olm else "megolm"
            print(f"running {count} members ({modes}) ...", flush=True)
            results += await run_size(count, olm, args, Path(tmp))
    return results


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the machine and the table."""
    args = parse_args(argv)
    print(describe_machine(), flush=True)
    pin_load_generator()
    raise_fd_limit()
    results = asyncio.run(run(args))
    print()
    print_table(HEADERS, [m.row() for m in results])
    return 0


if __name__ == "__main__":
    sys.exit(main())
