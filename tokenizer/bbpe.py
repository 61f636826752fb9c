"""Byte-level BPE, as in GPT-2 (Radford et al. 2019, §2.2): BPE over the UTF-8 bytes of the text.

Its 256 base tokens are the 256 byte values, so every string is encodable and there is no unknown token. Bytes
are shown as printable stand-in characters (pretokenize.py's `bytes_to_unicode`: space -> 'Ġ', newline -> 'Ċ')
so tokenizer.json stays readable, and text is first cut with GPT-2's regex so merges never cross a word, a
number or a punctuation run:

    >>> tok = train_tokenizer("bbpe", "input.txt", vocab_size=300)
    >>> [tok.id_to_token[i] for i in tok.encode("Hello world")]   # e.g. ['H', 'ello', 'Ġworld']
    >>> tok.decode(tok.encode("naïve 😀")) == "naïve 😀"            # always True

A token can hold part of a character (an emoji is 4 bytes), so `decode` joins all bytes before decoding UTF-8,
and `token_str` shows an incomplete character as '�'. The one special token is `<|endoftext|>`: id 0 in the
vocabularies we train (specials first, as HF's trainer does), 50256 in GPT-2's own files (the last id; gpt2.py loads
them). Nothing depends on where it sits: code asks for `eot_id`. `encode` never produces it from plain text unless
`allowed_special=True`.

Read next: hf_reference.py, the Hugging Face configurations these reproduce, then train_tokenizer.py.
"""
from __future__ import annotations

from functools import cached_property

import numpy as np
import regex

from .base import Tokenizer
from .pretokenize import BYTE_TO_CHAR, CHAR_TO_BYTE, split_gpt2, to_byte_chars

ALPHABET = list(BYTE_TO_CHAR.values())  # HF's ByteLevel.alphabet(): the 256 stand-ins, all in the vocabulary


class ByteLevelBPETokenizer(Tokenizer):
    kind = "bbpe"

    def _char_ids(self, word: str) -> list[int]:
        vocab = self.vocab
        return [vocab[c] for c in word]

    def encode(self, text: str, allowed_special: bool = False) -> list[int]:
        ids = []
        for segment, special in self._split_special(text, allowed_special):
            if special:
                ids.append(self.vocab[segment])
            else:
                ids.extend(self._encode_words(map(to_byte_chars, split_gpt2(segment)), self._char_ids))
        return ids

    # Cut just before a newline, or a space starting a word, that follows a non-space: no GPT-2 word spans that cut
    # (a word holds a space only at its start, or in a run of whitespace), and no lookahead of GPT-2's pattern can
    # see across it (cutting after the newline would let "  \n" at a chunk's end become one word). `regex`, not
    # `re`, so that \S and \p{L} mean what they mean in GPT-2's pattern.
    boundary = regex.compile(r"(?<=\S)\n|(?<=\S) (?=\p{L})")

    def encode_corpus(self, text: str, progress: bool = True) -> np.ndarray:
        return self._encode_corpus_with_hf(text, self.boundary, progress)

    @cached_property
    def _bytes(self) -> list[bytes]:
        """Each token's bytes, by id: 'Ġthe' -> b' the'. A special token stands for its own text."""
        return [token.encode("utf-8") if token in self.special_tokens else bytes(CHAR_TO_BYTE[c] for c in token)
                for token in (self.id_to_token[i] for i in range(self.vocab_size))]

    def decode(self, ids) -> str:
        self._check_ids(ids)
        return b"".join(self._bytes[int(i)] for i in ids).decode("utf-8", errors="replace")

    def token_str(self, token_id: int) -> str:
        return self._bytes[int(token_id)].decode("utf-8", errors="replace")

    def _hf_parts(self) -> dict:
        return {"unk_token": None,
                "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                                  "use_regex": True},
                "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}}
