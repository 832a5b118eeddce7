"""On-device search benchmark: query latency over a profile store of a million messages.

Fills a fresh profile store (a real SQLCipher database made by ``create_vault``
without a passphrase, the real schema and FTS5 triggers from ``Store``) with
``--messages`` generated messages, then times :func:`obrolan.client.search.search`
for a handful of queries, each ``--runs`` times after one untimed first run, on a
freshly opened store. It prints the machine first, then the fill, the store's size
and a table of latencies, and finally times the real ``obrolan search`` command
end to end (process start, opening the store, the query, printing).

The text is drawn from a fixed seed (the same store every run): a Zipf
distribution over 117 common chat words followed by 20,000 generated rarer
words, 1 to 24 words per message, so that the most common word, "the", is in
about 60% of messages, more than in real chat, which makes it the hardest case.
Conversations are Zipf-distributed over 300 contacts, half the messages are
outgoing and 0.5% are deleted for everyone.

Run: ``.venv/bin/python bench/search.py`` (about three minutes for a million
messages on a small 2-core machine; ``--messages 100000`` for a quick look).
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import random
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from _common import percentile, print_table
from sqlcipher3 import dbapi2

from obrolan.client.search import fts_query, search
from obrolan.client.store import Store
from obrolan.client.vault import create_vault, open_vault

__all__ = ["main"]

MAX_MESSAGES = 5_000_000
"""Upper bound on --messages, so that a run stays bounded (about 15 minutes)."""
BATCH = 50_000
"""Messages per fill transaction."""
SEED = 20_260_101
CONTACTS = 300
RARE_WORDS = 20_000
DELETED_SHARE = 0.005
START_MS = 1_700_000_000_000
CLI_RUNS = 3

_COMMON_TEXT = """
the i you to a and it is that of in me for my on we so what this just be at have no not
but are was do with ok if get can like yes all your know now when up out how there will
go good see love about one time today lol got think did im dont its tomorrow want then
here too come back well right need sure why going night thanks home work really call who
been day later make still much let tonight yeah morning sorry oh great where take would
something should never soon happy lunch tell week hope told way nice dinner meet weekend
pizza coffee movie train office
"""
COMMON_WORDS = _COMMON_TEXT.split()
"""Common chat words, most frequent first (a fixed seed list, not a corpus)."""

_SYLLABLES = [consonant + vowel for consonant in "dkmnprst" for vowel in "aiou"]


def _vocabulary() -> list[str]:
    """The common words, then RARE_WORDS generated ones (distinct, 2 to 4 syllables)."""
    rng = random.Random(SEED)
    words = list(COMMON_WORDS)
    seen = set(words)
    while len(words) < len(COMMON_WORDS) + RARE_WORDS:
        word = "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 4)))
        if word not in seen:
            seen.add(word)
            words.append(word)
    return words


def _zipf_cumulative(count: int) -> list[float]:
    return list(itertools.accumulate(1.0 / rank for rank in range(1, count + 1)))


def _rows(total: int, words: list[str], peers: list[str]) -> Iterator[list[tuple[object, ...]]]:
    """Batches of message rows, generated from the fixed seed."""
    rng = random.Random(SEED)
    word_weights = _zipf_cumulative(len(words))
    peer_weights = _zipf_cumulative(len(peers))
    for start in range(0, total, BATCH):
        batch: list[tuple[object, ...]] = []
        for n in range(start, min(total, start + BATCH)):
            peer = rng.choices(peers, cum_weights=peer_weights)[0]
            outgoing = rng.random() < 0.5
            deleted = rng.random() < DELETED_SHARE
            text = (
                ""
                if deleted
                else " ".join(rng.choices(words, cum_weights=word_weights, k=rng.randint(1, 24)))
            )
            batch.append(
                (
                    f"bench{n:016d}",
                    peer,
                    "me" if outgoing else peer,
                    "dev",
                    int(outgoing),
                    text,
                    START_MS + n * 90_000,
                    "sent" if outgoing else "received",
                    int(deleted),
                )
            )
        yield batch


def fill(profile: Path, total: int) -> tuple[float, list[str], list[str]]:
    """Create the store and insert ``total`` messages; returns (seconds, words, peers)."""
    words = _vocabulary()
    peers = [f"contact{n:03d}" for n in range(CONTACTS)]
    started = time.perf_counter()
    with create_vault(profile, None) as vault:
        Store(vault)
        done = 0
        for batch in _rows(total, words, peers):
            with vault.transaction() as db:
                db.executemany(
                    "INSERT INTO messages (message_id, peer, sender, sender_device, outgoing, "
                    "text, sent_at_ms, state, deleted) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    batch,
                )
            done += len(batch)
            print(f"  filled {done:,}/{total:,}", file=sys.stderr, end="\r", flush=True)
    print(file=sys.stderr)
    return time.perf_counter() - started, words, peers


def _matches(db: dbapi2.Connection, match: str | None, with_user: str | None = None) -> int:
    """Messages an FTS5 expression matches (deleted ones have no text: none are counted)."""
    (count,) = db.execute(
        "SELECT count(*) FROM messages_fts JOIN messages AS m ON m.id = messages_fts.rowid "
        "WHERE messages_fts MATCH ? AND (? IS NULL OR m.peer = ?)",
        (match, with_user, with_user),
    ).fetchone()
    return int(count)


def _queries(
    db: dbapi2.Connection, words: list[str], peers: list[str]
) -> list[tuple[str, str, str | None]]:
    """(label, query, --with) for each measured search, chosen from the filled store."""
    rare = next(w for w in words[len(COMMON_WORDS) + 2000 :] if 5 <= _matches(db, f'"{w}"') <= 50)
    counts = dict(db.execute("SELECT peer, count(*) FROM messages GROUP BY peer"))
    largest, mid, small = peers[0], peers[20], peers[-1]
    return [
        ("most common word", "the", None),
        ("common short word", "i", None),
        ("rare word", rare, None),
        ("two words", "dinner tomorrow", None),
        ("three words", "see you tonight", None),
        (f"--with, {counts.get(largest, 0):,} msgs", "the", largest),
        (f"--with, {counts.get(mid, 0):,} msgs", "the", mid),
        (f"--with, {counts.get(small, 0):,} msgs", "the", small),
        ("prefix of a common word", "tomo", None),
        ("prefix of many words", "kari", None),
        ("no match", "zzyzx", None),
    ]


def measure(profile: Path, words: list[str], peers: list[str], runs: int) -> list[list[str]]:
    """Time each query on a freshly opened store; returns the table's rows."""
    rows = []
    with open_vault(profile, None) as vault:
        db = vault.connection
        for label, query, with_user in _queries(db, words, peers):
            times = []
            for _ in range(runs + 1):
                started = time.perf_counter()
                hits = search(db, query, with_user=with_user)
                times.append((time.perf_counter() - started) * 1000)
            first, timed = times[0], sorted(times[1:])
            rows.append(
                [
                    label,
                    repr(query),
                    f"{_matches(db, fts_query(query), with_user):,}",
                    str(len(hits)),
                    f"{first:.1f}",
                    f"{percentile(timed, 0.5):.1f}",
                    f"{percentile(timed, 0.95):.1f}",
                ]
            )
    return rows


def measure_cli(profile: Path, query: str) -> list[tuple[float, float]]:
    """(wall, CPU) milliseconds of the real `obrolan search` command, CLI_RUNS times.

    One untimed run first lets Python cache the bytecode, as an installed copy has it.
    """
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("OBROLAN_") and k != "PYTHONDONTWRITEBYTECODE"
    }
    times = []
    for run in range(CLI_RUNS + 1):
        cpu_before = _children_cpu()
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "obrolan", "search", query, "--profile", str(profile)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        wall = (time.perf_counter() - started) * 1000
        if done.returncode != 0 or not done.stdout:
            raise SystemExit(f"`obrolan search {query}` failed: {done.stderr.strip()}")
        if run:
            times.append((wall, (_children_cpu() - cpu_before) * 1000))
    return times


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def describe_machine() -> str:
    """CPU model, cores, kernel, Python and the store's SQLCipher/SQLite versions."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        cpuinfo = ""
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
    db = dbapi2.connect(":memory:")
    (cipher,) = db.execute("PRAGMA cipher_version").fetchone()
    (sqlite,) = db.execute("SELECT sqlite_version()").fetchone()
    db.close()
    return (
        f"machine: {model.group(1).strip() if model else platform.processor() or 'unknown CPU'}, "
        f"{os.cpu_count()} cores, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, SQLCipher {cipher} (SQLite {sqlite})"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--messages", type=int, default=1_000_000, help="messages in the store (default 1,000,000)"
    )
    parser.add_argument("--runs", type=int, default=20, help="timed runs per query (default 20)")
    parser.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="where to make the profile (default: a temporary folder, removed)",
    )
    args = parser.parse_args(argv)
    if not 1_000 <= args.messages <= MAX_MESSAGES:
        parser.error(f"--messages must be between 1,000 and {MAX_MESSAGES:,}")
    if not 1 <= args.runs <= 1_000:
        parser.error("--runs must be between 1 and 1,000")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(describe_machine(), flush=True)
    work = Path(tempfile.mkdtemp(prefix="obrolan-bench-search-", dir=args.dir))
    try:
        profile = work / "profile"
        seconds, words, peers = fill(profile, args.messages)
        size = sum(p.stat().st_size for p in profile.iterdir())
        print(
            f"filled {args.messages:,} messages in {seconds:.1f} s "
            f"({args.messages / seconds:,.0f} msgs/s); store {size / 2**20:,.0f} MiB on disk"
        )
        print(
            f"\nsearch() on a freshly opened store, {args.runs} timed runs after the first "
            "(limit 20):\n"
        )
        print_table(
            ["query", "text", "matches", "hits", "first ms", "p50 ms", "p95 ms"],
            measure(profile, words, peers, args.runs),
        )
        cli = measure_cli(profile, "the")
        print(
            "\n`obrolan search the` end to end (a new process each time), wall / CPU ms: "
            + ", ".join(f"{wall:.0f} / {cpu:.0f}" for wall, cpu in cli)
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
