"""A reusable `llama_batch`: tokens of several sequences, each at its own position, in one decode.

Filled through numpy views of the C arrays, so a 512-token prompt chunk costs one copy rather
than 2,000 ctypes item assignments (the scheduler's per-step overhead is what this saves).
"""

from __future__ import annotations

from collections.abc import Sequence

import llama_cpp
import numpy as np

__all__ = ["Batch"]


class Batch:
    """Up to `capacity` tokens, one sequence id each; `close()` frees it."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.raw = llama_cpp.llama_batch_init(capacity, 0, 1)
        raw = self.raw
        self._token = np.ctypeslib.as_array(raw.token, shape=(capacity,))
        self._pos = np.ctypeslib.as_array(raw.pos, shape=(capacity,))
        self._logits = np.ctypeslib.as_array(raw.logits, shape=(capacity,))
        np.ctypeslib.as_array(raw.n_seq_id, shape=(capacity,))[:] = 1
        # seq_id is an array of per-token pointers (one malloc each): no single numpy view.
        self._seq = [raw.seq_id[i] for i in range(capacity)]
        self._seq_set = [-1] * capacity  # what each slot holds already, to skip rewrites
        self.n = 0

    def clear(self) -> None:
        self.n = 0

    @property
    def room(self) -> int:
        return self.capacity - self.n

    def add(
        self, tokens: Sequence[int], pos: int, seq: int, logits: bool, every: bool = False
    ) -> int:
        """Append `tokens` of sequence `seq` from position `pos`; the batch index of the last.

        `logits`: whether the last token's logits are wanted (to sample from them);
        `every`: whether every token's are (to score a text).
        """
        start, k = self.n, len(tokens)
        end = start + k
        self._token[start:end] = tokens
        self._pos[start:end] = np.arange(pos, pos + k, dtype=np.int32)
        self._logits[start:end] = 1 if every else 0
        if logits:
            self._logits[end - 1] = 1
        ptrs, known = self._seq, self._seq_set
        for i in range(start, end):
            if known[i] != seq:
                ptrs[i][0] = seq
                known[i] = seq
        self.n = end
        return end - 1

    def decode(self, ctx: int) -> int:
        """llama_decode on what was added: 0 done, 1 no KV room, 2 aborted, < 0 failed."""
        self.raw.n_tokens = self.n
        return llama_cpp.llama_decode(ctx, self.raw)

    def close(self) -> None:
        if self.raw is not None:
            llama_cpp.llama_batch_free(self.raw)
            self.raw = None
