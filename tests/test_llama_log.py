"""llama.cpp's output goes to `logging`; a model load leaves the process's streams alone."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from aether_box.engines.generator import LlamaGenerator
from aether_box.engines.llama import LlamaEmbedder


def _streams() -> tuple[Any, ...]:
    """What the process writes to: the Python streams and the files behind fds 1 and 2."""
    files = [os.fstat(fd) for fd in (1, 2)]
    return (sys.stdout, sys.stderr, *[(f.st_dev, f.st_ino) for f in files])


class _LookAtStreams(logging.Handler):
    """Notes the process's streams at each llama.cpp line, i.e. while a load runs."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.seen: list[tuple[Any, ...]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append(_streams())


def test_a_model_load_leaves_stdout_and_stderr_to_the_rest_of_the_process(smollm2_path):
    # In the box other threads log and serve while a model loads: a load
    # that pointed fds 1 and 2 (and sys.stdout/stderr) at /dev/null lost their lines, and one
    # that put back the streams it found undid another thread's swap made meanwhile.
    logger = logging.getLogger("llama.cpp")
    handler, level = _LookAtStreams(), logger.level
    before = _streams()
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        LlamaEmbedder.load(smollm2_path, n_ctx=128, n_threads=1, n_gpu_layers=0).close()
        LlamaGenerator.load(
            smollm2_path, n_ctx=128, n_threads=1, n_gpu_layers=0, parallel=1
        ).close()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert len(handler.seen) > 10, "llama.cpp logged no lines while loading"
    assert all(seen == before for seen in handler.seen)
    assert _streams() == before
