"""llama.cpp's model parameters made safe for the CPU the box runs on.

llama.cpp repacks weights into "extra buffer types" for its fastest CPU kernels; on CPUs with
AMX (Intel Sapphire and Granite Rapids) that includes an AMX layout whose matrix product
(`ggml_backend_amx_mul_mat`) crashes the process on the first decode on some of them
(ggml-org/llama.cpp#20824, open; seen here with llama-cpp-python 0.3.36 in a 2-core VM). Where
the CPU reports AMX, models load without extra buffer types and run on the plain CPU kernels
(AVX-512 with VNNI on those CPUs): slower prompt processing, no crash.
`AETHER_BOX_LLAMA_AMX=1` keeps the AMX layout for a machine where it is known to work.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import llama_cpp.llama_cpp as low_level

__all__ = ["cpu_has_amx", "model_params", "repacking", "safe_defaults"]

log = logging.getLogger(__name__)
_LIBRARY_DEFAULTS = low_level.llama_model_default_params
_AMX_FLAG = re.compile(r"^flags\s*:.*\bamx_int8\b", re.MULTILINE)
NO_REPACKING = (
    "off: this CPU has AMX, whose llama.cpp kernels crash on some machines "
    "(set AETHER_BOX_LLAMA_AMX=1 to use them)"
)


@functools.cache
def cpu_has_amx() -> bool:
    """Whether this CPU has AMX (Linux's /proc/cpuinfo; False where it cannot be read)."""
    try:
        info = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return bool(_AMX_FLAG.search(info))


@functools.cache
def _avoid_extra_buffers() -> bool:
    avoid = cpu_has_amx() and os.environ.get("AETHER_BOX_LLAMA_AMX") != "1"
    if avoid:
        log.info("llama.cpp weight repacking %s", NO_REPACKING)
    return avoid


def repacking() -> str:
    """What `status` says of llama.cpp's weight repacking: "on", or "off: why"."""
    return NO_REPACKING if _avoid_extra_buffers() else "on"


def model_params() -> Any:
    """llama.cpp's default model parameters, without extra buffer types where they crash."""
    params = _LIBRARY_DEFAULTS()
    if _avoid_extra_buffers():
        params.use_extra_bufts = False
    return params


@contextlib.contextmanager
def safe_defaults() -> Iterator[None]:
    """While held, llama-cpp-python's `Llama` loads with `model_params()`.

    `Llama` takes no argument for extra buffer types and builds its parameters from the
    library's defaults, so the defaults are swapped for the duration of a load. Hold
    `llama.LOAD_LOCK` around it: loads take turns, so no other load sees the swap.
    """
    low_level.llama_model_default_params = model_params
    try:
        yield
    finally:
        low_level.llama_model_default_params = _LIBRARY_DEFAULTS
