"""A corpus as a stream of documents: one text file, a directory of *.txt files, or a .jsonl file.

    corpus.txt        one document, the whole file (the built-in Shakespeare is one such file)
    corpus_dir/       every *.txt file under it, in sorted order of path, each file one document
    corpus.jsonl      one JSON object per line, the document being its "text" field (--text_field picks another)

Nothing here holds a whole corpus in memory. `pieces` reads the files in 256 kB blocks and hands out text of
about 256k characters at a time, each piece cut where the tokenizer's `boundary` matches: a place no pre-tokenized
word spans, so encoding the pieces one by one gives exactly the ids of encoding the whole document at once
(token_cache.py encodes them on every core). `documents` gives one whole document at a time, for the trainers. A corpus that can be read only once (a pipe, as in
`playground.py <(zcat corpus.txt.gz)`) is first copied to a temporary file as it is read, so every later reader
(the tokenizer trainer, the encoder) sees all of it.

    >>> corpus = open_corpus("corpus_dir")
    >>> corpus.kind, len(corpus.files), corpus.num_bytes     # ('directory', 38, 5012345)
    >>> next(corpus.pieces(boundary=None))                   # ('...the first 256k characters...', False)

Read next: data.py (the split and the batches), then token_cache.py (the encoding).
"""
from __future__ import annotations

import atexit
import codecs
import contextlib
import hashlib
import json
import os
import stat
import tempfile
from pathlib import Path

from tokenizer import TokenizerError

BLOCK_BYTES = 1 << 18  # what one read() takes from a file
PIECE_CHARS = 1 << 18  # about what one worker encodes at a time


class Corpus:
    """The files of a corpus and how to read documents out of them."""

    def __init__(self, path: str, kind: str, files: list[Path], text_field: str = "text"):
        self.path, self.kind, self.files, self.text_field = path, kind, files, text_field  # kind: text/directory/jsonl
        self.num_bytes = sum(f.stat().st_size for f in files)
        self.bytes_read = 0  # by the readers below, for a progress bar

    @property
    def multi_document(self) -> bool:
        """A directory or JSONL corpus: documents are separated, and validation holds out whole documents."""
        return self.kind != "text"

    def __repr__(self):
        return f"Corpus({self.path!r}, {self.kind}, {len(self.files)} files, {self.num_bytes:,} bytes)"

    def fingerprint(self):
        """A sha256 object naming the corpus's content, for the cache keys. A text file: a hash of its bytes (an
        edited file is never served stale). A directory or JSONL corpus, which may be many gigabytes read on every
        start: a hash of each file's name, size and modification time, as `make` would judge it."""
        digest = hashlib.sha256()
        if self.kind == "text":
            with open(self.files[0], "rb") as f:
                while block := f.read(BLOCK_BYTES):
                    digest.update(block)
            return digest
        digest.update(f"{self.kind}:{self.text_field}\n".encode())
        for file in self.files:
            info = file.stat()
            digest.update(f"{file.relative_to(self.path) if self.kind == 'directory' else file.name}:"
                          f"{info.st_size}:{info.st_mtime_ns}\n".encode())
        return digest

    # --- reading ----------------------------------------------------------------------------------------------
    def documents(self):
        """Each document as a whole string (what the tokenizer trainers read)."""
        for blocks in self._documents_as_blocks():
            yield "".join(blocks)

    def pieces(self, boundary, size: int | None = None):
        """(text, ends_document) pairs of about `size` characters; a piece ends where `boundary` (a compiled pattern,
        or None for anywhere) matches at or after `size` characters, so no pre-tokenized word is cut in two."""
        size = size or PIECE_CHARS
        for blocks in self._documents_as_blocks():
            buffer = ""
            for block in blocks:
                buffer += block
                while len(buffer) >= 2 * size:
                    match = boundary.search(buffer, size) if boundary is not None else None
                    cut = size if boundary is None else match.start() if match else None
                    if cut is None:
                        break  # no safe place yet: read on (text without a newline or a space before a word)
                    yield buffer[:cut], False
                    buffer = buffer[cut:]
            yield buffer, True

    def _documents_as_blocks(self):
        self.bytes_read = 0
        if self.kind == "jsonl":
            for text in self._jsonl_texts():
                yield iter((text,))
        else:
            for file in self.files:
                yield self._text_blocks(file)

    def _jsonl_texts(self):
        field = self.text_field
        with _reading(self.files[0]), open(self.files[0], "rb") as f:
            for number, line in enumerate(f, 1):
                self.bytes_read += len(line)
                if not line.strip():
                    continue  # blank lines (a trailing newline) are not documents
                where = f"corpus {self.path} line {number}"
                try:
                    record = json.loads(line)
                except UnicodeDecodeError:
                    raise TokenizerError(f"{where} is not UTF-8; convert the file first (e.g. iconv -t UTF-8)")\
                        from None
                except ValueError as e:
                    raise TokenizerError(f"{where} is not JSON ({e.msg}); a .jsonl corpus has one JSON object "
                                         f"per line") from None
                if not isinstance(record, dict) or field not in record:
                    keys = ", ".join(map(repr, list(record)[:5])) if isinstance(record, dict) else "none"
                    raise TokenizerError(f"{where} has no {field!r} field (its keys: {keys}); pick the field "
                                         f"holding the text with --text_field")
                if not isinstance(record[field], str):
                    raise TokenizerError(f"{where}: {field!r} is not a string (it is {type(record[field]).__name__})")
                yield record[field]

    def _text_blocks(self, path: Path):
        """A UTF-8 file's text in blocks, exactly as stored (no newline translation: '\\r' is kept)."""
        decoder = codecs.getincrementaldecoder("utf-8")()
        offset = 0
        with _reading(path), open(path, "rb") as f:
            while True:
                block = f.read(BLOCK_BYTES)
                pending = decoder.getstate()[0]  # the start of a character cut by the previous block
                try:
                    text = decoder.decode(block, final=not block)
                except UnicodeDecodeError as e:
                    at = offset - len(pending) + e.start
                    raise TokenizerError(f"corpus {path} is not UTF-8: invalid byte "
                                         f"0x{(pending + block)[e.start]:02x} at byte offset {at}; convert it first "
                                         f"(e.g. iconv -t UTF-8)") from None
                self.bytes_read += len(block)
                if text:
                    yield text
                if not block:
                    return
                offset += len(block)


@contextlib.contextmanager
def _reading(path):
    """A read that fails (the file moved away, a disk error) as one line that names the corpus; without it the
    OSError would reach the token cache's atomic write and be reported as a failure to write the cache."""
    try:
        yield
    except OSError as e:
        raise TokenizerError(f"cannot read corpus {path}: {e.strerror or e}") from None


def open_corpus(path: str, text_field: str = "text", spool_dir: str | None = None) -> Corpus:
    """The corpus at `path`, checked: it exists, is not empty, and a directory holds *.txt files. A pipe is copied
    to a temporary file in `spool_dir` first, and read from there (deleted when the program ends)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise TokenizerError(f"corpus file not found: {path}") from None
    except OSError as e:
        raise TokenizerError(f"cannot read corpus {path}: {e.strerror}") from None
    if stat.S_ISDIR(mode):
        files = sorted((p for p in Path(path).rglob("*.txt") if p.is_file()), key=lambda p: p.as_posix())
        if not files:
            raise TokenizerError(f"corpus directory {path} holds no *.txt files")
        corpus = Corpus(path, "directory", files, text_field)
    else:
        if not stat.S_ISREG(mode):
            path = _spool(path, spool_dir)
        kind = "jsonl" if path.endswith(".jsonl") else "text"
        corpus = Corpus(path, kind, [Path(path)], text_field)
    if corpus.num_bytes == 0:
        raise TokenizerError(f"corpus file is empty: {path}; give a text file with some content")
    return corpus


def _spool(path: str, spool_dir: str | None) -> str:
    """Copy a pipe's content into a temporary file (block by block: bounded memory) and return that file's path."""
    if spool_dir:
        os.makedirs(spool_dir, exist_ok=True)
    suffix = ".jsonl" if path.endswith(".jsonl") else ".txt"
    fd, copy = tempfile.mkstemp(prefix="piped-corpus-", suffix=suffix, dir=spool_dir)
    atexit.register(lambda: os.path.exists(copy) and os.unlink(copy))
    try:
        with open(path, "rb") as source, os.fdopen(fd, "wb") as target:
            while block := source.read(BLOCK_BYTES):
                target.write(block)
    except OSError as e:
        raise TokenizerError(f"cannot read corpus {path}: {e.strerror}") from None
    return copy
