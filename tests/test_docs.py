"""The prose keeps up with the code: figures about the built-in corpus are the corpus's, and nothing points outside
the repository."""
import re
from pathlib import Path

import pytest

import data

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", ROOT / "tokenizer" / "README.md"]


@pytest.fixture(scope="module")
def corpus() -> str:
    return Path(data.builtin_corpus_path()).read_text(encoding="utf-8")


def project_files():
    for path in sorted(ROOT.rglob("*")):
        if path.suffix in (".py", ".md", ".yaml") and ".git" not in path.parts and path.name != "test_docs.py":
            yield path


def test_readme_states_the_corpus_size(corpus):
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    millions, distinct = re.search(r"([\d.]+)M characters, (\d+) distinct", text).groups()
    assert float(millions) == round(len(corpus) / 1e6, 1)
    assert int(distinct) == len(set(corpus))


def test_every_char_vocabulary_figure_is_the_corpus(corpus):
    found = 0
    for path in project_files():
        for figure in re.findall(r"(\d+) for the built-in Shakespeare", path.read_text(encoding="utf-8")):
            assert int(figure) == len(set(corpus)), f"{path.relative_to(ROOT)} says {figure}"
            found += 1
    assert found >= 3  # README, tokenizer/README.md, tokenizer/char.py


def test_nothing_points_outside_the_repository():
    for path in project_files():
        text = path.read_text(encoding="utf-8")
        outside = ("shared" + "/docs", ".." + "/shared")  # spelled in parts so that this file does not match
        assert not any(name in text for name in outside), path.relative_to(ROOT)


def reading_order() -> list[list[str]]:
    """The README's numbered reading order: the files (or folders) each item names, in order."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Reading order", 1)[1].split("\n## ", 1)[0]
    items = re.split(r"\n\d+\. ", "\n" + section)[1:]
    return [re.findall(r"`([\w/]+(?:\.py|/))`", item) for item in items]


def read_next(path: Path) -> str:
    """The "Read next:" line of a module's docstring, with its continuation line."""
    match = re.search(r"^Read next: (.*(?:\n(?!\"\"\").*)?)", path.read_text(encoding="utf-8"), re.M)
    assert match, f"{path.relative_to(ROOT)} has no 'Read next:' line"
    return match.group(1)


def test_each_files_read_next_line_follows_the_readme_reading_order():
    groups = [g for g in reading_order() if g and g[0] not in ("tests/", "bench/")]
    assert len(groups) >= 10
    for here, after in zip(groups, groups[1:]):
        for name in here:
            path = ROOT / (name + "train_tokenizer.py" if name == "tokenizer/" else name)
            allowed = [n for n in here if n != name] + after
            assert any(n.rstrip("/") in read_next(path) for n in allowed), \
                f"{path.relative_to(ROOT)} reads next {read_next(path)!r}; the README goes on with {after}"
