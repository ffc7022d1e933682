"""llama.cpp through llama-cpp-python: loading GGUF files, and pooled embeddings.

Generation lives in `generator` (a scheduler per model); this module keeps what both share
(loading under one lock, llama.cpp's own account of the memory it took) and the embedder,
whose methods block: the registry runs them in worker threads, one call per model at a time.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import llama_cpp
import numpy as np
from llama_cpp import Llama

from aether_box.engines.llama_cpu import safe_defaults
from aether_box.engines.llama_log import captured, errors
from aether_box.errors import BadRequest, BoxError, CorruptModel, NotFound

__all__ = [
    "LOAD_LOCK",
    "POOLINGS",
    "LlamaEmbedder",
    "apply_prompt",
    "corrupt",
    "gpu_offload_supported",
    "measure",
    "offloaded",
]

# llama-cpp-python points fds 1 and 2 at /dev/null while a model loads (verbose=False);
# two loads at once would race on those fds, so loads take turns.
LOAD_LOCK = threading.Lock()
_OFFLOADED = re.compile(r"offloaded (\d+)/(\d+) layers to GPU")
# How a text's token vectors become one vector: llama.cpp pools inside its graph, so each
# pooling is a context of its own. ("layer:N" would need llama.cpp's eval callback per
# token, which llama-cpp-python does not expose for embeddings: not offered.)
POOLINGS = {"mean": llama_cpp.LLAMA_POOLING_TYPE_MEAN, "last": llama_cpp.LLAMA_POOLING_TYPE_LAST}
_BUFFER = re.compile(r"(\S+)\s+(?:model|output|KV|compute) buffer size =\s*([\d.]+) MiB")


def gpu_offload_supported() -> bool:
    """Whether this llama.cpp build can offload layers to a GPU."""
    return bool(llama_cpp.llama_supports_gpu_offload())


def corrupt(path: Path, lines: list[tuple[int, str]], exc: Exception) -> CorruptModel:
    """The error for a GGUF llama.cpp would not load, quoting its own reason."""
    why = errors(lines) or str(exc)
    return CorruptModel(
        f"llama.cpp could not load {path.name}: {why}. The file is truncated, corrupted "
        "or not a model llama.cpp supports; pull it again (`aether-box models pull`) "
        "or re-add it"
    )


def offloaded(lines: list[tuple[int, str]]) -> str | None:
    """llama.cpp's count of layers it put on a GPU ("24/31"), or None if it said nothing."""
    for _, text in lines:
        match = _OFFLOADED.search(text)
        if match:
            return f"{match.group(1)}/{match.group(2)}"
    return None


def measure(lines: list[tuple[int, str]], model: Any) -> tuple[int, str, list[str]]:
    """(bytes allocated, device, backends) from llama.cpp's buffer-size lines of a load."""
    sizes: dict[str, float] = {}
    for _, text in lines:
        match = _BUFFER.search(text)
        if match:
            backend = match.group(1).split("_")[0]  # "CPU_Mapped" -> "CPU"
            sizes[backend] = sizes.get(backend, 0.0) + float(match.group(2))
    if sizes:
        memory = int(sum(sizes.values()) * 2**20)
    else:  # llama.cpp changed its log lines: weights plus a rough allowance
        memory = int(llama_cpp.llama_model_size(model)) + 64 * 2**20
    gpus = sorted(b for b in sizes if b != "CPU")
    device = gpus[0].rstrip("0123456789").lower() if gpus else "cpu"
    return memory, device, sorted(sizes)


@dataclass
class _Loaded:
    llm: Llama
    memory_bytes: int
    device: str
    backends: list[str] = field(default_factory=list)
    offloaded: str | None = None


def _load(path: Path, **kwargs: Any) -> _Loaded:
    """A Llama instance, with llama.cpp's own account of the memory it allocated."""
    if not path.exists():
        raise NotFound(f"model file {path} has gone; pull or add the model again")
    with LOAD_LOCK, captured() as lines, safe_defaults():
        try:
            llm = Llama(str(path), verbose=False, **kwargs)
        except ValueError as exc:
            raise corrupt(path, lines, exc) from exc
    memory, device, backends = measure(lines, llm.model)
    return _Loaded(llm, memory, device, backends, offloaded(lines))


class _Base:
    """The Llama instance, its memory and its device."""

    def __init__(self, loaded: _Loaded, path: Path) -> None:
        self.llm = loaded.llm
        self.path = path
        self.memory_bytes = loaded.memory_bytes
        self.device = loaded.device
        self.backends = loaded.backends
        self.offloaded = loaded.offloaded
        # llama.cpp may round the context up; llama-cpp-python's buffers keep the size asked for.
        self.n_ctx = min(self.llm.n_ctx(), len(self.llm.input_ids))
        self.dim = self.llm.n_embd()

    def close(self) -> None:
        """Free the model and its context."""
        self.llm.close()


def apply_prompt(prompt: str | None, texts: list[str]) -> list[str]:
    """Each text put into the template `prompt` at its ``{text}`` (None: the texts as they are).

    A plain replace, not str.format: a template may hold other braces (quotes of JSON).
    """
    if prompt is None:
        return texts
    return [prompt.replace("{text}", text) for text in texts]


class LlamaEmbedder(_Base):
    """Pooled (mean or last token), L2-normalised sentence vectors from one GGUF model.

    The mean-pooling context is loaded with the model; a last-token one is loaded on first
    use (the weights are memory-mapped, so it costs its context buffers, not a second copy).
    """

    def __init__(self, loaded: _Loaded, path: Path, kwargs: dict[str, Any] | None = None) -> None:
        super().__init__(loaded, path)
        self._kwargs = dict(kwargs or {})
        self._pooled: dict[str, Llama] = {}

    @classmethod
    def load(cls, path: Path, *, n_ctx: int, n_threads: int, n_gpu_layers: int) -> LlamaEmbedder:
        """Load `path` for embeddings; a text may hold up to `n_ctx` tokens."""
        kwargs: dict[str, Any] = {
            "n_ctx": n_ctx,
            "n_batch": n_ctx,
            "n_ubatch": n_ctx,
            "n_threads": n_threads,
            "n_threads_batch": n_threads,
            "n_gpu_layers": n_gpu_layers,
            "embedding": True,
        }
        return cls(_load(path, pooling_type=POOLINGS["mean"], **kwargs), path, kwargs)

    def _context(self, pooling: str) -> Llama:
        """The Llama context that pools as asked (loaded on first use)."""
        if pooling == "mean":
            return self.llm
        if pooling not in POOLINGS:
            raise BadRequest(f"'pooling' must be one of {sorted(POOLINGS)}, got {pooling!r}")
        if pooling not in self._pooled:
            loaded = _load(self.path, pooling_type=POOLINGS[pooling], **self._kwargs)
            # The weights are shared (mmap); only the new context's buffers are new memory.
            weights = int(llama_cpp.llama_model_size(self.llm.model))
            self.memory_bytes += max(loaded.memory_bytes - weights, 0)
            self._pooled[pooling] = loaded.llm
        return self._pooled[pooling]

    def close(self) -> None:
        """Free the model and its contexts."""
        for llm in self._pooled.values():
            llm.close()
        super().close()

    def embed(
        self,
        texts: list[str],
        name: str = "",
        offset: int = 0,
        prompt: str | None = None,
        pooling: str = "mean",
    ) -> np.ndarray:
        """Vectors (len(texts), dim), float32, each of unit length.

        `prompt`: a template with ``{text}`` each text is put into first; `pooling`: "mean"
        (the default) or "last" (the last token's vector: with a prompt that ends asking for
        one word, PromptEOL-style, the model's summary of the text).
        `offset` is where `texts` starts in the request, for error messages.
        """
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        llm = self._context(pooling)
        texts = apply_prompt(prompt, texts)
        longest = min(self.n_ctx, self.llm.n_batch)  # a text must fit one batch
        for i, text in enumerate(texts):
            n = len(self.llm.tokenize(text.encode("utf-8"), add_bos=True, special=False))
            if n == 0:
                raise BadRequest(
                    f"texts[{offset + i}] is empty; {name!r} cannot embed a text with no tokens"
                )
            if n > longest:
                raise BadRequest(
                    f"texts[{offset + i}] is {n} tokens; {name!r} embeds at most {longest} "
                    "per text; split it, or raise engines.embed_n_ctx"
                )
        try:
            vectors = np.asarray(
                llm.embed(texts, normalize=False, truncate=False), dtype=np.float32
            )
        except (RuntimeError, ValueError) as exc:
            raise BoxError(f"llama.cpp failed to embed with {name!r}: {exc}") from exc
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.maximum(norms, 1e-12)
