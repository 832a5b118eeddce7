"""On-device search over a real SQLCipher profile store and its FTS5 index."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from obrolan.client import search as search_module
from obrolan.client.ids import new_id
from obrolan.client.models import MessageState
from obrolan.client.search import fts_query, search
from obrolan.client.store import Store, now_ms
from obrolan.client.vault import Vault, create_vault
from obrolan.errors import ConfigError

_clock = itertools.count(1_700_000_000_000, 60_000)


@pytest.fixture
def vault(tmp_path: Path) -> Iterator[Vault]:
    with create_vault(tmp_path / "profile", None) as opened:
        Store(opened)  # brings the schema (and its FTS5 index) up to date
        yield opened


def _add(
    vault: Vault, peer: str, text: str, *, outgoing: bool = False, state: MessageState | None = None
) -> int:
    store = Store(vault)
    with store.transaction():
        rowid = store.add_message(
            message_id=new_id(),
            peer=peer,
            sender="me" if outgoing else peer,
            sender_device="dev1",
            outgoing=outgoing,
            text=text,
            sent_at_ms=next(_clock),
            state=state or (MessageState.SENT if outgoing else MessageState.RECEIVED),
        )
    assert rowid is not None
    return rowid


def _texts(vault: Vault, query: str, *, with_user: str | None = None, limit: int = 20) -> list[str]:
    return [hit.text for hit in search(vault.connection, query, with_user=with_user, limit=limit)]


def _execute(vault: Vault, sql: str, *params: object) -> None:
    with vault.transaction() as db:
        db.execute(sql, params)


def test_search_ranks_the_denser_match_first(vault: Vault) -> None:
    """bm25: a short message about pizza outranks a long one that mentions it once."""
    _add(vault, "bob", "pizza pizza, who wants pizza")
    _add(vault, "bob", "we could do something tonight, maybe a film and then pizza or a walk")
    assert _texts(vault, "pizza") == [
        "pizza pizza, who wants pizza",
        "we could do something tonight, maybe a film and then pizza or a walk",
    ]


def test_search_breaks_ties_with_the_newer_message_first(vault: Vault) -> None:
    """Equal relevance: the message that arrived later comes first."""
    older = _add(vault, "bob", "see you at noon")
    newer = _add(vault, "carol", "see you at noon")
    hits = search(vault.connection, "noon")
    assert [h.peer for h in hits] == ["carol", "bob"]
    assert hits[0].rank == hits[1].rank and newer > older


def test_search_returns_the_hit_with_a_marked_snippet(vault: Vault) -> None:
    """A hit carries its ids, sender and text, and a snippet with the match marked in context."""
    long_text = (
        "first we go to the market for bread and cheese, then we walk along the river "
        "until the old bridge where the kayaks start, and after that we have lunch"
    )
    _add(vault, "bob", long_text)
    (hit,) = search(vault.connection, "kayaks")
    assert (hit.peer, hit.sender, hit.text) == ("bob", "bob", long_text)
    assert "[kayaks]" in hit.snippet
    assert "bridge where the" in hit.snippet  # context around the match
    assert hit.snippet.startswith("…") and hit.snippet.endswith("…")
    assert len(hit.snippet) < len(long_text)
    (bold,) = search(vault.connection, "kayaks", marks=("<b>", "</b>"))
    assert "<b>kayaks</b>" in bold.snippet


def test_search_with_user_keeps_one_conversation(vault: Vault) -> None:
    """--with USER: only messages of the conversation with that user."""
    _add(vault, "bob", "the concert tickets are booked")
    _add(vault, "carol", "did you get concert tickets?")
    _add(vault, "carol", "my concert is on friday", outgoing=True)
    assert sorted(_texts(vault, "concert", with_user="carol")) == [
        "did you get concert tickets?",
        "my concert is on friday",
    ]
    assert _texts(vault, "concert", with_user="bob") == ["the concert tickets are booked"]
    assert _texts(vault, "concert", with_user="dave") == []


def test_search_needs_every_word_and_prefix_matches_the_last(vault: Vault) -> None:
    """Words are ANDed; only the last one matches as a prefix; accents are ignored."""
    _add(vault, "bob", "see you tomorrow at the café")
    _add(vault, "bob", "see the tomatoes")
    assert _texts(vault, "see tomo") == ["see you tomorrow at the café"]
    assert _texts(vault, "tomo see") == []
    assert _texts(vault, "cafe") == ["see you tomorrow at the café"]
    assert sorted(_texts(vault, "see")) == ["see the tomatoes", "see you tomorrow at the café"]


def test_search_limit_caps_the_results(vault: Vault) -> None:
    """limit=N returns the N best of more matches."""
    for n in range(5):
        _add(vault, "bob", f"ping number {n}")
    assert len(search(vault.connection, "ping", limit=3)) == 3


def test_search_loses_edited_deleted_and_expired_messages(vault: Vault) -> None:
    """Edits, deletes for everyone, expiry and removed rows leave nothing findable."""
    edited = _add(vault, "bob", "meet at the lighthouse")
    blanked = _add(vault, "bob", "the safe code is zebra")
    flagged = _add(vault, "bob", "flagged walrus message")
    expiring = _add(vault, "bob", "disappearing octopus note")
    removed = _add(vault, "bob", "swept pelican note")
    for word in ("lighthouse", "zebra", "walrus", "octopus", "pelican"):
        assert len(_texts(vault, word)) == 1, word

    _execute(vault, "UPDATE messages SET text = 'meet at the harbour' WHERE id = ?", edited)
    _execute(vault, "UPDATE messages SET text = '', deleted = 1 WHERE id = ?", blanked)
    _execute(vault, "UPDATE messages SET deleted = 1 WHERE id = ?", flagged)
    _execute(vault, "UPDATE messages SET expires_at_ms = ? WHERE id = ?", now_ms() - 1, expiring)
    _execute(vault, "DELETE FROM messages WHERE id = ?", removed)

    for gone in ("lighthouse", "zebra", "walrus", "octopus", "pelican"):
        assert _texts(vault, gone) == [], gone
    assert _texts(vault, "harbour") == ["meet at the harbour"]
    # The index itself no longer holds the old words of edited, blanked and removed rows.
    for word in ("lighthouse", "zebra", "pelican"):
        (count,) = vault.connection.execute(
            "SELECT count(*) FROM messages_fts WHERE messages_fts MATCH ?", (word,)
        ).fetchone()
        assert count == 0, word


def test_search_skips_failed_placeholders_and_notices(vault: Vault) -> None:
    """Empty failed placeholders and client notices are not results; a failed text is."""
    _add(vault, "bob", "", state=MessageState.FAILED)
    notice = _add(vault, "bob", "the timer changed walrus")
    _execute(vault, "UPDATE messages SET state = 'notice' WHERE id = ?", notice)
    _add(vault, "bob", "unsent walrus", outgoing=True, state=MessageState.FAILED)
    assert _texts(vault, "walrus") == ["unsent walrus"]


def test_search_odd_input_is_text_not_syntax(vault: Vault) -> None:
    """Quotes, FTS5 operators, NUL, unicode and emoji never raise; operators are found as words."""
    _add(vault, "bob", "NEAR the AND gate, said the OR sign")
    _add(vault, "bob", "日本語のテキスト and ünïcödé")
    _add(vault, "bob", 'she said "hi" (twice) * col:value')
    odd = [
        '"',
        '""',
        "'",
        "NEAR(a b)",
        "a AND b",
        "OR",
        "NOT x",
        "*",
        "x*",
        "(",
        ")",
        "^x",
        "text:x",
        "{text}: x",
        "-x",
        "+",
        "\x00",
        "hi\x00there",
        "🎉",
        "🎉 party",
        "\\",
        "'; DROP TABLE messages; --",
        'a"b',
        "\u0301",
        "\ufeff",
        "x" * 500,
        "NEAR/2",
    ]
    for query in odd:
        assert isinstance(search(vault.connection, query), list), query
    assert _texts(vault, "NEAR AND") == ["NEAR the AND gate, said the OR sign"]
    assert _texts(vault, "OR") == ["NEAR the AND gate, said the OR sign"]
    assert _texts(vault, '"hi"') == ['she said "hi" (twice) * col:value']
    assert _texts(vault, "col:value") == ['she said "hi" (twice) * col:value']
    assert _texts(vault, "日本語") == ["日本語のテキスト and ünïcödé"]
    assert _texts(vault, "unicode") == ["日本語のテキスト and ünïcödé"]
    assert vault.connection.execute("SELECT count(*) FROM messages").fetchone() == (3,)


def test_search_without_a_searchable_word_returns_nothing(vault: Vault) -> None:
    """Only punctuation or emoji: no FTS5 query at all, an empty result."""
    _add(vault, "bob", "party time 🎉!")
    for query in ("?!...", "🎉", "* * *", '" "'):
        assert fts_query(query) is None
        assert search(vault.connection, query) == []


def test_search_quotes_every_word_of_the_fts_query() -> None:
    """Quoted words, inner quotes doubled; a last word of 4+ letters (or CJK) is a prefix."""
    assert fts_query('say "hi" NEAR me') == '"say" """hi""" "NEAR" "me"'
    assert fts_query("see you tomo") == '"see" "you" "tomo"*'
    assert fts_query("a\x00b") == '"a" "b"'
    assert fts_query("日本") == '"日本"*'


def test_search_rejects_bad_arguments_with_config_error(vault: Vault) -> None:
    """Empty or huge queries, limits out of range and bad usernames are ConfigErrors."""
    with pytest.raises(ConfigError, match="nothing to search for"):
        search(vault.connection, "")
    with pytest.raises(ConfigError, match="nothing to search for"):
        search(vault.connection, " \t\n")
    with pytest.raises(ConfigError, match="at most"):
        search(vault.connection, "x" * 1001)
    for limit in (0, -1, 1001):
        with pytest.raises(ConfigError, match="limit"):
            search(vault.connection, "x", limit=limit)
    with pytest.raises(ConfigError, match="invalid username"):
        search(vault.connection, "x", with_user="Not Valid!")


def test_search_ranks_the_newest_window_and_still_finds_rare_words(
    vault: Vault, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past RANK_WINDOW matches only the newest are ranked; rarer words search all history."""
    monkeypatch.setattr(search_module, "RANK_WINDOW", 3)
    _add(vault, "bob", "otter otter otter, old and very relevant")
    for n in range(4):
        _add(vault, "bob", f"an otter in a long message about rivers and lakes number {n}")
    texts = _texts(vault, "otter")
    assert len(texts) == 3
    assert "otter otter otter, old and very relevant" not in texts
    assert _texts(vault, "relevant") == ["otter otter otter, old and very relevant"]
    assert _texts(vault, "otter", with_user="bob", limit=10) == texts
