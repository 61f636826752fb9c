"""How BPE learns its merges (Sennrich et al. 2016, §3.1), exactly as Hugging Face `tokenizers` does it.

Input: the corpus already cut into words and counted (pretokenize.py), e.g. {"hug": 10, "pug": 5, "hugs": 5}.
Output: the vocabulary {token: id} and the merge list [(left, right), ...] whose order is the merge rank.

BPE starts from single characters and repeatedly glues together the most frequent adjacent pair:

    >>> count_pairs([[1, 2, 3, 1, 2]], [1])     # one word, seen once
    {(1, 2): 2, (2, 3): 1, (3, 1): 1}
    >>> merge_word([1, 2, 3, 1, 2], (1, 2), 4)   # every (1, 2), left to right, becomes the new token 4
    [4, 3, 4]

Two trainers, which must give the same merges (tests/test_tokenizer_bpe.py checks it):
- `train_reference` is the obvious loop: recount every pair in every word, pick the best, merge it everywhere.
  Easy to check against the rules, far too slow for a real corpus (each merge rereads everything).
- `train_fast` counts pairs once, then after each merge updates only the counts the merge changed, using an
  index pair -> positions where it occurs and a max-heap of counts checked lazily, as HF's trainer.rs does.
  Merges with many occurrences run vectorized with numpy (train_numpy.py), the rest in a Python loop.

The rules (numbered as in tokenizer/README.md, which reads them from HF's models/bpe/trainer.rs and word.rs):
  5-6  specials first, then the alphabet in code-point order                   -> initial_vocab
  8    pair count = word count x occurrences (overlaps count: "aaa" has 2)     -> count_pairs
  9    highest count first; ties go to the smallest (left id, right id)         -> best_pair / heap order
  10   stop below a count of 1, when no pair is left, or at vocab_size          -> both loops
  11   the new token's string is left + right; an existing string keeps its id  -> add_merge
  12   merge left to right without overlap ("a a a" -> "aa a")                  -> merge_word / _merge_at
  13   update counts: -(prev, left) -(right, next) +(prev, new) +(new, next)    -> _merge_at / merge_vectorized
One HF quirk is kept: a merge whose string is already a token reuses that token's id (add_merge), so there can be
more merges than new tokens. It happens when the corpus spells out a special token, such as '[UNK]'.

Read next: train_numpy.py (the vectorized merges), then pretokenize.py (how text becomes counted words).
"""
from __future__ import annotations

import heapq
from array import array
from collections import defaultdict

import numpy as np
from tqdm import tqdm

from .base import TokenizerError, count_pairs, merge_word  # rules 8 and 12 live in base.py
from .train_numpy import ID_BITS, initial_state, merge_vectorized

ID_MASK = (1 << ID_BITS) - 1
KEY_BITS = 2 * ID_BITS            # a heap item packs (-count, key) in one int: -count << 40 | key


def initial_vocab(words: list[str], special_tokens: list[str], initial_alphabet=()) -> dict[str, int]:
    """Rules 5-6: special tokens get ids 0, 1, ...; then every character, sorted by code point."""
    vocab = {}
    for token in special_tokens:
        vocab.setdefault(token, len(vocab))
    for char in sorted(set("".join(words)) | set(initial_alphabet)):
        vocab.setdefault(char, len(vocab))
    if len(vocab) > ID_MASK:
        raise TokenizerError(f"the corpus has {len(vocab):,} distinct characters, more than this trainer's limit")
    return vocab


def check_vocab_size(vocab_size: int, vocab: dict[str, int], num_specials: int) -> None:
    if vocab_size < len(vocab):
        raise TokenizerError(f"vocab_size {vocab_size} is below the minimum {len(vocab)} for this corpus "
                             f"({num_specials} special tokens + {len(vocab) - num_specials} distinct symbols); "
                             f"use at least {len(vocab)}")
    if vocab_size > ID_MASK:
        raise TokenizerError(f"vocab_size {vocab_size} is too large; use at most {ID_MASK}")


def add_merge(vocab: dict[str, int], id_to_token: list[str], merges: list, left: int, right: int) -> int:
    """Rule 11 (tokenizer/README.md): record the merge (left, right) and return the id of its token, new or (rarely) existing."""
    string = id_to_token[left] + id_to_token[right]
    if string not in vocab:  # HF reuses the id when the string exists already (e.g. a special token's text)
        vocab[string] = len(id_to_token)
        id_to_token.append(string)
    merges.append((id_to_token[left], id_to_token[right]))
    return vocab[string]


# --- the reference: recount everything at every merge -----------------------------------------------------------

def best_pair(pairs: dict[tuple[int, int], int]) -> tuple[int, int]:
    """Rule 9 (tokenizer/README.md): the highest count; among equal counts the smallest (left id, right id)."""
    return min(pairs, key=lambda pair: (-pairs[pair], pair))


def train_reference(word_counts: dict[str, int], vocab_size: int, special_tokens: list[str], initial_alphabet=(),
                    progress: bool = False) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The obvious BPE trainer. Returns (vocab, merges)."""
    vocab = initial_vocab(list(word_counts), special_tokens, initial_alphabet)
    check_vocab_size(vocab_size, vocab, len(special_tokens))
    id_to_token = list(vocab)
    words = [[vocab[c] for c in word] for word in word_counts]
    counts = list(word_counts.values())
    merges = []
    while len(vocab) < vocab_size:
        pairs = count_pairs(words, counts)
        if not pairs:                                  # rule 10: nothing left to merge
            break
        pair = best_pair(pairs)
        new_id = add_merge(vocab, id_to_token, merges, *pair)
        words = [merge_word(word, pair, new_id) for word in words]
    return vocab, merges


# --- the fast trainer: count once, then update incrementally ----------------------------------------------------
# The words live in flat arrays of positions (train_numpy.py explains them with an example); `where` maps each
# pair to the positions where it was seen, `pair_counts` each pair to its count, and a heap orders the pairs.

def train_fast(word_counts: dict[str, int], vocab_size: int, special_tokens: list[str], initial_alphabet=(),
               progress: bool = False, numpy_from: float = 128) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Same result as `train_reference`, in time proportional to the work each merge really does.

    A merge listing `numpy_from` positions or more runs with numpy (merge_vectorized), a smaller one with a
    Python loop (_merge_at). numpy_from=0 or inf forces one or the other (the tests do both)."""
    words = list(word_counts)
    vocab = initial_vocab(words, special_tokens, initial_alphabet)
    check_vocab_size(vocab_size, vocab, len(special_tokens))
    id_to_token = list(vocab)
    merges = []
    if not words:
        return vocab, merges
    arrays, pair_counts, where = initial_state(words, list(word_counts.values()), vocab)
    # The same memory seen two ways: Python's array.array for the loop, numpy arrays for vectorized merges.
    sym, nxt, prv, weight = (array("q", a.tobytes()) for a in arrays)
    views = [np.frombuffer(a, dtype=np.int64) for a in (sym, nxt, prv, weight)]
    heap = [(-count << KEY_BITS) | key for key, count in pair_counts.items()]  # smallest item = best pair (rule 9)
    heapq.heapify(heap)
    bar = tqdm(total=vocab_size - len(vocab), desc="merges", unit="merge", disable=not progress, mininterval=0.25)
    while len(vocab) < vocab_size and heap:
        item = heap[0]
        key = item & ((1 << KEY_BITS) - 1)
        count = pair_counts[key]
        if -(item >> KEY_BITS) != count:             # stale: the count fell since it was pushed; push it back
            heapq.heapreplace(heap, (-count << KEY_BITS) | key)
            continue
        heapq.heappop(heap)
        if count < 1:                                # rule 10
            break
        left, right = key >> ID_BITS, key & ID_MASK
        size_before = len(vocab)
        new_id = add_merge(vocab, id_to_token, merges, left, right)
        positions = where.pop(key, [])
        created = {}                                 # pairs that the merge created -> their positions
        if len(positions) >= numpy_from and len(vocab) > size_before:
            merge_vectorized(positions, left, right, new_id, *views, pair_counts, created)
        else:
            positions = positions.tolist() if isinstance(positions, np.ndarray) else positions
            if left == right:                        # overlaps are possible: go left to right (rule 12)
                positions = sorted(set(positions))
            _merge_at(positions, left, right, new_id, sym, nxt, prv, weight, pair_counts, created)
        for new_key, new_positions in created.items():
            if new_key in where:                     # only when new_id existed already (see add_merge)
                where[new_key] = np.unique(np.concatenate([where[new_key], new_positions]).astype(np.int64))
            else:
                where[new_key] = new_positions
            if pair_counts[new_key] > 0:
                heapq.heappush(heap, (-pair_counts[new_key] << KEY_BITS) | new_key)
        bar.update(len(vocab) - size_before)
    bar.close()
    return vocab, merges


def _merge_at(positions, left, right, new_id, sym, nxt, prv, weight, pair_counts, created) -> None:
    """Rules 12-13 at each position that still holds (left, right): merge, then move the neighbours' counts.

    Each merge at p, with neighbours o before and r after, turns (o, left) into (o, new) and (right, r) into
    (new, r). The positions are first grouped by the neighbour's symbol, then each group's counts move at once:
    for "x a b y" and "x a b z" merging (a, b): -2 (x, a) +2 (x, ab), -1 (b, y) +1 (ab, y), -1 (b, z) +1 (ab, z).
    A neighbour merged by this same call (x a b a b) holds new_id already, which gives the right counts either
    way round: -(b, a) +(ab, a) from the first merge, then -(ab, a) +(ab, ab) from the second.
    """
    after_at, before_at = defaultdict(list), defaultdict(list)  # neighbour's symbol -> positions of the pairs
    for p in positions:
        q = nxt[p]
        if sym[p] != left or q < 0 or sym[q] != right:
            continue                                 # a stale entry: merged away or changed since recorded
        sym[p] = new_id                              # p now holds the merged token; q disappears
        sym[q] = -1
        r = nxt[q]
        nxt[p] = r
        if r >= 0:
            prv[r] = p
            after_at[sym[r]].append(p)
        o = prv[p]
        if o >= 0:
            before_at[sym[o]].append(o)
    total = lambda group: sum(map(weight.__getitem__, group))  # each position's word count
    for after, group in after_at.items():            # (right, after) -> (new, after)
        count = total(group)
        pair_counts[(right << ID_BITS) | after] -= count
        key = (new_id << ID_BITS) | after
        pair_counts[key] = pair_counts.get(key, 0) + count
        created.setdefault(key, []).extend(group)
    for before, group in before_at.items():          # (before, left) -> (before, new)
        count = total(group)
        pair_counts[(before << ID_BITS) | left] -= count
        key = (before << ID_BITS) | new_id
        pair_counts[key] = pair_counts.get(key, 0) + count
        created.setdefault(key, []).extend(group)
