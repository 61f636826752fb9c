"""The token cache: a corpus encoded once, on every core, into a file that training memory-maps.

For a corpus and a tokenizer, three files in the cache folder, named after a hash of both (corpus.py's
`fingerprint` and the tokenizer.json text), so that an edited corpus or another tokenizer is never served stale:

    tokens-<key>.bin    the ids, one after another, raw uint16 (uint32 when the vocabulary passes 65,536)
    tokens-<key>.docs   several documents only: where each document ends, raw uint64 (its separator included)
    tokens-<key>.json   {"dtype", "num_tokens", "num_chars", "documents"}; written last, and only it makes the
                        other two trusted

How a corpus becomes ids, with memory bounded whatever its size:

    corpus.pieces()  ->  a pool of processes (FastEncoder each)  ->  ids appended to a temporary .bin, in order
    ~1M characters       at most 2 pieces per process in flight      + the separator after each document

Documents are separated by <|endoftext|> (bpe, bbpe: what GPT-2 trained with), or by a blank line ("\\n\\n") for
the char tokenizer, which has no special token. A text file is one document and gets no separator, so the ids are
exactly its own. When every piece is written, the .bin and .docs are renamed into place and the .json is written
atomically: a run killed at any moment leaves at most temporary files, which the next build deletes and redoes.
A .json that is unreadable or disagrees with its .bin is reported and the cache rebuilt.

Read next: prepare.py, which builds a cache ahead of a long or multi-GPU run.
"""
from __future__ import annotations

import collections
import contextlib
import json
import multiprocessing
import os
import sys
from pathlib import Path

import numpy as np

from atomic import atomic_file, atomic_write_bytes
from corpus import Corpus
from tokenizer import Tokenizer, TokenizerError
from tokenizer.base import smallest_id_dtype
from tokenizer.fast import FastEncoder

DOCUMENT_SEPARATOR_CHARS = "\n\n"  # between documents, for a tokenizer without <|endoftext|> (char)
POOL_FROM_BYTES = 4 << 20  # smaller corpora are encoded in this process: starting workers would cost more


class TokenCache:
    def __init__(self, corpus: Corpus, tokenizer: Tokenizer, folder: Path):
        self.corpus, self.tokenizer, self.folder = corpus, tokenizer, Path(folder)
        fingerprint = corpus.fingerprint()
        fingerprint.update(tokenizer.to_json().encode())
        self.key = fingerprint.hexdigest()[:16]
        self.ids_path = self.folder / f"tokens-{self.key}.bin"
        self.docs_path = self.folder / f"tokens-{self.key}.docs"
        self.meta_path = self.folder / f"tokens-{self.key}.json"

    def read_meta(self) -> dict | None:
        """The cache's metadata if the cache is complete and consistent; None if there is none (or it is corrupt:
        then say so, and the caller rebuilds it)."""
        if not self.meta_path.exists():
            return None
        try:
            meta = json.loads(self.meta_path.read_text(encoding="utf-8"))
            meta.setdefault("documents", 1)  # caches written before directories and JSONL existed
            problem = _inconsistency(meta, self.ids_path, self.docs_path)
        except (OSError, ValueError, AttributeError) as e:
            problem = f"unreadable: {e}"
        if problem is None:
            return meta
        print(f"warning: the token cache {self.meta_path} is corrupt ({problem}); rebuilding it", file=sys.stderr)
        return None

    def build(self, quiet: bool = False, workers: int | None = None) -> dict:
        """Encode the corpus into the cache (see the module docstring) and return its metadata."""
        corpus, tokenizer = self.corpus, self.tokenizer
        self.folder.mkdir(parents=True, exist_ok=True)
        _delete_orphans(self.folder, self.key)
        if workers is None:  # every core we may use; one for a small corpus, or char (numpy outruns the pipes)
            small = corpus.num_bytes < POOL_FROM_BYTES or tokenizer.kind == "char"
            workers = 1 if small else len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else \
                os.cpu_count() or 1
        encoder_json = tokenizer.to_json()
        separator = np.zeros(0, dtype=smallest_id_dtype(tokenizer.vocab_size))
        if corpus.multi_document:
            separator = self._separator()
        engine = FastEncoder(encoder_json).engine
        if not quiet:
            print(f"tokenizing {corpus.path} ({corpus.num_bytes / 1e6:,.1f} MB, {corpus.kind}) with the "
                  f"{tokenizer.kind} tokenizer, {engine} engine, {workers} process{'es' if workers > 1 else ''} ...")
        from tqdm import tqdm

        num_tokens = num_chars = documents = 0
        with contextlib.ExitStack() as files:  # each file renamed into place only if the whole encoding succeeds
            ids_file = files.enter_context(atomic_file(self.ids_path, defer_interrupts=False))  # atomic.py
            docs_file = files.enter_context(atomic_file(self.docs_path, defer_interrupts=False)) \
                if corpus.multi_document else None
            bar = files.enter_context(tqdm(total=corpus.num_bytes, unit="B", unit_scale=True, disable=quiet,
                                           file=sys.stdout, mininterval=0.5 if sys.stdout.isatty() else 30.0,
                                           desc="tokenizing"))
            pieces = corpus.pieces(tokenizer.boundary)
            for (ids, n_chars), ends_document in encode_in_order(pieces, encoder_json, workers):
                ids_file.write(ids.tobytes())
                num_tokens, num_chars = num_tokens + len(ids), num_chars + n_chars
                if ends_document:
                    documents += 1
                    if docs_file is not None:
                        ids_file.write(separator.tobytes())
                        num_tokens += len(separator)
                        docs_file.write(np.uint64(num_tokens).tobytes())
                bar.update(corpus.bytes_read - bar.n)  # a little ahead: the pieces in flight are read
        # Both files are fsynced and renamed into place before the metadata trusts them (a power cut, not only a kill).
        meta = {"dtype": np.dtype(smallest_id_dtype(tokenizer.vocab_size)).name, "num_tokens": num_tokens,
                "num_chars": num_chars, "documents": documents}
        atomic_write_bytes(self.meta_path, json.dumps(meta).encode())  # last: from now on the cache is trusted
        return meta

    def _separator(self) -> np.ndarray:
        tokenizer = self.tokenizer
        if tokenizer.eot_id is not None:
            return np.array([tokenizer.eot_id], dtype=smallest_id_dtype(tokenizer.vocab_size))
        try:
            return np.array(tokenizer.encode(DOCUMENT_SEPARATOR_CHARS), dtype=smallest_id_dtype(tokenizer.vocab_size))
        except TokenizerError:
            raise TokenizerError("a char tokenizer separates documents with a blank line, but this one has no '\\n'; "
                                 "train it on this corpus (--tokenizer=char)") from None


def _inconsistency(meta: dict, ids_path: Path, docs_path: Path) -> str | None:
    """What is wrong with a cache's metadata and files, or None."""
    if meta.get("dtype") not in ("uint16", "uint32"):
        return f"dtype {meta.get('dtype')!r}"
    for name in ("num_tokens", "num_chars", "documents"):
        if not isinstance(meta.get(name), int) or meta[name] < 0:
            return f"{name} {meta.get(name)!r}"
    expected = meta["num_tokens"] * np.dtype(meta["dtype"]).itemsize
    if not ids_path.exists() or ids_path.stat().st_size != expected:
        return f"{ids_path.name} is not {expected:,} bytes"
    if meta["documents"] > 1 and (not docs_path.exists() or docs_path.stat().st_size != 8 * meta["documents"]):
        return f"{docs_path.name} does not list {meta['documents']} documents"
    return None


def _delete_orphans(folder: Path, key: str):
    """Temporary files of builds of this cache that were killed (their process is gone)."""
    for tmp in folder.glob(f".tokens-{key}.*.tmp"):
        pid = int(tmp.name.split(".")[-2])
        try:
            os.kill(pid, 0)  # signal 0: only asks whether the process exists
        except ProcessLookupError:
            tmp.unlink(missing_ok=True)
        except PermissionError:
            pass  # someone else's live process


# ---------------------------------------------------------------------------------------------------------------------
# Encoding pieces on every core, in order


_worker_encoder = None


def _start_worker(encoder_json: str):
    global _worker_encoder
    _worker_encoder = FastEncoder(encoder_json)


def _encode_piece(text: str):
    """(ids, number of characters) of one piece, in a worker process."""
    return _worker_encoder(text), len(text)


def encode_in_order(pieces, encoder_json: str, workers: int):
    """((ids, chars), ends_document) for each (text, ends_document) of `pieces`, in order. With workers > 1,
    a pool encodes them while at most 2 per worker wait or run: memory stays bounded however long `pieces` is."""
    if workers <= 1:
        _start_worker(encoder_json)
        for text, ends in pieces:
            yield _encode_piece(text), ends
        return
    context = multiprocessing.get_context("fork" if os.name == "posix" else "spawn")
    with context.Pool(workers, initializer=_start_worker, initargs=(encoder_json,)) as pool:
        in_flight = collections.deque()  # (async result, ends_document), oldest first
        for text, ends in pieces:
            in_flight.append((pool.apply_async(_encode_piece, (text,)), ends))
            if len(in_flight) >= 2 * workers:
                result, ends_document = in_flight.popleft()
                yield result.get(), ends_document
        while in_flight:
            result, ends_document = in_flight.popleft()
            yield result.get(), ends_document
