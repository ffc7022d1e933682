"""llama.cpp through llama-cpp-python: text generation and mean-pooled embeddings from GGUF files.

Every method here blocks; the registry runs them in worker threads, one call per model at a
time. Generation checks a `cancelled()` callable between tokens (and between prompt chunks),
so a cancelled request frees its model within one token.
"""

from __future__ import annotations

import codecs
import ctypes
import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import llama_cpp
import numpy as np
from llama_cpp import Llama
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from aether_box.errors import BadRequest, BoxError, CorruptModel, NotFound

__all__ = [
    "Generation",
    "GenerationParams",
    "LlamaEmbedder",
    "LlamaGenerator",
    "gpu_offload_supported",
]

log = logging.getLogger(__name__)
llama_log = logging.getLogger("llama.cpp")

# llama-cpp-python points fds 1 and 2 at /dev/null while a model loads (verbose=False);
# two loads at once would race on those fds, so loads take turns.
_LOAD_LOCK = threading.Lock()
_capture = threading.local()
# ggml's log levels (ggml.h): DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5 (continues a line).
_LEVELS = {1: logging.DEBUG, 2: logging.DEBUG, 3: logging.INFO, 4: logging.WARNING}
_BUFFER = re.compile(r"(\S+)\s+(?:model|output|KV|compute) buffer size =\s*([\d.]+) MiB")


@llama_cpp.llama_log_callback
def _on_llama_log(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    # Instead of llama-cpp-python's print-to-stderr: lines go to logging, and the loading
    # thread keeps them to explain a failure and to read llama.cpp's own buffer sizes.
    if level == 5:
        return
    line = text.decode("utf-8", "replace").rstrip()
    lines = getattr(_capture, "lines", None)
    if lines is not None:
        lines.append((level, line))
    if line:
        llama_log.log(_LEVELS.get(level, logging.DEBUG), "%s", line)


llama_cpp.llama_log_set(_on_llama_log, ctypes.c_void_p(0))


def gpu_offload_supported() -> bool:
    """Whether this llama.cpp build can offload layers to a GPU."""
    return bool(llama_cpp.llama_supports_gpu_offload())


@dataclass(frozen=True)
class GenerationParams:
    """Sampling settings of one request (validated by the service)."""

    max_tokens: int = 256
    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass
class Generation:
    """What one generation produced, and how fast."""

    text: str
    finish_reason: str  # "stop", "length" or "cancelled"
    prompt_tokens: int
    completion_tokens: int
    ttft_s: float
    tokens_per_s: float


@dataclass
class _Loaded:
    llm: Llama
    memory_bytes: int
    device: str
    backends: list[str] = field(default_factory=list)


def _load(path: Path, **kwargs: Any) -> _Loaded:
    """A Llama instance, with llama.cpp's own account of the memory it allocated."""
    if not path.exists():
        raise NotFound(f"model file {path} has gone; pull or add the model again")
    with _LOAD_LOCK:
        _capture.lines = lines = []
        try:
            llm = Llama(str(path), verbose=False, **kwargs)
        except ValueError as exc:
            errors = [text for level, text in lines if level >= 4 and text]
            why = "; ".join(errors[:2]) or str(exc)
            raise CorruptModel(
                f"llama.cpp could not load {path.name}: {why}. The file is truncated, corrupted "
                "or not a model llama.cpp supports; pull it again (`aether-box models pull`) "
                "or re-add it"
            ) from exc
        finally:
            _capture.lines = None
    sizes: dict[str, float] = {}
    for _, text in lines:
        match = _BUFFER.search(text)
        if match:
            backend = match.group(1).split("_")[0]  # "CPU_Mapped" -> "CPU"
            sizes[backend] = sizes.get(backend, 0.0) + float(match.group(2))
    if sizes:
        memory = int(sum(sizes.values()) * 2**20)
    else:  # llama.cpp changed its log lines: weights plus a rough allowance
        memory = int(llama_cpp.llama_model_size(llm.model)) + 64 * 2**20
    gpus = sorted(b for b in sizes if b != "CPU")
    device = gpus[0].rstrip("0123456789").lower() if gpus else "cpu"
    return _Loaded(llm, memory, device, sorted(sizes))


class _Base:
    """What both engines share: the Llama instance, its memory and its device."""

    def __init__(self, loaded: _Loaded, path: Path) -> None:
        self.llm = loaded.llm
        self.path = path
        self.memory_bytes = loaded.memory_bytes
        self.device = loaded.device
        self.backends = loaded.backends
        # llama.cpp may round the context up; llama-cpp-python's buffers keep the size asked for.
        self.n_ctx = min(self.llm.n_ctx(), len(self.llm.input_ids))
        self.dim = self.llm.n_embd()
        self._vocab = self.llm._model.vocab

    def close(self) -> None:
        """Free the model and its context."""
        self.llm.close()


class LlamaGenerator(_Base):
    """Chat and raw completion with one GGUF model."""

    @classmethod
    def load(cls, path: Path, *, n_ctx: int, n_threads: int, n_gpu_layers: int) -> LlamaGenerator:
        """Load `path` for generation."""
        loaded = _load(
            path,
            n_ctx=n_ctx,
            n_threads=n_threads,
            n_threads_batch=n_threads,
            n_gpu_layers=n_gpu_layers,
        )
        return cls(loaded, path)

    def __init__(self, loaded: _Loaded, path: Path) -> None:
        super().__init__(loaded, path)
        llm = self.llm
        self._pieces: dict[int, bytes] = {}
        self._piece_buf = ctypes.create_string_buffer(256)
        self._bos = llm.token_bos()
        self._bos_text = llm._model.token_get_text(self._bos) if self._bos != -1 else ""
        self._add_bos = llm._model.add_bos_token()
        template = llm.metadata.get("tokenizer.chat_template")
        self._chat: Jinja2ChatFormatter | None = None
        if template:
            eos = llm.token_eos()
            self._chat = Jinja2ChatFormatter(
                template=template,
                eos_token=llm._model.token_get_text(eos) if eos != -1 else "",
                bos_token=self._bos_text,
            )

    # -- prompts -------------------------------------------------------------------------

    def chat_tokens(self, messages: list[dict[str, str]], name: str) -> list[int]:
        """The prompt for `messages`, rendered with the model's own chat template."""
        if self._chat is None:
            raise BadRequest(
                f"model {name!r} has no chat template in its GGUF file; use op 'complete' "
                "with a prompt you format yourself"
            )
        try:
            prompt = self._chat(messages=messages).prompt
        except Exception as exc:  # jinja2 errors and the template's own raise_exception
            raise BadRequest(
                f"the chat template of {name!r} rejected these messages: {exc}"
            ) from exc
        # Templates usually write the BOS themselves; add it only when the model wants one
        # and the template left it out.
        add_bos = self._add_bos and not (self._bos_text and prompt.startswith(self._bos_text))
        return self.llm.tokenize(prompt.encode("utf-8"), add_bos=add_bos, special=True)

    def prompt_tokens(self, prompt: str) -> list[int]:
        """The tokens of a raw completion prompt (special tokens allowed, as llama.cpp does)."""
        tokens = self.llm.tokenize(prompt.encode("utf-8"), add_bos=self._add_bos, special=True)
        if not tokens and self._bos != -1:
            tokens = [self._bos]  # an empty prompt starts from the beginning of a text
        return tokens

    def _piece(self, token: int) -> bytes:
        piece = self._pieces.get(token)
        if piece is None:
            buf = self._piece_buf
            n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
            piece = self._pieces[token] = buf.raw[:n]
        return piece

    # -- generation ----------------------------------------------------------------------

    def generate(
        self,
        tokens: Sequence[int],
        params: GenerationParams,
        on_text: Callable[[str], None] | None = None,
        cancelled: Callable[[], bool] = lambda: False,
        name: str = "",
    ) -> Generation:
        """Generate from prompt `tokens`, passing each new piece of text to `on_text`."""
        n_prompt = len(tokens)
        if not n_prompt:
            raise BadRequest("the prompt is empty")
        room = self.n_ctx - n_prompt
        if room <= 0:
            raise BadRequest(
                f"the prompt is {n_prompt} tokens but {name or 'the model'}'s context holds "
                f"{self.n_ctx}; shorten it, or raise engines.n_ctx (up to the model's "
                f"{self.llm._model.n_ctx_train()})"
            )
        limit = min(params.max_tokens, room)
        llm = self.llm
        started = time.perf_counter()
        if not self._prefill(tokens, cancelled):
            return Generation("", "cancelled", n_prompt, 0, 0.0, 0.0)
        llm.set_seed(params.seed if params.seed is not None else llama_cpp.LLAMA_DEFAULT_SEED)

        out = _TextOut(params.stop, on_text)
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        is_eog, vocab, piece = llama_cpp.llama_vocab_is_eog, self._vocab, self._piece
        finish, count, first = "length", 0, 0.0
        tokens_iter = llm.generate(
            tokens,
            top_k=params.top_k,
            top_p=params.top_p,
            min_p=params.min_p,
            temp=params.temperature,
            repeat_penalty=1.0,
        )
        try:
            for token in tokens_iter:
                if not count:
                    first = time.perf_counter()
                if cancelled():
                    finish = "cancelled"
                    break
                if is_eog(vocab, token):
                    finish = "stop"
                    break
                count += 1
                text = decoder.decode(piece(token))
                if text and out.add(text):
                    finish = "stop"
                    break
                if count >= limit:
                    break
        except RuntimeError as exc:  # llama_decode failed: out of KV cells, backend error
            raise BoxError(f"llama.cpp failed while generating with {name!r}: {exc}") from exc
        finally:
            tokens_iter.close()
        if finish != "stop":
            out.add(decoder.decode(b"", final=True), last=True)
        ended = time.perf_counter()
        first = first or ended
        rate = (count - 1) / (ended - first) if count > 1 and ended > first else 0.0
        return Generation(out.text(), finish, n_prompt, count, first - started, rate)

    def _prefill(self, tokens: Sequence[int], cancelled: Callable[[], bool]) -> bool:
        """Evaluate a long uncached prompt chunk by chunk, so a cancel need not wait for all of it.

        Leaves the last token to `Llama.generate`, which then finds the rest in its KV cache.
        Returns False if cancelled.
        """
        llm = self.llm
        if cancelled():
            return False
        cached = llm._input_ids
        shared = 0
        for a, b in zip(cached, tokens[:-1], strict=False):
            if a != b:
                break
            shared += 1
        todo = len(tokens) - 1 - shared
        if todo <= llm.n_batch:
            return True  # one batch: Llama.generate evaluates it
        if shared == 0:
            llm.reset()
        else:
            llm.n_tokens = shared  # eval() drops the KV cells past this point
        try:
            for start in range(shared, len(tokens) - 1, llm.n_batch):
                if cancelled():
                    return False
                llm.eval(tokens[start : min(start + llm.n_batch, len(tokens) - 1)])
        except RuntimeError as exc:
            raise BoxError(f"llama.cpp failed on the prompt: {exc}") from exc
        return True


class _TextOut:
    """Collects generated text and passes it on, holding back what may begin a stop sequence."""

    __slots__ = ("_stops", "_emit", "_parts", "_pending")

    def __init__(self, stops: Sequence[str], emit: Callable[[str], None] | None) -> None:
        self._stops = tuple(s for s in stops if s)
        self._emit = emit
        self._parts: list[str] = []
        self._pending = ""

    def add(self, text: str, last: bool = False) -> bool:
        """Take new text; True when a stop sequence ended the generation."""
        if not self._stops:
            self._send(text)
            return False
        pending = self._pending + text
        hits = [i for i in (pending.find(s) for s in self._stops) if i >= 0]
        if hits:
            self._pending = ""
            self._send(pending[: min(hits)])
            return True
        keep = 0 if last else _stop_prefix(pending, self._stops)
        self._pending = pending[len(pending) - keep :]
        self._send(pending[: len(pending) - keep])
        return False

    def _send(self, text: str) -> None:
        if text:
            self._parts.append(text)
            if self._emit is not None:
                self._emit(text)

    def text(self) -> str:
        return "".join(self._parts)


def _stop_prefix(text: str, stops: Sequence[str]) -> int:
    """Length of the longest end of `text` that is the start of a stop sequence."""
    best = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:n]):
                best = n
                break
    return best


class LlamaEmbedder(_Base):
    """Mean-pooled, L2-normalised sentence vectors from one GGUF model."""

    @classmethod
    def load(cls, path: Path, *, n_ctx: int, n_threads: int, n_gpu_layers: int) -> LlamaEmbedder:
        """Load `path` for embeddings; a text may hold up to `n_ctx` tokens."""
        loaded = _load(
            path,
            n_ctx=n_ctx,
            n_batch=n_ctx,
            n_ubatch=n_ctx,
            n_threads=n_threads,
            n_threads_batch=n_threads,
            n_gpu_layers=n_gpu_layers,
            embedding=True,
            pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN,
        )
        return cls(loaded, path)

    def embed(self, texts: list[str], name: str = "", offset: int = 0) -> np.ndarray:
        """Vectors (len(texts), dim), float32, each of unit length.

        `offset` is where `texts` starts in the request, for error messages.
        """
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
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
                self.llm.embed(texts, normalize=False, truncate=False), dtype=np.float32
            )
        except (RuntimeError, ValueError) as exc:
            raise BoxError(f"llama.cpp failed to embed with {name!r}: {exc}") from exc
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.maximum(norms, 1e-12)
