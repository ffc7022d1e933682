"""Continuous batching for one llama context, in one thread of its own.

llama.cpp contexts are not thread-safe, so everything that touches the context (decode, KV
cache edits, sampling from its logits) happens in the scheduler's thread. The event loop only
calls `submit` and `Job.cancel` (a lock and an event, never a wait) and receives text and the
result through the callbacks it passes in, which it makes thread-safe itself.

Each step decodes one `llama_batch`: first one token for every sequence that is generating, then
chunks of prompts still being read, up to `n_batch` tokens. Generating sequences thus advance
one token per step whatever else arrives, and a long prompt is read alongside them in chunks.
Cancelled requests leave within one step, and their sequence's KV cells are freed.

LoRA adapters apply to the whole context, so one step decodes only sequences that run with the
same adapter set: the set of the step is kept while it has work, for at most ADAPTER_TURN steps
when other sets wait, then the set whose oldest request is oldest takes its turn (switching
costs tens of microseconds, and the first decode after it a few milliseconds).

Finished requests leave their tokens cached in their slot (see `slots`). With a KV stream per
sequence (the default) a request always fits its slot's stream. With one unified pool, the
cached tokens of idle slots are dropped when the cells are wanted; when the pool is full even
so, the youngest request that needs a cell fails with a clear error, and the others go on.
"""

from __future__ import annotations

import codecs
import ctypes
import logging
import math
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import llama_cpp
import numpy as np

from aether_box.engines.batch import Batch
from aether_box.engines.generation import Generation, GenerationParams, TextOut
from aether_box.engines.sampling import Sampler
from aether_box.engines.saved_state import SavedState, StateStore
from aether_box.engines.slots import Slot, choose_slot
from aether_box.engines.threads import ThreadGovernor
from aether_box.errors import BoxError, Overloaded, ServiceUnavailable

__all__ = ["Busy", "Job", "Scheduler"]

log = logging.getLogger(__name__)

# Recent steps and requests the status figures are taken over.
WINDOW = 256
# Steps one adapter set keeps the context while requests under another set wait.
ADAPTER_TURN = 8
# The NLL signal reads every n-th generated token's logits: the mean over them estimates the
# answer's mean per-token NLL at a quarter of the cost (a log-sum-exp over the vocabulary).
NLL_EVERY = 4


class Busy(Overloaded):
    """Every slot is taken and the queue is full."""

    code = "busy"


class OutOfCells(BoxError):
    """The KV cache has no cell left for this request."""

    code = "kv_full"


class Job:
    """One request in a scheduler: its prompt and sampler in, its text and result out.

    `on_text(str)` and `on_done(Generation | BoxError)` are called in the scheduler's thread.
    """

    def __init__(
        self,
        tokens: Sequence[int],
        params: GenerationParams,
        sampler: Sampler,
        limit: int,
        on_text: Callable[[str], None] | None,
        on_done: Callable[[Any], None],
        session: str | None = None,
        saved: SavedState | None = None,
        adapters: Sequence[tuple[Any, float]] = (),
        adapter_key: str = "",
        score: bool = False,
    ) -> None:
        self.tokens = list(tokens)
        self.adapters = tuple(adapters)  # (llama.cpp adapter handle, scale) pairs
        self.adapter_key = adapter_key  # part of every cache key (see adapter_key)
        # A scoring job reads its prompt with the logits of every position and ends with
        # them (an array (n_tokens, n_vocab)) instead of generating.
        self.score = score
        self.scores: list[Any] = []
        self.session = session
        self.saved = saved  # this session's state on disk, if its tokens start the prompt
        self.params = params
        self.sampler = sampler
        self.limit = limit  # most tokens it may generate
        self.on_done = on_done
        self.cancelled = False
        self.submitted = time.perf_counter()
        self._wake: Callable[[], None] = lambda: None
        # The rest belongs to the scheduler's thread.
        self.slot: Slot | None = None
        self.todo: list[int] = []  # prompt tokens not yet decoded
        self.next_token = -1  # sampled, not yet decoded
        self.cached = 0
        self.count = 0
        self.first = 0.0
        self.last = 0.0
        self.out = TextOut(params.stop, on_text)
        self.decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self.nll_sum = 0.0  # -log p of sampled tokens under the model's raw logits
        self.nll_n = 0

    def cancel(self) -> None:
        """Stop it: the scheduler frees its sequence at its next step (callable from any thread)."""
        if not self.cancelled:
            self.cancelled = True
            self._wake()

    def result(self, finish: str) -> Generation:
        ended = time.perf_counter()
        first = self.first or ended
        last = self.last or first
        rate = (self.count - 1) / (last - first) if self.count > 1 and last > first else 0.0
        return Generation(
            self.out.text(),
            finish,
            len(self.tokens),
            self.count,
            first - self.submitted,
            rate,
            self.cached,
            self.nll_sum / self.nll_n if self.nll_n else None,
        )


class Scheduler:
    """Serves `parallel` sequences of one context at once, and queues up to `max_queue` more."""

    def __init__(
        self,
        ctx: int,
        vocab: int,
        piece: Callable[[int], bytes],
        *,
        name: str,
        parallel: int,
        max_queue: int,
        kv_cells: int,
        n_batch: int,
        unified: bool,
        store: StateStore | None = None,
        threads: ThreadGovernor | None = None,
    ) -> None:
        self.ctx = ctx
        self.threads = threads  # None: the thread count stays as the context was made
        self.store = store
        self.vocab = vocab
        self.piece = piece
        self.name = name
        self.parallel = parallel
        self.max_queue = max_queue
        self.kv_cells = kv_cells
        self.n_batch = n_batch
        self.unified = unified
        self.memory = llama_cpp.llama_get_memory(ctx)
        self.slots = [Slot(i) for i in range(parallel)]
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
        self._active = ""  # the adapter set applied to the context now
        self._applied: tuple[Any, ...] = ()  # its llama.cpp handles
        # Adapters to free: (handle, unused, free), see release_adapter.
        self._releases: list[tuple[Any, Callable[[], bool], Callable[[], None]]] = []
        self._turn = 0  # steps the active set has had while other sets waited
        self.adapter_switches = 0
        self.batch = Batch(n_batch)
        self._waiting: deque[Job] = deque()
        self._running = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closing = False
        # Figures for status, written by the thread, read by the loop.
        self.cells_used = 0
        self.prompt_tokens = 0
        self.reused_tokens = 0
        self.generated = 0
        self.steps = 0
        self._overheads: deque[float] = deque(maxlen=WINDOW)
        self._rates: deque[float] = deque(maxlen=WINDOW)  # tokens/s of steps that generated
        self._ttfts: deque[float] = deque(maxlen=32)
        self.n_vocab = int(llama_cpp.llama_vocab_n_tokens(vocab))
        self._nll_s: deque[float] = deque(maxlen=WINDOW)  # CPU time of the NLL, per token
        self._step_s: deque[float] = deque(maxlen=WINDOW)  # wall time of steps that generated
        self._thread = threading.Thread(target=self._run, name=f"llama-{name}", daemon=True)
        self._thread.start()

    # -- the loop's side -----------------------------------------------------------------

    def submit(self, job: Job) -> None:
        """Queue `job`, or raise Busy at once when every slot is taken and the queue is full."""
        with self._lock:
            if self._closing:
                raise ServiceUnavailable(f"model {self.name!r} is being unloaded; retry")
            waiting = len(self._waiting)
            if self._running + waiting >= self.parallel + self.max_queue:
                raise Busy(
                    f"model {self.name!r} is busy: {self.parallel} requests generating and "
                    f"{waiting} queued (engines.max_queue = {self.max_queue}); retry shortly, "
                    "or raise engines.parallel / engines.max_queue"
                )
            job._wake = self._wake.set
            self._waiting.append(job)
            self._wake.set()

    def release_adapter(
        self, handle: Any, unused: Callable[[], bool], free: Callable[[], None]
    ) -> None:
        """Call `free` in the thread once no queued or running job uses adapter `handle` and
        `unused()` says no job about to be submitted does (it is asked under the queue's
        lock). The context's set drops it first: llama.cpp must not keep a freed adapter."""
        with self._lock:
            self._releases.append((handle, unused, free))
            self._wake.set()

    def close(self) -> None:
        """Stop the thread (requests still in it end as cancelled), save the sessions' states
        and free the batch."""
        with self._lock:
            self._closing = True
            self._wake.set()
        self._thread.join()
        # The conversations still in slots go to disk first: a model unloaded while idle
        # (the tuner) costs a session's next turn nothing but the reload.
        for slot in self.slots:
            self._save(slot)
        self.batch.close()
        if self.store is not None:
            self.store.close()

    def stats(self) -> dict[str, Any]:
        """Slots, queue, KV cache and speed figures for status."""
        busy = sum(1 for s in self.slots if s.job is not None)
        overheads, rates, ttfts = list(self._overheads), list(self._rates), list(self._ttfts)
        return {
            "slots": self.parallel,
            "slots_busy": busy,
            "slots_free": self.parallel - busy,
            "queue": len(self._waiting),
            "max_queue": self.max_queue,
            "kv_cells": self.kv_cells,
            "kv_cells_used": self.cells_used,
            "kv_unified": self.unified,
            "prompt_tokens": self.prompt_tokens,
            "prompt_tokens_reused": self.reused_tokens,
            "generated_tokens": self.generated,
            "steps": self.steps,
            "adapter_switches": self.adapter_switches,
            **(
                {"threads": self.threads.current, "thread_changes": self.threads.changes}
                if self.threads is not None
                else {}
            ),
            **(
                {
                    "states_saved": self.store.saved,
                    "states_restored": self.store.restored,
                    "state_bytes": self.store.bytes_on_disk,
                }
                if self.store is not None
                else {}
            ),
            "aggregate_tokens_per_s": round(statistics.median(rates), 1) if rates else None,
            "ttft_ms": round(statistics.median(ttfts) * 1000, 1) if ttfts else None,
            "step_overhead_ms": (
                round(statistics.mean(overheads) * 1000, 3) if overheads else None
            ),
            # The NLL signal's cost against the time per generated token (the goal: under 1%).
            "nll_overhead_percent": (
                round(100 * statistics.mean(nll) / NLL_EVERY / statistics.mean(steps), 3)
                if (nll := list(self._nll_s)) and (steps := list(self._step_s))
                else None
            ),
        }

    # -- the thread ----------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                with self._lock:
                    if self._closing:
                        break
                    free = sum(1 for s in self.slots if s.job is None)
                    new = [self._waiting.popleft() for _ in range(min(free, len(self._waiting)))]
                    self._running += len(new)
                    dropped = [j for j in self._waiting if j.cancelled]
                    for job in dropped:
                        self._waiting.remove(job)
                    if not new and not self._running:
                        self._wake.clear()
                for job in dropped:
                    job.sampler.close()
                    self._deliver(job, job.result("cancelled"))
                for job in new:
                    self._admit(job)
                if self._releases:
                    self._release_adapters()
                if not self._running:
                    self._wake.wait()
                    continue
                self._step()
        except BaseException as exc:  # a bug here must not leave requests hanging forever
            log.exception("the scheduler of %s stopped", self.name)
            error = BoxError(f"the generation scheduler of {self.name!r} failed: {exc}")
            for slot in self.slots:
                if slot.job is not None:
                    self._end(slot.job, error, drop_kv=True)
        finally:
            with self._lock:
                self._closing = True
                leftover = list(self._waiting)
                self._waiting.clear()
            for slot in self.slots:
                if slot.job is not None:
                    self._end(slot.job, slot.job.result("cancelled"), drop_kv=True)
            for job in leftover:
                job.sampler.close()
                self._deliver(job, job.result("cancelled"))

    def _release_adapters(self) -> None:
        with self._lock:
            jobs = [*self._waiting, *(s.job for s in self.slots if s.job is not None)]
            used = {id(h) for job in jobs for h, _ in job.adapters}
            ready = [r for r in self._releases if id(r[0]) not in used and r[1]()]
            for release in ready:
                self._releases.remove(release)
        for handle, _, free in ready:
            if any(h is handle for h in self._applied):
                self._apply_adapters(())
                self._active = ""
            free()

    def _admit(self, job: Job) -> None:
        """Give `job` a slot, keeping the cached tokens its prompt starts with."""
        if job.cancelled:
            self._end(job, job.result("cancelled"), drop_kv=False)
            return
        chosen = choose_slot(self.slots, job.tokens, job.adapter_key)
        assert chosen is not None, "admitted without a free slot"
        slot, shared = chosen
        if job.score:
            shared = 0  # it wants the logits of every position
        saved = job.saved
        job.saved = None
        if saved is not None and len(saved.tokens) > shared:
            shared = max(shared, self._restore(slot, job, saved))
        # The last prompt token is always decoded again: its logits give the first reply token.
        keep = min(shared, len(job.tokens) - 1)
        if keep < len(slot.tokens):
            if slot.session is not None and slot.session != job.session:
                self._save(slot)  # another conversation takes the slot: keep this one on disk
            llama_cpp.llama_memory_seq_rm(self.memory, slot.seq, keep, -1)
            self.cells_used -= len(slot.tokens) - keep
            del slot.tokens[keep:]
        slot.session = job.session
        slot.adapters = job.adapter_key
        slot.job = job
        job.slot = slot
        job.cached = keep
        job.todo = job.tokens[keep:]
        self.reused_tokens += keep
        self.prompt_tokens += len(job.tokens)

    def _save(self, slot: Slot) -> None:
        """Copy the slot's sequence state out for the store to write (in its own thread)."""
        store = self.store
        if store is None or not slot.tokens or slot.session is None:
            return
        size = llama_cpp.llama_state_seq_get_size(self.ctx, slot.seq)
        if not size or size > store.max_bytes:
            return
        buffer = (ctypes.c_uint8 * size)()
        written = llama_cpp.llama_state_seq_get_data(self.ctx, buffer, size, slot.seq)
        if written:
            store.save(slot.session, slot.tokens, bytes(memoryview(buffer)[:written]))

    def _restore(self, slot: Slot, job: Job, saved: SavedState) -> int:
        """Load `saved` into the slot's sequence instead of reading those tokens again;
        how many tokens the slot then holds of the prompt (0 if llama.cpp refused it)."""
        if slot.session is not None and slot.session != job.session:
            self._save(slot)
        self._drop_cache(slot)
        data = saved.data
        buffer = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
        if not llama_cpp.llama_state_seq_set_data(self.ctx, buffer, len(data), slot.seq):
            llama_cpp.llama_memory_seq_rm(self.memory, slot.seq, -1, -1)
            log.warning("llama.cpp refused a saved state of %s; reading the prompt", self.name)
            return 0
        slot.tokens = list(saved.tokens)
        slot.session = job.session
        self.cells_used += len(slot.tokens)
        if self.store is not None:
            self.store.restored += 1
        return len(slot.tokens)

    def _step(self) -> None:
        started = time.perf_counter()
        # The Python overhead is CPU time of this thread outside llama.cpp's calls: a clock
        # that a busy host's preemption does not inflate, as it does wall time.
        cpu_started = time.thread_time()
        for slot in self.slots:
            if slot.job is not None and slot.job.cancelled:
                self._end(slot.job, slot.job.result("cancelled"), drop_kv=True)
        jobs = sorted((s.job for s in self.slots if s.job is not None), key=lambda j: j.submitted)
        if not jobs:
            return
        jobs = self._adapter_group(jobs)
        generating = [j for j in jobs if not j.todo]
        reading = [j for j in jobs if j.todo]
        room = self._make_room(len(generating))
        generating = [j for j in generating if j.slot is not None]
        room -= len(generating)
        # What each job puts in this step: one token for every generating sequence, then
        # prompt chunks in arrival order while the batch and the KV cells have room.
        chunks: list[tuple[Job, int]] = []
        space = self.batch.capacity - len(generating)
        for job in reading:
            take = min(len(job.todo), space, room)
            if take <= 0:
                if not generating and not chunks and room <= 0:
                    # Nothing running will free a cell for it: it cannot go on.
                    self._end(job, self._out_of_cells(job), drop_kv=True)
                continue
            chunks.append((job, take))
            space -= take
            room -= take
        if not generating and not chunks:
            return
        outputs, scored = self._fill_batch(generating, chunks)
        cpu_decode = time.thread_time()
        rc = self.batch.decode(self.ctx)
        cpu_decode = time.thread_time() - cpu_decode
        if rc != 0:
            self._failed_decode(rc, generating, chunks)
            return
        for job in generating:
            job.slot.tokens.append(job.next_token)
        self.cells_used += len(generating)
        for job, take in chunks:
            job.slot.tokens.extend(job.todo[:take])
            del job.todo[:take]
            self.cells_used += take
        for job, first, count in scored:
            self._keep_logits(job, first, count)
        sampling = 0.0
        produced = 0
        for job, index in outputs:
            before = time.thread_time()
            token = job.sampler.sample(self.ctx, index)
            sampling += time.thread_time() - before
            if job.count % NLL_EVERY == 0:
                before = time.thread_time()
                self._nll(job, index, token)
                self._nll_s.append(time.thread_time() - before)
            produced += 1
            self._on_token(job, token)
        self.steps += 1
        self.generated += produced
        if produced and not chunks:
            took = time.perf_counter() - started
            self._rates.append(produced / took)
            self._step_s.append(took / produced)
            if self.threads is not None and (n := self.threads.observe(produced, took)):
                llama_cpp.llama_set_n_threads(self.ctx, n, n)
        self._overheads.append(time.thread_time() - cpu_started - cpu_decode - sampling)

    def _fill_batch(
        self, generating: list[Job], chunks: list[tuple[Job, int]]
    ) -> tuple[list[tuple[Job, int]], list[tuple[Job, int, int]]]:
        """Fill the batch in sequence-id order; the batch index each job samples from, and
        the first index and count of each scoring job's rows.

        The order matters for speed: with a KV stream per sequence, llama.cpp puts only
        sequences with consecutive ids in one micro-batch, so four tokens in the order
        2, 0, 3, 1 cost four passes over the model where 0, 1, 2, 3 cost one.
        """
        batch = self.batch
        batch.clear()
        entries = [(job, (job.next_token,), True) for job in generating]
        entries += [(job, job.todo[:take], take == len(job.todo)) for job, take in chunks]
        entries.sort(key=lambda entry: entry[0].slot.seq)
        outputs: list[tuple[Job, int]] = []
        scored: list[tuple[Job, int, int]] = []
        for job, tokens, last in entries:
            slot = job.slot
            index = batch.add(tokens, len(slot.tokens), slot.seq, last, job.score)
            if job.score:
                scored.append((job, index - len(tokens) + 1, len(tokens)))
            elif last:
                outputs.append((job, index))
        return outputs, scored

    def _adapter_group(self, jobs: list[Job]) -> list[Job]:
        """The jobs of this step: those under one adapter set, which it applies to the context."""
        keys = list(dict.fromkeys(j.adapter_key for j in jobs))  # oldest request's set first
        if len(keys) == 1:
            key = keys[0]
            self._turn = 0
        elif self._active in keys and self._turn < ADAPTER_TURN:
            key = self._active
            self._turn += 1
        else:
            key = next(k for k in keys if k != self._active)
            self._turn = 0
        group = [j for j in jobs if j.adapter_key == key]
        if key != self._active:
            self._apply_adapters(group[0].adapters)
            self._active = key
        return group

    def _apply_adapters(self, adapters: Sequence[tuple[Any, float]]) -> None:
        n = len(adapters)
        handles = (llama_cpp.llama_adapter_lora_p_ctypes * max(n, 1))(*(h for h, _ in adapters))
        scales = (ctypes.c_float * max(n, 1))(*(s for _, s in adapters))
        rc = llama_cpp.llama_set_adapters_lora(
            self.ctx, handles if n else None, n, scales if n else None
        )
        if rc != 0:
            raise BoxError(f"llama.cpp refused the adapter set (llama_set_adapters_lora {rc})")
        self._applied = tuple(h for h, _ in adapters)
        self.adapter_switches += 1

    def _keep_logits(self, job: Job, first: int, count: int) -> None:
        """Copy the logits of a scoring job's batch rows; end it once its prompt is read."""
        for i in range(first, first + count):
            row = llama_cpp.llama_get_logits_ith(self.ctx, i)
            job.scores.append(np.ctypeslib.as_array(row, shape=(self.n_vocab,)).copy())
        if not job.todo:
            result = np.stack(job.scores)
            job.scores = []
            self._end(job, result, drop_kv=False)

    def _nll(self, job: Job, index: int, token: int) -> None:
        """Add the sampled token's negative log-likelihood under the raw logits (the
        observer's spike signal): a log-sum-exp over the vocabulary, about 50 us."""
        if token < 0 or token >= self.n_vocab:
            return
        pointer = llama_cpp.llama_get_logits_ith(self.ctx, index)
        logits = np.ctypeslib.as_array(pointer, shape=(self.n_vocab,))
        top = float(logits.max())
        job.nll_sum += top + math.log(float(np.exp(logits - top).sum())) - float(logits[token])
        job.nll_n += 1

    def _on_token(self, job: Job, token: int) -> None:
        now = time.perf_counter()
        if not job.first:
            job.first = now
            self._ttfts.append(now - job.submitted)
        if llama_cpp.llama_vocab_is_eog(self.vocab, token):
            self._end(job, self._finish(job, "stop"), drop_kv=False)
            return
        job.count += 1
        job.last = now
        text = job.decoder.decode(self.piece(token))
        if text and job.out.add(text):
            self._end(job, job.result("stop"), drop_kv=False)
        elif job.count >= job.limit:
            self._end(job, self._finish(job, "length"), drop_kv=False)
        else:
            job.next_token = token

    @staticmethod
    def _finish(job: Job, finish: str) -> Generation:
        job.out.add(job.decoder.decode(b"", final=True), last=True)
        return job.result(finish)

    def _make_room(self, needed: int) -> int:
        """Free cells for `needed` tokens: idle slots' caches first (least recently used),
        then the youngest generating requests. The cells left for prompts after them."""
        if not self.unified:
            return self.n_batch  # each sequence has a stream of its own, big enough for it
        free = self.kv_cells - self.cells_used
        idle = sorted(
            (s for s in self.slots if s.job is None and s.tokens), key=lambda s: s.last_used
        )
        while free < needed and idle:
            free += self._drop_cache(idle.pop(0))
        if free < needed:
            generating = sorted(
                (s.job for s in self.slots if s.job is not None and not s.job.todo),
                key=lambda j: j.submitted,
            )
            while free < needed and generating:
                job = generating.pop()
                freed = len(job.slot.tokens)
                self._end(job, self._out_of_cells(job), drop_kv=True)
                free += freed
                needed -= 1
        if free < self.n_batch:  # prompts to read: take idle caches too
            while idle and free < self.n_batch:
                free += self._drop_cache(idle.pop(0))
        return free

    def _drop_cache(self, slot: Slot) -> int:
        freed = len(slot.tokens)
        llama_cpp.llama_memory_seq_rm(self.memory, slot.seq, -1, -1)
        slot.tokens.clear()
        self.cells_used -= freed
        return freed

    def _out_of_cells(self, job: Job) -> OutOfCells:
        return OutOfCells(
            f"out of KV cells: model {self.name!r} holds {self.kv_cells} tokens for all its "
            f"conversations (engines.kv_cells) and other requests are using them; this one "
            f"had {len(job.tokens) + job.count} tokens. Retry, send a shorter prompt, or raise "
            "engines.kv_cells"
        )

    def _failed_decode(self, rc: int, generating: list[Job], chunks: list[tuple[Job, int]]) -> None:
        if rc == 1:  # no KV slot after all (fragmentation): the youngest reader gives way
            readers = sorted((j for j, _ in chunks), key=lambda j: j.submitted)
            victims = readers[-1:] or sorted(generating, key=lambda j: j.submitted)[-1:]
            for job in victims:
                self._end(job, self._out_of_cells(job), drop_kv=True)
            return
        # A failed decode may leave part of the batch in the cache: those sequences start over.
        error = BoxError(
            f"llama.cpp failed while generating with {self.name!r} (llama_decode {rc})"
        )
        for job in [*generating, *(j for j, _ in chunks)]:
            if job.slot is not None:
                self._end(job, error, drop_kv=True)

    def _end(self, job: Job, outcome: Any, *, drop_kv: bool) -> None:
        """Take `job` out of its slot (freeing its KV cells if asked) and deliver `outcome`."""
        slot = job.slot
        if slot is not None:
            if drop_kv:
                self._drop_cache(slot)
            slot.job = None
            slot.last_used = time.perf_counter()
            job.slot = None
        job.sampler.close()
        with self._lock:
            self._running -= 1
        self._deliver(job, outcome)

    def _deliver(self, job: Job, outcome: Any) -> None:
        try:
            job.on_done(outcome)
        except Exception:  # the receiver is gone (its loop closed): nothing to tell
            log.debug("could not deliver the end of a %s request", self.name, exc_info=True)
