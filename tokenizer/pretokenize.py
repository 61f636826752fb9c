"""Pre-tokenization: cutting text into words before BPE, and counting the words of a corpus for training.

BPE never merges across a word boundary, so the words decide what tokens can exist. Two pre-tokenizers:

- Metaspace (SentencePiece's convention, used by bpe.py): every space becomes '▁' and a word starts at each '▁'.
  Only spaces are word boundaries; tabs and newlines stay inside words. HF's pre_tokenizers/metaspace.rs:
  `replace(' ', "▁")`, then `split('▁', MergedWithNext)`; with prepend_scheme="never" nothing is prepended.
      >>> split_metaspace("Hello  world\\n")      # ['Hello', '▁', '▁world\\n']
- GPT-2's regex (used by bbpe.py): contractions, letters, numbers, other symbols, each with an optional leading
  space, then runs of whitespace. HF's pre_tokenizers/byte_level.rs, rule 3 in tokenizer/README.md.
      >>> split_gpt2("Hello  world's\\n")        # ['Hello', ' ', ' world', "'s", '\\n']

Training reads the corpus line by line (rule 1 in tokenizer/README.md: HF's `Tokenizer.train` splits files at '\\n', each line
keeping it), so the corpus's words are those of each line; `count_words_reference` does exactly that.
`count_words` gets the same counts faster: a pattern that behaves per line run over the whole text in one call
(no Python loop over 100k lines), with the corpus cut in halves counted on both cores. A test proves they agree.

Read next: bpe.py.
"""
from __future__ import annotations

import multiprocessing
import os
import re
from collections import Counter

import regex

# `regex`, not `re`: the stdlib disagrees with Rust's Unicode classes on thousands of code points (rule 2 in tokenizer/README.md).
GPT2_PATTERN = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")
# The same, when text is many lines: a whitespace run never crosses a '\n' and ends at one as if at the end of
# the text ([^\S\n] is "whitespace except newline"). Only the last two alternatives differ.
GPT2_LINEWISE = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+"""
                              r"""|[^\S\n]*\n|[^\S\n]+(?!\S)|[^\S\n]+""")
META = "▁"  # U+2581, SentencePiece's word-boundary marker
# Only literal characters here, so the faster stdlib `re` is exact.
METASPACE_PATTERN = re.compile(r"▁[^▁]*|[^▁]+")
METASPACE_LINEWISE = re.compile(r"▁[^▁\n]*\n?|[^▁\n]+\n?|\n")


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in for each byte (rule 4 in tokenizer/README.md): printable bytes stand for themselves, the other 68
    (controls, space, 0x7f-0xa0, 0xad) take U+0100, U+0101, ... in byte order. 32 (space) -> 'Ġ', 10 -> 'Ċ'."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    others = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(0x100 + i) for i, b in enumerate(others)}}


BYTE_TO_CHAR = bytes_to_unicode()
CHAR_TO_BYTE = {c: b for b, c in BYTE_TO_CHAR.items()}
_LATIN1_TO_STANDIN = str.maketrans({chr(b): c for b, c in BYTE_TO_CHAR.items()})


def to_byte_chars(piece: str) -> str:
    """UTF-8 bytes of `piece`, each shown as its stand-in: 'é ' -> 'Ã©Ġ' (bytes c3 a9 20)."""
    return piece.encode("utf-8", errors="surrogatepass").decode("latin-1").translate(_LATIN1_TO_STANDIN)


def split_gpt2(text: str) -> list[str]:
    return GPT2_PATTERN.findall(text)


def split_metaspace(text: str) -> list[str]:
    return METASPACE_PATTERN.findall(text.replace(" ", META))


def lines_of(text: str) -> list[str]:
    """Split at '\\n' only, each line keeping it (no universal newlines: '\\r' stays inside its line)."""
    lines = text.split("\n")
    return [line + "\n" for line in lines[:-1]] + ([lines[-1]] if lines[-1] else [])


def count_words_reference(text: str, kind: str) -> dict[str, int]:
    """The words of each line counted, in the alphabet of the model (byte stand-ins for bbpe). Slow, obvious."""
    split = split_gpt2 if kind == "bbpe" else split_metaspace
    counts = Counter()
    for line in lines_of(text):
        counts.update(split(line))
    return _in_model_alphabet(counts, kind)


def _count_chunk(args: tuple[str, str]) -> Counter:
    chunk, kind = args
    if kind == "bbpe":
        return Counter(GPT2_LINEWISE.findall(chunk))
    return Counter(METASPACE_LINEWISE.findall(chunk.replace(" ", META)))


def _in_model_alphabet(counts: Counter, kind: str) -> dict[str, int]:
    if kind != "bbpe":
        return dict(counts)
    out = Counter()
    for piece, count in counts.items():  # distinct pieces only: thousands, not millions
        out[to_byte_chars(piece)] += count
    return dict(out)


def count_words(text: str, kind: str, workers: int | None = None) -> dict[str, int]:
    """Same result as `count_words_reference`: the corpus is cut into halves at line ends, one per core."""
    workers = workers or min(2, os.cpu_count() or 1)
    if workers == 1 or len(text) < 1_000_000:   # small texts: starting a process costs more than it saves
        return _in_model_alphabet(_count_chunk((text, kind)), kind)
    cuts = [0]
    for i in range(1, workers):
        newline = text.find("\n", len(text) * i // workers)
        cuts.append(len(text) if newline < 0 else newline + 1)
    cuts.append(len(text))
    chunks = [(text[a:b], kind) for a, b in zip(cuts, cuts[1:]) if b > a]
    try:
        pool = multiprocessing.get_context("fork" if os.name == "posix" else "spawn").Pool(len(chunks) - 1)
    except OSError:                                        # no processes to be had: count here, one core
        return _in_model_alphabet(_count_chunk((text, kind)), kind)
    with pool:
        others = pool.map_async(_count_chunk, chunks[1:])  # the other processes count the other chunks...
        total = _count_chunk(chunks[0])                    # ...while this one counts the first
        for counter in others.get():
            total.update(counter)
    return _in_model_alphabet(total, kind)
