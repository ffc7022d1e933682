"""Tools and the orchestrator: tool choice on a shipped suite, schema-valid calls, overheads.

    python bench/tools.py [--models-dir DIR] [--calls 401] [--mcp-calls 101] [--skip-fill]

One `aether-box run` process with tools on, the test kit (SmolLM2, MiniLM), two bus workers
in their own processes (bench/data/assistant_tools.py: weather_forecast, convert_units,
send_email, calendar_add; tests/data/tool_worker.py: echo) and one MCP stdio server
(tests/data/mcp_server.py, made with the mcp SDK).

- Choice: each task of bench/data/tools_suite.json (80 tasks: 12 for each of 5 tools, the
  built-in memory_search among them, and 20 that need no tool) goes to `orchestrate`
  ``select`` over those 5 tools. `tool_choice_accuracy`: share picked right (no tool counts
  as a choice); `no_tool_false_call_share`: share of no-tool tasks that picked a tool. The
  floor below which no tool is picked is fitted (tools.select.fit_floor) on the whole suite
  (`fitted_floor`, what `tools.min_score` ships with) and cross-validated in two folds, even-
  and odd-numbered tasks (`held_out_accuracy`); the main figures use the box's configured
  `tools.min_score` (and `tools.no_tool_examples`: a task
  nearer one of those than to every tool calls none).
- Schema validity: each tool task runs through `orchestrate` (no final answer); every
  step's arguments, written by SmolLM2 under the schema's grammar, are checked against the
  tool's full schema with jsonschema: `schema_valid_share`.
- `call_overhead_ms_p50`: median, over `--calls` lockstep calls alternating in order, of a
  `tools` ``call`` of the worker's echo tool minus the same request sent to the worker's
  service directly (what going through the tools service adds: lookup, schema check, hop).
- `mcp_stdio_p95_ms`: 95th percentile of `tools` ``call`` round trips to the MCP stdio
  server's shout tool, from this client.

The last line is JSON with those keys, the absolute timings and the machine (with its load).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _box import machine, start_box, stop_box  # noqa: E402

from aether_box.client import Client  # noqa: E402
from aether_box.config import Config  # noqa: E402
from aether_box.models.settings import ModelsSettings  # noqa: E402
from aether_box.tools.select import fit_floor  # noqa: E402

SUITE = ROOT / "bench" / "data" / "tools_suite.json"
ASSISTANT = ROOT / "bench" / "data" / "assistant_tools.py"
ECHO_WORKER = ROOT / "tests" / "data" / "tool_worker.py"
MCP_SERVER = ROOT / "tests" / "data" / "mcp_server.py"
NOTES = [
    "The wifi password is on a sticky note under the router.",
    "Project deadline: the report is due on the 14th.",
    "Plumber: Jan, phone 555-0142.",
]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models-dir", type=Path, help="models dir (default: the box's)")
    parser.add_argument("--calls", type=int, default=401, help="echo calls per path")
    parser.add_argument("--mcp-calls", type=int, default=101, help="MCP stdio round trips")
    parser.add_argument("--skip-fill", action="store_true", help="skip the model-filled runs")
    args = parser.parse_args()
    models_dir = (args.models_dir or Config().get(ModelsSettings).dir).resolve()
    suite = json.loads(SUITE.read_text())

    data_dir = Path(tempfile.mkdtemp(prefix="abx-bench-"))
    mcp = {"testmcp": {"command": sys.executable, "args": [str(MCP_SERVER)]}}
    (data_dir / "mcp.json").write_text(json.dumps({"mcpServers": mcp}))
    box, endpoint = start_box(
        data_dir,
        f'models.dir="{models_dir}"',
        'http.address=""',
        "tools.enabled=true",
        f'tools.mcp_config="{data_dir / "mcp.json"}"',
    )
    workers = [
        subprocess.Popen([sys.executable, str(ASSISTANT), endpoint]),
        subprocess.Popen([sys.executable, str(ECHO_WORKER), endpoint, "benchtools"]),
    ]
    result: dict[str, Any] = {}
    try:
        with Client(endpoint, data_dir=data_dir, timeout=600) as client:
            wait_for_tools(client, {*suite["tools"], "echo", "testmcp_shout"})
            for note in NOTES:
                call(client, "memory_add", {"text": note})
            result.update(bench_choice(client, suite))
            if not args.skip_fill:
                result.update(bench_fill(client, suite))
            result.update(bench_overhead(client, args.calls))
            result.update(bench_mcp(client, args.mcp_calls))
    finally:
        for worker in workers:
            worker.terminate()
            worker.wait(10)
        stop_box(box)
        shutil.rmtree(data_dir, ignore_errors=True)
    result["machine"] = machine()
    print(json.dumps(result))


def wait_for_tools(client: Client, names: set[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        listed = {t["name"] for t in client.request("tools", {"op": "list"})["tools"]}
        if names <= listed:
            return
        time.sleep(0.2)
    raise SystemExit(f"tools {sorted(names - listed)} did not show within {timeout:g} s")


def call(client: Client, tool: str, arguments: dict[str, Any]) -> Any:
    return client.request("tools", {"op": "call", "tool": tool, "arguments": arguments})["result"]


# -- choice ------------------------------------------------------------------------------


def bench_choice(client: Client, suite: dict[str, Any]) -> dict[str, Any]:
    tools = suite["tools"]
    picked, best_scores, argmax, no_tool_wins = [], [], [], []
    for item in suite["tasks"]:
        reply = client.request(
            "orchestrate", {"op": "select", "task": item["task"], "tools": tools}
        )
        picked.append(reply["tool"])
        top = max(reply["scores"], key=reply["scores"].__getitem__)
        argmax.append(top)
        best_scores.append(reply["scores"][top])
        no_tool_wins.append(
            reply["no_tool"] is not None and reply["no_tool"] > reply["scores"][top]
        )
    expected = [item["tool"] for item in suite["tasks"]]
    right = [p == e for p, e in zip(picked, expected, strict=True)]
    no_tool = [e is None for e in expected]
    false_calls = [p is not None for p, n in zip(picked, no_tool, strict=True) if n]
    wrong = [
        {"task": item["task"], "expected": item["tool"], "picked": p}
        for item, p, ok in zip(suite["tasks"], picked, right, strict=True)
        if not ok
    ]

    # The floor, fitted on the whole suite (what tools.min_score ships with), and its
    # 2-fold cross-validated accuracy: fitted on the even-numbered tasks and scored on the
    # odd ones, then the other way round.
    def fit(idx: range) -> float:
        return fit_floor(
            [best_scores[i] for i in idx],
            [expected[i] is not None for i in idx],
            [argmax[i] == expected[i] for i in idx],
            [no_tool_wins[i] for i in idx],
        )

    def pick(i: int, floor: float) -> str | None:
        return argmax[i] if best_scores[i] >= floor and not no_tool_wins[i] else None

    floor = fit(range(len(expected)))
    evens, odds = range(0, len(expected), 2), range(1, len(expected), 2)
    held_right = [pick(i, fit(evens)) == expected[i] for i in odds]
    held_right += [pick(i, fit(odds)) == expected[i] for i in evens]
    status = client.status()["orchestrate"]
    print(
        f"choice: {sum(right)}/{len(right)} right at floor {status['min_score']}; "
        f"no-tool tasks calling a tool {sum(false_calls)}/{len(false_calls)}; "
        f"fitted floor {floor}; 2-fold cross-validated {sum(held_right)}/{len(held_right)}",
        file=sys.stderr,
    )
    for miss in wrong:
        print(f"  missed: {miss}", file=sys.stderr)
    return {
        "tool_choice_accuracy": round(float(np.mean(right)), 4),
        "no_tool_false_call_share": round(float(np.mean(false_calls)), 4),
        "tasks": len(right),
        "no_tool_tasks": len(false_calls),
        "floor_used": status["min_score"],
        "fitted_floor": floor,
        "held_out_accuracy": round(float(np.mean(held_right)), 4),
        "missed": wrong,
    }


# -- schema-valid arguments ---------------------------------------------------------------


def bench_fill(client: Client, suite: dict[str, Any]) -> dict[str, Any]:
    schemas = {t["name"]: t["schema"] for t in client.request("tools", {"op": "list"})["tools"]}
    valid, steps, fill_s = 0, 0, []
    for item in suite["tasks"]:
        if item["tool"] is None:
            continue
        started = time.monotonic()
        reply = client.request(
            "orchestrate", {"task": item["task"], "tools": suite["tools"], "answer": False}
        )
        fill_s.append(time.monotonic() - started)
        for step in reply["steps"]:
            steps += 1
            try:
                jsonschema.validate(step["arguments"], schemas[step["tool"]])
                valid += 1
            except jsonschema.ValidationError as exc:
                print(f"  invalid: {item['task']!r}: {exc.message}", file=sys.stderr)
    print(
        f"fill: {valid}/{steps} schema-valid; {statistics.median(fill_s):.2f} s a task (p50)",
        file=sys.stderr,
    )
    return {
        "schema_valid_share": round(valid / steps, 4) if steps else None,
        "filled_calls": steps,
        "orchestrate_task_s_p50": round(statistics.median(fill_s), 3),
    }


# -- overheads ---------------------------------------------------------------------------


def bench_overhead(client: Client, calls: int) -> dict[str, Any]:
    direct_body = {"op": "tool", "tool": "echo", "arguments": {"text": "x" * 100}}
    tools_body = {"op": "call", "tool": "echo", "arguments": {"text": "x" * 100}}
    for _ in range(20):  # warm both paths
        client.request("benchtools", direct_body)
        client.request("tools", tools_body)
    direct, through = [], []
    for i in range(calls):
        order = [("d", "benchtools", direct_body), ("t", "tools", tools_body)]
        for kind, service, body in order if i % 2 else order[::-1]:
            started = time.perf_counter()
            client.request(service, body)
            (direct if kind == "d" else through).append(time.perf_counter() - started)
    d50 = statistics.median(direct) * 1000
    t50 = statistics.median(through) * 1000
    print(f"echo: direct {d50:.3f} ms, through tools {t50:.3f} ms (p50)", file=sys.stderr)
    return {
        "call_overhead_ms_p50": round(t50 - d50, 3),
        "echo_direct_ms_p50": round(d50, 3),
        "echo_tools_ms_p50": round(t50, 3),
    }


def bench_mcp(client: Client, calls: int) -> dict[str, Any]:
    for _ in range(5):
        call(client, "testmcp_shout", {"text": "warm"})
    times = []
    for i in range(calls):
        started = time.perf_counter()
        call(client, "testmcp_shout", {"text": f"hello {i}"})
        times.append((time.perf_counter() - started) * 1000)
    p95 = float(np.percentile(times, 95))
    print(f"mcp stdio: p50 {statistics.median(times):.2f} ms, p95 {p95:.2f} ms", file=sys.stderr)
    return {
        "mcp_stdio_p95_ms": round(p95, 3),
        "mcp_stdio_p50_ms": round(statistics.median(times), 3),
    }


if __name__ == "__main__":
    main()
