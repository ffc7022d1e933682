"""A GGUF model loaded for generation: its prompts, and its scheduler.

The model and one context are made on llama-cpp-python's low-level API (its `Llama` class has
one sequence per context); the context holds `parallel` sequences and a `Scheduler` thread
drives it. By default each sequence has a KV stream of its own: a sequence's cells then lie
just as they would if it ran alone, so batching does not change a single bit of its logits
(measured: greedy replies identical alone and four at a time). `kv_unified` shares one pool
instead, so one long conversation may use what the others do not; but then the other
sequences' cells sit among a sequence's own, attention sums in another order, and greedy
replies drift apart after a few tokens (measured: 1 to 3 of 8 replies identical). Prompt rendering and tokenizing only read the vocabulary,
so they run in the caller's worker thread, never in the scheduler's.
"""

from __future__ import annotations

import contextlib
import ctypes
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import llama_cpp
from llama_cpp._internals import LlamaContext, LlamaModel
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from aether_box.engines import llama_cpu
from aether_box.engines.baked import BakedCopies, BakePolicy
from aether_box.engines.generation import AdapterRef, GenerationParams, adapter_key
from aether_box.engines.llama import LOAD_LOCK, corrupt, measure, offloaded
from aether_box.engines.llama_log import captured, errors
from aether_box.engines.sampling import Sampler
from aether_box.engines.saved_state import StateStore
from aether_box.engines.scheduler import Job, Scheduler
from aether_box.engines.threads import ThreadGovernor
from aether_box.errors import BadRequest, BoxError, NotFound

__all__ = ["LlamaGenerator"]


class LlamaGenerator:
    """Chat and raw completion with one GGUF model, several requests at a time."""

    @classmethod
    def load(
        cls,
        path: Path,
        *,
        n_ctx: int,
        n_threads: int,
        n_gpu_layers: int,
        adapt_threads: bool = False,
        parallel: int = 4,
        max_queue: int = 32,
        kv_cells: int = 0,
        kv_unified: bool = False,
        flash_attn: str = "auto",
        n_batch: int = 512,
        name: str = "",
        state_dir: Path | None = None,
        state_bytes: int = 0,
        bake: BakePolicy | None = None,
    ) -> LlamaGenerator:
        """Load `path`: requests of up to `n_ctx` tokens, `parallel` at once, over `kv_cells`
        KV cells in all (0: room for `parallel` full contexts), split evenly between the
        sequences or, with `kv_unified`, shared. `flash_attn`: "auto", "on" or "off" (see
        EngineSettings.flash_attn). With `adapt_threads`, decoding uses as many of the
        `n_threads` as measure fastest (see `threads`). With `state_dir` and `state_bytes`, sessions'
        conversations are saved there when their slot is reused (see `saved_state`). With
        `bake`, hot adapter sets are served from baked copies (see `baked`), loaded with these
        same settings (no saved states: a copy is rebuilt, not restored)."""
        if not path.exists():
            raise NotFound(f"model file {path} has gone; pull or add the model again")
        kv_cells = kv_cells or n_ctx * parallel
        model_params = llama_cpu.model_params()
        model_params.n_gpu_layers = n_gpu_layers
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = max(kv_cells, n_ctx)
        params.n_batch = n_batch
        params.n_ubatch = n_batch
        params.n_seq_max = parallel
        params.kv_unified = kv_unified
        params.n_threads = n_threads
        params.n_threads_batch = n_threads
        params.no_perf = True
        params.flash_attn_type = {
            "auto": llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO,
            "on": llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED,
            "off": llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED,
        }[flash_attn]
        with LOAD_LOCK, captured() as lines, contextlib.ExitStack() as stack:
            try:
                model = LlamaModel(path_model=str(path), params=model_params, verbose=False)
            except ValueError as exc:
                raise corrupt(path, lines, exc) from exc
            stack.callback(model.close)
            try:
                context = LlamaContext(model=model, params=params, verbose=False)
            except ValueError as exc:
                raise corrupt(path, lines, exc) from exc
            stack.pop_all()
        memory, device, backends = measure(lines, model.model)
        copies = None
        if bake is not None:
            settings = dict(
                n_ctx=n_ctx, n_threads=n_threads, n_gpu_layers=n_gpu_layers, parallel=parallel,
                max_queue=max_queue, kv_cells=kv_cells, kv_unified=kv_unified,
                flash_attn=flash_attn, n_batch=n_batch, name=f"{name or path.stem}+baked",
                adapt_threads=adapt_threads,
            )  # fmt: skip
            copies = BakedCopies(path, bake, lambda baked: cls.load(baked, **settings))
        return cls(
            model,
            context,
            path,
            memory_bytes=memory,
            device=device,
            backends=backends,
            offloaded=offloaded(lines),
            n_ctx=n_ctx,
            parallel=parallel,
            max_queue=max_queue,
            n_batch=n_batch,
            unified=kv_unified,
            name=name or path.stem,
            store=StateStore(state_dir, state_bytes) if state_dir and state_bytes else None,
            threads=ThreadGovernor(n_threads) if adapt_threads else None,
            baked=copies,
        )

    def __init__(
        self,
        model: LlamaModel,
        context: LlamaContext,
        path: Path,
        *,
        memory_bytes: int,
        device: str,
        backends: list[str],
        offloaded: str | None,
        n_ctx: int,
        parallel: int,
        max_queue: int,
        n_batch: int,
        unified: bool,
        name: str,
        store: StateStore | None = None,
        threads: ThreadGovernor | None = None,
        baked: BakedCopies | None = None,
    ) -> None:
        self.model = model
        self.baked = baked
        self.store = store
        self.context = context
        self.path = path
        self.memory_bytes = memory_bytes
        self.device = device
        self.backends = backends
        self.offloaded = offloaded
        self.kv_cells = llama_cpp.llama_n_ctx(context.ctx)  # llama.cpp may round it up
        self.n_ctx = min(n_ctx, llama_cpp.llama_n_ctx_seq(context.ctx))
        self.dim = model.n_embd()
        self._vocab = model.vocab
        self._n_vocab = model.n_vocab()
        self._pieces: dict[int, bytes] = {}
        # LoRA adapters loaded into this model, by content hash; llama.cpp frees the ones left
        # with it (release_adapter frees one sooner).
        self._loras: dict[str, Any] = {}
        self._lora_lock = threading.Lock()
        self._preparing: dict[int, int] = {}  # id(handle) -> jobs prepared, not yet submitted
        self._piece_buf = ctypes.create_string_buffer(256)
        self._bos = model.token_bos()
        self._bos_text = model.token_get_text(self._bos) if self._bos != -1 else ""
        self._add_bos = model.add_bos_token()
        template = model.metadata().get("tokenizer.chat_template")
        self._chat: Jinja2ChatFormatter | None = None
        if template:
            eos = model.token_eos()
            self._chat = Jinja2ChatFormatter(
                template=template,
                eos_token=model.token_get_text(eos) if eos != -1 else "",
                bos_token=self._bos_text,
            )
        self.scheduler = Scheduler(
            context.ctx,
            self._vocab,
            self._piece,
            name=name,
            parallel=parallel,
            max_queue=max_queue,
            kv_cells=self.kv_cells,
            n_batch=n_batch,
            unified=unified,
            store=store,
            threads=threads,
        )

    # -- prompts (any thread) ------------------------------------------------------------

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
        return self.model.tokenize(prompt.encode("utf-8"), add_bos=add_bos, special=True)

    def prompt_tokens(self, prompt: str) -> list[int]:
        """The tokens of a raw completion prompt (special tokens allowed, as llama.cpp does)."""
        tokens = self.model.tokenize(prompt.encode("utf-8"), add_bos=self._add_bos, special=True)
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

    def prepare(
        self,
        tokens: Sequence[int],
        params: GenerationParams,
        on_text: Callable[[str], None] | None,
        on_done: Callable[[Any], None],
        name: str = "",
        session: str | None = None,
        adapters: Sequence[AdapterRef] = (),
    ) -> Job:
        """A job for `submit`: checks the prompt's length and builds its sampler chain
        (a grammar is parsed here, in the caller's worker thread, not the scheduler's), and
        reads the session's saved conversation state if its tokens start this prompt.
        `adapters` are loaded on first use (once per model) and applied for this job only."""
        n_prompt = len(tokens)
        if not n_prompt:
            raise BadRequest("the prompt is empty")
        room = self.n_ctx - n_prompt
        if room <= 0:
            raise BadRequest(
                f"the prompt is {n_prompt} tokens but {name or 'the model'}'s context holds "
                f"{self.n_ctx}; shorten it, or raise engines.n_ctx (up to the model's "
                f"{self.model.n_ctx_train()})"
            )
        key = adapter_key(adapters)
        copy = self.baked.route(key, adapters) if self.baked is not None else None
        if copy is not None:  # a hot set: its baked copy runs it, with no runtime adapter
            job = copy.prepare(tokens, params, on_text, on_done, name, session)
            job.adapter_key = key  # still part of its slot's cache key
            job.home = copy
            return job
        handles = self.adapters(adapters)
        if session is not None and key:
            session = f"{session}\x1f{key}"  # its saved state is kept per adapter set
        try:
            sampler = Sampler(self._vocab, self._n_vocab, params)
        except BaseException:
            self._prepared(handles, -1)  # no job to submit
            raise
        saved = None
        if session is not None and self.store is not None:
            saved = self.store.find(session, tokens)
        limit = min(params.max_tokens, room)
        return Job(tokens, params, sampler, limit, on_text, on_done, session, saved, handles, key)

    def prepare_score(
        self, tokens: Sequence[int], adapters: Sequence[AdapterRef], on_done: Callable[[Any], None]
    ) -> Job:
        """A job that reads `tokens` under `adapters` and ends with the logits of every
        position, an array (len(tokens), n_vocab), teacher-forced (the fusion probe's)."""
        if not 0 < len(tokens) <= min(self.n_ctx, self.scheduler.n_batch):
            raise BadRequest(
                f"a scored text must be 1 to {min(self.n_ctx, self.scheduler.n_batch)} tokens"
            )
        sampler = Sampler(self._vocab, self._n_vocab, GenerationParams(temperature=0.0))
        return Job(
            tokens,
            GenerationParams(max_tokens=1),
            sampler,
            0,
            None,
            on_done,
            adapters=self.adapters(adapters),
            adapter_key=adapter_key(adapters),
            score=True,
        )

    def adapters(self, adapters: Sequence[AdapterRef]) -> list[tuple[Any, float]]:
        """llama.cpp handles and scales of `adapters` for a job about to be submitted (counted
        until `submit`), loading each file once (it blocks)."""
        handles = []
        for ref in adapters:
            with self._lora_lock:
                handle = self._loras.get(ref.sha256)
                if handle is None:
                    with captured() as lines:
                        handle = llama_cpp.llama_adapter_lora_init(
                            self.model.model, ref.path.encode("utf-8")
                        )
                    if not handle:
                        why = errors(lines)
                        raise BoxError(
                            f"llama.cpp could not load the adapter {Path(ref.path).name} "
                            f"({why or 'no reason given'}); remove it and add it again"
                        )
                    self._loras[ref.sha256] = handle
            handles.append((handle, ref.scale))
        self._prepared(handles, +1)
        return handles

    def _prepared(self, handles: Sequence[tuple[Any, float]], change: int) -> None:
        """Count the jobs prepared with each adapter and not yet submitted: a released
        adapter is not freed under one of them (see release_adapter)."""
        with self._lora_lock:
            for handle, _ in handles:
                key = id(handle)
                count = self._preparing.get(key, 0) + change
                if count > 0:
                    self._preparing[key] = count
                else:
                    self._preparing.pop(key, None)

    def release_adapter(self, sha256: str) -> bool:
        """Free the adapter of contents `sha256` once no job uses it (in the scheduler's
        thread, which drops it from the context's set first); False if it is not loaded."""
        dropped = self.baked.release(sha256) if self.baked is not None else 0
        with self._lora_lock:
            handle = self._loras.pop(sha256, None)
        if handle is None:
            return bool(dropped)

        def unused() -> bool:  # no job prepared with it waits to be submitted
            with self._lora_lock:
                return not self._preparing.get(id(handle))

        def free() -> None:
            llama_cpp.llama_adapter_lora_free(handle)

        self.scheduler.release_adapter(handle, unused, free)
        return True

    def submit(self, job: Job) -> None:
        """Hand `job` to the scheduler (raises Busy when the queue is full); never blocks."""
        if job.home is not None and job.home is not self:
            job.home.submit(job)
            return
        try:
            self.scheduler.submit(job)
        except BaseException:
            job.sampler.close()
            raise
        finally:
            self._prepared(job.adapters, -1)

    @property
    def extra_memory_bytes(self) -> int:
        """Memory taken since the load: the baked copies of hot adapter sets."""
        return self.baked.memory_bytes if self.baked is not None else 0

    def stats(self) -> dict[str, Any]:
        """The scheduler's figures, for status (with the baked copies, if any)."""
        out = {**self.scheduler.stats(), "adapters_loaded": len(self._loras)}
        if self.baked is not None:
            out["baked"] = self.baked.stats()
            out["baked_mb"] = round(self.baked.memory_bytes / 2**20, 1)
        return out

    def close(self) -> None:
        """Stop the scheduler (requests in it end as cancelled), then free context and model."""
        if self.baked is not None:
            self.baked.close()
        self.scheduler.close()
        self.context.close()
        self.model.close()
