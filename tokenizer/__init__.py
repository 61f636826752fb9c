"""scratchgpt's tokenizers: hand-written, trained exactly like Hugging Face `tokenizers`, saved as tokenizer.json.

Reading order (minbpe's layout: a shared core, then one small file per variant):
  1. base.py            - TokenizerError, reading a corpus, the Tokenizer base class, pairs, merging, tokenizer.json
  2. char.py            - one token per character (the teaching default)
  3. train.py           - how BPE learns merges: a readable reference trainer and the fast incremental one
  4. train_numpy.py     - the fast trainer's vectorized half (first count, merges with many occurrences)
  5. pretokenize.py     - text -> words, and the corpus's words counted as Hugging Face's trainer sees them
  6. bpe.py             - vanilla BPE over characters, SentencePiece's '▁' word-boundary marker, [UNK]
  7. bbpe.py            - GPT-2's byte-level BPE: every string is encodable
  8. hf_reference.py    - the Hugging Face configurations we reproduce exactly
  9. fast.py            - tiktoken's engine from our merges: whole corpora encoded fast, with the same ids
 10. train_tokenizer.py - the command line
README.md says where each of Hugging Face's training rules lives in this code.

    >>> from tokenizer import train_tokenizer, load_tokenizer
    >>> tok = train_tokenizer("bbpe", "input.txt", vocab_size=4096)
    >>> tok.save("tokenizer.json"); load_tokenizer("tokenizer.json").encode("Hello") == tok.encode("Hello")
    True
"""
from collections import Counter

from .base import EOT, Tokenizer, TokenizerError, load_tokenizer, read_corpus
from .bbpe import ALPHABET, ByteLevelBPETokenizer
from .bpe import BPETokenizer
from .char import CharTokenizer
from .hf_reference import SPECIAL_TOKENS
from .pretokenize import count_words
from .train import train_fast

KINDS = ("char", "bpe", "bbpe")


def train_tokenizer(kind: str, corpus_path: str, vocab_size: int | None = None, progress: bool = True) -> Tokenizer:
    """Train a tokenizer of `kind` on the file at `corpus_path`; `vocab_size` is ignored for "char".

    For bpe and bbpe the vocabulary and merges equal those of Hugging Face `tokenizers` configured as in
    hf_reference.py. If the corpus runs out of pairs first, the vocabulary is smaller than `vocab_size`."""
    if kind not in KINDS:
        raise TokenizerError(f"unknown tokenizer kind {kind!r}; choose one of {', '.join(KINDS)}")
    return train_tokenizer_on_documents(kind, [read_corpus(corpus_path)], vocab_size, progress)


def train_tokenizer_on_documents(kind: str, documents, vocab_size: int | None = None, progress: bool = True,
                                 extra_chars: str = "") -> Tokenizer:
    """The same, on an iterable of documents (corpus.py), one held in memory at a time: the words of each are
    counted as Hugging Face counts those of each file it trains on. `extra_chars` joins a char vocabulary (the
    newlines data.py puts between documents)."""
    if kind not in KINDS:
        raise TokenizerError(f"unknown tokenizer kind {kind!r}; choose one of {', '.join(KINDS)}")
    if kind == "char":
        chars = set(extra_chars)
        for text in documents:
            chars.update(text)
        return CharTokenizer({c: i for i, c in enumerate(sorted(chars))})  # = CharTokenizer.train(all the text)
    if vocab_size is None or vocab_size < 1:
        raise TokenizerError(f"a {kind} tokenizer needs a positive vocab_size, got {vocab_size}")
    word_counts = Counter()
    for text in documents:
        word_counts.update(count_words(text, kind))
    alphabet = ALPHABET if kind == "bbpe" else ()
    vocab, merges = train_fast(word_counts, vocab_size, SPECIAL_TOKENS[kind], alphabet, progress=progress)
    cls = ByteLevelBPETokenizer if kind == "bbpe" else BPETokenizer
    return cls(vocab, merges, SPECIAL_TOKENS[kind])


__all__ = ["EOT", "KINDS", "Tokenizer", "TokenizerError", "CharTokenizer", "BPETokenizer", "ByteLevelBPETokenizer",
           "train_tokenizer", "train_tokenizer_on_documents", "load_tokenizer", "read_corpus"]
