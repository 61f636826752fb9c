"""Tests of the char tokenizer, tokenizer.json save/load and the train_tokenizer command line."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tokenizers

from tokenizer import CharTokenizer, Tokenizer, TokenizerError, load_tokenizer, train_tokenizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXT = "hello world\nΩ€ 😀\r\n\ttabs\u00a0and\u2028odd spaces\n"


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_bytes(TEXT.encode("utf-8"))
    return str(path)


def test_char_docstring_example():
    tok = CharTokenizer.train("hello world")
    assert tok.vocab == {" ": 0, "d": 1, "e": 2, "h": 3, "l": 4, "o": 5, "r": 6, "w": 7}
    assert tok.encode("hold") == [3, 5, 4, 1]
    assert tok.kind == "char" and tok.vocab_size == 8 and tok.eot_id is None
    with pytest.raises(TokenizerError, match="never seen: 'i'"):
        tok.encode("hi")


def test_char_train_round_trip_and_fast_path(corpus):
    tok = train_tokenizer("char", corpus, None, progress=False)
    assert tok.vocab_size == len(set(TEXT))  # '\r' kept: the corpus is read without newline translation
    ids = tok.encode(TEXT)
    assert tok.decode(ids) == TEXT
    fast = tok.encode_corpus(TEXT)
    assert fast.dtype == np.uint16 and fast.tolist() == ids
    assert tok.token_str(ids[0]) == "h"


def test_char_unseen_characters_listed_in_order(corpus):
    tok = train_tokenizer("char", corpus, None)
    for encode in (tok.encode, tok.encode_corpus):
        with pytest.raises(TokenizerError, match="never seen: 'x', 'Ж'$|never seen: 'x', 'Ж' "):
            encode("hex Ж x")


def test_char_json_loads_in_hugging_face_and_back(corpus, tmp_path):
    tok = train_tokenizer("char", corpus, None)
    path = str(tmp_path / "tok.json")
    tok.save(path)
    hf = tokenizers.Tokenizer.from_file(path)
    assert hf.encode(TEXT).ids == tok.encode(TEXT)
    assert hf.decode(tok.encode(TEXT)) == TEXT
    again = load_tokenizer(path)
    assert isinstance(again, CharTokenizer) and again.vocab == tok.vocab
    assert Tokenizer.from_json(tok.to_json()).encode(TEXT) == tok.encode(TEXT)


@pytest.mark.parametrize("content", ["not json", "{}", json.dumps({"model": {"type": "WordPiece"}})])
def test_load_rejects_corrupt_or_foreign_files(tmp_path, content):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(TokenizerError, match="bad.json"):
        load_tokenizer(str(path))
    with pytest.raises(TokenizerError, match="not found"):
        load_tokenizer(str(tmp_path / "missing.json"))


def test_save_is_atomic_and_reports_unwritable_paths(corpus, tmp_path):
    tok = train_tokenizer("char", corpus, None)
    with pytest.raises(TokenizerError, match="cannot write"):
        tok.save(str(tmp_path / "no" / "such" / "dir.json"))
    tok.save(str(tmp_path / "ok.json"))
    assert set(os.listdir(tmp_path)) == {"corpus.txt", "ok.json"}  # no temporary file left behind


def run_cli(*args, module=False):
    cmd = [sys.executable, "-m", "tokenizer.train_tokenizer"] if module else \
        [sys.executable, os.path.join(REPO, "tokenizer", "train_tokenizer.py")]
    return subprocess.run(cmd + [str(a) for a in args] + ["--no-progress"], capture_output=True, text=True, cwd=REPO)


def test_cli_char_both_invocations(corpus, tmp_path):
    for module in (False, True):
        out = tmp_path / f"char{module}.json"
        result = run_cli(corpus, 0, "char", "--out", out, module=module)
        assert result.returncode == 0, result.stderr
        assert "1.00 chars/token" in result.stdout
        assert load_tokenizer(str(out)).kind == "char"


def test_cli_errors_are_one_line(tmp_path, corpus):
    not_utf8 = tmp_path / "latin1.txt"
    not_utf8.write_bytes("abc café".encode("latin-1"))
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    cases = [
        ((tmp_path / "missing.txt", 10, "char"), "not found"),
        ((empty, 10, "char"), "empty"),
        ((not_utf8, 10, "char"), "byte offset 7"),
        ((corpus, 10, "char", "--out", tmp_path / "nodir" / "x.json"), "does not exist"),
        ((corpus, "ten", "char"), "whole number"),
    ]
    for args, message in cases:
        result = run_cli(*args)
        assert result.returncode == 1
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr


def test_load_rejects_merges_with_unknown_tokens(corpus, tmp_path):
    tok = train_tokenizer("char", corpus, None)
    data = json.loads(tok.to_json())
    data["model"]["vocab"]["zz"] = len(data["model"]["vocab"])
    data["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "never", "split": True}
    data["decoder"] = dict(data["pre_tokenizer"])
    data["model"]["merges"] = [["q", "q"]]  # 'q' is in no vocabulary
    path = tmp_path / "corrupt.json"
    path.write_text(json.dumps(data))
    with pytest.raises(TokenizerError, match="corrupt.json is corrupt: .*q \\+ q"):
        load_tokenizer(str(path))
