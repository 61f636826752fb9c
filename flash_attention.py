"""FlashAttention by hand: exact attention in O(T) memory (Dao et al. 2022; FlashAttention-2, Dao 2023, algorithm 2).

attention.py's fast path keeps every probability matrix P = softmax(scale q k^T) for its backward: L x S numbers per
head, so memory grows as T^2 and context length, not compute, is what stops a long run on a laptop. Two ideas remove
that, and both fit in this file:

1. The online softmax. Stream over blocks of keys and keep, for every query row, the running max m of its scores,
   the running sum l = sum exp(s - m) and the output accumulator acc = sum exp(s - m) v. When a block of scores s'
   arrives (three lines, FlashAttention-2 section 3.1.1):
       m'   = max(m, rowmax(s'))                          the new max; exp(m - m') <= 1 rescales the old terms
       l'   = exp(m - m') l   + rowsum(exp(s' - m'))      every term of the sum is now relative to m'
       acc' = exp(m - m') acc + exp(s' - m') V'           and so is every term of the weighted sum
   After the last block O = acc / l is exactly softmax(s) V, and L = m + log l = log sum exp(s) is the row's
   log-sum-exp: one number per query.
2. Recomputation. The backward rebuilds each block's probabilities from the saved L, P = exp(s - L), instead of
   reading them from memory, and accumulates dQ, dK, dV block by block; the softmax's backward needs
   rowsum(dP * P) = rowsum(dO * O) (section 3.1 / appendix B.2 of the 2022 paper), one number per query again.
Nothing of size L x S is ever held: only blocks of block_q x block_k scores, so memory is O(T) and the extra compute
is one more q k^T product in the backward.

Precision: half and bfloat16 inputs (autocast) are upcast to float32, and the whole computation, statistics and
accumulators included, runs in float32 with autocast off; the output is cast back to the input's dtype.
Dropout is not implemented (it would need each block's random mask regenerated in the backward):
MultiHeadAttention routes training with dropout > 0 to the manual path, which keeps O(T^2) memory.

Shape letters as in attention.py: BH batch dims flattened (B * H), L query length, S key length, D query/key size,
Dv value size; bq and bk are the lengths of one block of queries and one block of keys.
tests/test_flash_attention.py proves this equal to torch's scaled_dot_product_attention, values and gradients.
Read next: gpt.py (attention.py's MultiHeadAttention calls this with attention_backend="flash").
"""
import functools
import math

import torch
from torch.autograd.function import once_differentiable

# CPU defaults, measured with `python bench/attention.py --blocks` and by hand on 2 cores of an AMD EPYC (AVX2, no
# AVX-512; 1 thread, the machine shared): at T = 1024 and 4096, 128 x 256 was among the fastest each time (64 x 256 and
# 256 x 256 within the noise at one length, slower at the other; 128 x 512 close). Smaller blocks make more, smaller
# matmuls and more Python per key; larger ones waste more of the causal diagonal block.
BLOCK_Q = 128
BLOCK_K = 256


def flash_attention(q, k, v, attn_mask=None, is_causal=False, scale=None, block_q=BLOCK_Q, block_k=BLOCK_K):
    """softmax(q k^T * scale + mask) v, in blocks, matching torch.nn.functional.scaled_dot_product_attention.

    q: (..., L, D), k: (..., S, D), v: (..., S, Dv) -> (..., L, Dv), with the same leading dimensions.
    attn_mask: None or a key mask, broadcastable to (..., 1, S): boolean (True = may attend, e.g. not padding) or
        float (added to every query's scores). A mask per query would be L x S numbers, which this function exists
        to avoid; use attention.scaled_dot_product_attention for those.
    is_causal: query i attends to keys 0..i (aligned top-left like torch's); ANDed with attn_mask when both are given.
    scale: defaults to 1/sqrt(D), the 1/sqrt(d_k) of Vaswani et al. eq. 1.
    A query whose keys are all masked gets an output of zeros and zero gradients, as in attention.py, not NaN.
    """
    *batch, L, D = q.shape
    S, Dv = k.size(-2), v.size(-1)
    if k.shape[:-2] != q.shape[:-2] or v.shape[:-2] != q.shape[:-2]:
        raise ValueError(f"flash_attention needs q, k, v with the same leading dimensions, got {q.shape[:-2]}, "
                         f"{k.shape[:-2]}, {v.shape[:-2]}")
    scale = 1.0 / math.sqrt(D) if scale is None else scale  # the paper's 1/sqrt(d_k) (eq. 1)
    dtype = q.dtype
    compute = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype  # float32 accumulators
    bias = None
    if attn_mask is not None:
        attn_mask = torch.atleast_2d(attn_mask)  # (..., 1, S or 1)
        if attn_mask.requires_grad:
            raise ValueError("flash_attention gives no gradient to attn_mask; use attention.attention_reference")
        if attn_mask.size(-2) != 1:
            raise ValueError(f"flash_attention takes a key mask of shape (..., 1, S), got {tuple(attn_mask.shape)}")
        if attn_mask.dtype == torch.bool:
            bias = torch.zeros(attn_mask.shape, dtype=compute, device=q.device)  # (..., 1, S)
            bias.masked_fill_(~attn_mask, float("-inf"))  # -inf, never a finite stand-in: exp(-inf) = 0
        else:
            bias = attn_mask.to(compute)  # (..., 1, S)
        bias = bias.expand(*batch, 1, S).reshape(-1, 1, S)  # (BH, 1, S)
    q = q.to(compute).reshape(-1, L, D)  # (BH, L, D), a view when q is contiguous already
    k = k.to(compute).reshape(-1, S, D)  # (BH, S, D)
    v = v.to(compute).reshape(-1, S, Dv)  # (BH, S, Dv)
    out = _FlashAttention.apply(q, k, v, bias, is_causal, scale, block_q, block_k)  # (BH, L, Dv)
    return out.view(*batch, L, Dv).to(dtype)  # (..., L, Dv)


def mask_cache(maxsize: int):
    """functools.lru_cache for the functions that build masks, except while torch.compile traces the model: the
    compiler cannot keep a Python cache (it would trace through it, with a warning), and keeps the mask in its graph
    instead. Eager calls with the same arguments return the same tensor."""
    def decorate(make):
        cached = functools.lru_cache(maxsize=maxsize)(make)

        @functools.wraps(make)
        def mask(*args):
            return make(*args) if torch.compiler.is_compiling() else cached(*args)
        return mask
    return decorate


@mask_cache(maxsize=64)
def _causal_block_bias(rows: int, cols: int, offset: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """0 where the block's query i may see its key j, -inf where not: key j0 + j is after query a + i, offset = a - j0.

    _causal_block_bias(2, 3, 0, ...) -> [[0, -inf, -inf], [0, 0, -inf]]
    """
    future = torch.ones(rows, cols, dtype=torch.bool, device=device).triu(offset + 1)  # (bq, bk), j > i + offset
    return torch.zeros(rows, cols, dtype=dtype, device=device).masked_fill_(future, float("-inf"))  # (bq, bk)


def _scores(q, k, bias, causal, scale, a, j0):
    """One block's scores: scale q k^T (eq. 1), plus the key mask, plus the causal mask on a diagonal block."""
    s = torch.baddbmm(q.new_empty(()), q, k.transpose(1, 2), beta=0.0, alpha=scale)  # (BH, bq, bk)
    bq, bk = s.shape[1:]
    if bias is not None:
        s.add_(bias[:, :, j0:j0 + bk])  # (BH, bq, bk), broadcast over the queries
    if causal and j0 + bk - 1 > a:  # some key of the block is after some query of it
        s.add_(_causal_block_bias(bq, bk, a - j0, s.dtype, s.device))  # (BH, bq, bk)
    return s


def _add_product(acc, x, y, alpha=1.0):
    """acc += alpha x @ y, in place. baddbmm_ into a tensor that is not contiguous (a slice of the keys of a block)
    runs one matrix at a time; there a fresh product and an add are faster."""
    if acc.is_contiguous():
        acc.baddbmm_(x, y, alpha=alpha)  # (BH, n, m)
    else:
        acc.add_(torch.bmm(x, y), alpha=alpha)  # (BH, n, m)


def _key_end(causal, b, S):
    """A block of queries a..b-1 sees keys 0..end-1: all of them, or with the causal mask none after query b - 1."""
    return min(b, S) if causal else S


class _FlashAttention(torch.autograd.Function):
    """The blockwise forward (online softmax) and backward (recomputation) of FlashAttention-2, algorithm 2.

    Inputs are flattened to (BH, ., .) and contiguous; bias is None or an (BH, 1, S) additive key mask.
    Saved for the backward: q, k, v, O and L (BH, L, 1); nothing of size L x S.
    """

    @staticmethod
    def forward(ctx, q, k, v, bias, causal, scale, block_q, block_k):
        BH, L, _ = q.shape
        S, Dv = k.size(1), v.size(2)
        out = q.new_empty(BH, L, Dv)  # (BH, L, Dv)
        lse = q.new_empty(BH, L, 1)  # (BH, L, 1), L = m + log l for every query
        with torch.autocast(q.device.type, enabled=False):
            for a in range(0, L, block_q):
                b = min(a + block_q, L)
                q_blk = q[:, a:b]  # (BH, bq, D)
                m = q.new_full((BH, b - a, 1), float("-inf"))  # (BH, bq, 1), running max of the scores
                l = q.new_zeros(BH, b - a, 1)  # (BH, bq, 1), running sum of exp(s - m)
                acc = q.new_zeros(BH, b - a, Dv)  # (BH, bq, Dv), running sum of exp(s - m) v
                for j0 in range(0, _key_end(causal, b, S), block_k):  # causal: blocks above the diagonal skipped
                    j1 = min(j0 + block_k, _key_end(causal, b, S))
                    s = _scores(q_blk, k[:, j0:j1], bias, causal, scale, a, j0)  # (BH, bq, bk)
                    m_new = torch.maximum(m, s.amax(dim=-1, keepdim=True))  # (BH, bq, 1), m' = max(m, rowmax(s'))
                    if bias is not None:  # a row with every key so far masked has m' = -inf: use 0 so exp gives 0
                        m_new = m_new.masked_fill(m_new == float("-inf"), 0.0)  # (BH, bq, 1), not NaN
                    p = s.sub_(m_new).exp_()  # (BH, bq, bk), exp(s' - m'), in place
                    rescale = torch.exp(m - m_new)  # (BH, bq, 1), exp(m - m')
                    l.mul_(rescale).add_(p.sum(dim=-1, keepdim=True))  # l' = exp(m - m') l + rowsum(exp(s' - m'))
                    acc.mul_(rescale).baddbmm_(p, v[:, j0:j1])  # acc' = exp(m - m') acc + exp(s' - m') V'
                    m = m_new
                if bias is not None:  # rows with no key at all: l = 0, acc = 0; output 0, and L = +inf makes P = 0
                    empty = l == 0  # (BH, bq, 1)
                    l.masked_fill_(empty, 1.0)
                    m = m.masked_fill(empty, float("inf"))  # (BH, bq, 1)
                out[:, a:b] = acc / l  # (BH, bq, Dv), O = acc / l = softmax(s) V
                lse[:, a:b] = m + torch.log(l)  # (BH, bq, 1), L = m + log l
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.bias, ctx.causal, ctx.scale, ctx.blocks = bias, causal, scale, (block_q, block_k)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensors
        bias, causal, scale, (block_q, block_k) = ctx.bias, ctx.causal, ctx.scale, ctx.blocks
        L, S = q.size(1), k.size(1)
        dout = dout.contiguous()  # (BH, L, Dv)
        with torch.autocast(q.device.type, enabled=False):
            delta = (dout * out).sum(dim=-1, keepdim=True)  # (BH, L, 1), rowsum(dO * O) = rowsum(dP * P)
            # dQ of each query block gets a contiguous accumulator of its own (an in-place baddbmm_ into a slice of
            # one (BH, L, D) tensor would go one matrix at a time), and one cat at the end.
            BH, D = q.size(0), q.size(2)
            dqs = [q.new_zeros(BH, min(block_q, L - a), D) for a in range(0, L, block_q)]  # (BH, bq, D) each
            dk = torch.empty_like(k)  # (BH, S, D)
            dv = torch.empty_like(v)  # (BH, S, Dv)
            for j0 in range(0, S, block_k):  # outer loop over key blocks: dK_j, dV_j stay local (algorithm 2)
                j1 = min(j0 + block_k, S)
                k_blk, v_blk = k[:, j0:j1], v[:, j0:j1]  # (BH, bk, D), (BH, bk, Dv)
                dk_blk, dv_blk = k.new_zeros(k_blk.shape), v.new_zeros(v_blk.shape)  # (BH, bk, D), (BH, bk, Dv)
                first = j0 // block_q if causal else 0  # causal: query blocks that end before key j0 see none of it
                for i in range(first, len(dqs)):
                    a, b = i * block_q, min((i + 1) * block_q, L)
                    n = min(j1, b) - j0 if causal else j1 - j0  # causal: keys from b on are after every query
                    k_n, v_n = k_blk[:, :n], v_blk[:, :n]  # (BH, n, D), (BH, n, Dv)
                    s = _scores(q[:, a:b], k_n, bias, causal, scale, a, j0)  # (BH, bq, n)
                    p = s.sub_(lse[:, a:b]).exp_()  # (BH, bq, n), P = exp(s - L), recomputed in place
                    _add_product(dv_blk[:, :n], p.transpose(1, 2), dout[:, a:b])  # (BH, n, Dv), dV += P^T dO
                    dp = torch.bmm(dout[:, a:b], v_n.transpose(1, 2))  # (BH, bq, n), dP = dO V^T
                    ds = dp.sub_(delta[:, a:b]).mul_(p)  # (BH, bq, n), dS = P * (dP - rowsum(dO * O)), in place
                    dqs[i].baddbmm_(ds, k_n, alpha=scale)  # (BH, bq, D), dQ += scale dS K
                    _add_product(dk_blk[:, :n], ds.transpose(1, 2), q[:, a:b], scale)  # (BH, n, D), dK += scale dS^T Q
                dk[:, j0:j1], dv[:, j0:j1] = dk_blk, dv_blk
            dq = torch.cat(dqs, dim=1) if len(dqs) > 1 else dqs[0]  # (BH, L, D)
        return dq, dk, dv, None, None, None, None, None
