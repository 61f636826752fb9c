"""Vanilla BPE over characters (Sennrich et al. 2016), with SentencePiece's '▁' marking where spaces were.

Words are cut before each space and the space becomes '▁' (pretokenize.py, HF's pre_tokenizers/metaspace.rs), so
tokens carry their leading space and decoding just turns '▁' back into ' ':

    >>> tok = train_tokenizer("bpe", "input.txt", vocab_size=300)
    >>> [tok.token_str(i) for i in tok.encode("the theme")]     # e.g. ['the', ' the', 'me']
    >>> tok.decode(tok.encode("the theme"))                      # 'the theme'

The alphabet is the corpus's characters: a character never seen in training encodes as the unknown token
`[UNK]` (one per character, HF's fuse_unk=False), and decodes as '[UNK]'. A literal '▁' in the text decodes as a
space (as in HF's Metaspace decoder). The special tokens are `<|endoftext|>` (id 0) and `[UNK]` (id 1) when trained
here; code finds them by name, never by id. The text "<|endoftext|>" in plain text is encoded as ordinary characters
unless `allowed_special=True`.

Read next: bbpe.py, which removes the unknown token by working on bytes.
"""
from __future__ import annotations

import re

import numpy as np

from .base import Tokenizer
from .hf_reference import UNK
from .pretokenize import META, split_metaspace


class BPETokenizer(Tokenizer):
    kind = "bpe"

    def __init__(self, vocab, merges=(), special_tokens=()):
        super().__init__(vocab, merges, special_tokens)
        self.unk_id = self.vocab.get(UNK)

    def _char_ids(self, word: str) -> list[int]:
        vocab, unk = self.vocab, self.unk_id
        return [vocab.get(c, unk) for c in word]

    def encode(self, text: str, allowed_special: bool = False) -> list[int]:
        ids = []
        for segment, special in self._split_special(text, allowed_special):
            ids.extend([self.vocab[segment]] if special else
                       self._encode_words(split_metaspace(segment), self._char_ids))
        return ids

    boundary = re.compile("[ ▁]")  # Metaspace words start at each space (or literal '▁'): cut just before one

    def encode_corpus(self, text: str, progress: bool = True) -> np.ndarray:
        return self._encode_corpus_with_hf(text, self.boundary, progress)

    def decode(self, ids) -> str:
        self._check_ids(ids)
        return "".join(self.id_to_token[int(i)] for i in ids).replace(META, " ")

    def token_str(self, token_id: int) -> str:
        return self.id_to_token[int(token_id)].replace(META, " ")

    def _hf_parts(self) -> dict:
        metaspace = {"type": "Metaspace", "replacement": META, "prepend_scheme": "never", "split": True}
        return {"unk_token": UNK, "pre_tokenizer": metaspace, "decoder": dict(metaspace)}
