"""One sequence's sampler chain on llama.cpp's sampler API.

Each request owns its chain (its seed, its grammar state, its penalty window), so sequences
that share one context and one batch never disturb each other's sampling. The chain reads the
logits of its own batch index (`llama_sampler_sample(chain, ctx, i)`).
"""

from __future__ import annotations

import llama_cpp

from aether_box.engines.constraints import gbnf_for
from aether_box.engines.generation import GenerationParams
from aether_box.engines.llama_log import captured, errors
from aether_box.errors import BadRequest

__all__ = ["REPEAT_WINDOW", "Sampler"]

# How many of the latest generated tokens the repeat penalty looks at (llama.cpp's default).
REPEAT_WINDOW = 64


class Sampler:
    """A llama.cpp sampler chain built from a request's settings; `close()` frees it.

    The order follows llama-cpp-python's `Llama` (penalties, grammar, then greedy or
    top-k/top-p/min-p/temperature/dist), so the same settings sample the same way.
    """

    def __init__(self, vocab: int, n_vocab: int, params: GenerationParams) -> None:
        gbnf = gbnf_for(params)
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        self.ptr = chain
        self.constrained = gbnf is not None
        try:
            if params.repeat_penalty != 1.0:
                self._add(
                    llama_cpp.llama_sampler_init_penalties(
                        n_vocab, REPEAT_WINDOW, params.repeat_penalty, 0.0, 0.0
                    )
                )
            if gbnf is not None:
                with captured() as lines:
                    grammar = llama_cpp.llama_sampler_init_grammar(
                        vocab, gbnf.encode("utf-8"), b"root"
                    )
                if not grammar:
                    field = "grammar" if params.grammar is not None else "json_schema"
                    why = errors(lines) or "llama.cpp could not parse it"
                    raise BadRequest(f"field {field!r} is not a grammar llama.cpp takes: {why}")
                self._add(grammar)
            if params.temperature == 0.0:
                self._add(llama_cpp.llama_sampler_init_greedy())
            else:
                seed = params.seed if params.seed is not None else llama_cpp.LLAMA_DEFAULT_SEED
                self._add(llama_cpp.llama_sampler_init_top_k(params.top_k))
                self._add(llama_cpp.llama_sampler_init_top_p(params.top_p, 1))
                self._add(llama_cpp.llama_sampler_init_min_p(params.min_p, 1))
                self._add(llama_cpp.llama_sampler_init_temp(params.temperature))
                self._add(llama_cpp.llama_sampler_init_dist(seed))
        except BaseException:
            self.close()
            raise

    def _add(self, sampler: int) -> None:
        llama_cpp.llama_sampler_chain_add(self.ptr, sampler)  # the chain owns it from here

    def sample(self, ctx: int, index: int) -> int:
        """Sample (and accept) the next token from the logits at batch position `index`."""
        return llama_cpp.llama_sampler_sample(self.ptr, ctx, index)

    def close(self) -> None:
        """Free the chain and the samplers in it (idempotent)."""
        if self.ptr is not None:
            llama_cpp.llama_sampler_free(self.ptr)
            self.ptr = None
