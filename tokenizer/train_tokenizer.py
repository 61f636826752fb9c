"""Train a tokenizer on a text file and save it as tokenizer.json (loadable by Hugging Face `tokenizers` too).

    python tokenizer/train_tokenizer.py CORPUS VOCAB_SIZE {bpe,bbpe,char} [--out tokenizer.json]
    python -m tokenizer.train_tokenizer input.txt 4096 bbpe --out bbpe-4096.json

Shows a progress bar while merging, then a summary: vocabulary size, merges, compression (characters of the
corpus per token) and time. Any problem with the input prints one `error: ...` line and exits with status 1; Ctrl-C
prints `interrupted` and exits with status 130.
For "char" VOCAB_SIZE is ignored: the vocabulary is the corpus's distinct characters.

Read next: corpus.py (in the repository's root), how a corpus of any size reaches the tokenizer.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

if __package__ in (None, ""):  # run as `python tokenizer/train_tokenizer.py`: make the package importable
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
from config import run_main  # noqa: E402  (the wrapper every script shares: one-line errors, Ctrl-C exits 130)
from tokenizer import KINDS, TokenizerError, read_corpus, train_tokenizer  # noqa: E402


def check_writable(path: str) -> None:
    """Fail before training, not after, when the output cannot be written."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise TokenizerError(f"output path {path} is a directory; give a file name such as {path}/tokenizer.json")
    if not os.path.isdir(folder):
        raise TokenizerError(f"cannot write {path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise TokenizerError(f"cannot write {path}: permission denied")


def parse_vocab_size(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise TokenizerError(f"VOCAB_SIZE must be a whole number, got {text!r}") from None


def main(argv: list[str] | None = None) -> None:
    """Any problem with the input raises TokenizerError; config.run_main prints it as one line (and Ctrl-C too)."""
    parser = argparse.ArgumentParser(description="Train a char, bpe or bbpe tokenizer and save it as tokenizer.json.")
    parser.add_argument("corpus", help="UTF-8 text file to learn from")
    parser.add_argument("vocab_size", help="vocabulary size to reach, special tokens included (ignored for char)")
    parser.add_argument("kind", choices=KINDS, help="char: characters; bpe: vanilla BPE over characters with "
                                                    "'▁' word boundaries; bbpe: GPT-2 byte-level BPE")
    parser.add_argument("--out", default="tokenizer.json", help="where to write tokenizer.json")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    vocab_size = parse_vocab_size(args.vocab_size)
    check_writable(args.out)
    start = time.perf_counter()
    tok = train_tokenizer(args.kind, args.corpus, vocab_size, progress=not args.no_progress)
    seconds = time.perf_counter() - start
    if args.kind == "char" and vocab_size != tok.vocab_size:
        print(f"note: char vocabulary is the corpus's {tok.vocab_size} distinct characters "
              f"(VOCAB_SIZE {vocab_size} ignored)")
    elif args.kind != "char" and tok.vocab_size < vocab_size:
        print(f"note: the corpus has no pairs left to merge; stopped at vocab size {tok.vocab_size} "
              f"instead of {vocab_size}")
    tok.save(args.out)
    text = read_corpus(args.corpus)
    num_tokens = len(tok.encode_corpus(text, progress=not args.no_progress))
    print(f"saved {args.kind} tokenizer to {args.out}: vocab size {tok.vocab_size}, {len(tok.merges)} merges, "
          f"{len(text) / max(num_tokens, 1):.2f} chars/token on the corpus ({num_tokens:,} tokens), "
          f"trained in {seconds:.2f} s")


if __name__ == "__main__":
    run_main(main, user_errors=(TokenizerError,))
