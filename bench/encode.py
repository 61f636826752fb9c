"""Benchmark (not a test): encoding a corpus with byte-level BPE, our pipeline against `tokenizers`' encode_batch.

    python bench/encode.py [CORPUS] [--vocab-size 4096] [--repeats 3]

Without CORPUS it uses the built-in Shakespeare corpus (data.builtin_corpus_path(), ~5 MB). Both run on the same
text, alternately, `repeats` times, and the best time of each is kept (the machine may be shared):

- ours: token_cache.TokenCache.build, as playground.py and prepare.py run it: the corpus read in pieces, tiktoken's
  engine built from our merges in one process per core, ids written to a fresh cache (reading, hashing and writing
  included);
- tokenizers: the same tokenizer.json in Hugging Face's Rust engine, `encode_batch` over ~8k-character chunks cut
  where no word spans (its own thread pool over every core; the text already in memory).

It prints MB/s for both, their ratio, and whether the ids are identical.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root
import numpy as np  # noqa: E402

import data  # noqa: E402
import token_cache  # noqa: E402
from config import UserError  # noqa: E402
from tokenizer import TokenizerError  # noqa: E402


def hf_chunks(text: str, boundary, size: int = 8192) -> list[str]:
    chunks, start = [], 0
    while start < len(text):
        match = boundary.search(text, start + size)
        end = len(text) if match is None else match.start()
        chunks.append(text[start:end])
        start = end
    return chunks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus", nargs="?", help="text file (default: the built-in Shakespeare corpus)")
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    try:
        corpus = data.open_corpus(args.corpus)
        if corpus.kind != "text":
            raise UserError("give one text file: the tokenizers side encodes it from memory")
        tokenizer = data.resolve_tokenizer(f"bbpe:{args.vocab_size}", corpus)
    except (UserError, TokenizerError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    text = open(corpus.path, encoding="utf-8", newline="").read()
    megabytes = len(text.encode("utf-8")) / 1e6
    hf, chunks = tokenizer.to_hf(), hf_chunks(text, tokenizer.boundary)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"corpus {corpus.path} ({megabytes:.1f} MB), bbpe vocabulary {tokenizer.vocab_size}, best of "
          f"{args.repeats}, {cores} cores")
    ours_time = hf_time = float("inf")
    with tempfile.TemporaryDirectory() as folder:
        for repeat in range(args.repeats):  # alternate, so both see the same machine load
            cache = token_cache.TokenCache(corpus, tokenizer, os.path.join(folder, str(repeat)))
            start = time.perf_counter()
            meta = cache.build(quiet=True, workers=cores)
            ours_time = min(ours_time, time.perf_counter() - start)
            start = time.perf_counter()
            encodings = hf.encode_batch(chunks, add_special_tokens=False)
            hf_time = min(hf_time, time.perf_counter() - start)
        ours_ids = np.fromfile(cache.ids_path, dtype=meta["dtype"])
    hf_ids = np.concatenate([np.array(e.ids, dtype=ours_ids.dtype) for e in encodings])
    print(f"ours (tiktoken engine, {cores} processes): {megabytes / ours_time:6.1f} MB/s  ({ours_time:.2f} s)")
    print(f"tokenizers encode_batch ({cores} threads): {megabytes / hf_time:6.1f} MB/s  ({hf_time:.2f} s)")
    print(f"ratio {hf_time / ours_time:.1f}x; ids identical: {'yes' if np.array_equal(ours_ids, hf_ids) else 'NO'} "
          f"({len(ours_ids):,} tokens)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
