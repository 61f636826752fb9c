"""The fast trainer's numpy half: the initial pair counts, and merges with thousands of occurrences at once.

train.py's `train_fast` keeps every symbol of every distinct word at a position of flat arrays: sym[p] is its
token id (-1 once merged away), nxt[p] / prv[p] the positions of its neighbours in the same word (-1 at the
word's ends), weight[p] the count of its word. Words ["hug", "pug"] counted {hug: 10, pug: 5} with ids
h=0 u=1 g=2 p=3 give sym [0 1 2 3 1 2], nxt [1 2 -1 4 5 -1], prv [-1 0 1 -1 3 4], weight [10 10 10 5 5 5].
`where[key]` holds the positions p where the pair key = sym[p] << 20 | sym[nxt[p]] was seen; entries go stale
as merges change the words, and are checked before use.

The first merges of a corpus each touch thousands of positions, so doing them with numpy, a whole merge at a time,
is several times faster than a Python loop; later merges touch a few positions each and the Python loop
(train.py's `_merge_at`) wins. Both give the same counts: tests/test_tokenizer_bpe.py runs the trainer with
either one alone and compares to the reference.

Read next: pretokenize.py.
"""
from __future__ import annotations

import numpy as np

ID_BITS = 20  # a pair (a, b) is packed in one int: a << 20 | b


def group_by_key(keys: np.ndarray, weights: np.ndarray, positions: np.ndarray):
    """Per distinct key, the sum of its weights and its positions: keys [9, 5, 9], weights [1, 2, 3],
    positions [10, 11, 12] -> [5, 9], [2, 4], [array([11]), array([10, 12])]. One stable sort does it all."""
    if len(keys) == 0:
        return [], [], []
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
    sums = np.add.reduceat(weights[order], starts)
    grouped, bounds = positions[order], starts.tolist() + [len(keys)]
    return sorted_keys[starts].tolist(), sums.tolist(), [grouped[a:b] for a, b in zip(bounds, bounds[1:])]


def group_by_symbol(symbols: np.ndarray, weights: np.ndarray, positions: np.ndarray):
    """`group_by_key` for token ids, which are small: counting instead of comparing. symbols [7, 3, 7],
    weights [1, 2, 3], positions [10, 11, 12] -> [(3, 2, array([11])), (7, 4, array([10, 12]))]."""
    sizes = np.bincount(symbols)
    present = np.flatnonzero(sizes)
    sums = np.bincount(symbols, weights=weights)[present].astype(np.int64)
    small = symbols.astype(np.uint16) if len(sizes) <= 1 << 16 else symbols  # uint16 sorts by radix: O(n)
    grouped = positions[np.argsort(small, kind="stable")]
    ends = np.cumsum(sizes[present]).tolist()
    return zip(present.tolist(), sums.tolist(), [grouped[a:b] for a, b in zip([0] + ends[:-1], ends)])


def initial_state(words: list[str], counts: list[int], vocab: dict[str, int]):
    """The arrays above, every pair's count and where each pair occurs (rule 8), for all words at once."""
    lengths = np.array([len(w) for w in words], dtype=np.int64)
    chars = sorted(c for c in vocab if len(c) == 1)
    char_ids = np.array([vocab[c] for c in chars], dtype=np.int64)
    code_points = np.array([ord(c) for c in chars], dtype=np.int64)
    text = np.frombuffer("".join(words).encode("utf-32-le", errors="surrogatepass"), dtype="<u4")
    sym = char_ids[np.searchsorted(code_points, text)]                  # every char is in the alphabet
    n = len(sym)
    ends = np.cumsum(lengths) - 1                                      # last position of each word
    nxt = np.arange(1, n + 1, dtype=np.int64)
    nxt[ends] = -1
    prv = np.arange(-1, n - 1, dtype=np.int64)
    prv[ends[:-1] + 1] = -1                                            # first position of each word
    weight = np.repeat(np.asarray(counts, dtype=np.int64), lengths)
    left = np.flatnonzero(nxt >= 0)                                    # positions that start a pair
    keys, pair_counts, where = group_by_key((sym[left] << ID_BITS) | sym[left + 1], weight[left], left)
    return (sym, nxt, prv, weight), dict(zip(keys, pair_counts)), dict(zip(keys, where))


def merge_vectorized(positions, left, right, new_id, sym, nxt, prv, weight, pair_counts, created) -> None:
    """Rules 12-13 for all occurrences at once; same effect as train.py's `_merge_at`. `new_id` must be new.

    Each occurrence p (neighbours o before, r after) moves the counts -(o, left) +(o, new) and -(right, r)
    +(new, r). When two merged occurrences touch ("x a b a b"), the pair between them is counted once, from the
    left one's side: -(b, a) +(ab, ab). With left == right, an occurrence overlapping the previous one
    ("a a a": positions 0 and 1) is skipped, as scanning left to right would.
    """
    p = np.asarray(positions, dtype=np.int64)              # each position once (train.py makes sure of it)
    q = nxt[p]
    live = (sym[p] == left) & (q >= 0)
    p, q = p[live], q[live]
    live = sym[q] == right                                  # drop stale entries
    p, q = p[live], q[live]
    if left == right and len(p) > 1:
        order = np.argsort(p)                               # left to right
        p, q = p[order], q[order]
        overlaps = np.r_[False, q[:-1] == p[1:]]            # starts where the previous occurrence ends
        index = np.arange(len(p))
        run_start = np.maximum.accumulate(np.where(overlaps, 0, index))
        keep = (index - run_start) % 2 == 0                 # runs of overlaps: keep the 1st, 3rd, ...
        p, q = p[keep], q[keep]
    r = nxt[q]
    sym[p] = new_id                                         # p holds the merged token; q disappears
    sym[q] = -1
    nxt[p] = r
    has_r = r >= 0
    prv[r[has_r]] = p[has_r]
    o = prv[p]
    w = weight[p]
    after, p_r, w_r = sym[r[has_r]], p[has_r], w[has_r]     # occurrences with a right neighbour
    old_after = np.where(after == new_id, left, after)      # a neighbour merged just now held `left` before
    before = sym[o]
    has_o = (o >= 0) & (before != new_id)                   # a merged left neighbour counted that pair already
    before, o, w_o = before[has_o], o[has_o], w[has_o]      # occurrences with a left neighbour
    for symbol, total, _ in group_by_symbol(old_after, w_r, p_r):  # -(right, r)
        pair_counts[(right << ID_BITS) | symbol] -= total
    for symbol, total, group in group_by_symbol(after, w_r, p_r):  # +(new, r)
        key = (new_id << ID_BITS) | symbol
        pair_counts[key], created[key] = pair_counts.get(key, 0) + total, group
    for symbol, total, group in group_by_symbol(before, w_o, o):   # -(o, left) +(o, new)
        pair_counts[(symbol << ID_BITS) | left] -= total
        key = (symbol << ID_BITS) | new_id
        pair_counts[key], created[key] = pair_counts.get(key, 0) + total, group
