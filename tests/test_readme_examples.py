"""README.md's examples, run as written against a real box with the test models (the HTTP
gateway's are in test_gateway_openai.py): so the README cannot go stale unnoticed."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from fixtures_box import BoxInThread, temp_box, wait_for

from aether_box.cli import cli

README = Path(__file__).parents[1] / "README.md"
# Sections whose `aether-box` lines and spans must all be commands with those options.
SECTIONS = (
    "Using it",
    "HTTP gateway",
    "The bus",
    "Reliability and security",
    "LoRA adapters",
    "Tools and the orchestrator",
    "Federation",
    "Grid",
    "The tuner",
    "Alignment: one shared space",
)
# "Using it" lines run for real (the rest of it: interactive, or another box).
RUN = ("status", "config show", "models list", "memory --help", "align --help", "tuner status",
       "keys init", "keys api create", "chat smollm2", "sessions list")  # fmt: skip
DOCUMENTED_SOCKET = "ipc:///home/me/.local/share/aether-box/bus.sock"


def section(title: str) -> str:
    """The text of README section `## title`, up to the next `## `."""
    return README.read_text().split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def blocks(title: str, language: str) -> list[str]:
    """The ```language blocks of a section, unindented (list items indent theirs)."""
    found = re.findall(rf"^( *)```{language}\n(.*?)^\1```", section(title), re.S | re.M)
    return [re.sub(rf"^{indent}", "", code, flags=re.M) for indent, code in found]


def commands(title: str, inline: bool = False) -> list[list[str]]:
    """The `aether-box` command lines of a section's sh blocks (and with `inline`, its
    `aether-box ...` spans, `[optional]` marks dropped), as argument lists without the
    program name, comments, continuations and a trailing `&`."""
    lines = "\n".join(blocks(title, "sh")).replace("\\\n", " ").splitlines()
    if inline:
        spans = re.findall(r"`(aether-box [^`]*)`", section(title))
        lines += [" ".join(span.split()).replace("[", "").replace("]", "") for span in spans]
    found = []
    for line in lines:
        words = shlex.split(line, comments=True)
        if words and words[0] == "aether-box":
            found.append([w for w in words[1:] if w != "&"])
    return found


def aether_box(box: BoxInThread, args: list[str], stdin: str | None = None) -> Result:
    """The CLI, in this process, finding the box by $AETHER_BOX_HOME as a user's shell does."""
    env = {"AETHER_BOX_HOME": str(box.data_dir)}
    return CliRunner().invoke(cli, args, input=stdin, env=env, catch_exceptions=False)


@pytest.fixture(scope="module")
def readme_box(models_dir: Path) -> Iterator[BoxInThread]:
    """A box whose config.toml holds the README's router and [tools] examples (the MCP
    servers left out: one runs `npx` from the network, the other is only an address)."""
    (router,) = blocks("Semantic router", "toml")
    (tools,) = blocks("Tools and the orchestrator", "toml")
    assert "mcpServers" in tools
    config = router + tools.split("[tools.mcpServers")[0]
    # One llama.cpp thread: on 2 cores shared with other work, two wait on each other.
    overrides = {
        "engines": {"n_threads": 1},
        "adapters": {"probe_prompts": 2},  # a quick fusion probe
    }
    with temp_box(overrides, models_dir=models_dir, files={"config.toml": config}) as running:
        yield running


@pytest.mark.parametrize("title", SECTIONS)
def test_every_command_exists_with_those_options(title):
    found = commands(title, inline=True)
    assert found, f"no aether-box commands found in {title!r}"
    for args in found:
        result = CliRunner().invoke(cli, [*args, "--help"])
        assert result.exit_code == 0, f"`aether-box {shlex.join(args)}`: {result.output}"


def test_using_it_commands_do_what_the_text_says(readme_box):
    ran = 0
    for args in commands("Using it"):
        line = " ".join(args)
        if not line.startswith(RUN):
            continue
        result = aether_box(readme_box, args, stdin="Hello!\n")
        assert result.exit_code == 0, f"`aether-box {line}`: {result.output}"
        assert result.output.strip(), line
        ran += 1
    assert ran == 11


def test_using_it_python_runs_as_written(readme_box, monkeypatch, capsys):
    monkeypatch.setenv("AETHER_BOX_HOME", str(readme_box.data_dir))
    (python,) = blocks("Using it", "python")
    exec(compile(python, "README.md", "exec"), {})
    assert capsys.readouterr().out.strip()


def test_the_router_example_routes_by_its_examples(readme_box):
    with readme_box.client(timeout=60) as client:
        routed = client.request("router", {"op": "route", "text": "write a python function"})
    assert routed["route"] == "code"
    config = tomllib.loads(blocks("Semantic router", "toml")[0])
    assert set(config["router"]["routes"]) == {"general", "code"}


def test_the_tools_worker_and_commands_work_as_written(readme_box):
    (worker,) = blocks("Tools and the orchestrator", "python")
    assert DOCUMENTED_SOCKET in worker
    code = worker.replace(DOCUMENTED_SOCKET, readme_box.endpoint)
    process = subprocess.Popen([sys.executable, "-c", code])
    try:
        with readme_box.client(timeout=30) as client:
            client.request("memory", {"op": "create", "collection": "notes", "model": "minilm"})
            client.request("memory", {"op": "add", "collection": "notes", "texts": ["garden"]})

            def listed() -> Any:
                return client.request("tools", {"op": "list"})["tools"]

            wait_for(lambda: any(t["name"] == "weather_forecast" for t in listed()), 30, "tool")
        for args in commands("Tools and the orchestrator"):
            result = aether_box(readme_box, args)
            assert result.exit_code == 0, f"`aether-box {shlex.join(args)}`: {result.output}"
            assert result.output.strip(), args
        weather = aether_box(readme_box, ["tools", "call", "weather_forecast", '{"city": "Oslo"}'])
        assert '"temperature_c": 14' in weather.output
    finally:
        process.kill()
        process.wait()


def test_the_lora_commands_and_request_work_as_written(readme_box, monkeypatch):
    monkeypatch.chdir(README.parent)  # `adapters add tests/data/adapters/pirate-peft ...`
    lines = [a for a in commands("LoRA adapters") if a[1] == "list" or a[2:3] == ["pirate"]]
    lines.insert(0, next(a for a in commands("LoRA adapters") if "pirate" in a))  # the add
    *before, remove = lines
    assert [args[1] for args in lines] == ["add", "list", "show", "prune", "restore", "remove"]
    for args in before:
        result = aether_box(readme_box, args)
        assert result.exit_code == 0, f"`aether-box {shlex.join(args)}`: {result.output}"
    (python,) = blocks("LoRA adapters", "python")
    hello = '[{"role": "user", "content": "Hello!"}], "max_tokens": 8'
    with readme_box.client(timeout=60) as client:
        reply = eval(python.replace("[...]", hello), {"client": client})
    assert reply["text"].startswith("Arr"), reply["text"]  # the trained pirate adapter
    assert aether_box(readme_box, remove).exit_code == 0
