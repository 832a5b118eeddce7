"""One envelope that does not decode costs only itself, not its deliver frame or the connection.

A shim in front of the real server breaks one envelope of a ``deliver`` frame (its
ciphertext is not base64) and adds one whose ``envelope_id`` cannot be read. Before
the fix the whole frame failed to decode: the client dropped the connection, the good
envelopes with it, and reconnected to the same frame forever.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from obrolan.client import Client
from obrolan.client.models import MessageState
from tests.e2e.conftest import mailbox_rows
from tests.support.shim import MaliciousServer


async def test_one_bad_envelope_is_refused_and_the_rest_of_its_frame_kept(
    server,
    profiles: Callable[[str], Path],  # type: ignore[no-untyped-def]
) -> None:
    async with MaliciousServer(server.ws_url) as shim:
        alice = await Client.register(profiles("alice"), server.url, "alice", None)
        bob = await Client.register(profiles("bob"), shim.url, "bob", None)
        alice.accept("bob")
        bob.accept("alice")
        try:
            await bob.sync()
            await bob.close()  # offline: alice's three messages wait in one queue
            for text in ("one", "two", "three"):
                await alice.send("bob", text)
            await alice.flush(30)

            broken: list[dict[str, Any]] = []

            def break_one(frame: dict[str, Any]) -> dict[str, Any]:
                if frame.get("type") != "deliver" or broken:
                    return frame
                first, *rest = frame["envelopes"]
                bad = {**first, "ciphertext": "!! not base64 !!"}
                no_id = {"envelope_id": 7, "from_user": "alice"}
                broken.append(frame)
                return {**frame, "envelopes": [bad, no_id, *rest]}

            shim.rewrite = break_one
            async with Client.open(profiles("bob"), None) as bob:
                await bob.sync()
                history = bob.history("alice")
            assert len(broken[0]["envelopes"]) == 3  # the good ones came in the same frame
            assert [m.text for m in history if m.state is not MessageState.NOTICE] == [
                "two",
                "three",
            ]
            notices = [m.text for m in history if m.state is MessageState.NOTICE]
            (refused,) = [n for n in notices if "could not be read" in n]
            assert "malformed" in refused
            authentications = [f for f in shim.sent_by_clients if f["type"] == "authenticate"]
            assert len(authentications) == 2  # bob's first sync, then one connection: kept
            acked = {
                i for f in shim.sent_by_clients if f["type"] == "ack" for i in f["envelope_ids"]
            }
            assert broken[0]["envelopes"][0]["envelope_id"] in acked
            assert mailbox_rows(server.data_dir, "bob") == 0  # the broken one is acked too
        finally:
            await alice.close()
            await bob.close()
