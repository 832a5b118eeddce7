"""SAS verification between two online devices, through a real server.

Both sides real: two in-process clients, and two `obrolan verify` processes.
One side scripted: bob's real client sends hand-made ``verify_*`` events and
reads alice's from its inbox, to pin down the rules (which start wins, stale
starts, other users, bad commitments and MACs, the timeout).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

from obrolan.client import Client
from obrolan.client.ids import new_id
from obrolan.client.store import now_ms
from obrolan.client.verification import SasCodes, VerificationFailed, verify
from obrolan.crypto.account import AccountKey
from obrolan.crypto.sas import SasExchange
from obrolan.errors import ConfigError, UnknownContact
from obrolan.protocol import content
from tests.e2e.conftest import CLI_TIMEOUT, Cli, CliResult
from tests.support.server import ServerProcess

EVENT_TIMEOUT = 30.0
"""Bounds a wait for an event that must come, so a bug fails the test instead of hanging it."""
SMALL_TXN = "-" * 16
"""Sorts before every txn a client makes ('-' is the smallest base64url character)."""
LARGE_TXN = "z" * 64
"""Sorts after every txn a client makes (22 characters, each at most 'z')."""

K = TypeVar("K", content.VerifyStart, content.VerifyKey, content.VerifyMac, content.VerifyCancel)


def _verified(client: Client, username: str) -> bool:
    return any(c.username == username and c.verified for c in client.contacts())


def _always(answer: bool, shown: list[SasCodes]) -> Callable[[SasCodes], bool]:
    def confirm(codes: SasCodes) -> bool:
        shown.append(codes)
        return answer

    return confirm


async def _expect(client: Client, kind: type[K]) -> K:
    """The next verification event the scripted side receives; it must be of ``kind``."""
    body = await asyncio.wait_for(client.verification_inbox.get(), EVENT_TIMEOUT)
    assert isinstance(body.content, kind), body.content
    return body.content


def _start(txn: str, sas: SasExchange, sent_at_ms: int | None = None) -> content.VerifyStart:
    return content.VerifyStart(
        message_id=new_id(),
        sent_at_ms=now_ms() if sent_at_ms is None else sent_at_ms,
        txn=txn,
        commitment=sas.commitment,
    )


def _key(txn: str, sas: SasExchange) -> content.VerifyKey:
    return content.VerifyKey(
        message_id=new_id(), sent_at_ms=now_ms(), txn=txn, public_key=sas.public_key
    )


def _mac(txn: str, sas: SasExchange, account_key: str, device_key: str) -> content.VerifyMac:
    account_mac, device_mac = sas.macs(account_key, device_key)
    return content.VerifyMac(
        message_id=new_id(),
        sent_at_ms=now_ms(),
        txn=txn,
        account_key_mac=account_mac,
        device_key_mac=device_mac,
    )


# --- both sides real ------------------------------------------------------------------


async def test_verify_both_confirm_marks_both_verified_with_the_same_codes(
    pair: tuple[Client, Client],
) -> None:
    """Started at the same time (crossing starts): one txn wins, both see the same emoji and
    numbers, and each marks the other verified."""
    alice, bob = pair
    alice_saw: list[SasCodes] = []
    bob_saw: list[SasCodes] = []
    alice_codes, bob_codes = await asyncio.gather(
        verify(alice, "bob", _always(True, alice_saw), timeout=60),
        verify(bob, "alice", _always(True, bob_saw), timeout=60),
    )
    assert alice_saw == [alice_codes] and bob_saw == [bob_codes]
    assert len(alice_codes.emoji) == 7
    assert alice_codes.emoji == bob_codes.emoji
    assert alice_codes.decimals == bob_codes.decimals
    assert alice_codes.txn == bob_codes.txn
    assert {alice_codes.initiator, bob_codes.initiator} == {True, False}
    assert (alice_codes.peer_device, bob_codes.peer_device) == (bob.device_id, alice.device_id)
    assert _verified(alice, "bob") and _verified(bob, "alice")


async def test_verify_answers_a_peer_start_that_arrived_before_it_ran(
    pair: tuple[Client, Client],
) -> None:
    """alice's start (smaller txn) reached bob's device before bob ran verify: it counts."""
    alice, bob = pair
    alice_sas = SasExchange(SMALL_TXN, "alice", alice.device_id, initiator=True)
    await alice.send_verification("bob", _start(SMALL_TXN, alice_sas), bob.device_id)
    await alice.flush(timeout=EVENT_TIMEOUT)
    await bob.sync()  # the start waits in bob's inbox
    bob_run = asyncio.create_task(verify(bob, "alice", _always(True, []), timeout=60))
    await _expect(alice, content.VerifyStart)  # bob's own, which loses
    answer = await _expect(alice, content.VerifyKey)
    assert answer.txn == SMALL_TXN
    alice_sas.accept_peer("bob", bob.device_id, answer.public_key)
    await alice.send_verification("bob", _key(SMALL_TXN, alice_sas), bob.device_id)
    await alice.send_verification(
        "bob",
        _mac(SMALL_TXN, alice_sas, alice.account_key, alice.whoami().ed25519),
        bob.device_id,
    )
    mac = await _expect(alice, content.VerifyMac)
    alice_sas.verify_macs(
        bob.account_key, bob.whoami().ed25519, mac.account_key_mac, mac.device_key_mac
    )
    codes = await bob_run
    assert not codes.initiator and codes.emoji == tuple(alice_sas.emoji())
    assert _verified(bob, "alice")


async def test_verify_does_not_answer_a_start_cancelled_before_it_ran(
    pair: tuple[Client, Client],
) -> None:
    """An earlier start of alice's that she cancelled is not answered: bob waits for an
    answer to his own start instead."""
    alice, bob = pair
    earlier = SasExchange(SMALL_TXN, "alice", alice.device_id, initiator=True)
    await alice.send_verification("bob", _start(SMALL_TXN, earlier), bob.device_id)
    await alice.send_verification(
        "bob",
        content.VerifyCancel(
            message_id=new_id(), sent_at_ms=now_ms(), txn=SMALL_TXN, reason="timeout"
        ),
        bob.device_id,
    )
    await alice.flush(timeout=EVENT_TIMEOUT)
    await bob.sync()  # the start and its cancel wait in bob's inbox
    bob_run = asyncio.create_task(verify(bob, "alice", _always(True, []), timeout=60))
    start = await _expect(alice, content.VerifyStart)
    alice_sas = SasExchange(start.txn, "alice", alice.device_id, initiator=False)
    await alice.send_verification("bob", _key(start.txn, alice_sas), bob.device_id)
    reveal = await _expect(alice, content.VerifyKey)
    assert reveal.txn == start.txn  # not an answer to the cancelled start
    alice_sas.accept_peer("bob", bob.device_id, reveal.public_key, start.commitment)
    await alice.send_verification(
        "bob",
        _mac(start.txn, alice_sas, alice.account_key, alice.whoami().ed25519),
        bob.device_id,
    )
    await _expect(alice, content.VerifyMac)
    codes = await bob_run
    assert codes.initiator and codes.emoji == tuple(alice_sas.emoji())
    assert _verified(bob, "alice")


async def test_verify_a_no_on_one_side_marks_neither_and_both_fail_clearly(
    pair: tuple[Client, Client],
) -> None:
    """bob says the codes differ while alice is still looking: both fail, nothing is marked."""
    alice, bob = pair
    alice_saw: list[SasCodes] = []

    async def alice_looks_forever(codes: SasCodes) -> bool:
        alice_saw.append(codes)
        await asyncio.Event().wait()  # only bob's "no" ends this question
        return True

    alice_run, bob_run = await asyncio.gather(
        verify(alice, "bob", alice_looks_forever, timeout=60),
        verify(bob, "alice", _always(False, []), timeout=60),
        return_exceptions=True,
    )
    assert isinstance(alice_run, VerificationFailed), alice_run
    assert (alice_run.reason, alice_run.by_peer) == ("mismatch", True)
    assert str(alice_run) == "bob said the codes do not match; nothing was marked verified"
    assert isinstance(bob_run, VerificationFailed), bob_run
    assert (bob_run.reason, bob_run.by_peer) == ("mismatch", False)
    assert "you said the codes do not match; nothing was marked verified" in str(bob_run)
    assert len(alice_saw) == 1
    assert not _verified(alice, "bob") and not _verified(bob, "alice")


async def test_verify_refuses_yourself_and_unknown_users(pair: tuple[Client, Client]) -> None:
    """Verifying your own account or a name the server does not know is a clear error."""
    alice, _ = pair
    with pytest.raises(ConfigError, match="cannot verify yourself"):
        await verify(alice, "alice", _always(True, []))
    with pytest.raises(UnknownContact, match="nobody"):
        await verify(alice, "nobody", _always(True, []), timeout=60)


# --- bob scripted -----------------------------------------------------------------------


async def test_verify_answers_no_larger_start_and_ignores_other_users(
    server: ServerProcess, profiles: Callable[[str], Path], pair: tuple[Client, Client]
) -> None:
    """alice's start wins over bob's larger one, so she waits for bob's answer; carol's
    answer and cancel for alice's txn do not count; alice verifies bob as the initiator."""
    alice, bob = pair
    bob.start()
    carol = await Client.register(profiles("carol"), server.url, "carol", None)
    try:
        shown: list[SasCodes] = []
        alice_run = asyncio.create_task(verify(alice, "bob", _always(True, shown), timeout=60))
        start = await _expect(bob, content.VerifyStart)
        bob_start = SasExchange(LARGE_TXN, "bob", bob.device_id, initiator=True)
        await bob.send_verification("alice", _start(LARGE_TXN, bob_start), alice.device_id)
        await bob.flush(timeout=EVENT_TIMEOUT)

        intruder = SasExchange(start.txn, "carol", carol.device_id, initiator=False)
        await carol.send_verification("alice", _key(start.txn, intruder), alice.device_id)
        await carol.send_verification(
            "alice",
            content.VerifyCancel(
                message_id=new_id(), sent_at_ms=now_ms(), txn=start.txn, reason="mismatch"
            ),
            alice.device_id,
        )
        await carol.flush(timeout=EVENT_TIMEOUT)

        bob_sas = SasExchange(start.txn, "bob", bob.device_id, initiator=False)
        await bob.send_verification("alice", _key(start.txn, bob_sas), alice.device_id)
        reveal = await _expect(bob, content.VerifyKey)
        assert reveal.txn == start.txn  # not an answer to bob's larger start
        bob_sas.accept_peer("alice", alice.device_id, reveal.public_key, start.commitment)
        await bob.send_verification(
            "alice",
            _mac(start.txn, bob_sas, bob.account_key, bob.whoami().ed25519),
            alice.device_id,
        )
        mac = await _expect(bob, content.VerifyMac)
        bob_sas.verify_macs(
            alice.account_key, alice.whoami().ed25519, mac.account_key_mac, mac.device_key_mac
        )
        codes = await alice_run
    finally:
        await carol.close()
    assert shown == [codes]
    assert codes.initiator and codes.txn == start.txn and codes.peer_device == bob.device_id
    assert codes.emoji == tuple(bob_sas.emoji()) and codes.decimals == bob_sas.decimals()
    assert _verified(alice, "bob")


async def test_verify_answers_a_fresh_smaller_start_and_not_a_stale_one(
    pair: tuple[Client, Client],
) -> None:
    """A start sent 11 minutes ago is ignored; a fresh one with a smaller txn than alice's
    wins: alice abandons hers, answers it, checks its commitment and verifies bob."""
    alice, bob = pair
    bob.start()
    alice_run = asyncio.create_task(verify(alice, "bob", _always(True, []), timeout=60))
    alice_start = await _expect(bob, content.VerifyStart)

    stale = SasExchange(SMALL_TXN, "bob", bob.device_id, initiator=True)
    eleven_minutes_ago = now_ms() - 11 * 60 * 1000
    await bob.send_verification(
        "alice", _start(SMALL_TXN, stale, eleven_minutes_ago), alice.device_id
    )
    fresh_txn = "-" * 15 + "0"
    bob_sas = SasExchange(fresh_txn, "bob", bob.device_id, initiator=True)
    await bob.send_verification("alice", _start(fresh_txn, bob_sas), alice.device_id)
    answer = await _expect(bob, content.VerifyKey)
    assert answer.txn == fresh_txn  # neither the stale start nor alice's own
    bob_sas.accept_peer("alice", alice.device_id, answer.public_key)
    await bob.send_verification("alice", _key(fresh_txn, bob_sas), alice.device_id)
    await bob.send_verification(
        "alice", _mac(fresh_txn, bob_sas, bob.account_key, bob.whoami().ed25519), alice.device_id
    )
    mac = await _expect(bob, content.VerifyMac)
    assert mac.txn == fresh_txn
    bob_sas.verify_macs(
        alice.account_key, alice.whoami().ed25519, mac.account_key_mac, mac.device_key_mac
    )
    codes = await alice_run
    assert not codes.initiator and codes.txn == fresh_txn != alice_start.txn
    assert codes.emoji == tuple(bob_sas.emoji())
    assert _verified(alice, "bob")


async def test_verify_cancels_a_key_other_than_the_committed_one(
    pair: tuple[Client, Client],
) -> None:
    """bob commits to one SAS key and reveals another: alice sends bad_commitment, fails,
    and never shows codes."""
    alice, bob = pair
    bob.start()
    shown: list[SasCodes] = []
    alice_run = asyncio.create_task(verify(alice, "bob", _always(True, shown), timeout=60))
    await _expect(bob, content.VerifyStart)
    committed = SasExchange(SMALL_TXN, "bob", bob.device_id, initiator=True)
    revealed = SasExchange(SMALL_TXN, "bob", bob.device_id, initiator=True)
    await bob.send_verification("alice", _start(SMALL_TXN, committed), alice.device_id)
    assert (await _expect(bob, content.VerifyKey)).txn == SMALL_TXN
    await bob.send_verification("alice", _key(SMALL_TXN, revealed), alice.device_id)
    cancel = await _expect(bob, content.VerifyCancel)
    assert (cancel.txn, cancel.reason) == (SMALL_TXN, "bad_commitment")
    with pytest.raises(VerificationFailed, match="another SAS key than it committed to") as failed:
        await alice_run
    assert (failed.value.reason, failed.value.by_peer) == ("bad_commitment", False)
    assert shown == [] and not _verified(alice, "bob")


async def test_verify_refuses_a_mac_over_another_account_key(
    pair: tuple[Client, Client],
) -> None:
    """bob's MAC covers an account key other than the one alice pinned: bad_mac, not verified."""
    alice, bob = pair
    bob.start()
    alice_run = asyncio.create_task(verify(alice, "bob", _always(True, []), timeout=60))
    start = await _expect(bob, content.VerifyStart)
    bob_sas = SasExchange(start.txn, "bob", bob.device_id, initiator=False)
    await bob.send_verification("alice", _key(start.txn, bob_sas), alice.device_id)
    reveal = await _expect(bob, content.VerifyKey)
    bob_sas.accept_peer("alice", alice.device_id, reveal.public_key, start.commitment)
    other_account = AccountKey.create().public
    await bob.send_verification(
        "alice", _mac(start.txn, bob_sas, other_account, bob.whoami().ed25519), alice.device_id
    )
    await _expect(bob, content.VerifyMac)  # alice said yes and sent hers first
    cancel = await _expect(bob, content.VerifyCancel)
    assert (cancel.txn, cancel.reason) == (start.txn, "bad_mac")
    with pytest.raises(VerificationFailed, match="account key MAC does not match") as failed:
        await alice_run
    assert failed.value.reason == "bad_mac"
    assert not _verified(alice, "bob")


async def test_verify_times_out_and_cancels_its_start(pair: tuple[Client, Client]) -> None:
    """bob never answers: alice gives up with a clear error and cancels her start."""
    alice, bob = pair
    bob.start()
    await alice.pinned_account_key("bob")  # connected and bob known: the start goes out at once
    with pytest.raises(VerificationFailed, match="bob did not answer within 1 s") as failed:
        await verify(alice, "bob", _always(True, []), timeout=1)
    assert failed.value.reason == "timeout"
    start = await _expect(bob, content.VerifyStart)
    cancel = await _expect(bob, content.VerifyCancel)
    assert (cancel.txn, cancel.reason) == (start.txn, "timeout")
    assert not _verified(alice, "bob")


# --- the command ------------------------------------------------------------------------


def _verify_both(
    cli: Cli, tmp_path: Path, alice: tuple[Path, str], bob: tuple[Path, str]
) -> tuple[CliResult, CliResult]:
    """`obrolan verify` as alice and as bob at the same time, each answering from stdin."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OBROLAN_")}
    runs = []
    for me, peer, (profile, answer) in (("alice", "bob", alice), ("bob", "alice", bob)):
        out, err = tmp_path / f"{me}.out", tmp_path / f"{me}.err"
        with out.open("w") as stdout, err.open("w") as stderr:
            process = subprocess.Popen(
                [sys.executable, "-m", "obrolan", "verify", peer, "--profile", str(profile)],
                env=env,
                stdin=subprocess.PIPE,
                stdout=stdout,
                stderr=stderr,
                text=True,
            )
        assert process.stdin is not None
        process.stdin.write(answer)
        process.stdin.close()
        runs.append((process, out, err))
    results = []
    for process, out, err in runs:
        code = process.wait(timeout=CLI_TIMEOUT)
        results.append(CliResult(code, out.read_text(), err.read_text()))
    for result in results:
        assert "Traceback" not in result.stderr, result.stderr
    return results[0], results[1]


def _verified_contacts(cli: Cli, profile: Path) -> list[tuple[str, bool]]:
    listed = cli("contacts", "--json", "--profile", str(profile))
    assert listed.returncode == 0, listed.stderr
    contacts = listed.json()
    assert isinstance(contacts, list)
    return [(c["username"], c["verified"]) for c in contacts]


def _emoji_line(stdout: str) -> str:
    return next(line.strip() for line in stdout.splitlines() if line.startswith("    "))


def test_cli_verify_both_answer_yes(
    cli: Cli, profiles: Callable[[str], Path], tmp_path: Path
) -> None:
    """Two `obrolan verify` processes, "y" piped to each: both print the same emoji, say the
    other is verified, and `contacts` shows it."""
    cli.register("alice", profiles("alice"))
    cli.register("bob", profiles("bob"))
    alice, bob = _verify_both(cli, tmp_path, (profiles("alice"), "y\n"), (profiles("bob"), "y\n"))
    assert alice.returncode == 0, alice.stderr
    assert bob.returncode == 0, bob.stderr
    assert "Do these match what bob sees? [y/N]" in alice.stdout
    assert alice.stdout.rstrip().endswith("bob is verified")
    assert bob.stdout.rstrip().endswith("alice is verified")
    assert _emoji_line(alice.stdout) == _emoji_line(bob.stdout)
    assert _verified_contacts(cli, profiles("alice")) == [("bob", True)]
    assert _verified_contacts(cli, profiles("bob")) == [("alice", True)]


def test_cli_verify_a_no_fails_both_and_marks_nothing(
    cli: Cli, profiles: Callable[[str], Path], tmp_path: Path
) -> None:
    """alice answers "y", bob "n": both exit non-zero with one clear line, nobody is verified."""
    cli.register("alice", profiles("alice"))
    cli.register("bob", profiles("bob"))
    alice, bob = _verify_both(cli, tmp_path, (profiles("alice"), "y\n"), (profiles("bob"), "n\n"))
    assert alice.returncode == 1
    assert "obrolan: bob said the codes do not match; nothing was marked verified" in alice.stderr
    assert bob.returncode == 1
    assert "obrolan: you said the codes do not match; nothing was marked verified" in bob.stderr
    assert _verified_contacts(cli, profiles("alice")) == [("bob", False)]
    assert _verified_contacts(cli, profiles("bob")) == [("alice", False)]


def test_cli_verify_bad_arguments_are_one_clear_line(
    cli: Cli, profiles: Callable[[str], Path]
) -> None:
    """Verifying yourself, or an unknown user, ends with one line and exit code 1."""
    cli.register("alice", profiles("alice"))
    itself = cli("verify", "alice", "--profile", str(profiles("alice")))
    assert itself.returncode == 1
    assert "cannot verify yourself" in itself.stderr
    unknown = cli("verify", "nobody", "--profile", str(profiles("alice")))
    assert unknown.returncode == 1
    assert "unknown user: nobody" in unknown.stderr
