"""data.py: the Markdown conversion, the token cache, and batches that depend only on (seed, step, micro-step)."""
import numpy as np
import pytest
import torch

import data
from tokenizer import train_tokenizer


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SCRATCHGPT_CACHE", str(tmp_path / "cache"))


def test_markdown_play_becomes_plain_text():
    markdown = ("# Hamlet\n\n## ACT I\n\n### SCENE I. Elsinore.\n\n_Enter BERNARDO_\n\n**BERNARDO**  \n"
                "Who's there?  \nNay, answer me\\--stand.\n\n*Exit, with a \\[letter\\].*\n")
    assert data.markdown_play_to_text(markdown) == (
        "Hamlet\n\nACT I\n\nSCENE I. Elsinore.\n\nEnter BERNARDO\n\nBERNARDO:\nWho's there?\n"
        "Nay, answer me--stand.\n\nExit, with a [letter].\n")


def test_builtin_corpus_is_all_the_plays_as_plain_text():
    text = open(data.builtin_corpus_path(), encoding="utf-8").read()
    assert 4_500_000 < len(text) < 5_500_000
    assert "HAMLET:\n" in text and "ROMEO:\n" in text
    assert not any(mark in text for mark in ("**", "_", "\\[", "#"))
    assert 70 <= len(set(text)) <= 90


def test_token_cache_is_keyed_by_content(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("abcabcabc " * 50)
    tok = train_tokenizer("char", str(corpus))
    first = data.load_tokens(str(corpus), tok, 0.1, 8, quiet=True)
    assert first.chars_per_token == 1.0 and len(first.train) + len(first.val) == 500
    corpus.write_text("cbacbacba " * 50)  # same length and characters, different text
    second = data.load_tokens(str(corpus), tok, 0.1, 8, quiet=True)
    assert not np.array_equal(first.train, second.train)
    assert tok.decode(second.train[:4].tolist()) == "cbac"


def test_batches_depend_only_on_seed_step_and_micro_step():
    ids = np.arange(1000, dtype=np.uint16)
    x, y = data.get_batch(ids, 4, 8, seed=1, step=5, micro_step=1)
    assert x.shape == y.shape == (4, 8) and x.dtype == torch.int64
    assert torch.equal(y[:, :-1], x[:, 1:]) and torch.equal(y[:, -1], x[:, -1] + 1)  # targets: shifted by one
    again, _ = data.get_batch(ids, 4, 8, seed=1, step=5, micro_step=1)
    assert torch.equal(x, again)
    for other in [dict(seed=2, step=5, micro_step=1), dict(seed=1, step=6, micro_step=1),
                  dict(seed=1, step=5, micro_step=0)]:
        assert not torch.equal(x, data.get_batch(ids, 4, 8, **other)[0])
