"""Fast encoders for whole corpora: tiktoken's engine for byte-level BPE, Hugging Face `tokenizers` for bpe.

Our `encode` (bbpe.py, bpe.py) is the readable reference; a corpus of gigabytes needs compiled code. For bbpe we
hand tiktoken our own merges (nothing is downloaded):

    tiktoken.Encoding(name, pat_str=GPT-2's regex, mergeable_ranks={token bytes: rank}, special_tokens={...})

tiktoken merges differently on paper. Ours (and Hugging Face's) merges the adjacent *pair* that was learned
earliest; tiktoken merges the adjacent pair whose *concatenation* has the lowest rank, and a token's rank is also
its id. The two agree when ids follow merge order: the token made by merge k has a smaller id than the token made
by merge k + 1, so "learned earlier" and "lower rank" are the same order. That holds for every vocabulary our
trainer writes (special tokens, 256 bytes, then one token per merge) and for GPT-2's own (256 bytes, 50,000 merges,
then <|endoftext|> at the very end); `tiktoken_encoding` checks it and returns None when it does not hold (then
Hugging Face's engine is used). The single bytes' ranks never compete in a merge, so they may be anything: they are
just the ids. tests/test_tokenizer_fast.py proves the ids equal our `encode`'s on prose, code, emoji, mixed scripts
and a GPT-2-layout vocabulary.

    >>> encoder = FastEncoder(tok.to_json())     # what each worker process of data.py builds once
    >>> encoder("Hello world")                   # numpy array of ids, equal to tok.encode("Hello world")

Read next: train_tokenizer.py.
"""
from __future__ import annotations

import numpy as np

from .base import Tokenizer, smallest_id_dtype
from .pretokenize import CHAR_TO_BYTE, GPT2_PATTERN


def tiktoken_encoding(tok: Tokenizer):
    """A tiktoken.Encoding that gives the same ids as `tok.encode`, or None (not bbpe, ids not in merge order, or
    tiktoken not installed)."""
    if tok.kind != "bbpe":
        return None
    try:
        import tiktoken
    except ImportError:
        return None
    merged_ids = [tok.vocab[left + right] for left, right in tok.merges]  # the id each merge creates, in merge order
    if any(a >= b for a, b in zip(merged_ids, merged_ids[1:])):
        return None  # a later merge would outrank an earlier one (or one token made twice): tiktoken's order differs
    specials = {t: tok.vocab[t] for t in tok.special_tokens}
    ranks = {bytes(CHAR_TO_BYTE[c] for c in token): i for token, i in tok.vocab.items() if token not in specials}
    return tiktoken.Encoding(f"scratchgpt-bbpe-{tok.vocab_size}", pat_str=GPT2_PATTERN.pattern,
                             mergeable_ranks=ranks, special_tokens=specials)


class FastEncoder:
    """text -> numpy ids, equal to `encode`'s: tiktoken for bbpe, numpy for char, Hugging Face for the rest.

    Built from tokenizer.json text, so that a worker process can build its own (the engines do not pickle)."""

    def __init__(self, tokenizer_json: str):
        self.tokenizer = Tokenizer.from_json(tokenizer_json)
        self.dtype = smallest_id_dtype(self.tokenizer.vocab_size)
        self.tiktoken = tiktoken_encoding(self.tokenizer)
        self.hf = None if self.tiktoken or self.tokenizer.kind == "char" else self.tokenizer.to_hf()
        self.engine = "tiktoken" if self.tiktoken else "numpy" if self.tokenizer.kind == "char" else "tokenizers"

    def __call__(self, text: str) -> np.ndarray:
        if self.tiktoken is not None:
            # Straight into a numpy buffer (no Python list of ints); '<|endoftext|>' in the text stays text.
            return self.tiktoken.encode_to_numpy(text, disallowed_special=()).astype(self.dtype)
        if self.hf is None:
            return self.tokenizer.encode_corpus(text, progress=False)  # char.py's vectorised lookup
        return np.array(self.hf.encode(text, add_special_tokens=False).ids, dtype=self.dtype)
