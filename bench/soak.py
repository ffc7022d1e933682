"""Soak: 8 clients of mixed work on a real box for minutes, and what it costs over time.

Usage: python bench/soak.py [--minutes 10] [--models DIR] [--kinds chat,embed,...] [--set K=V]

The clients stream chats (every other one cancelled after a few tokens), embed, add to and
search memory, take session turns and poll status, as fast as the box answers; a ninth
subscriber connects to the events and never reads. At the end every acknowledged memory
record and session turn is looked up again. The last line is a JSON object: minutes, errors
(other than deliberate cancels), acknowledged_writes, lost_writes, rss_mb_start, rss_mb_end,
open_files_start, open_files_end, internal_errors, p99_ms_first and p99_ms_last (per service,
over the first and the last minute, or third of a shorter run), and the machine's load.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import psutil
import zmq
from _box import TOPICS, machine, start_box, stop_box

from aether_box.client import BoxError, Client

CHAT = {"model": "smollm2", "max_tokens": 12, "temperature": 0.7}


class Worker(threading.Thread):
    """One client doing one kind of work in a loop, timing each request."""

    def __init__(self, n: int, kind: str, endpoint: str, data_dir: Path, until: float) -> None:
        super().__init__(daemon=True)
        self.n, self.kind, self.endpoint, self.data_dir, self.until = (
            n,
            kind,
            endpoint,
            data_dir,
            until,
        )
        self.timings: list[tuple[float, str, float]] = []  # (when, service, seconds)
        self.errors: list[str] = []
        self.internal = 0
        self.cancels = 0
        self.records: list[str] = []  # acknowledged memory record ids
        self.turns: dict[str, list[str]] = {}  # acknowledged session turns

    def run(self) -> None:
        with Client(self.endpoint, data_dir=self.data_dir, timeout=120) as client:
            step = 0
            while time.monotonic() < self.until:
                started = time.monotonic()
                try:
                    service = getattr(self, f"do_{self.kind}")(client, step)
                    self.timings.append((started, service, time.monotonic() - started))
                except BoxError as exc:
                    self.errors.append(f"{self.kind}: {exc}")
                    self.internal += exc.code == "internal"
                step += 1

    def do_chat(self, client: Client, step: int) -> str:
        topic = TOPICS[(self.n + step) % len(TOPICS)]
        body = {
            "op": "chat",
            **CHAT,
            "messages": [{"role": "user", "content": f"A story: {topic}"}],
        }
        replies = client.stream("llm", {**body, "stream": True})
        for i, _ in enumerate(replies):
            if step % 2 and i == 3:  # the deliberate cancel: the client hangs up mid-stream
                replies.close()
                self.cancels += 1
                break
        return "llm"

    def do_embed(self, client: Client, step: int) -> str:
        client.request("embed", {"op": "embed", "model": "minilm",
                                 "texts": [f"sentence {step} {i} of {self.n}" for i in range(4)]})  # fmt: skip
        return "embed"

    def do_memory(self, client: Client, step: int) -> str:
        if step % 2 == 0:
            ids = [f"w{self.n}-{step}-{i}" for i in range(10)]
            client.request("memory", {"op": "add", "collection": "soak", "ids": ids,
                                      "texts": [f"note {i} from step {step}" for i in range(10)],
                                      "metadata": {"writer": self.n}})  # fmt: skip
            self.records += ids
        else:
            client.request("memory", {"op": "search", "collection": "soak", "k": 5,
                                      "text": f"note from step {step - 1}",
                                      "where": {"writer": self.n}})  # fmt: skip
        return "memory"

    def do_session(self, client: Client, step: int) -> str:
        if not self.turns or step % 10 == 0:
            session = client.request("session", {"op": "create", "model": "smollm2"})["session"]
            self.turns[session] = []
        session = next(reversed(self.turns))
        text = f"turn {step}: say one word"
        client.request("session", {"op": "say", "session": session, "text": text,
                                   "max_tokens": 4, "temperature": 0})  # fmt: skip
        self.turns[session].append(text)
        return "session"

    def do_status(self, client: Client, step: int) -> str:
        client.status()
        time.sleep(0.2)  # a dashboard's pace, not a flood
        return "status"


def p99(values: list[float]) -> float | None:
    return round(float(np.percentile(values, 99)) * 1000, 1) if values else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--models", type=Path, help="a models dir (default: the test models)")
    parser.add_argument(
        "--kinds",
        default="chat,embed,memory,session,status,memory,chat,session",
        help="one client per entry: chat, embed, memory, session or status",
    )
    parser.add_argument(
        "--set",
        dest="settings",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a box setting for the run, e.g. engines.n_threads=1 (repeatable)",
    )
    args = parser.parse_args()
    models = args.models or Path.home() / ".cache" / "aether-box" / "test-models"
    before = machine()
    with tempfile.TemporaryDirectory(prefix="abx-soak-") as tmp:
        data_dir = Path(tmp)
        process, endpoint = start_box(data_dir, f"models.dir={models}", *args.settings)
        box = psutil.Process(process.pid)
        with Client(endpoint, data_dir=data_dir, timeout=300) as client:  # warm-up: loads
            client.request("memory", {"op": "create", "collection": "soak", "model": "minilm"})
            if {"chat", "session"} & set(args.kinds.split(",")):
                hello = [{"role": "user", "content": "hi"}]
                client.request("llm", {"op": "chat", **CHAT, "messages": hello})
            client.request("embed", {"op": "embed", "model": "minilm", "texts": ["warm"]})
        # A subscriber that stops reading at once: the box must never wait for it.
        stuck = zmq.Context.instance().socket(zmq.SUB)
        stuck.rcvhwm = 1
        stuck.subscribe(b"")
        stuck.connect(f"ipc://{data_dir}/events.sock")
        rss_start, files_start = box.memory_info().rss / 2**20, box.num_fds()
        started = time.monotonic()
        until = started + args.minutes * 60
        kinds = args.kinds.split(",")
        workers = [Worker(n, kind, endpoint, data_dir, until) for n, kind in enumerate(kinds)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        duration = time.monotonic() - started
        rss_end, files_end = box.memory_info().rss / 2**20, box.num_fds()
        lost = acknowledged = 0
        with Client(endpoint, data_dir=data_dir, timeout=120) as client:
            records = [i for w in workers for i in w.records]
            for at in range(0, len(records), 500):
                ids = records[at : at + 500]
                got = client.request("memory", {"op": "get", "collection": "soak", "ids": ids})
                lost += len(got["missing"])
            acknowledged += len(records)
            for worker in workers:
                for session, texts in worker.turns.items():
                    history = client.request("session", {"op": "history", "session": session})
                    users = [m["content"] for m in history["messages"] if m["role"] == "user"]
                    lost += sum(1 for text in texts if text not in users)
                    acknowledged += len(texts)
            status = client.status()
        stuck.close()
        stop_box(process)
    planned = args.minutes * 60  # requests started after it are none: the windows end there
    window = min(60.0, planned / 3)
    first: dict[str, list[float]] = defaultdict(list)
    last: dict[str, list[float]] = defaultdict(list)
    counts: dict[str, int] = defaultdict(int)
    for worker in workers:
        for when, service, seconds in worker.timings:
            counts[service] += 1
            if when - started < window:
                first[service].append(seconds)
            if when - started >= planned - window:
                last[service].append(seconds)
    errors = [e for w in workers for e in w.errors]
    for error in errors[:10]:
        print("error:", error)
    print(f"{dict(counts)} requests in {duration:.0f} s; cancels {sum(w.cancels for w in workers)}; "
          f"events dropped {status['events']['dropped']}")  # fmt: skip
    print(
        json.dumps(
            {
                "minutes": round(duration / 60, 2),
                "errors": len(errors),
                "acknowledged_writes": acknowledged,
                "lost_writes": lost,
                "rss_mb_start": round(rss_start, 1),
                "rss_mb_end": round(rss_end, 1),
                "open_files_start": files_start,
                "open_files_end": files_end,
                "internal_errors": sum(w.internal for w in workers)
                + status["rejected"].get("internal", 0),
                "p99_ms_first": {s: p99(v) for s, v in sorted(first.items())},
                "p99_ms_last": {s: p99(v) for s, v in sorted(last.items())},
                "window_s": round(window, 1),
                "requests": dict(counts),
                "cancels": sum(w.cancels for w in workers),
                "box_errors": sum(s["errors"] for s in status["services"].values()),
                "settings": args.settings,
                "machine": before,
                "loadavg_1m_end": round(os.getloadavg()[0], 2),
            }
        )
    )


if __name__ == "__main__":
    main()
