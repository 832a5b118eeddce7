"""bench/cli.py keeps working: its --quick run against a real server prints every row.

Only that it runs and measures what it says: the figures themselves go to
docs/performance.md, never into an assertion.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_cli_quick_run_prints_a_row_per_command() -> None:
    """--quick registers profiles, fills them, runs each command and prints the table."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "cli.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("|")][2:]
    labels = [[cell.strip() for cell in row.strip("|").split("|")][:2] for row in rows]
    verbs = ["history bob", "search lunch", "sync, nothing waiting", "sync, 5 waiting"]
    assert labels == [
        ["python -c pass", "-"],
        ["obrolan --help", "-"],
        *([verb, "keyfile"] for verb in verbs),
        *([verb, "passphrase"] for verb in verbs),
    ]
