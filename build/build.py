"""Build the standalone `aether-box` executable with PyInstaller (spec: build/aether-box.spec).

    python build/build.py               # one file: build/dist/onefile/aether-box
    python build/build.py --onedir      # a folder: build/dist/onedir/aether-box/aether-box
    python build/build.py --cuda        # keep ONNX Runtime's CUDA providers (+270 MB)
    python build/build.py --fast-start  # libraries stored, not zlibbed: 154 MB not 62, -0.4 s

A build is reused when nothing it is made from changed: the key hashes the aether_box
sources, the spec, this script, the options and the versions of the installed packages, and
is kept beside the executable. `--force` rebuilds anyway; `--print-path` prints only the
executable's path (for tests and scripts). Needs the `build` extra (`pip install -e
'.[build]'`) and, on Linux, objdump (binutils) and ldd.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import importlib.metadata
import importlib.util
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "build" / "aether-box.spec"
DIST = ROOT / "build" / "dist"
WORK = ROOT / "build" / "work"
NAME = "aether-box"

__all__ = [
    "BuildError",
    "build",
    "bundle_size_mb",
    "executable_path",
    "missing_tools",
    "source_key",
]


class BuildError(RuntimeError):
    """The executable could not be built (missing tools, or PyInstaller failed)."""


def missing_tools() -> list[str]:
    """What this machine lacks to build the executable (empty when it can build)."""
    missing = []
    if importlib.util.find_spec("PyInstaller") is None:
        missing.append("PyInstaller (pip install -e '.[build]')")
    if sys.platform.startswith("linux"):
        for tool, package in (("objdump", "binutils"), ("ldd", "libc-bin")):
            if shutil.which(tool) is None:
                missing.append(f"{tool} ({package}), which PyInstaller needs on Linux")
        if not _libpython_found():
            version = f"{sys.version_info.major}.{sys.version_info.minor}"
            missing.append(
                f"Python's shared library libpython{version}.so, which PyInstaller bundles "
                f"(Debian and Ubuntu ship it apart: sudo apt-get install libpython{version})"
            )
    return missing


def _libpython_found() -> bool:
    """Whether this Python's shared library is where PyInstaller looks for it."""
    import sysconfig

    name = sysconfig.get_config_var("INSTSONAME") or sysconfig.get_config_var("LDLIBRARY")
    if not name or ".so" not in name:
        return True  # a static-only or non-ELF build: PyInstaller handles those itself
    dirs = {sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("LIBPL"), sys.base_prefix}
    dirs |= {f"/usr/lib/{sysconfig.get_config_var('MULTIARCH') or ''}", "/usr/lib", "/lib"}
    return any(Path(d, name).exists() for d in dirs if d)


def variant(onedir: bool = False, cuda: bool = False, stored: bool = False) -> str:
    """The build's folder name under build/dist and build/work."""
    layout = "onedir" if onedir else "onefile-stored" if stored else "onefile"
    return layout + ("-cuda" if cuda else "")


def executable_path(onedir: bool = False, cuda: bool = False, stored: bool = False) -> Path:
    """Where the build puts the executable."""
    base = DIST / variant(onedir, cuda, stored)
    return base / NAME / NAME if onedir else base / NAME


def source_key(onedir: bool = False, cuda: bool = False, stored: bool = False) -> str:
    """A hash of everything the executable is built from."""
    digest = hashlib.sha256()
    files = [SPEC, Path(__file__).resolve()]
    files += sorted(
        p
        for p in (ROOT / "aether_box").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    )
    for path in files:
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0")
        digest.update(path.read_bytes())
    # Any installed package may end up inside (or change what does): a new version, a new build.
    installed = sorted(
        f"{d.metadata['Name']}=={d.version}" for d in importlib.metadata.distributions()
    )
    digest.update("\0".join(installed).encode())
    digest.update(f"{sys.version}\0{variant(onedir, cuda, stored)}".encode())
    return digest.hexdigest()


def build(
    onedir: bool = False,
    cuda: bool = False,
    stored: bool = False,
    *,
    force: bool = False,
    quiet: bool = False,
) -> Path:
    """Build (or reuse) the executable and return its path."""
    missing = missing_tools()
    if missing:
        raise BuildError(f"cannot build the executable: missing {', '.join(missing)}")
    name = variant(onedir, cuda, stored)
    with _lock(WORK / f"{name}.lock"):  # two test runs must not build into one folder at once
        return _build(name, onedir, cuda, stored, force, quiet)


def _build(name: str, onedir: bool, cuda: bool, stored: bool, force: bool, quiet: bool) -> Path:
    exe = executable_path(onedir, cuda, stored)
    stamp = DIST / f"{name}.key"
    key = source_key(onedir, cuda, stored)
    if not force and exe.is_file() and stamp.is_file() and stamp.read_text().strip() == key:
        _say(quiet, f"up to date: {exe}")
        return exe
    stamp.unlink(missing_ok=True)  # a half-finished build must never look current
    work = WORK / name
    work.mkdir(parents=True, exist_ok=True)
    log = work / "pyinstaller.log"
    command = [
        sys.executable,
        "-m",
        "PyInstaller",
        str(SPEC),
        "--noconfirm",
        "--clean",
        "--distpath",
        str(DIST / name),
        "--workpath",
        str(work),
        "--",
        *(["--onedir"] if onedir else []),
        *(["--cuda"] if cuda else []),
        *(["--store-binaries"] if stored else []),
        "--name",
        NAME,
    ]
    _say(quiet, f"building {name} (a few minutes; log: {log})")
    started = time.monotonic()
    with open(log, "w") as out:
        done = subprocess.run(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0 or not exe.is_file():
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        raise BuildError(f"PyInstaller failed (exit {done.returncode}); end of {log}:\n{tail}")
    stamp.write_text(key + "\n")
    _say(
        quiet, f"built {exe} in {time.monotonic() - started:.0f} s, {_size_mb(exe, onedir):.1f} MB"
    )
    return exe


def bundle_size_mb(onedir: bool = False, cuda: bool = False, stored: bool = False) -> float:
    """The executable's size (onefile) or its folder's (onedir), in MB."""
    return _size_mb(executable_path(onedir, cuda, stored), onedir)


def _size_mb(exe: Path, onedir: bool) -> float:
    if not onedir:
        return exe.stat().st_size / 1e6
    return sum(p.lstat().st_size for p in exe.parent.rglob("*")) / 1e6


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _say(quiet: bool, message: str) -> None:
    if not quiet:
        print(message, file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--onedir", action="store_true", help="build a folder, not one file")
    parser.add_argument("--cuda", action="store_true", help="keep ONNX Runtime's CUDA providers")
    parser.add_argument(
        "--fast-start",
        action="store_true",
        help="one file: store the libraries uncompressed (bigger file, faster start)",
    )
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    parser.add_argument("--print-path", action="store_true", help="print only the path")
    parser.add_argument("--json", action="store_true", help="print path, size and key as JSON")
    args = parser.parse_args()
    if args.onedir and args.fast_start:
        parser.error("--fast-start applies to the one-file build only")
    chosen = (args.onedir, args.cuda, args.fast_start)
    try:
        exe = build(*chosen, force=args.force, quiet=args.print_path or args.json)
    except BuildError as exc:
        raise SystemExit(str(exc)) from None
    if args.json:
        info = {
            "path": str(exe),
            "size_mb": round(bundle_size_mb(*chosen), 1),
            "key": source_key(*chosen),
        }
        print(json.dumps(info))
    else:
        print(exe)


if __name__ == "__main__":
    main()
