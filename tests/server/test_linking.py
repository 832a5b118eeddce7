"""Linking a new device: its offer waits in server memory until an existing device answers."""

from __future__ import annotations

import asyncio
import itertools
import secrets
from collections.abc import Callable

from obrolan.crypto.account import LinkCode
from obrolan.protocol.codes import ErrorCode
from obrolan.protocol.frames import (
    DevicesPublished,
    Error,
    LinkAnswer,
    LinkApprove,
    LinkApproved,
    LinkFetch,
    LinkOffer,
    LinkWait,
    LinkWaiting,
    Welcome,
)
from tests.server.conftest import Connect, Online
from tests.server.exchange import POLL_GUARD_SECONDS
from tests.support.raw_client import RawClient, RawDevice
from tests.support.server import ServerProcess

POLICY_VIOLATION = 1008
ANSWER = b'{"type": 0, "body": "an Olm pre-key message, opaque to the server"}'


def refused(reply: object, code: ErrorCode, request_id: int | None) -> bool:
    return isinstance(reply, Error) and (reply.code, reply.id) == (code, request_id)


async def wait_for_link(
    server: ServerProcess, connect: Connect, device: RawDevice, code: LinkCode
) -> RawClient:
    """A new connection on which ``device`` waits under ``code``'s link id."""
    client = await connect(server.ws_url)
    reply = await client.request(LinkWait(link_id=code.link_id, offer=device.link_offer(code)))
    assert isinstance(reply, LinkWaiting) and reply.link_id == code.link_id, reply
    return client


async def until_forgotten(client: RawClient, link_id: str) -> Error:
    """Fetch the link until the server has handled its device's disconnection."""
    request_ids = itertools.count(100)
    async with asyncio.timeout(POLL_GUARD_SECONDS):
        while isinstance(
            reply := await client.request(LinkFetch(id=next(request_ids), link_id=link_id)),
            LinkOffer,
        ):
            await asyncio.sleep(0.02)
    assert isinstance(reply, Error), reply
    return reply


async def test_server_links_a_new_device_through_an_existing_one(
    server: ServerProcess, connect: Connect, online: Online
) -> None:
    """link_wait, link_fetch, link_approve: the offer reaches the approver as sealed, the
    answer reaches the waiting device; after the list is published the device is in."""
    phone_client, phone = await online(server, "alice")
    laptop = RawDevice("alice", "laptop", phone.account)
    code = LinkCode.create()
    waiting = await connect(server.ws_url)
    reply = await waiting.request(LinkWait(link_id=code.link_id, offer=laptop.link_offer(code)))
    assert reply == LinkWaiting(link_id=code.link_id, expires_in_seconds=600)

    offer = await phone_client.request(LinkFetch(id=1, link_id=code.link_id))
    assert isinstance(offer, LinkOffer) and (offer.id, offer.link_id) == (1, code.link_id)
    opened = code.open_offer(offer.offer)
    assert (opened.username, opened.device) == ("alice", laptop.keys())

    approve = LinkApprove(id=2, link_id=code.link_id, answer=ANSWER)
    assert await phone_client.request(approve) == LinkApproved(id=2)
    assert await waiting.recv() == LinkAnswer(link_id=code.link_id, answer=ANSWER)

    published = await phone_client.request(phone.account.publish_frame(3, [phone, laptop]))
    assert published == DevicesPublished(id=3, version=2)
    assert isinstance(await waiting.authenticate(laptop), Welcome)


async def test_server_uses_a_link_up_with_its_approval(
    server: ServerProcess, connect: Connect, online: Online
) -> None:
    """After an approval the link id answers link_used to fetch and approve, and it cannot
    be waited under again while it is remembered."""
    phone_client, _ = await online(server, "alice")
    code = LinkCode.create()
    waiting = await wait_for_link(server, connect, RawDevice("alice", "laptop"), code)
    approve = LinkApprove(id=1, link_id=code.link_id, answer=ANSWER)
    assert await phone_client.request(approve) == LinkApproved(id=1)
    assert isinstance(await waiting.recv(), LinkAnswer)
    await waiting.close()  # a used link stays used when its device goes away

    fetched = await phone_client.request(LinkFetch(id=2, link_id=code.link_id))
    assert refused(fetched, ErrorCode.LINK_USED, 2), fetched
    again = await phone_client.request(LinkApprove(id=3, link_id=code.link_id, answer=ANSWER))
    assert refused(again, ErrorCode.LINK_USED, 3), again
    other = await connect(server.ws_url)
    reply = await other.request(LinkWait(link_id=code.link_id, offer=b"another offer"))
    assert refused(reply, ErrorCode.LINK_EXISTS, None), reply


async def test_server_refuses_unknown_and_taken_link_ids(
    server: ServerProcess, connect: Connect, online: Online
) -> None:
    """A link id nobody waits under is unknown_link (also once its device went away); a
    second device waiting under a taken id gets link_exists and stays connected."""
    phone_client, _ = await online(server, "alice")
    nobody = LinkCode.create().link_id
    fetched = await phone_client.request(LinkFetch(id=1, link_id=nobody))
    assert refused(fetched, ErrorCode.UNKNOWN_LINK, 1), fetched
    approved = await phone_client.request(LinkApprove(id=2, link_id=nobody, answer=ANSWER))
    assert refused(approved, ErrorCode.UNKNOWN_LINK, 2), approved

    code = LinkCode.create()
    waiting = await wait_for_link(server, connect, RawDevice("alice", "laptop"), code)
    second = await connect(server.ws_url)
    taken = await second.request(LinkWait(link_id=code.link_id, offer=b"someone else's"))
    assert refused(taken, ErrorCode.LINK_EXISTS, None), taken
    twice = await waiting.request(LinkWait(link_id=LinkCode.create().link_id, offer=b"more"))
    assert refused(twice, ErrorCode.LINK_EXISTS, None), twice

    await waiting.close()
    assert (await until_forgotten(phone_client, code.link_id)).code is ErrorCode.UNKNOWN_LINK
    gone = await phone_client.request(LinkApprove(id=4, link_id=code.link_id, answer=ANSWER))
    assert refused(gone, ErrorCode.UNKNOWN_LINK, 4), gone
    assert isinstance(await second.register(RawDevice("carol")), Welcome)  # still open


async def test_server_expires_links_and_closes_their_connections(
    server_factory: Callable[..., ServerProcess], connect: Connect, online: Online
) -> None:
    """With --link-ttl 2 and --auth-timeout 1, a waiting connection outlives the auth
    timeout, then gets unknown_link and is closed when its link expires; the link is gone."""
    server = server_factory("--link-ttl", "2", "--auth-timeout", "1")
    phone_client, _ = await online(server, "alice")
    code = LinkCode.create()
    waiting = await connect(server.ws_url)
    reply = await waiting.request(
        LinkWait(link_id=code.link_id, offer=RawDevice("alice", "laptop").link_offer(code))
    )
    assert reply == LinkWaiting(link_id=code.link_id, expires_in_seconds=2)

    expired = await waiting.recv()
    assert refused(expired, ErrorCode.UNKNOWN_LINK, None), expired
    assert await waiting.expect_close() == (POLICY_VIOLATION, "link expired")
    fetched = await phone_client.request(LinkFetch(id=1, link_id=code.link_id))
    assert refused(fetched, ErrorCode.UNKNOWN_LINK, 1), fetched


async def test_server_refuses_link_wait_on_an_authenticated_connection(
    server: ServerProcess, online: Online
) -> None:
    """An authenticated device cannot wait for a link: already_authenticated."""
    client, _ = await online(server, "alice")
    reply = await client.request(LinkWait(link_id=LinkCode.create().link_id, offer=b"offer"))
    assert refused(reply, ErrorCode.ALREADY_AUTHENTICATED, None), reply


async def test_server_never_writes_a_link_offer_or_answer_to_disk(
    server: ServerProcess, connect: Connect, online: Online
) -> None:
    """Link offers and answers live in memory only: no byte of either is in the data folder,
    while the device waits or after it was answered."""
    phone_client, _ = await online(server, "alice")
    offer = b"OFFER-MARKER-" + secrets.token_hex(16).encode()
    answer = b"ANSWER-MARKER-" + secrets.token_hex(16).encode()
    code = LinkCode.create()
    waiting = await connect(server.ws_url)
    reply = await waiting.request(LinkWait(link_id=code.link_id, offer=offer))
    assert isinstance(reply, LinkWaiting), reply

    def on_disk() -> bytes:
        return b"".join(p.read_bytes() for p in server.data_dir.rglob("*") if p.is_file())

    fetched = await phone_client.request(LinkFetch(id=1, link_id=code.link_id))
    assert isinstance(fetched, LinkOffer) and fetched.offer == offer
    assert offer not in on_disk()
    approve = LinkApprove(id=2, link_id=code.link_id, answer=answer)
    assert await phone_client.request(approve) == LinkApproved(id=2)
    assert await waiting.recv() == LinkAnswer(link_id=code.link_id, answer=answer)
    everything = on_disk()
    assert offer not in everything and answer not in everything
