"""Logging for the box process: readable on the terminal, complete in the data dir."""

from __future__ import annotations

import logging
import logging.handlers
from pathlib import Path

from rich.logging import RichHandler

__all__ = ["setup_logging"]


def setup_logging(data_dir: Path, level: str = "INFO") -> Path:
    """Log to stderr (rich) and to a rotating file in the data dir; returns the file's path."""
    log_dir = data_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    path = log_dir / "box.log"
    file_handler = logging.handlers.RotatingFileHandler(path, maxBytes=10 * 2**20, backupCount=3)
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    console = RichHandler(show_path=False, rich_tracebacks=True)
    root = logging.getLogger()
    root.setLevel(level)
    root.addHandler(console)
    root.addHandler(file_handler)
    return path
