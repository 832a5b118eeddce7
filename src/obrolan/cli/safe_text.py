"""Text from someone else, made safe to write to a terminal.

A message, a username, a device name, a group's title, rules or description, a
moderation reason, a file name, a reaction, a server's error message: all of it
was typed by another person (or their server), and a terminal obeys what it is
sent. An ESC sequence can clear the screen and paint a fake notice, a carriage
return can overwrite the sender's name, a newline can start a line that passes
for another message, and a bidirectional override can make text read backwards.
So every such string is printed through :func:`one_line` or :func:`block`, and
JSON goes out through :func:`json_text`.

What is made visible, and how (the form Python uses in a string literal, so it
is ASCII, one glance tells it apart from text, and no terminal acts on it)::

    C0 controls U+0000..U+001F   \\x1b, \\x07, … (and \\n \\r \\t for those three)
    DEL U+007F                  \\x7f
    C1 controls U+0080..U+009F   \\x9b, …
    Bidi_Control (Unicode)      \\u202e, …: U+061C, U+200E, U+200F, U+202A..U+202E,
                                U+2066..U+2069 (marks too: invisible, and a name
                                must not differ from another by something unseen)
    U+2028, U+2029              \\u2028, \\u2029 (line and paragraph separators)
    lone surrogates             \\udc80, … (they cannot even be encoded)

Everything else is unchanged: emoji (with their joiners and variation
selectors), CJK, Arabic, Hebrew, combining marks. A backslash is left as it is,
so a sender can type ``\\x1b`` as four harmless characters; it only ever reads
as what it is.

:func:`one_line` is for fields that are one line (names, titles, reasons, file
names, emoji, error messages): a newline or tab in them is shown as ``\\n`` /
``\\t`` too. :func:`block` is for text that may have lines (a message, rules, a
description, a notice or log line built from remote fields): each newline
(``\\r\\n`` counts as one) starts a continuation line that begins with the
indent (:data:`CONTINUATION` by default, a mark no line the CLI writes itself
begins with), so no line of it can pass for another message or a notice; a tab
becomes spaces to the next multiple of :data:`TAB_WIDTH` columns of its line.

On a terminal, a line can still reach the start of a row without a newline: the
terminal wraps it there, so spaces (or any blank-looking characters) padding the
text to the terminal's width would put a forged line at column 0. :func:`fit`
breaks such lines itself, at or before the column the terminal would (see
:func:`columns`), and starts every
further row with the indent, so a row that does not begin with a timestamp,
``#`` or a mark of the CLI is always shown as a continuation.

``--json`` output keeps the real text: :func:`json_text` writes the same
characters as ``\\uXXXX`` escapes, which JSON reads back to the exact string.
"""

from __future__ import annotations

import json
import re
import unicodedata

__all__ = [
    "CONTINUATION",
    "TAB_WIDTH",
    "block",
    "columns",
    "fit",
    "is_hidden",
    "json_text",
    "one_line",
]

CONTINUATION = "    │ "
"""What starts each further line of a message (or other text with lines) from someone else."""
TAB_WIDTH = 4
"""Columns a tab in text with lines advances to a multiple of."""

_BIDI_CONTROLS = "\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"
_HIDDEN_CLASS = f"\x00-\x1f\x7f-\x9f{_BIDI_CONTROLS}\u2028\u2029\ud800-\udfff"
_HIDDEN = re.compile(f"[{_HIDDEN_CLASS}]")
_HIDDEN_BUT_JSON = re.compile(f"[\x7f-\x9f{_BIDI_CONTROLS}\u2028\u2029\ud800-\udfff]")
_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def is_hidden(char: str) -> bool:
    """True for a character this module never lets reach a terminal as it is."""
    return _HIDDEN.fullmatch(char) is not None


def _escape(match: re.Match[str]) -> str:
    char = match[0]
    if char in _SHORT:
        return _SHORT[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def one_line(text: str) -> str:
    """``text`` as one line with every control character visible (newlines and tabs too)."""
    return _HIDDEN.sub(_escape, text)


def block(text: str, indent: str = CONTINUATION) -> str:
    """``text`` with controls visible, each of its further lines starting with ``indent``."""
    lines = text.replace("\r\n", "\n").split("\n")
    return ("\n" + indent).join(one_line(line.expandtabs(TAB_WIDTH)) for line in lines)


def json_text(value: object, indent: int | None = None, *, ensure_ascii: bool = False) -> str:
    """``value`` as JSON whose strings hold the exact text, with no control reaching a terminal.

    ``json.dumps`` already escapes C0 controls; DEL, C1, bidi controls, the line and
    paragraph separators and lone surrogates are escaped here as ``\\uXXXX`` (valid
    JSON, read back as the same characters). ``ensure_ascii`` escapes all else too.
    """
    raw = json.dumps(value, ensure_ascii=ensure_ascii, indent=indent)
    return _HIDDEN_BUT_JSON.sub(lambda m: f"\\u{ord(m[0]):04x}", raw)


MIN_WIDTH = 40
"""Narrowest width :func:`fit` breaks rows to (a narrower terminal wraps them itself)."""


def columns(char: str) -> int:
    """Columns a terminal gives ``char``: 2 for East Asian wide letters and emoji (a flag's
    letters and an emoji-presentation selector counted on the wide side), 0 for combining
    marks, else 1 (East Asian "ambiguous" letters as non-CJK terminals show them)."""
    if char == "\ufe0f":  # emoji presentation: the character before it takes two columns
        return 1
    if unicodedata.category(char) in ("Mn", "Me"):
        return 0
    if unicodedata.east_asian_width(char) in "WF" or "\U0001f1e6" <= char <= "\U0001f1ff":
        return 2
    return 1


_SGR_OR_CHAR = re.compile("\x1b\\[[0-9;]*m|.", re.DOTALL)


def _room(token: str) -> int:
    return 0 if token.startswith("\x1b") else columns(token)


def _base(row: list[str], i: int) -> bool:
    """True if a row may start at ``row[i]`` (the end, or not a combining mark)."""
    return i == len(row) or _room(row[i]) > 0


def fit(text: str, width: int, indent: str = CONTINUATION) -> str:
    """``text`` with every line wider than ``width`` columns broken into rows, each further
    row starting with ``indent``: what the terminal would wrap to column 0 never gets there.

    A row is broken after its last space when it has one, else between two characters
    (never before a combining mark). ``text`` must be safe already: the only controls
    left are the CLI's own SGR sequences (``\\x1b[1m``, bold), kept whole and counted as
    taking no room.
    """
    width = max(width, MIN_WIDTH)
    lead = sum(columns(c) for c in indent)
    rows: list[str] = []
    for line in text.split("\n"):
        row: list[str] = []
        used = 0
        start = 0  # where this row's own text begins (after the indent)
        for char in _SGR_OR_CHAR.findall(line):
            wide = _room(char)
            if used + wide > width and wide and len(row) > start:
                space = max(
                    (i for i in range(start, len(row)) if row[i] == " " and _base(row, i + 1)),
                    default=-1,
                )
                cut = space + 1 if space >= start else len(row)
                if lead + sum(_room(c) for c in row[cut:]) + wide > width:
                    cut = len(row)  # the words after the space would not fit either
                rows.append("".join(row[:cut]))
                row = [*indent, *row[cut:]]
                start = len(indent)
                used = lead + sum(_room(c) for c in row[start:])
            row.append(char)
            used += wide
        rows.append("".join(row))
    return "\n".join(rows)
