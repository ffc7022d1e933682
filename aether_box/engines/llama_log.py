"""llama.cpp's log lines: into `logging`, and kept per thread while a caller wants to read them.

llama.cpp explains a failure (a model it cannot load, a grammar it cannot parse) only in its
log; `captured()` keeps the lines the calling thread causes, so the error can quote them.

Importing this module also stops llama-cpp-python's quiet loads (`verbose=False`) from
silencing the whole process: see `_KeepStreams`.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import llama_cpp
import llama_cpp._internals
import llama_cpp.llama
import llama_cpp.llama_chat_format

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


class _KeepStreams:
    """Stands in for llama-cpp-python's `suppress_stdout_stderr`, and leaves the streams be.

    For a load with `verbose=False` that helper points fds 1 and 2 and sys.stdout/stderr at
    /dev/null, process-wide, until the load ends, then puts back the streams it found. In the
    box other threads log and serve meanwhile: their lines were lost, and a stream another
    thread swapped in during the load was undone. llama.cpp's lines come through
    `_on_llama_log` instead, so there is nothing left for it to silence.
    """

    def __init__(self, disable: bool = True) -> None:
        pass

    def __enter__(self) -> _KeepStreams:
        return self

    def __exit__(self, *_: object) -> None:
        return None


# The modules that call it by that name (llama-cpp-python 0.3.x, pinned in pyproject; the
# chat formats' multimodal handlers, which the box does not use, call it too);
# tests/test_llama_log.py fails if a load touches the streams again.
for _module in (llama_cpp.llama, llama_cpp._internals, llama_cpp.llama_chat_format):
    _module.suppress_stdout_stderr = _KeepStreams  # type: ignore[attr-defined]


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
