"""scratchgpt's tokenizers: hand-written, and saved in Hugging Face's tokenizer.json format.

Reading order (minbpe's layout: a shared core, then one small file per variant):
  1. base.py            - TokenizerError, reading a corpus, the Tokenizer base class, tokenizer.json save/load
  2. char.py            - one token per character (the teaching default)
  3. train.py           - how BPE learns merges: a readable reference trainer and the fast incremental one
  4. pretokenize.py     - text -> counted words, as Hugging Face's trainer sees it (line by line)
  5. bpe.py             - vanilla BPE over characters, SentencePiece's '▁' word-boundary marker
  6. bbpe.py            - GPT-2's byte-level BPE: every string is encodable
  7. train_tokenizer.py - the command line

    >>> from tokenizer import train_tokenizer, load_tokenizer
    >>> tok = train_tokenizer("bbpe", "input.txt", vocab_size=4096)
    >>> tok.save("tokenizer.json"); load_tokenizer("tokenizer.json").encode("Hello") == tok.encode("Hello")
    True
"""
from .base import EOT, Tokenizer, TokenizerError, load_tokenizer, read_corpus
from .char import CharTokenizer

KINDS = ("char", "bpe", "bbpe")


def train_tokenizer(kind: str, corpus_path: str, vocab_size: int | None = None, progress: bool = True) -> Tokenizer:
    """Train a tokenizer of `kind` on the file at `corpus_path`; `vocab_size` is ignored for "char"."""
    if kind not in KINDS:
        raise TokenizerError(f"unknown tokenizer kind {kind!r}; choose one of {', '.join(KINDS)}")
    if kind == "char":
        return CharTokenizer.train(read_corpus(corpus_path))
    raise TokenizerError(f"tokenizer kind {kind!r} is not implemented yet; use 'char'")


__all__ = ["EOT", "KINDS", "Tokenizer", "TokenizerError", "CharTokenizer", "train_tokenizer", "load_tokenizer",
           "read_corpus"]
