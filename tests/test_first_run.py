"""The first fifteen minutes: the README's main command from a clean copy, then what a newcomer
meets next (no box, a stale socket, a second box, --set, range errors, memory, Ctrl-C in chat).

The clean copy gets a virtual environment of its own; so that the test takes seconds, not the
minutes a full install takes, that environment sees this one's installed packages through a
.pth file, and the README's command then installs only the project itself into it.
"""

from __future__ import annotations

import json
import os
import platform
import pty
import select
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fixtures_box import wait_for

from aether_box.client import Client

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from quickstart import copy_checkout, readme_blocks, status_of  # noqa: E402 - shared, by path

# The read syscall's number, for telling when a program waits at its prompt (/proc/PID/syscall).
READ_SYSCALL = {"x86_64": "0", "aarch64": "63"}[platform.machine()]
UP_S = 300  # the main command: the project's editable install, a models check, the start


def venv_over_this_one(checkout: Path) -> None:
    """checkout/.venv, whose Python also finds this environment's packages (not the project)."""
    subprocess.run([sys.executable, "-m", "venv", str(checkout / ".venv")], check=True)
    inner = subprocess.run(
        [
            str(checkout / ".venv/bin/python"),
            "-c",
            "import sysconfig; print(sysconfig.get_path('purelib'))",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(inner, "outer-packages.pth").write_text(sysconfig.get_path("purelib") + "\n")


def cli(checkout: Path, *args: str, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    """The clean copy's own `aether-box` command."""
    return subprocess.run(
        [str(checkout / ".venv/bin/aether-box"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        **kw,
    )


def stale_socket(path: Path) -> None:
    """What a crashed box leaves: a socket file nothing listens on."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))  # closed without unlink: the file stays, refusing connections


class Running:
    """A command run as its own process group, stopped with SIGTERM (as Ctrl-C would)."""

    def __init__(self, command: list[str], **kw) -> None:
        self.process = subprocess.Popen(command, start_new_session=True, **kw)

    def stop(self) -> int:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
        return self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def first_box(models_dir: Path) -> Iterator[tuple[Path, Path]]:
    """(clean copy, data dir) with the README's main command running a box for that data dir."""
    base = Path(tempfile.mkdtemp(prefix="abx-first-"))
    checkout = copy_checkout(base / "repo")
    venv_over_this_one(checkout)
    data_dir = base / "d1"
    data_dir.mkdir()
    (data_dir / "models").symlink_to(models_dir)  # pulled already: `models pull` checks them
    stale_socket(data_dir / "bus.sock")
    main = readme_blocks(checkout / "README.md")[0]
    with (base / "main.log").open("wb") as log:  # the box's own copy of it stays open
        box = Running(
            ["bash", "-c", f"set -e\n{main}"],
            cwd=checkout,
            env={**os.environ, "AETHER_BOX_HOME": str(data_dir)},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(
            lambda: status_of(data_dir) is not None or box.process.poll() is not None,
            UP_S,
            "the README's main command bringing a box up",
        )
        assert box.process.poll() is None, (base / "main.log").read_text()[-3000:]
        yield checkout, data_dir
        assert box.stop() == 0, (base / "main.log").read_text()[-3000:]
    finally:
        box.stop()
        shutil.rmtree(base, ignore_errors=True)


def test_no_box_fails_at_once_with_the_way_out(first_box, data_dir):
    checkout, _ = first_box
    for what in ("nothing", "stale"):
        if what == "stale":
            stale_socket(data_dir / "bus.sock")
        started = time.monotonic()
        result = cli(checkout, "--data-dir", str(data_dir), "status")
        took = time.monotonic() - started
        assert result.returncode == 1 and took < 10, (what, took, result.stderr)
        assert f"no box is running at ipc://{data_dir}/bus.sock" in result.stderr
        assert f"start one with `aether-box --data-dir {data_dir} run`" in result.stderr
    assert "stale socket" in result.stderr


def test_main_command_cleared_the_stale_socket_and_a_second_start_is_refused(first_box):
    checkout, data_dir = first_box
    report = status_of(data_dir)
    assert report is not None and report["data_dir"] == str(data_dir)
    again = cli(checkout, "--data-dir", str(data_dir), "serve", timeout=60)
    assert again.returncode == 1
    assert "another box" in again.stderr and "is running with data dir" in again.stderr
    assert f"aether-box --data-dir {data_dir} stop" in again.stderr  # how to stop it
    assert status_of(data_dir) is not None  # the refused start left the running box alone


def test_a_second_box_needs_only_its_data_dir(first_box, data_dir):
    checkout, first_dir = first_box
    keys = cli(checkout, "--data-dir", str(data_dir), "keys", "init")
    assert keys.returncode == 0 and "Loopback tcp and the ipc socket stay plain" in keys.stdout
    second = Running(
        [str(checkout / ".venv/bin/aether-box"), "--data-dir", str(data_dir), "run"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: status_of(data_dir) is not None, 60, "the second box answering")
        result = cli(checkout, "--data-dir", str(data_dir), "status", "--json")
        mine, theirs = json.loads(result.stdout), status_of(first_dir)
        assert mine["data_dir"] == str(data_dir) and theirs["data_dir"] == str(first_dir)
        tcp = [e for e in mine["endpoints"]["bus"] if e.startswith("tcp://127.0.0.1:")]
        assert tcp and not set(tcp) & set(theirs["endpoints"]["bus"])
        assert mine["metrics"]["url"] != theirs["metrics"]["url"]
        # With keys made, loopback tcp stays plain: an app without keys still gets answers.
        with Client(tcp[0], data_dir=data_dir, curve=False, timeout=10) as plain:
            assert plain.status()["data_dir"] == str(data_dir)
    finally:
        assert second.stop() == 0


def test_settings_after_the_subcommand_and_their_ranges(first_box):
    checkout, data_dir = first_box
    shown = cli(
        checkout, "--data-dir", str(data_dir), "config", "show", "--set", "bus.max_message_mb=8"
    )
    assert shown.returncode == 0 and "max_message_mb = 8.0" in shown.stdout
    negative = cli(checkout, "config", "show", "--set", "bus.max_message_mb=-1")
    assert negative.returncode == 1
    assert "bus.max_message_mb must be from 0.001 to 4096, got -1" in negative.stderr
    wrong = cli(checkout, "config", "show", "--set", "bus.heartbeat_s=soon")
    assert wrong.returncode == 1 and "bus.heartbeat_s must be a number, got 'soon'" in wrong.stderr


def test_memory_round_trip_with_the_default_embedder(first_box, tmp_path):
    checkout, data_dir = first_box
    home = ["--data-dir", str(data_dir)]
    added = cli(
        checkout,
        *home,
        "memory",
        "add",
        "notes",
        "the cat sat on the mat",
        "stock markets fell sharply today",
    )
    assert added.returncode == 0, added.stderr
    assert "created collection notes (minilm, 384-d, cosine)" in added.stdout
    exported = tmp_path / "notes.jsonl"
    assert cli(checkout, *home, "memory", "export", "notes", str(exported)).returncode == 0
    imported = cli(checkout, *home, "memory", "import", str(exported), "--collection", "copy")
    assert imported.returncode == 0, imported.stderr
    assert "created collection copy (minilm, 384-d, cosine)" in imported.stderr
    assert "imported 2 records into copy" in imported.stderr
    found = cli(
        checkout,
        *home,
        "memory",
        "search",
        "copy",
        "a kitten resting on a rug",
        "-k",
        "1",
        "--json",
    )
    assert json.loads(found.stdout)["results"][0]["text"] == "the cat sat on the mat"


class Terminal:
    """A command on a pseudo-terminal, read until what the test expects appears."""

    def __init__(self, command: list[str]) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:
            # As an interactive shell starts a foreground job: Ctrl-C's SIGINT not ignored,
            # even where this test runs as a background job of a script (which ignores it,
            # and a child would inherit that).
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.execv(command[0], command)
        self.seen = ""

    def read_until(self, done, timeout: float, what: str) -> None:
        """Read what the program writes until `done(seen)` holds."""
        deadline = time.monotonic() + timeout
        while not done(self.seen):
            left = deadline - time.monotonic()
            assert left > 0, f"{what} not seen; the terminal shows:\n{self.seen[-2000:]}"
            if select.select([self.fd], [], [], left)[0]:
                try:
                    self.seen += os.read(self.fd, 4096).decode(errors="replace")
                except OSError:  # the program ended
                    assert done(self.seen), f"{what} not seen; it ended with:\n{self.seen[-2000:]}"

    def expect(self, text: str, timeout: float = 120) -> str:
        """Read until `text`; returns what came up to it and keeps what came after."""
        self.read_until(lambda seen: text in seen, timeout, repr(text))
        cut = self.seen.index(text) + len(text)
        seen, self.seen = self.seen[:cut], self.seen[cut:]
        return seen

    def reading_its_input(self) -> bool:
        """Whether the program is blocked reading the terminal now. A Ctrl-C sent between
        printing a prompt and that read is seen by Python only after the next Enter (a
        race in input() itself), so a test waits for the read before sending one."""
        fields = Path(f"/proc/{self.pid}/syscall").read_text().split()
        return fields[:2] == [READ_SYSCALL, "0x0"]  # read(0, ...)

    def send(self, keys: str) -> None:
        os.write(self.fd, keys.encode())

    def wait(self) -> int:
        return os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])


def test_ctrl_c_in_chat_stops_the_answer_and_ctrl_d_leaves(first_box):
    checkout, data_dir = first_box
    chat = Terminal(
        [
            str(checkout / ".venv/bin/aether-box"),
            "--data-dir",
            str(data_dir),
            "chat",
            "smollm2",
            "--max-tokens",
            "2000",
        ]
    )
    chat.expect("you> ")
    chat.send("Write a very long story about a dragon and a knight.\r")
    chat.expect("knight.\r\n")  # the terminal's echo of the line; then the answer streams
    chat.read_until(lambda seen: len(seen.strip()) >= 20, 120, "the answer's first words")
    chat.send("\x03")
    chat.expect("(stopped; this turn was not kept)")
    chat.expect("you> ")
    wait_for(chat.reading_its_input, 60, "chat waiting at its prompt")
    chat.send("\x03")  # at the prompt: a new line, not an exit
    chat.expect("(Ctrl-D or /quit leaves)")
    chat.send("/history\r")
    shown = chat.expect("you> ")
    assert "dragon" not in shown.split("/history", 1)[-1]  # the stopped turn was not kept
    chat.send("\x04")
    assert chat.wait() == 0
