"""cli/safe_text.py: text from someone else never reaches the terminal as controls."""

from __future__ import annotations

import json
import random
import unicodedata

import pytest

from obrolan.cli.archive_commands import _BOLD, _format_hit
from obrolan.cli.safe_text import (
    CONTINUATION,
    block,
    columns,
    fit,
    is_hidden,
    json_text,
    one_line,
)
from obrolan.client.search import SearchHit

C0 = [chr(c) for c in range(0x20)]
C1 = [chr(c) for c in range(0x80, 0xA0)]
BIDI = [
    "\u061c",
    "\u200e",
    "\u200f",
    *map(chr, range(0x202A, 0x202F)),
    *map(chr, range(0x2066, 0x206A)),
]

FORGED_ROW = "2026-12-03 08:31 [deadbeef] alice: send the code"


def _shows_nothing_hidden(shown: str) -> bool:
    return not any(is_hidden(c) for c in shown.replace("\n", ""))


@pytest.mark.parametrize("char", [*C0, "\x7f", *C1], ids=lambda c: f"U+{ord(c):04X}")
def test_one_line_shows_every_c0_c1_and_del_as_an_escape(char: str) -> None:
    """Each C0, C1 and DEL character is written as its Python-style escape, never as itself."""
    shown = one_line(f"a{char}b")
    escape = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(char, f"\\x{ord(char):02x}")
    assert shown == f"a{escape}b"
    assert shown.isascii() and shown.isprintable()


@pytest.mark.parametrize("char", BIDI, ids=lambda c: f"U+{ord(c):04X}")
def test_one_line_shows_every_bidi_control_as_an_escape(char: str) -> None:
    """Each Bidi_Control character (overrides, embeddings, isolates, marks) is shown as \\uXXXX."""
    assert unicodedata.category(char) == "Cf"
    assert one_line(f"x{char}y") == f"x\\u{ord(char):04x}y"


def test_one_line_shows_line_separators_and_lone_surrogates() -> None:
    """U+2028, U+2029 and a lone surrogate (which cannot even be encoded) are shown as escapes."""
    assert one_line("a\u2028b\u2029c\udc80") == "a\\u2028b\\u2029c\\udc80"
    one_line("\ud800").encode("utf-8")  # printable without UnicodeEncodeError


def test_block_indents_every_continuation_line_under_its_message() -> None:
    """A newline (or CRLF) starts a line that begins with the continuation mark."""
    assert block("one\ntwo\r\nthree") == f"one\n{CONTINUATION}two\n{CONTINUATION}three"
    assert block("last\n") == f"last\n{CONTINUATION}"
    assert block("a\nb", indent="  > ") == "a\n  > b"


def test_block_shows_a_lone_carriage_return_and_expands_tabs() -> None:
    """A CR alone would overwrite the line's start: it is shown; a tab becomes spaces."""
    assert block("bob: hi\rmallory") == "bob: hi\\rmallory"
    assert block("a\tb\n\tc") == f"a   b\n{CONTINUATION}    c"


def test_one_line_shows_newlines_and_tabs_in_a_field() -> None:
    """A name, title or reason stays one line: newline and tab are shown as \\n and \\t."""
    assert (
        one_line("family\n2026-01-01 alice: hi\tthere") == "family\\n2026-01-01 alice: hi\\tthere"
    )


def test_block_defuses_a_long_hostile_message() -> None:
    """Screen clearing, a painted notice, a forged line, an override and OSC 52: all inert."""
    hostile = (
        "hi\x1b[2J\x1b[H\x1b[1;31m⚠ your key changed, run obrolan trust mallory\x1b[0m"
        "\n2026-12-03 08:30 [deadbeef] alice: send me the code"
        "\r\x1b]52;c;ZWNobyBwd25lZA==\x07\x9b2J\u202egnp.exe\u202c\x08\x08\x7f"
        "\x1bP+q\x1b\\\u2066isolated\u2069\x00end"
    )
    shown = block(hostile)
    assert _shows_nothing_hidden(shown)
    lines = shown.split("\n")
    assert len(lines) == 2 and lines[1].startswith(CONTINUATION + "2026-12-03")
    assert "\\x1b[2J" in lines[0] and "\\r\\x1b]52;" in lines[1] and "\\u202egnp.exe" in lines[1]


@pytest.mark.parametrize(
    "text",
    [
        "plain ascii, with punctuation: (ok) [x] {y} \\ ~ ` ' \"",
        "emoji 👍🏽 👨‍👩‍👧‍👦 🏳️‍🌈 ❤️",
        "中文 日本語のテキスト 한국어",
        "مرحبا بالعالم",
        "שלום עולם",
        "Zürich café naïve ñ",
        "क्षत्रिय",
        "नमस्ते",
        "ZWNJ in Persian: می\u200cخواهم",  # noqa: RUF001
    ],
)
def test_ordinary_text_of_every_script_is_unchanged(text: str) -> None:
    """Emoji (with joiners and selectors), CJK, Arabic, Hebrew, Indic text pass untouched."""
    assert one_line(text) == text
    assert block(text) == text


def test_json_keeps_the_exact_text_and_escapes_what_a_terminal_obeys() -> None:
    """json_text reads back to the same strings, with no control character written raw."""
    value = {"text": "a\x1b[2J\nb\x7f\x9b\u202e\u2028\udc80 👍 中文", "n\x85ame": [1, None]}
    written = json_text(value, indent=2)
    assert json.loads(written) == value
    assert _shows_nothing_hidden(written)
    assert "👍 中文" in written


def test_search_hit_draws_bold_marks_only_where_the_index_put_them() -> None:
    """On a terminal, a hit's matches are bold; ESC in the sender's text stays visible."""
    marks = ("\ue000n0nce\ue001", "\ue002n0nce\ue003")
    hit = SearchHit(
        message_id="abcdefghijklmnop",
        peer="mallory",
        sender="mallory",
        text="",
        snippet=f"\x1b[1mfake {marks[0]}word{marks[1]}\n2026 alice: hi",
        sent_at_ms=0,
        rank=0.0,
    )
    line = _format_hit(hit, marks, _BOLD)
    assert line.endswith("mallory: \\x1b[1mfake \x1b[1mword\x1b[0m\\n2026 alice: hi")
    assert line.count("\x1b") == 2


def test_fit_breaks_padding_so_a_forged_line_never_starts_a_row() -> None:
    """Spaces padding a message to the terminal's width end with a break and the mark."""
    line = "2026-12-03 08:30 [abcdefgh] mallory: ok" + " " * 41 + FORGED_ROW
    rows = fit(line, 80).split("\n")
    assert rows[1:] == [CONTINUATION + FORGED_ROW]
    assert all(sum(map(columns, row)) <= 80 for row in rows)


def test_fit_keeps_every_character_and_every_row_within_the_width() -> None:
    """Words, CJK, emoji, flags and combining marks: rows fit and nothing is lost."""
    alphabet = " abc中👍é\u0301❤\ufe0f🇩🇪"
    chooser = random.Random(9)
    for _ in range(2000):
        text = "".join(chooser.choice(alphabet) for _ in range(chooser.randint(0, 300)))
        width = chooser.randint(40, 120)
        rows = fit(text, width).split("\n")
        assert all(sum(map(columns, row)) <= width for row in rows), (text, width)
        assert "".join(row.removeprefix(CONTINUATION) for row in rows) == text
        assert not any(row.startswith(CONTINUATION + "\u0301") for row in rows)


def test_fit_breaks_after_a_space_and_keeps_bold_sequences_whole() -> None:
    """A long text breaks between words; the CLI's own bold mark is never split."""
    assert fit("word " * 12, 40) == "word " * 8 + "\n" + CONTINUATION + "word " * 4
    bold = fit("a" * 38 + "\x1b[1mbold\x1b[0m", 40)
    assert "\x1b[1m" in bold and "\x1b[0m" in bold
    assert fit("short", 10) == "short"  # narrower than MIN_WIDTH: the terminal wraps
