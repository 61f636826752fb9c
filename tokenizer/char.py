"""Character-level tokenizer: one token per distinct character of the training corpus.

The vocabulary is the corpus's distinct characters sorted by code point, with ids 0..N-1 in that order, as in
nanoGPT's shakespeare_char. No merges and no special tokens, so `eot_id` is None: a char vocabulary is exactly
the corpus's characters (80 for the built-in Shakespeare). Tiny models learn it quickly, which makes it the teaching
default.

    >>> tok = CharTokenizer.train("hello world")
    >>> tok.vocab                     # {' ': 0, 'd': 1, 'e': 2, 'h': 3, 'l': 4, 'o': 5, 'r': 6, 'w': 7}
    >>> tok.encode("hold")            # [3, 5, 4, 1]
    >>> tok.encode("hi")              # TokenizerError: ... never seen: 'i'

Saved as tokenizer.json it is a BPE model whose vocab is the characters and whose merge list is empty, with no
pre-tokenizer and a `Fuse` decoder (joins tokens without spaces); `tokenizers` loads and encodes it identically.
That shape (no pre-tokenizer, no merges, Fuse decoder) is how base.py recognises a char tokenizer when loading.

Read next: train.py, how BPE learns merges.
"""
from __future__ import annotations

import numpy as np

from .base import Tokenizer, TokenizerError, smallest_id_dtype


class CharTokenizer(Tokenizer):
    kind = "char"

    def __init__(self, vocab, merges=(), special_tokens=()):
        super().__init__(vocab, merges, special_tokens)
        if self.merges or any(len(t) != 1 for t in self.vocab):
            raise TokenizerError("a char tokenizer has one-character tokens and no merges")
        # For encode_corpus: code points in increasing order, and the id of each (ids need not follow that order).
        chars = sorted(self.vocab)
        self._code_points = np.array([ord(c) for c in chars], dtype=np.int64)
        self._ids_of_sorted = np.array([self.vocab[c] for c in chars], dtype=np.int64)

    @classmethod
    def train(cls, text: str) -> CharTokenizer:
        return cls({c: i for i, c in enumerate(sorted(set(text)))})

    def _unseen_error(self, text: str) -> TokenizerError:
        unseen = list(dict.fromkeys(c for c in text if c not in self.vocab))  # in order of first appearance
        shown = ", ".join(repr(c) for c in unseen[:10]) + (f" and {len(unseen) - 10} more" if len(unseen) > 10 else "")
        return TokenizerError(f"text has characters the tokenizer has never seen: {shown} (a char tokenizer knows "
                              f"only its training corpus's characters; a bbpe tokenizer encodes any text)")

    def encode(self, text: str) -> list[int]:
        try:
            return [self.vocab[c] for c in text]
        except KeyError:
            raise self._unseen_error(text) from None

    def encode_corpus(self, text: str, progress: bool = True) -> np.ndarray:
        """Same ids as `encode`, vectorised: code points -> position in the sorted alphabet -> id."""
        code_points = np.frombuffer(text.encode("utf-32-le", errors="surrogatepass"), dtype="<u4").astype(np.int64)
        index = np.searchsorted(self._code_points, code_points)
        index = np.minimum(index, len(self._code_points) - 1)
        if not np.array_equal(self._code_points[index], code_points):
            raise self._unseen_error(text)
        return self._ids_of_sorted[index].astype(smallest_id_dtype(self.vocab_size))

    def decode(self, ids) -> str:
        self._check_ids(ids)
        return "".join(self.id_to_token[int(i)] for i in ids)

    def token_str(self, token_id: int) -> str:
        return self.id_to_token[int(token_id)]

    def _hf_parts(self) -> dict:
        return {"unk_token": None, "pre_tokenizer": None, "decoder": {"type": "Fuse"}}
