"""On-device search: the FTS5 index over the profile's messages, ranked with context.

The index (``messages_fts``, see :mod:`obrolan.client.store`) follows the
messages' current text through triggers, so an edited, deleted or expired
message is found by its new text or not at all. It lives inside the
SQLCipher store: it is encrypted at rest like the messages themselves.

::

    hits = search(vault.connection, "see you tomorrow", with_user="bob")
    for hit in hits:
        print(hit.sender, hit.snippet)   # "… I'll [see] [you] [tomorrow] at …"

What a person types is never FTS5 syntax: every word is quoted, so quotes,
``NEAR``, ``AND``, ``*`` or parentheses are searched as text and can never make
the query fail. Words are ANDed; the last one also matches as a prefix when it
has at least :data:`MIN_PREFIX_CHARS` characters, so ``tomo`` finds "tomorrow"
while ``the`` finds "the" only (a short word is usually typed in full, and its
expansion to "then", "there", "they"… would cost several times the search).
Words in scripts written without spaces (Chinese, Japanese) are always prefixes:
the index keeps a run of them as one word.

Ranking is bm25 (best first), with the newer message first among equals. Only
the newest :data:`RANK_WINDOW` matching messages are ranked: scoring a match
reads its message's pages, and in a conversation spread over a million messages
those are scattered (each page decrypted on its own), so a word found in many
messages would take seconds to rank in full; among that many matches relevance
tells less than recency anyway. A rarer word is ranked over the whole history.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

from sqlcipher3 import dbapi2

from obrolan.client.ids import check_username
from obrolan.client.store import now_ms
from obrolan.errors import ConfigError, StorageError

__all__ = [
    "MAX_LIMIT",
    "MAX_QUERY_CHARS",
    "MIN_PREFIX_CHARS",
    "RANK_WINDOW",
    "SearchHit",
    "fts_query",
    "search",
]

RANK_WINDOW = 2_000
"""How many of the newest matching messages are ranked by relevance (docs/performance.md)."""
MIN_PREFIX_CHARS = 4
"""The last word also matches longer words when it has at least this many characters."""
MAX_LIMIT = 1000
"""Most results one search returns."""
MAX_QUERY_CHARS = 1000
"""Longest query accepted."""
SNIPPET_TOKENS = 12
"""Words of context in a snippet, around the matches."""
DEFAULT_MARKS = ("[", "]")
"""What surrounds each matched word in a snippet unless the caller chooses."""

# Characters the index's tokenizer (unicode61) keeps in words: letters, digits and
# private-use characters. A word with none of them matches nothing.
_TOKEN_CATEGORIES = ("L", "N", "Co")

# Rows a person sees in history: not deleted, not expired, not a client notice, not
# an empty placeholder of a message that failed.
_VISIBLE = (
    "m.deleted = 0 AND m.state != 'notice' AND NOT (m.state = 'failed' AND m.text = '') "
    "AND (m.expires_at_ms IS NULL OR m.expires_at_ms > :now)"
)
# The unary + keeps SQLite from probing the index once per message of the peer (slow):
# the FTS5 doclist is scanned and each row is checked against the peer's ids instead.
_WITH_PEER = "AND +messages_fts.rowid IN (SELECT id FROM messages WHERE peer = :peer)"

# One pass over the index, newest first, stopping after the window; then the best of it.
_RANKED = """
SELECT rowid, score FROM (
    SELECT messages_fts.rowid AS rowid, bm25(messages_fts) AS score
    FROM messages_fts JOIN messages AS m ON m.id = messages_fts.rowid
    WHERE messages_fts MATCH :query {peer} AND {visible}
    ORDER BY messages_fts.rowid DESC LIMIT :window
) ORDER BY score, rowid DESC LIMIT :limit
"""
# Snippets cost more than ranking (tens of microseconds each), so only the hits get one.
# An exact word finds each hit by its rowid at once; a prefix would be expanded again
# for every rowid, so its hits are picked out of one scan of their rowid range instead.
_HITS = """
SELECT messages_fts.rowid, m.message_id, m.peer, m.sender, m.text, m.sent_at_ms,
       snippet(messages_fts, 0, :open, :close, '…', :tokens)
FROM messages_fts JOIN messages AS m ON m.id = messages_fts.rowid
WHERE messages_fts MATCH :query AND {rowids}
"""
_BY_ROWID = "messages_fts.rowid IN ({ids})"
_BY_RANGE = "messages_fts.rowid BETWEEN :low AND :high AND +messages_fts.rowid IN ({ids})"


@dataclass(frozen=True, slots=True)
class SearchHit:
    """One message that matches a search."""

    message_id: str
    peer: str
    """The other person in the conversation."""
    sender: str
    text: str
    """The message's whole current text."""
    snippet: str
    """A few words around the matches, each match between the marks (``[see]``)."""
    sent_at_ms: int
    rank: float
    """The bm25 score: lower is more relevant (FTS5's convention)."""

    def as_json(self) -> dict[str, object]:
        """A JSON-ready dict (what ``search --json`` prints)."""
        return {
            "message_id": self.message_id,
            "peer": self.peer,
            "sender": self.sender,
            "text": self.text,
            "snippet": self.snippet,
            "sent_at_ms": self.sent_at_ms,
            "rank": self.rank,
        }


def search(
    connection: dbapi2.Connection,
    query: str,
    *,
    with_user: str | None = None,
    limit: int = 20,
    marks: tuple[str, str] = DEFAULT_MARKS,
) -> list[SearchHit]:
    """Find messages containing every word of ``query``, most relevant first.

    Args:
        connection: an open profile store (``vault.connection``).
        query: words as a person types them; any text is safe.
        with_user: only the conversation with this user.
        limit: at most this many results (1 to :data:`MAX_LIMIT`).
        marks: the strings put before and after each matched word in snippets.

    Returns:
        The hits, or an empty list when nothing matches or the query has no word
        that can be searched (only punctuation or emoji).

    Raises:
        ConfigError: the query is empty or too long, the limit is out of range, or
            ``with_user`` is not a valid username.
        StorageError: the store cannot be read.
    """
    if not query.strip():
        raise ConfigError("nothing to search for: give one or more words")
    if len(query) > MAX_QUERY_CHARS:
        raise ConfigError(
            f"the search is {len(query)} characters long; use at most {MAX_QUERY_CHARS}"
        )
    if not 1 <= limit <= MAX_LIMIT:
        raise ConfigError(f"the limit must be between 1 and {MAX_LIMIT}, not {limit}")
    if with_user is not None:
        check_username(with_user)
    match = fts_query(query)
    if match is None:
        return []
    peer = _WITH_PEER if with_user is not None else ""
    params: dict[str, object] = {
        "query": match,
        "peer": with_user,
        "now": now_ms(),
        "window": RANK_WINDOW,
        "open": marks[0],
        "close": marks[1],
        "tokens": SNIPPET_TOKENS,
        "limit": limit,
    }
    try:
        ranked = connection.execute(_RANKED.format(peer=peer, visible=_VISIBLE), params).fetchall()
        if not ranked:
            return []
        rowids = [row[0] for row in ranked]
        ids = ", ".join(str(int(rowid)) for rowid in rowids)
        params.update(low=min(rowids), high=max(rowids))
        pick = _BY_RANGE if match.endswith("*") else _BY_ROWID
        details = {
            row[0]: row[1:]
            for row in connection.execute(_HITS.format(rowids=pick.format(ids=ids)), params)
        }
    except dbapi2.Error as exc:
        raise StorageError(f"cannot search the store: {exc}") from None
    return [
        SearchHit(
            message_id=details[rowid][0],
            peer=details[rowid][1],
            sender=details[rowid][2],
            text=details[rowid][3],
            sent_at_ms=details[rowid][4],
            snippet=details[rowid][5],
            rank=score,
        )
        for rowid, score in ranked
    ]


def fts_query(text: str) -> str | None:
    """The FTS5 query for what a person typed, or None if no word in it can match.

    Each word becomes a quoted string (inner quotes doubled), so nothing typed is
    read as FTS5 syntax; the last word may also match as a prefix (see the module).
    """
    # Control characters (a NUL ends an FTS5 string early) separate words like spaces.
    cleaned = "".join(" " if unicodedata.category(c) == "Cc" else c for c in text)
    words = [word for word in cleaned.split() if _searchable(word)]
    if not words:
        return None
    quoted = ['"' + word.replace('"', '""') + '"' for word in words]
    if len(words[-1]) >= MIN_PREFIX_CHARS or _unspaced(words[-1]):
        quoted[-1] += "*"
    return " ".join(quoted)


def _searchable(word: str) -> bool:
    return any(unicodedata.category(c).startswith(_TOKEN_CATEGORIES) for c in word)


def _unspaced(word: str) -> bool:
    """True for words of East Asian wide letters, which the index does not split."""
    return any(unicodedata.east_asian_width(c) in "WF" and c.isalpha() for c in word)
