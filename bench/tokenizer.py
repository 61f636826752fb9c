"""Benchmark (not a test): our BPE training time against Hugging Face `tokenizers`, in the same run.

    python bench/tokenizer.py [CORPUS] [--vocab-size 4096] [--repeats 3] [--kinds bpe bbpe]

Without CORPUS it uses the built-in Shakespeare corpus (data.builtin_corpus_path(), ~5 MB). Both trainers run
alternately `repeats` times and the best time of each is kept (the machine may be shared). For each kind it
prints both times, their ratio (ours / HF) and whether the vocabulary and merge list are identical.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root
from tokenizer import TokenizerError, train_tokenizer  # noqa: E402
from tokenizer.hf_reference import train_with_hf, vocab_and_merges  # noqa: E402


def default_corpus() -> str | None:
    try:
        import data
    except ImportError:
        return None
    return data.builtin_corpus_path()


def best_time(fn, repeats: int):
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus", nargs="?", help="text file (default: the built-in Shakespeare corpus)")
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--kinds", nargs="+", default=["bpe", "bbpe"], choices=["bpe", "bbpe"])
    args = parser.parse_args()
    corpus = args.corpus or default_corpus()
    if corpus is None:
        print("error: data.py is not importable here; give a corpus file: python bench/tokenizer.py CORPUS",
              file=sys.stderr)
        return 1
    print(f"corpus {corpus} ({os.path.getsize(corpus) / 1e6:.1f} MB), vocab size {args.vocab_size}, "
          f"best of {args.repeats}, {os.cpu_count()} cores")
    print(f"{'kind':<6}{'ours (s)':>10}{'HF (s)':>10}{'ratio':>8}  identical vocab and merges")
    try:
        for kind in args.kinds:
            ours_time = hf_time = float("inf")
            for _ in range(args.repeats):  # alternate, so both see the same machine load
                t, ours = best_time(lambda: train_tokenizer(kind, corpus, args.vocab_size, progress=False), 1)
                ours_time = min(ours_time, t)
                t, hf = best_time(lambda: train_with_hf(kind, corpus, args.vocab_size), 1)
                hf_time = min(hf_time, t)
            vocab, merges = vocab_and_merges(hf)
            same = vocab == ours.vocab and merges == ours.merges
            print(f"{kind:<6}{ours_time:>10.3f}{hf_time:>10.3f}{ours_time / hf_time:>8.2f}  "
                  f"{'yes' if same else 'NO'} ({len(merges)} merges)")
    except TokenizerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
