"""data.py, corpus.py, token_cache.py, prepare.py: the built-in corpus, corpora of any size, the token cache,
and batches that depend only on (seed, step, micro-step)."""
import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT
from test_tokenizer_hf import code, english, mixed_scripts

import corpus as corpus_module
import data
import token_cache
from config import DEFAULT_RECIPE
from tiny import GPT2_RECIPE
from tokenizer import EOT, TokenizerError, train_tokenizer


pytestmark = pytest.mark.usefixtures("private_cache")  # conftest.py: a cache of its own per test


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


# --- corpora of any size: directories, JSONL, the streaming cache


def documents() -> list[str]:
    rng = random.Random(0)
    return [english(rng, 40), code(rng, 60), mixed_scripts(rng, 80), "short, no newline at the end",
            english(rng, 30) + "\r\n  trailing spaces  ", "😀" * 50 + "\n"]


def write_directory(folder: Path, docs: list[str]) -> list[str]:
    """One file per document, some in a subfolder, named so that sorted paths keep the order; returns that order."""
    for i, doc in enumerate(docs):
        path = folder / ("sub" if i % 2 else "") / f"{i:02d}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(doc.encode("utf-8"))
    (folder / "notes.md").write_text("not a *.txt file: ignored")
    return [docs[i] for i in sorted(range(len(docs)), key=lambda i: ("sub/" if i % 2 else "") + f"{i:02d}.txt")]


def write_jsonl(path: Path, docs: list[str], field: str = "text"):
    lines = [json.dumps({"id": i, field: doc}) for i, doc in enumerate(docs)]
    path.write_text("\n".join(lines[:2] + [""] + lines[2:]) + "\n", encoding="utf-8")  # a blank line is skipped


@pytest.fixture(scope="module")
def bbpe(tmp_path_factory):
    path = tmp_path_factory.mktemp("train") / "train.txt"
    path.write_bytes("".join(documents()).encode("utf-8"))
    return train_tokenizer("bbpe", str(path), 400, progress=False)


def all_ids(tokens: data.TokenData) -> list[int]:
    return np.concatenate([tokens.train, tokens.val]).tolist()


@pytest.mark.parametrize("workers", [1, 2])
def test_directory_and_jsonl_give_the_ids_of_the_concatenated_text(tmp_path, monkeypatch, bbpe, workers):
    monkeypatch.setattr(corpus_module, "PIECE_CHARS", 700)  # many pieces per document: the cuts must not show
    monkeypatch.setattr(token_cache, "POOL_FROM_BYTES", 0 if workers > 1 else 1 << 40)
    monkeypatch.setattr(token_cache.os, "sched_getaffinity", lambda pid: set(range(workers)), raising=False)
    ordered = write_directory(tmp_path / "dir", documents())
    write_jsonl(tmp_path / "docs.jsonl", ordered, field="body")
    char = data.resolve_tokenizer("char", data.open_corpus(str(tmp_path / "dir")))
    assert "\n" in char.vocab  # the blank line between documents is in a char vocabulary trained on the corpus
    for tok, separator, allowed in ((bbpe, EOT, {"allowed_special": True}), (char, "\n\n", {})):
        expected = tok.encode("".join(doc + separator for doc in ordered), **allowed)
        from_dir = data.load_tokens(str(tmp_path / "dir"), tok, 0.2, 8, quiet=True)
        from_jsonl = data.load_tokens(data.open_corpus(str(tmp_path / "docs.jsonl"), "body"), tok, 0.2, 8, quiet=True)
        assert all_ids(from_dir) == all_ids(from_jsonl) == expected


def test_a_text_file_is_cut_into_pieces_without_changing_its_ids(tmp_path, monkeypatch, bbpe):
    monkeypatch.setattr(corpus_module, "PIECE_CHARS", 500)
    text = "".join(documents()) + "x" * 3000 + " long words without newlines " * 200  # cut at spaces too
    (tmp_path / "c.txt").write_bytes(text.encode("utf-8"))
    pieces = list(data.open_corpus(str(tmp_path / "c.txt")).pieces(bbpe.boundary))
    assert len(pieces) > 10 and "".join(p for p, _ in pieces) == text and [e for _, e in pieces][-2:] == [False, True]
    assert all_ids(data.load_tokens(str(tmp_path / "c.txt"), bbpe, 0.1, 8, quiet=True)) == bbpe.encode(text)


def test_validation_holds_out_whole_documents(tmp_path, bbpe):
    docs = [f"Document {i}: " + "words and more words. " * (5 + 7 * i) + "\n" for i in range(10)]
    write_directory(tmp_path / "dir", docs)
    tokens = data.load_tokens(str(tmp_path / "dir"), bbpe, 0.25, 8, quiet=True)
    assert tokens.train[-1] == bbpe.eot_id and tokens.val[-1] == bbpe.eot_id
    val_text = bbpe.decode(tokens.val.tolist())
    held_out = val_text.split(EOT)[:-1]
    assert held_out and all(doc.startswith("Document ") for doc in held_out)
    assert 0.15 < len(tokens.val) / (len(tokens.train) + len(tokens.val)) < 0.35


def test_bad_jsonl_lines_say_which_line_and_what_to_do(tmp_path, bbpe):
    cases = {'{"text": "ok"}\nnot json\n': "line 2 is not JSON", '{"body": "x"}\n': "no 'text' field",
             '{"text": 3}\n': "'text' is not a string", '[1, 2]\n': "no 'text' field"}
    for content, message in cases.items():
        (tmp_path / "bad.jsonl").write_text(content)
        with pytest.raises(TokenizerError, match=message):
            data.load_tokens(str(tmp_path / "bad.jsonl"), bbpe, 0.1, 8, quiet=True)
    with pytest.raises(TokenizerError, match="no \\*.txt files"):
        data.open_corpus(str(tmp_path / "empty_dir")) if (tmp_path / "empty_dir").mkdir() is None else None


def run(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=300, cwd=ROOT, **kwargs)


@pytest.mark.parametrize("name", ["c.txt", "c.jsonl"])
def test_a_corpus_that_cannot_be_read_is_named_as_the_corpus_not_the_cache(tmp_path, monkeypatch, name):
    path = tmp_path / name
    path.write_text('{"text": "to be or not to be"}\n' if name.endswith(".jsonl") else "to be or not to be\n")
    corpus = data.open_corpus(str(path))
    cache = token_cache.TokenCache(corpus, data.resolve_tokenizer("char", corpus), data.cache_dir())

    def failing_open(*args, **kwargs):
        raise OSError(errno.EIO, "Input/output error")  # a disk error while the corpus is read
    monkeypatch.setattr(corpus_module, "open", failing_open, raising=False)  # shadows the builtin in corpus.py
    with pytest.raises(TokenizerError, match=f"cannot read corpus {path}: Input/output error"):
        cache.build(quiet=True, workers=1)
    assert not list(data.cache_dir().glob("*tokens-*"))  # nothing half-written left behind


def test_a_corrupt_cache_json_is_rebuilt_and_said(tmp_path, capsys):
    corpus = tmp_path / "c.txt"
    corpus.write_text("abcabcabc " * 50)
    tok = train_tokenizer("char", str(corpus))
    first = all_ids(data.load_tokens(str(corpus), tok, 0.1, 8, quiet=True))
    (meta_path,) = (tmp_path / "cache").glob("tokens-*.json")
    meta = json.loads(meta_path.read_text())
    for garbage in ["{not json", "[]", '{"dtype": "uint16"}', json.dumps({**meta, "num_tokens": 10 ** 6}),
                    json.dumps({**meta, "dtype": "float64"}), json.dumps({**meta, "documents": 3})]:
        meta_path.write_text(garbage)
        assert all_ids(data.load_tokens(str(corpus), tok, 0.1, 8, quiet=True)) == first
        assert f"the token cache {meta_path} is corrupt" in capsys.readouterr().err
        assert json.loads(meta_path.read_text()) == meta
    meta_path.write_text("{not json")  # and from the command line: exit 0, one line saying so
    result = run(sys.executable, "prepare.py", str(corpus), "--tokenizer=char")
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == f"warning: the token cache {meta_path} is corrupt (unreadable: Expecting " \
                                    f"property name enclosed in double quotes: line 1 column 2 (char 1)); rebuilding it"


def test_a_piped_corpus_is_read_once(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("the cat sees the dog. " * 200 + "\n")
    flags = f"--config {GPT2_RECIPE} --block_size=8 --embedding_dim=16 --num_of_layers=1 --num_of_heads=2 " \
            "--batch_size=4 --eval_iters=1 " \
            f"--max_iters=2 --sample_tokens=5 --device=cpu --dtype=float32 --out_dir={tmp_path / 'out'}"
    result = run("bash", "-c", f"{sys.executable} playground.py <(cat {corpus}) {flags}")
    assert result.returncode == 0, result.stderr
    assert "train /" in result.stdout and "done: 2 steps" in result.stdout
    result = run("bash", "-c", f"{sys.executable} prepare.py <(cat {corpus}) --config {GPT2_RECIPE}")
    assert result.returncode == 0 and "tokens (" in result.stdout, result.stderr
    assert not list((tmp_path / "cache").glob("piped-corpus-*")), "the copy of the pipe is deleted at exit"


def test_prepare_reads_the_training_config_and_defaults_to_what_playground_trains(tmp_path):
    """No --config: configs/default.yaml's tokenizer, as `python playground.py` (so its cache is the one the default
    run reads). A training config gives its tokenizer and corpus; its model and schedule keys are read past, a key no
    script knows is still refused."""
    corpus = tmp_path / "c.txt"
    corpus.write_text("the cat sees the dog. a dog sees the cat. " * 300 + "\n")
    default = run(sys.executable, "prepare.py", str(corpus))
    assert default.returncode == 0, default.stderr
    gpt2 = run(sys.executable, "prepare.py", str(corpus), "--config", GPT2_RECIPE)
    assert gpt2.returncode == 0, gpt2.stderr
    metas = [json.loads(path.read_text()) for path in (tmp_path / "cache").glob("tokens-*.json")]
    assert len(metas) == 2  # two tokenizers, two caches
    characters_per_token = sorted(meta["num_chars"] / meta["num_tokens"] for meta in metas)
    assert characters_per_token[0] == 1.0 and characters_per_token[1] > 2  # char (gpt2.yaml) and bbpe (default.yaml)
    again = run(sys.executable, "prepare.py", str(corpus), "--config", DEFAULT_RECIPE)
    assert again.returncode == 0 and "already cached" in again.stdout, again.stderr  # the same cache as no --config
    typo = tmp_path / "typo.yaml"
    typo.write_text("tokenizer: char\nnum_of_layer: 2\n")
    refused = run(sys.executable, "prepare.py", str(corpus), "--config", str(typo))
    assert refused.returncode == 1 and refused.stderr.strip().endswith("did you mean num_of_layers?"), refused.stderr


def big_corpus(path: Path, megabytes: int):
    rng = random.Random(0)
    block = english(rng, 8000)  # ~0.4 MB of prose, repeated
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(int(megabytes * 1e6 / len(block)) + 1):
            f.write(block)


@pytest.mark.slow
def test_a_killed_prepare_leaves_no_trusted_cache(tmp_path, bbpe):
    big_corpus(tmp_path / "big.txt", 8)
    bbpe.save(str(tmp_path / "tok.json"))
    command = [sys.executable, "prepare.py", str(tmp_path / "big.txt"), f"--tokenizer={tmp_path / 'tok.json'}",
               "--workers=1"]
    cache = tmp_path / "cache"
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not any(p.stat().st_size > 0 for p in cache.glob(".tokens-*.bin.*.tmp")) and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert list(cache.glob(".tokens-*.tmp")), "killed while writing"
    assert not list(cache.glob("tokens-*.json")), "no metadata: nothing a later run would trust"
    result = run(*command)
    assert result.returncode == 0 and "tokenizing" in result.stdout, result.stderr
    assert list(cache.glob("tokens-*.json")) and not list(cache.glob(".tokens-*.tmp")), "rebuilt, orphans deleted"


MEASURE_PEAK_RSS = """
import json, resource, sys
import data, token_cache
from tokenizer import load_tokenizer
def status_kb(field):
    return int(next(line for line in open("/proc/self/status") if line.startswith(field)).split()[1])
def build(path):
    token_cache.TokenCache(data.open_corpus(path), tokenizer, data.cache_dir()).build(quiet=True, workers=2)
tokenizer = load_tokenizer(sys.argv[2])
build(sys.argv[3])  # a small corpus first: the libraries a build loads are loaded
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak (VmHWM) to the current RSS: imports may have peaked higher
before = status_kb("VmRSS")
build(sys.argv[1])
print(json.dumps({"before": before, "self": status_kb("VmHWM"),
                  "children": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
"""


@pytest.mark.slow
def test_encoding_a_corpus_larger_than_the_memory_budget(tmp_path, bbpe):
    """48 MB of text encoded by 2 worker processes: neither this process nor a worker grows by a quarter of that."""
    megabytes = 48
    big_corpus(tmp_path / "big.txt", megabytes)
    bbpe.save(str(tmp_path / "tok.json"))
    (tmp_path / "small.txt").write_text("a small corpus " * 1000)
    result = run(sys.executable, "-c", MEASURE_PEAK_RSS, str(tmp_path / "big.txt"), str(tmp_path / "tok.json"),
                 str(tmp_path / "small.txt"))
    assert result.returncode == 0, result.stderr
    kb = json.loads(result.stdout)
    budget_kb = megabytes * 1000 // 4
    assert kb["self"] - kb["before"] < budget_kb, kb
    assert kb["children"] - kb["before"] < budget_kb, kb  # a forked worker starts with its parent's pages
    sizes = [json.loads(meta.read_text())["num_chars"] for meta in (tmp_path / "cache").glob("tokens-*.json")]
    assert max(sizes) >= megabytes * 1e6
