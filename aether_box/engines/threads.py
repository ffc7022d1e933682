"""How many threads llama.cpp decodes with, chosen by measuring rather than by core count.

llama.cpp's threads meet at a barrier after every graph node. On a busy host the scheduler
deschedules one of them and the rest wait for it at each barrier: on 2 cores with two busy
processes beside it, SmolLM2 decoded at 8-27 tokens/s with 2 threads against 35-42 with one
(115 and 78 on the quiet machine). The governor times decode steps at the thread count in use,
now and then times the other candidates for a short epoch (cut shorter still when one is
clearly slower), and keeps the fastest. A change of more than half in the current count's
step time (load came or went) makes it look again at once; otherwise it looks less and less
often, so a quiet machine pays almost nothing.
"""

from __future__ import annotations

import statistics

__all__ = ["ThreadGovernor", "candidates"]

EPOCH_STEPS = 16  # decode steps timed per reading
TRIAL_CUT_STEPS = 4  # a tried count this far in and clearly slower is dropped from the look
CLEARLY_SLOWER = 1.3  # ... slower than this times the count in use before the look
FIRST_LOOK = 4  # readings before the first look at the other counts
MOST_BETWEEN_LOOKS = 256  # the longest wait, in readings, between looks (~40 s of decoding)
CHANGED = 1.5  # a step time this much slower or faster than last reading's: look again


def candidates(most: int) -> list[int]:
    """The thread counts worth trying on `most` cores: all, all but one, half, one."""
    return sorted({most, most - 1, most // 2, 1} - {0}, reverse=True)


class ThreadGovernor:
    """Picks the thread count for decode steps; used by one scheduler thread only."""

    def __init__(self, most: int) -> None:
        self.choices = candidates(max(1, most))
        self.current = self.choices[0]
        self.changes = 0  # times the count in use changed for good (looks that stuck)
        self.looks = 0
        # Last epoch's median step time per (threads, sequences in the step).
        self._readings: dict[tuple[int, int], float] = {}
        self._samples: list[float] = []
        self._batch = 0
        self._wait = FIRST_LOOK  # readings until the next look
        self._between = FIRST_LOOK  # the wait after this look; doubles while nothing changes
        self._looking = False
        self._trying: list[int] = []  # counts still to time in the look under way
        self._home = self.current  # the count in use before the look

    def observe(self, sequences: int, seconds: float) -> int | None:
        """Record a decode step of `sequences` sequences that took `seconds`. Return the thread
        count to switch to, or None to stay."""
        if len(self.choices) == 1:
            return None
        if sequences != self._batch:  # step times only compare at one batch size
            self._batch, self._samples = sequences, []
        self._samples.append(seconds)
        if len(self._samples) < EPOCH_STEPS and not self._clearly_slower(sequences):
            return None
        median = statistics.median(self._samples)
        self._samples = []
        key = (self.current, sequences)
        before = self._readings.get(key)
        self._readings[key] = median
        if self._looking:
            return self._next_in_look(sequences)
        changed = before is not None and not before / CHANGED < median < before * CHANGED
        self._wait -= 1
        if changed:
            self._between = FIRST_LOOK
        if changed or self._wait <= 0:
            return self._look()
        return None

    def _clearly_slower(self, sequences: int) -> bool:
        """Whether the count on trial is already far behind the one in use before the look:
        on a quiet host most trials are, and a short one costs it four slow steps, not 16."""
        if not self._looking or len(self._samples) < TRIAL_CUT_STEPS:
            return False
        home = self._readings.get((self._home, sequences))
        return home is not None and statistics.median(self._samples) > home * CLEARLY_SLOWER

    def _look(self) -> int:
        self.looks += 1
        self._looking = True
        self._home = self.current
        self._trying = [n for n in self.choices if n != self.current]
        self.current = self._trying.pop(0)
        return self.current

    def _next_in_look(self, sequences: int) -> int | None:
        if self._trying:
            self.current = self._trying.pop(0)
            return self.current
        self._looking = False
        timed = {
            n: self._readings[(n, sequences)]
            for n in self.choices
            if (n, sequences) in self._readings
        }
        best = min(timed, key=timed.__getitem__)
        if best == self._home:
            self._between = min(self._between * 2, MOST_BETWEEN_LOOKS)
        else:
            self.changes += 1
            self._between = FIRST_LOOK
        self._wait = self._between
        switch = best != self.current
        self.current = best
        return best if switch else None
