"""llama.cpp's log lines: into `logging`, and kept per thread while a caller wants to read them.

llama.cpp explains a failure (a model it cannot load, a grammar it cannot parse) only in its
log; `captured()` keeps the lines the calling thread causes, so the error can quote them.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import llama_cpp

__all__ = ["captured", "errors"]

llama_log = logging.getLogger("llama.cpp")

_capture = threading.local()
# ggml's log levels (ggml.h): DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5 (continues a line).
_LEVELS = {1: logging.DEBUG, 2: logging.DEBUG, 3: logging.INFO, 4: logging.WARNING}


@llama_cpp.llama_log_callback
def _on_llama_log(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    # Instead of llama-cpp-python's print-to-stderr: lines go to logging, and the calling
    # thread keeps them to explain a failure and to read llama.cpp's own buffer sizes.
    lines = getattr(_capture, "lines", None)
    if level == 5 or (lines is None and level <= 2 and not llama_log.isEnabledFor(logging.DEBUG)):
        # Dropped at once: re-reserving its graphs (each LoRA adapter switch) makes llama.cpp
        # log ~470 debug lines, and each is a call into Python.
        return
    line = text.decode("utf-8", "replace").rstrip()
    if lines is not None:
        lines.append((level, line))
    if line:
        llama_log.log(_LEVELS.get(level, logging.DEBUG), "%s", line)


llama_cpp.llama_log_set(_on_llama_log, ctypes.c_void_p(0))


@contextmanager
def captured() -> Iterator[list[tuple[int, str]]]:
    """The (level, line) pairs llama.cpp logs from this thread while the block runs."""
    _capture.lines = lines = []
    try:
        yield lines
    finally:
        _capture.lines = None


def errors(lines: list[tuple[int, str]], most: int = 2) -> str:
    """The first error lines among `lines`, joined for a message ("" if none)."""
    return "; ".join([text for level, text in lines if level >= 4 and text][:most])
