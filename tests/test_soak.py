"""A short soak (bench/soak.py for 12 s): 8 clients embedding, writing and searching memory
and polling status, and a subscriber that never reads; no errors, nothing acknowledged lost,
and the JSON the README quotes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "soak.py"
KEYS = {
    "minutes", "errors", "acknowledged_writes", "lost_writes", "rss_mb_start", "rss_mb_end",
    "open_files_start", "open_files_end", "internal_errors", "p99_ms_first", "p99_ms_last",
}  # fmt: skip


def test_a_short_soak_loses_nothing_and_fails_nothing(models_dir):
    done = subprocess.run(
        # No generation here: on two busy cores one chat can outlast the whole run (the
        # crash tests and the engines' own tests cover chat and session turns).
        [
            sys.executable,
            str(BENCH),
            "--minutes",
            "0.2",
            "--models",
            str(models_dir),
            "--kinds",
            "embed,memory,status,memory,embed,memory,status,memory",
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert KEYS <= set(result)
    assert result["errors"] == 0 and result["internal_errors"] == 0, done.stdout
    assert result["acknowledged_writes"] > 0 and result["lost_writes"] == 0
    assert {"memory", "embed", "status"} <= set(result["p99_ms_first"])
    # Open files: the clients' connections come and go; nothing piles up in a short run.
    assert result["open_files_end"] <= result["open_files_start"] + 16
