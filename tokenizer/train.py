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

The rules (numbers refer to ../../shared/docs/hf-bpe-rules.md, read from HF's models/bpe/trainer.rs and word.rs):
  5-6  specials first, then the alphabet in code-point order                   -> initial_vocab
  8    pair count = word count x occurrences (overlaps count: "aaa" has 2)     -> count_pairs
  9    highest count first; ties go to the smallest (left id, right id)         -> best_pair / heap order
  10   stop below a count of 1, when no pair is left, or at vocab_size          -> both loops
  11   the new token's string is left + right; an existing string keeps its id  -> add_merge
  12   merge left to right without overlap ("a a a" -> "aa a")                  -> merge_word / _merge_at
  13   update counts: -(prev, left) -(right, next) +(prev, new) +(new, next)    -> _merge_at

Read next: pretokenize.py, which turns text into the counted words.
"""
from __future__ import annotations

import heapq

import numpy as np
from tqdm import tqdm

from .base import TokenizerError, count_pairs, merge_word  # rules 8 and 12 live in base.py

ID_BITS = 20                      # a pair (a, b) is packed in one int, a << 20 | b: ids up to ~1M
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
    """Rule 11: record the merge (left, right) and return the id of its token, new or (rarely) existing."""
    string = id_to_token[left] + id_to_token[right]
    if string not in vocab:  # HF reuses the id when the string exists already (e.g. a special token's text)
        vocab[string] = len(id_to_token)
        id_to_token.append(string)
    merges.append((id_to_token[left], id_to_token[right]))
    return vocab[string]


# --- the reference: recount everything at every merge -----------------------------------------------------------

def best_pair(pairs: dict[tuple[int, int], int]) -> tuple[int, int]:
    """Rule 9: the highest count; among equal counts the smallest (left id, right id)."""
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
# Every symbol of every distinct word gets a position in flat lists: sym[p] is its token id (-1 once merged
# away), nxt[p] / prv[p] the positions of its neighbours in the same word (-1 at the word's ends) and
# weight[p] the count of its word. `where[key]` lists the positions p where the pair key = (sym[p], sym[nxt[p]])
# occurred when it was recorded; entries can go stale and are checked before use.

def _initial_state(words: list[str], counts: list[int], vocab: dict[str, int]):
    """Positions, pair counts and pair -> positions for all words, computed with numpy in one pass."""
    lengths = np.array([len(w) for w in words], dtype=np.int64)
    chars = np.array(sorted(c for c in vocab if len(c) == 1), dtype=object)
    char_ids = np.array([vocab[c] for c in chars], dtype=np.int64)
    code_points = np.array([ord(c) for c in chars], dtype=np.int64)
    text = np.frombuffer("".join(words).encode("utf-32-le", errors="surrogatepass"), dtype="<u4")
    sym = char_ids[np.searchsorted(code_points, text)]                        # every char is in the alphabet
    n = len(sym)
    ends = np.cumsum(lengths) - 1                                            # last position of each word
    starts = ends - lengths + 1
    nxt = np.arange(1, n + 1, dtype=np.int64)
    nxt[ends] = -1
    prv = np.arange(-1, n - 1, dtype=np.int64)
    prv[starts] = -1
    weight = np.repeat(np.asarray(counts, dtype=np.int64), lengths)
    left = np.flatnonzero(nxt >= 0)                                          # positions that start a pair
    keys = (sym[left] << ID_BITS) | sym[left + 1]
    unique_keys, inverse = np.unique(keys, return_inverse=True)
    pair_counts = np.bincount(inverse, weights=weight[left]).astype(np.int64)
    order = np.argsort(inverse, kind="stable")                               # positions grouped by pair, ascending
    groups = np.split(left[order], np.cumsum(np.bincount(inverse))[:-1])
    where = dict(zip(unique_keys.tolist(), (g.tolist() for g in groups)))
    counts_by_key = dict(zip(unique_keys.tolist(), pair_counts.tolist()))
    return sym.tolist(), nxt.tolist(), prv.tolist(), weight.tolist(), counts_by_key, where


def train_fast(word_counts: dict[str, int], vocab_size: int, special_tokens: list[str], initial_alphabet=(),
               progress: bool = False) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Same result as `train_reference`, in time proportional to the work each merge really does."""
    words = list(word_counts)
    vocab = initial_vocab(words, special_tokens, initial_alphabet)
    check_vocab_size(vocab_size, vocab, len(special_tokens))
    id_to_token = list(vocab)
    merges = []
    if not words:
        return vocab, merges
    sym, nxt, prv, weight, pair_counts, where = _initial_state(words, list(word_counts.values()), vocab)
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
        if left == right:                            # overlaps are possible: go left to right (rule 12)
            positions = sorted(set(positions))
        created = {}                                 # pairs that the merge created -> their positions
        _merge_at(positions, left, right, new_id, sym, nxt, prv, weight, pair_counts, created)
        for new_key, new_positions in created.items():
            if new_key in where:                     # only when new_id existed already (see add_merge)
                where[new_key].extend(new_positions)
            else:
                where[new_key] = new_positions
            if pair_counts[new_key] > 0:
                heapq.heappush(heap, (-pair_counts[new_key] << KEY_BITS) | new_key)
        bar.update(len(vocab) - size_before)
    bar.close()
    return vocab, merges


def _merge_at(positions, left, right, new_id, sym, nxt, prv, weight, pair_counts, created) -> None:
    """Rules 12-13 at each position that still holds (left, right): merge, and move the neighbours' counts."""
    new_left_key = new_id << ID_BITS
    for p in positions:
        q = nxt[p]
        if sym[p] != left or q < 0 or sym[q] != right:
            continue                                 # a stale entry: merged away or changed since recorded
        w = weight[p]
        sym[p] = new_id                              # p now holds the merged token; q disappears
        sym[q] = -1
        r = nxt[q]
        nxt[p] = r
        if r >= 0:                                   # (right, next) -> (new, next)
            prv[r] = p
            after = sym[r]
            pair_counts[(right << ID_BITS) | after] -= w
            key = new_left_key | after
            pair_counts[key] = pair_counts.get(key, 0) + w
            created.setdefault(key, []).append(p)
        o = prv[p]
        if o >= 0:                                   # (prev, left) -> (prev, new)
            before = sym[o]
            pair_counts[(before << ID_BITS) | left] -= w
            key = (before << ID_BITS) | new_id
            pair_counts[key] = pair_counts.get(key, 0) + w
            created.setdefault(key, []).append(o)
