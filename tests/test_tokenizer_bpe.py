"""BPE training by hand: the known answer, the docstring examples, reference == fast, counting, errors, CLI."""
import os
import random
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenizer import EOT, BPETokenizer, TokenizerError, load_tokenizer, train_tokenizer
from tokenizer.base import count_pairs, merge_word
from tokenizer.pretokenize import (BYTE_TO_CHAR, count_words, count_words_reference, lines_of, split_gpt2,
                                   split_metaspace, to_byte_chars)
from tokenizer.train import train_fast, train_reference
from tokenizer.train_numpy import group_by_key, group_by_symbol

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write(tmp_path, text, name="corpus.txt"):
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8"))
    return str(path)


# --- known answers and docstring examples ----------------------------------------------------------------------

def test_aaabdaaabac_by_hand():
    # Alphabet a b c d = ids 0 1 2 3. Counts: aa 4 (overlaps count), ab 2, the rest 1 -> merge aa (id 4):
    # "aa a b d aa a b a c". Now (aa, a) and (a, b) both 2: the smaller ids win -> ab (id 5): "aa ab d aa ab a c".
    # (aa, ab) 2 -> aaab (id 6): "aaab d aaab a c", all pairs 1: smallest ids (a, c) -> ac (id 7), then
    # (d, aaab) -> daaab (8), (aaab, daaab) (9), and the whole word (10). The first three are Wikipedia's Z, Y, X.
    vocab, merges = train_reference({"aaabdaaabac": 1}, vocab_size=100, special_tokens=[])
    assert merges == [("a", "a"), ("a", "b"), ("aa", "ab"), ("a", "c"), ("d", "aaab"), ("aaab", "daaab"),
                      ("aaabdaaab", "ac")]
    assert vocab == {"a": 0, "b": 1, "c": 2, "d": 3, "aa": 4, "ab": 5, "aaab": 6, "ac": 7, "daaab": 8,
                     "aaabdaaab": 9, "aaabdaaabac": 10}
    assert train_fast({"aaabdaaabac": 1}, 100, []) == (vocab, merges)


def test_aaabdaaabac_as_a_bpe_tokenizer(tmp_path):
    tok = train_tokenizer("bpe", write(tmp_path, "aaabdaaabac"), vocab_size=9, progress=False)
    assert tok.vocab == {EOT: 0, "[UNK]": 1, "a": 2, "b": 3, "c": 4, "d": 5, "aa": 6, "ab": 7, "aaab": 8}
    assert tok.encode("aaabdaaabac") == [8, 5, 8, 2, 4]  # X d X a c
    assert tok.encode("aaaz") == [6, 2, 1]               # z was never seen: [UNK]


def test_docstring_examples():
    assert count_pairs([[1, 2, 3, 1, 2]], [1]) == {(1, 2): 2, (2, 3): 1, (3, 1): 1}
    assert count_pairs([[7, 7, 7]], [1]) == {(7, 7): 2}
    assert merge_word([1, 2, 3, 1, 2], (1, 2), 4) == [4, 3, 4]
    assert merge_word([7, 7, 7], (7, 7), 8) == [8, 7]
    keys, sums, groups = group_by_key(np.array([9, 5, 9]), np.array([1, 2, 3]), np.array([10, 11, 12]))
    assert (keys, sums, [g.tolist() for g in groups]) == ([5, 9], [2, 4], [[11], [10, 12]])
    grouped = group_by_symbol(np.array([7, 3, 7]), np.array([1, 2, 3]), np.array([10, 11, 12]))
    assert [(s, total, g.tolist()) for s, total, g in grouped] == [(3, 2, [11]), (7, 4, [10, 12])]
    assert split_metaspace("Hello  world\n") == ["Hello", "▁", "▁world\n"]
    assert split_gpt2("Hello  world's\n") == ["Hello", " ", " world", "'s", "\n"]
    assert to_byte_chars("é ") == "Ã©Ġ"
    assert (BYTE_TO_CHAR[32], BYTE_TO_CHAR[10], BYTE_TO_CHAR[0], BYTE_TO_CHAR[0xAD]) == ("Ġ", "Ċ", "Ā", "Ń")
    assert lines_of("a\r\nb\n\nc") == ["a\r\n", "b\n", "\n", "c"]


# --- the fast trainer agrees with the reference --------------------------------------------------------------

def random_word_counts(rng: random.Random) -> dict[str, int]:
    alphabet = rng.choice(["ab", "abc", "aab", "abcd", "abcdefgh", "aé😀"])
    counts = {}
    for _ in range(rng.randint(1, 40)):
        word = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 14)))
        counts[word] = counts.get(word, 0) + rng.choice([1, 1, 2, 3, 7])  # many equal counts: ties
    return counts


@pytest.mark.parametrize("numpy_from", [0, 4, float("inf")])  # all numpy, mixed, all Python
def test_fast_trainer_equals_reference(numpy_from):
    rng = random.Random(1234)
    for _ in range(150):
        counts = random_word_counts(rng)
        vocab_size = rng.randint(len(set("".join(counts))) + 1, 90)
        expected = train_reference(counts, vocab_size, [EOT])
        assert train_fast(counts, vocab_size, [EOT], numpy_from=numpy_from) == expected, counts


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.text(alphabet="abc▁\n", min_size=1, max_size=10), st.integers(1, 5), min_size=1))
def test_fast_trainer_equals_reference_hypothesis(counts):
    vocab_size = len(set("".join(counts))) + 40
    expected = train_reference(counts, vocab_size, [EOT, "[UNK]"])
    assert train_fast(counts, vocab_size, [EOT, "[UNK]"], numpy_from=0) == expected
    assert train_fast(counts, vocab_size, [EOT, "[UNK]"], numpy_from=float("inf")) == expected


def test_merge_that_recreates_a_special_token_reuses_its_id():
    # Like HF, a merge whose string is already a token (here the special "ab") takes that token's id.
    vocab, merges = train_fast({"abab": 5}, 10, ["ab"])
    assert train_reference({"abab": 5}, 10, ["ab"]) == (vocab, merges)
    assert merges[0] == ("a", "b") and vocab["ab"] == 0 and vocab["abab"] == 3


# --- counting words as HF's trainer does (line by line) -------------------------------------------------------

weird_text = st.text(alphabet=st.sampled_from(list("ab é1'\t\n\r\x0b\x1c\u00a0\u2028\u3000▁😀,.s")), max_size=80)


@settings(max_examples=200, deadline=None)
@given(weird_text)
def test_fast_word_counts_equal_line_by_line_counts(text):
    for kind in ("bpe", "bbpe"):
        assert count_words(text, kind) == count_words_reference(text, kind)


def test_parallel_word_counts_equal_line_by_line_counts():
    rng = random.Random(7)
    text = "".join(rng.choice(["the ", "cat", "  ", "\n", "\t", "'s", "😀", " 12", "\r\n", "é"])
                   for _ in range(300_000))  # over 1 MB: counted in two processes
    for kind in ("bpe", "bbpe"):
        assert count_words(text, kind, workers=2) == count_words_reference(text, kind)


# --- errors ----------------------------------------------------------------------------------------------------

def test_vocab_size_below_the_alphabet_names_the_minimum(tmp_path):
    path = write(tmp_path, "abc abd\n")  # bpe: 2 specials + a b c d ▁ \n = 8
    with pytest.raises(TokenizerError, match="minimum 8.*use at least 8"):
        train_tokenizer("bpe", path, 7)
    with pytest.raises(TokenizerError, match="minimum 257"):  # bbpe: 1 special + 256 bytes
        train_tokenizer("bbpe", path, 256)
    assert train_tokenizer("bpe", path, 8).merges == []


def test_unreachable_vocab_size_stops_early(tmp_path):
    tok = train_tokenizer("bpe", write(tmp_path, "ab ab\n"), 1000, progress=False)
    assert tok.vocab_size < 1000 and isinstance(tok, BPETokenizer)


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "tokenizer.train_tokenizer", *map(str, args), "--no-progress"],
                          capture_output=True, text=True, cwd=REPO)


def test_cli_bpe_and_bbpe(tmp_path):
    corpus = write(tmp_path, "the cat sat on the mat\nthe dog sat on the log\n" * 20)
    for kind in ("bpe", "bbpe"):
        out = tmp_path / f"{kind}.json"
        result = run_cli(corpus, 300, kind, "--out", out)
        assert result.returncode == 0, result.stderr
        assert "chars/token" in result.stdout and "stopped at vocab size" in result.stdout
        assert load_tokenizer(str(out)).kind == kind
    result = run_cli(corpus, 10, "bbpe", "--out", tmp_path / "x.json")
    assert result.returncode == 1 and result.stderr.count("\n") == 1 and "minimum 257" in result.stderr
