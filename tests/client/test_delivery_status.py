"""The sender's rule for a message with no delivery receipt after the server's TTL."""

from __future__ import annotations

from typing import Any

from obrolan.client.delivery_status import NOT_DELIVERED, UNCONFIRMED, delivery_status
from obrolan.client.expired import expired_notice, expired_to_tell

TTL = 60
SENT = 1_000_000


def status(**changes: Any) -> str | None:
    fields: dict[str, Any] = {
        "outgoing": True,
        "group": False,
        "state": "sent",
        "receipt": None,
        "sent_at_ms": SENT,
        "ttl_seconds": TTL,
        "peer_receipts_off": False,
        "now_ms": SENT + TTL * 1000,
    }
    return delivery_status(**{**fields, **changes})


def test_no_receipt_once_the_ttl_ran_out_is_not_delivered() -> None:
    assert status() == NOT_DELIVERED


def test_within_the_ttl_nothing_is_said_yet() -> None:
    assert status(now_ms=SENT + TTL * 1000 - 1) is None


def test_a_recipient_without_receipts_makes_it_unconfirmed() -> None:
    assert status(peer_receipts_off=True) == UNCONFIRMED


def test_a_receipt_settles_it() -> None:
    assert status(receipt="delivered") is None
    assert status(receipt="read", now_ms=SENT + 10 * TTL * 1000) is None


def test_only_sent_messages_of_this_device_are_judged() -> None:
    assert status(outgoing=False) is None
    assert status(state="queued") is None
    assert status(state="failed") is None
    assert status(state="notice") is None
    assert status(group=True) is None  # group messages carry no receipts


def test_unknown_ttl_or_send_time_says_nothing() -> None:
    assert status(ttl_seconds=None) is None
    assert status(sent_at_ms=None) is None


def test_expired_count_is_told_once_even_when_the_ack_was_lost() -> None:
    """The count repeats until acked; what was acked and told before is not told again."""
    assert expired_to_tell(0, 0) == (0, 0)
    assert expired_to_tell(0, 3) == (3, 3)
    assert expired_to_tell(3, 3) == (0, 3)  # our ack was lost: told already
    assert expired_to_tell(3, 5) == (2, 5)  # two more expired since
    assert expired_to_tell(3, 1) == (1, 1)  # the server took our ack; one new


def test_expired_notice_says_how_many() -> None:
    assert expired_notice(1).startswith("1 message sent to this device expired on the server")
    assert expired_notice(2).startswith("2 messages sent to this device expired on the server")
