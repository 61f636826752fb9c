"""The shared core of every tokenizer: errors, reading a corpus, the `Tokenizer` base class, tokenizer.json.

A tokenizer turns text into a list of integer ids and back. Every kind in this package (char.py, bpe.py,
bbpe.py) is saved in Hugging Face's `tokenizer.json` format, so that `tokenizers.Tokenizer.from_file` can load
what we wrote and encode a multi-megabyte corpus at Rust speed, while our own hand-written `encode` stays the
readable reference (a test proves the two agree).

    >>> tok = train_tokenizer("char", "input.txt")      # see __init__.py
    >>> tok.encode("hi")                                 # e.g. [20, 21]
    >>> tok.decode([20, 21])                             # 'hi'
    >>> Tokenizer.from_json(tok.to_json()).encode("hi")  # [20, 21] again: to_json() is what a checkpoint stores

Read next: char.py (the simplest kind), then train.py (how BPE learns its merges).
"""
from __future__ import annotations

import itertools
import json
import re

import numpy as np
from tqdm import tqdm

from atomic import atomic_write  # the project's one atomic write (no torch in it)

_NEVER = float("inf")
EOT = "<|endoftext|>"  # the end-of-text token placed between documents (GPT-2's name for it)


class TokenizerError(Exception):
    """A problem the user can fix (bad corpus, bad vocab size, unknown characters...). One line, says what to do."""


def read_corpus(path: str) -> str:
    """Read a whole corpus file as UTF-8 text, exactly as stored: no newline translation ('\\r' is kept)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise TokenizerError(f"corpus file not found: {path}") from None
    except IsADirectoryError:
        raise TokenizerError(f"corpus path is a directory, not a text file: {path}") from None
    except OSError as e:
        raise TokenizerError(f"cannot read corpus {path}: {e.strerror}") from None
    if not data:
        raise TokenizerError(f"corpus file is empty: {path}; give a text file with some content")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise TokenizerError(f"corpus {path} is not UTF-8: invalid byte 0x{data[e.start]:02x} at byte offset "
                             f"{e.start}; convert it first (e.g. iconv -t UTF-8)") from None


def smallest_id_dtype(vocab_size: int):
    """uint16 halves the memory of a token array when every id fits (GPT-2's 50257 does); else uint32."""
    return np.uint16 if vocab_size <= 2**16 else np.uint32


def count_pairs(words: list[list[int]], counts: list[int]) -> dict[tuple[int, int], int]:
    """Rule 8 (tokenizer/README.md): how often each adjacent pair occurs, each word weighted by its count.
    [[1, 2, 3, 1, 2]], [1] -> {(1, 2): 2, (2, 3): 1, (3, 1): 1}; overlaps count: [[7, 7, 7]], [1] -> {(7, 7): 2}."""
    pairs = {}
    for word, count in zip(words, counts):
        for pair in zip(word, word[1:]):
            pairs[pair] = pairs.get(pair, 0) + count
    return pairs


def merge_word(word: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Rule 12 (tokenizer/README.md): replace each occurrence of `pair` by `new_id`, scanning left to right, without overlap.
    [1, 2, 3, 1, 2], (1, 2), 4 -> [4, 3, 4];  [7, 7, 7], (7, 7), 8 -> [8, 7]."""
    out, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and word[i] == pair[0] and word[i + 1] == pair[1]:
            out.append(new_id)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return out


class Tokenizer:
    """Base class: a vocabulary {token string: id}, an ordered merge list and the special tokens.

    Subclasses set `kind`, implement `encode`, `decode` and `token_str`, and describe their pre-tokenizer and
    decoder for tokenizer.json in `_hf_parts`. Each subclass registers itself under its `kind`, which is how
    `from_json` finds the class that reads a file.
    """

    kind = "base"
    # Where a long text may be cut into pieces encoded separately with the same ids: a place no pre-tokenized word
    # spans (corpus.py, data.py). None: anywhere (the char tokenizer has no words).
    boundary = None
    _kinds: dict[str, type[Tokenizer]] = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        Tokenizer._kinds[cls.kind] = cls

    def __init__(self, vocab: dict[str, int], merges: list[tuple[str, str]] = (), special_tokens: list[str] = ()):
        self.vocab = dict(vocab)                     # token string -> id
        self.merges = [tuple(m) for m in merges]     # (left, right) in the order learned: index = rank
        self.special_tokens = list(special_tokens)   # their ids are in vocab too
        self.id_to_token = {i: t for t, i in self.vocab.items()}
        if sorted(self.id_to_token) != list(range(len(self.vocab))):
            raise TokenizerError("its vocabulary ids are not 0..N-1 without gaps")
        missing = [t for t in self.special_tokens if t not in self.vocab]
        missing += [f"{a} + {b}" for a, b in self.merges if not {a, b, a + b} <= self.vocab.keys()]
        if missing:
            raise TokenizerError(f"special tokens or merges use tokens missing from the vocabulary: {missing[:3]}")
        self.eot_id = self.vocab.get(EOT) if EOT in self.special_tokens else None

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def __repr__(self):
        return f"{type(self).__name__}(vocab_size={self.vocab_size}, merges={len(self.merges)})"

    # --- to be provided by each kind -------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids: list[int]) -> str:
        raise NotImplementedError

    def token_str(self, token_id: int) -> str:
        """One token shown readably, e.g. for a table of next-token probabilities."""
        raise NotImplementedError

    def _hf_parts(self) -> dict:
        """The tokenizer.json fields that differ between kinds: model.unk_token, pre_tokenizer, decoder."""
        raise NotImplementedError

    # --- shared -----------------------------------------------------------------------------------------------
    def _check_ids(self, ids) -> None:
        bad = [i for i in ids if not 0 <= int(i) < self.vocab_size]
        if bad:
            raise TokenizerError(f"token ids out of range 0..{self.vocab_size - 1}: {bad[:5]}; was this text "
                                 f"encoded with another tokenizer?")

    def encode_corpus(self, text: str, progress: bool = True) -> np.ndarray:
        """Encode a whole corpus into a compact numpy array, with the same ids as `encode` (kinds make it fast)."""
        return np.array(self.encode(text), dtype=smallest_id_dtype(self.vocab_size))

    # --- applying merges to a word: the encoder shared by bpe and bbpe ---------------------------------------
    def _apply_merges(self, ids: list[int]) -> list[int]:
        """Encode one word, given as its characters' ids: merge the pair of lowest rank (learned earliest), all
        its occurrences left to right, until no adjacent pair has a merge. Same result as HF's word.rs merge_all,
        which pops (rank, position) from a heap. With merges [(a, b), (ab, c)]: a b c a b -> ab c ab -> abc ab."""
        ranks = self._ranks
        while len(ids) > 1:
            best = min(zip(ids, ids[1:]), key=lambda pair: ranks.get(pair, (_NEVER,))[0])
            if best not in ranks:
                break
            ids = merge_word(ids, best, ranks[best][1])
        return ids

    @property
    def _ranks(self) -> dict[tuple[int, int], tuple[int, int]]:
        """(left id, right id) -> (rank, id of the merged token), built on first use."""
        if "_rank_table" not in self.__dict__:
            self._rank_table = {}
            for rank, (left, right) in enumerate(self.merges):
                pair = (self.vocab[left], self.vocab[right])
                self._rank_table[pair] = (rank, self.vocab[left + right])  # a repeated pair keeps the later rank
        return self._rank_table

    def _encode_words(self, words, to_ids) -> list[int]:
        """Encode pre-tokenized words, remembering each distinct word's ids (words repeat a lot in real text)."""
        cache = self.__dict__.setdefault("_word_cache", {})
        if len(cache) > 200_000:
            cache.clear()
        out = []
        for word in words:
            ids = cache.get(word)
            if ids is None:
                ids = cache[word] = self._apply_merges(to_ids(word))
            out.extend(ids)
        return out

    def _split_special(self, text: str, allowed_special: bool) -> list[tuple[str, bool]]:
        """[(segment, is_special)]: special tokens cut out of the text only if allowed (HF always cuts them)."""
        if not allowed_special or not self.special_tokens:
            return [(text, False)]
        pattern = "(" + "|".join(re.escape(t) for t in sorted(self.special_tokens, key=len, reverse=True)) + ")"
        return [(part, i % 2 == 1) for i, part in enumerate(re.split(pattern, text)) if part]

    def _encode_corpus_with_hf(self, text: str, boundary: re.Pattern, progress: bool) -> np.ndarray:
        """The fast path: Hugging Face's Rust encoder, on chunks of ~8k characters encoded in parallel. A chunk ends
        only where `boundary` matches, a place no pre-tokenized word spans, so the ids equal those of `encode`."""
        chunks, start = [], 0
        while start < len(text):
            match = boundary.search(text, start + 8192)
            end = len(text) if match is None else match.start()
            chunks.append(text[start:end])
            start = end
        hf, ids = self.to_hf(), []
        with tqdm(total=len(text), unit="char", unit_scale=True, desc=f"encoding with {self.kind}",
                  disable=not progress or len(text) < 2_000_000) as bar:
            for i in range(0, len(chunks), 64):  # batches, so that the bar moves
                batch = chunks[i:i + 64]
                ids.extend(encoding.ids for encoding in hf.encode_batch(batch, add_special_tokens=False))
                bar.update(sum(map(len, batch)))
        total = sum(len(chunk_ids) for chunk_ids in ids)
        return np.fromiter(itertools.chain.from_iterable(ids), dtype=smallest_id_dtype(self.vocab_size), count=total)

    def to_dict(self) -> dict:
        """The tokenizer.json content, laid out field for field like Hugging Face's own files (rules 14-15 in tokenizer/README.md)."""
        parts = self._hf_parts()
        added = [{"id": self.vocab[t], "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                  "normalized": False, "special": True} for t in self.special_tokens]
        model = {"type": "BPE", "dropout": None, "unk_token": parts["unk_token"], "continuing_subword_prefix": None,
                 "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                 "vocab": dict(sorted(self.vocab.items(), key=lambda kv: kv[1])),
                 "merges": [list(m) for m in self.merges]}
        return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
                "pre_tokenizer": parts["pre_tokenizer"], "post_processor": None, "decoder": parts["decoder"],
                "model": model}

    def to_json(self) -> str:
        """The complete tokenizer.json text (what a model checkpoint stores as a plain string)."""
        return json.dumps(self.to_dict(), ensure_ascii=False, indent=2)

    def save(self, path: str) -> None:
        """Write tokenizer.json whole or not at all (atomic.py); the folder must exist."""
        text = self.to_json() + "\n"
        atomic_write(path, lambda f: f.write(text.encode("utf-8")), error=TokenizerError, create_folder=False)

    def to_hf(self):
        """This tokenizer as a Hugging Face `tokenizers.Tokenizer` (the Rust fast path)."""
        from tokenizers import Tokenizer as HFTokenizer
        hf = HFTokenizer.from_str(self.to_json())
        hf.encode_special_tokens = True  # like our encode: '<|endoftext|>' in plain text is just text
        return hf

    @classmethod
    def from_json(cls, text: str, source: str = "tokenizer JSON") -> Tokenizer:
        """Rebuild a tokenizer from tokenizer.json text; the kind is recognised from the file's structure."""
        try:
            d = json.loads(text)
            model, pre = d["model"], d["pre_tokenizer"]
            kind = _recognise_kind(d)
            vocab, merges = model["vocab"], [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m)
                                             for m in model["merges"]]
            specials = [t["content"] for t in sorted(d["added_tokens"], key=lambda t: t["id"])]
        except (ValueError, KeyError, TypeError, AttributeError):
            raise TokenizerError(f"{source} is not a tokenizer.json written by scratchgpt (corrupt or foreign "
                                 f"format); retrain it with tokenizer/train_tokenizer.py") from None
        if kind is None:
            raise TokenizerError(f"{source} is a tokenizer.json of a kind scratchgpt does not know (pre_tokenizer "
                                 f"{(pre or {}).get('type')}); retrain it with tokenizer/train_tokenizer.py")
        try:
            return Tokenizer._kinds[kind](vocab, merges, specials)
        except TokenizerError as e:
            raise TokenizerError(f"{source} is corrupt: {e}; retrain it with tokenizer/train_tokenizer.py") from None


def _recognise_kind(d: dict) -> str | None:
    """char: BPE without merges nor pre-tokenizer, Fuse decoder. bpe: Metaspace. bbpe: ByteLevel."""
    if d["model"]["type"] != "BPE" or d["normalizer"] is not None:
        return None
    pre = (d["pre_tokenizer"] or {}).get("type")
    decoder = (d["decoder"] or {}).get("type")
    if pre is None and decoder == "Fuse" and not d["model"]["merges"]:
        return "char"
    return {("Metaspace", "Metaspace"): "bpe", ("ByteLevel", "ByteLevel"): "bbpe"}.get((pre, decoder))


def load_tokenizer(path: str) -> Tokenizer:
    """Load a tokenizer.json written by `Tokenizer.save` (or by train_tokenizer.py)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise TokenizerError(f"tokenizer file not found: {path}; train one with tokenizer/train_tokenizer.py")\
            from None
    except (OSError, UnicodeDecodeError) as e:
        raise TokenizerError(f"cannot read tokenizer file {path}: {getattr(e, 'strerror', None) or e}") from None
    return Tokenizer.from_json(text, source=path)
