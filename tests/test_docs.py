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
        assert "shared/docs" not in text and "../shared" not in text, path.relative_to(ROOT)
