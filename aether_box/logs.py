"""Logging for the box process: readable on the terminal, complete in the data dir.

Records are written by a listener thread, never by the thread that logs: the event loop only
puts each record on a queue, so a slow terminal or disk never stalls it. Every message is cut
to MAX_LOG_CHARS first: a request field of a megabyte, quoted in a log line, would otherwise
hold the interpreter (and so the event loop) for minutes in rich's highlighter.
"""

from __future__ import annotations

import atexit
import logging
import logging.handlers
import queue
from pathlib import Path

from rich.logging import RichHandler

from aether_box.config import unusable_data_dir

__all__ = ["MAX_LOG_CHARS", "capped", "setup_logging"]

# Long enough for any message of our own; user strings beyond it are cut, with a mark.
MAX_LOG_CHARS = 2_000


def capped(text: str, limit: int = MAX_LOG_CHARS) -> str:
    """`text` cut to `limit` characters, saying how much was left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... [{len(text) - limit} more characters not logged]"


def setup_logging(data_dir: Path, level: str = "INFO") -> Path:
    """Log to stderr (rich) and to a rotating file in the data dir; returns the file's path."""
    log_dir = data_dir / "logs"
    path = log_dir / "box.log"
    try:
        log_dir.mkdir(parents=True, exist_ok=True)
        file_handler = logging.handlers.RotatingFileHandler(
            path, maxBytes=10 * 2**20, backupCount=3
        )
    except OSError as exc:  # the first file `run` writes: the data dir's trouble shows here
        raise unusable_data_dir(data_dir, exc) from exc
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    console = RichHandler(show_path=False, rich_tracebacks=True)
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    listener = logging.handlers.QueueListener(
        records, console, file_handler, respect_handler_level=True
    )
    listener.start()
    atexit.register(listener.stop)  # writes out what is queued, then ends the thread
    root = logging.getLogger()
    root.setLevel(level)
    root.addHandler(_Handoff(records))
    return path


class _Handoff(logging.handlers.QueueHandler):
    """Queues records whole (the stock handler flattens tracebacks, losing rich's rendering)."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        record.msg, record.args = (
            capped(record.getMessage()),
            None,
        )  # args may change after the call
        return record
