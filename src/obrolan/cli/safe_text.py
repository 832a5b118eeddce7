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

``--json`` output keeps the real text: :func:`json_text` writes the same
characters as ``\\uXXXX`` escapes, which JSON reads back to the exact string.
"""

from __future__ import annotations

import json
import re

__all__ = ["CONTINUATION", "TAB_WIDTH", "block", "is_hidden", "json_text", "one_line"]

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
