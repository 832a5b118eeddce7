"""Ids the client makes: random, well formed, and safe to type after a CLI option."""

from __future__ import annotations

import msgspec

from obrolan.client.ids import new_id
from obrolan.protocol.groups import GroupId


def test_new_ids_never_start_with_a_dash_and_fit_the_wire_type() -> None:
    # 2,000 draws: with a plain base64url draw about 31 of them would start with '-'.
    ids = [new_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    assert not any(i.startswith("-") for i in ids)
    assert {len(i) for i in ids} == {22}
    for i in ids[:50]:
        assert msgspec.convert(i, GroupId) == i
