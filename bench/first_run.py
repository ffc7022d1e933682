"""Time a newcomer's first run, from a clean copy of this checkout, as the README tells it.

    python bench/first_run.py              # both quick-start commands (the tests take minutes)
    python bench/first_run.py --no-tests   # only the main command

In a fresh copy (tracked files, no .venv) with a fresh data dir, it runs the README's main
command one `&&` step at a time: the set-up (`scripts/install.sh`: a new virtual
environment, the install; pip's wheel cache is kept, as a second install on a machine would
find it), then `models pull` and `run`, timed until the box gives its first chat answer; and
`aether-box status` with no box running. The baseline is the newcomer's clock: seconds.

The last line is JSON: setup_s, first_answer_s, no_box_status_s, readme_commands_ok (every
quick-start command exited 0; the box's own exit is its reply to SIGTERM) and what ran.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from quickstart import copy_checkout, readme_blocks, status_of  # noqa: E402

from aether_box.client import Client  # noqa: E402


def run_step(command: str, cwd: Path, env: dict[str, str]) -> tuple[int, float]:
    """(exit code, seconds) of one shell command, its output shown as it goes."""
    print(f"$ {command}", flush=True)
    started = time.monotonic()
    code = subprocess.run(["bash", "-c", command], cwd=cwd, env=env).returncode
    return code, time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-tests", action="store_true", help="Skip the README's test command.")
    parser.add_argument("--keep", action="store_true", help="Keep the copy and data dir.")
    args = parser.parse_args()

    base = Path(tempfile.mkdtemp(prefix="abx-bench-first-"))
    checkout = copy_checkout(base / "repo")
    data_dir = base / "data"
    env = {**os.environ, "AETHER_BOX_HOME": str(data_dir)}
    env.pop("VIRTUAL_ENV", None)
    main_command, test_command = readme_blocks(checkout / "README.md")[:2]
    *steps, run_command = [step.strip() for step in main_command.split("&&")]
    codes: dict[str, int] = {}
    box: subprocess.Popen | None = None
    try:
        setup, *rest = steps
        codes[setup], setup_s = run_step(setup, checkout, env)

        started = time.monotonic()
        for step in rest:
            codes[step], _ = run_step(step, checkout, env)
        print(f"$ {run_command}", flush=True)
        box = subprocess.Popen(
            ["bash", "-c", run_command], cwd=checkout, env=env, start_new_session=True
        )
        while status_of(data_dir) is None:
            if box.poll() is not None:
                raise SystemExit(f"the box exited with {box.returncode} before answering")
            time.sleep(0.1)
        with Client(data_dir=data_dir, timeout=300) as client:
            answer = client.chat("smollm2", [{"role": "user", "content": "Say hello."}])
        first_answer_s = time.monotonic() - started
        print(f"first answer after {first_answer_s:.1f} s: {answer['text']!r}", flush=True)

        if not args.no_tests:
            codes[test_command], _ = run_step(test_command, checkout, env)
        os.killpg(box.pid, signal.SIGTERM)
        codes[run_command] = box.wait(timeout=60)

        no_box = env | {"AETHER_BOX_HOME": str(base / "empty")}
        started = time.monotonic()
        subprocess.run(
            [str(checkout / ".venv/bin/aether-box"), "status"], env=no_box, capture_output=True
        )
        no_box_status_s = time.monotonic() - started
    finally:
        if box is not None and box.poll() is None:  # stopped early: never leave a box behind
            os.killpg(box.pid, signal.SIGKILL)
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    print(
        json.dumps(
            {
                "setup_s": round(setup_s, 1),
                "first_answer_s": round(first_answer_s, 1),
                "no_box_status_s": round(no_box_status_s, 2),
                "readme_commands_ok": all(code == 0 for code in codes.values()),
                "exit_codes": codes,
                "tests_ran": not args.no_tests,
            }
        )
    )


if __name__ == "__main__":
    main()
