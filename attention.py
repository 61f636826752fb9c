"""Multi-head attention, written out by hand (Vaswani et al. 2017, "Attention Is All You Need", section 3.2).

Three pieces:

- `attention_reference(q, k, v, ...)`: eq. 1 of the paper, softmax(q k^T / sqrt(d_k)) v, in a few obvious lines
  (`attention_weights` is its softmax part, which plot.py draws); autograd derives the backward. Read this one first.
- `scaled_dot_product_attention(q, k, v, ...)`: the same function, as fast as we can make it in plain PyTorch (a
  hand-written backward, causal blocks that skip the masked upper triangle, no needless copies). It takes the same
  arguments as `torch.nn.functional.scaled_dot_product_attention` and gives the same results; tests/test_attention.py
  proves that the three agree, values and gradients.
- `MultiHeadAttention`: section 3.2.2 — project the input to queries, keys and values, split them into heads, attend
  in every head at once, merge the heads and project back. Causal (GPT) or bidirectional (BERT), with an optional
  padding mask, and a key/value cache so that generating one more token costs one position, not the whole context.
  Two options of the modern recipe act on q and k here: rotary position embeddings (`Rotary`, Su et al. 2021) and
  QK-norm (each head's queries and keys scaled to unit RMS before the scores, Henry et al. 2020).

Shape letters used in the comments:
    B batch, H heads, L query length, S key length, D query/key size (the head size, C // H), Dv value size,
    BH the batch dimensions flattened (B * H), T time (tokens in the input), C channels (embedding_dim).
    (The README's alphabet, used across the project.)

Read next: flash_attention.py, the same attention in O(T) memory (FlashAttention-2); then gpt.py, which stacks this
into a GPT.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from flash_attention import flash_attention, mask_cache  # backend="flash"; the masks' cache

# Causal attention is computed BLOCK_ROWS queries at a time: a block needs the keys up to its last query only, so most
# of the masked upper triangle is never computed (with 4 blocks, 3/8 of all scores are skipped) and each block's
# scores are smaller, so they stay in cache longer. 64 measured best with bench/attention.py at T = 128 to 1024, against
# 32, 128 and 256 (smaller blocks: the loop costs more than it saves); T <= 64 is a single block.
BLOCK_ROWS = 64


@mask_cache(maxsize=32)
def causal_mask(L: int, S: int, device: torch.device, offset: int = 0) -> torch.Tensor:
    """Boolean (L, S) mask, True where query i may attend to key j, that is j <= i + offset.

    offset=0 is torch's `is_causal` (aligned top-left); with a KV cache the L new queries sit at the end of S keys,
    so offset = S - L aligns the diagonal bottom-right.
    causal_mask(2, 3) -> [[True, False, False], [True, True, False]]
    """
    with torch.inference_mode(False):  # cached: a mask first made while generating must serve training later too
        return torch.ones(L, S, dtype=torch.bool, device=device).tril(diagonal=offset)  # (L, S)


def _combine_masks(attn_mask, is_causal, L, S, device):
    """Fold attn_mask and is_causal into one mask; return it with the rows it blocks completely.

    The mask is None, boolean (True = may attend) or float (added to the scores), broadcastable to (..., L, S).
    A row that blocks every key would be softmax(-inf, ..., -inf) = NaN; such rows are opened up here and returned as
    `empty_rows` (..., L, 1), so that the caller can zero their output: neither values nor gradients ever see a NaN.
    """
    if attn_mask is not None:
        attn_mask = torch.atleast_2d(attn_mask)  # (..., L or 1, S or 1)
    if is_causal:
        causal = causal_mask(L, S, device)  # (L, S)
        if attn_mask is None:
            return causal, None  # query i always sees key 0, so no row is empty
        if attn_mask.dtype == torch.bool:
            attn_mask = attn_mask & causal  # (..., L, S), both must allow
        else:
            attn_mask = attn_mask.masked_fill(~causal, float("-inf"))  # (..., L, S)
    if attn_mask is None:
        return None, None
    blocked = ~attn_mask if attn_mask.dtype == torch.bool else torch.isneginf(attn_mask)  # (..., L, S)
    empty_rows = blocked.all(dim=-1, keepdim=True)  # (..., L, 1)
    if not empty_rows.any():
        return attn_mask, None
    if attn_mask.dtype == torch.bool:
        return attn_mask | empty_rows, empty_rows  # (..., L, S)
    return attn_mask.masked_fill(empty_rows, 0.0), empty_rows  # (..., L, S)


def attention_weights(q, k, attn_mask=None, is_causal=False, scale=None):
    """softmax(q k^T * scale + mask): how much each query attends to each key; rows sum to 1 (0 for a fully masked
    row). q: (..., L, D), k: (..., S, D) -> (..., L, S). The pictures of plot.attention_maps are these."""
    scale = 1.0 / math.sqrt(q.size(-1)) if scale is None else scale  # the paper's 1/sqrt(d_k) (eq. 1)
    mask, empty_rows = _combine_masks(attn_mask, is_causal, q.size(-2), k.size(-2), q.device)
    att = (q * scale) @ k.transpose(-2, -1)  # (..., L, S), the score of every query against every key
    if mask is not None and mask.dtype == torch.bool:
        att = att.masked_fill(~mask, float("-inf"))  # (..., L, S); -inf, never a finite stand-in: exp(-inf) = 0
    elif mask is not None:
        att = att + mask  # (..., L, S)
    att = torch.softmax(att, dim=-1)  # (..., L, S), each row sums to 1
    if empty_rows is not None:
        att = att.masked_fill(empty_rows, 0.0)  # (..., L, S), a query with nothing to attend to outputs zeros
    return att


def attention_reference(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None):
    """softmax(q k^T * scale + mask) v, the obvious way; arguments as in scaled_dot_product_attention below."""
    att = attention_weights(q, k, attn_mask, is_causal, scale)  # (..., L, S)
    if dropout_p > 0.0:
        att = F.dropout(att, p=dropout_p)  # (..., L, S), drops whole attention links; survivors scaled by 1/(1-p)
    return att @ v  # (..., L, Dv), a weighted average of the values


def scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None):
    """softmax(q k^T * scale + mask) v, matching torch.nn.functional.scaled_dot_product_attention.

    q: (..., L, D), k: (..., S, D), v: (..., S, Dv) -> (..., L, Dv). The leading dimensions broadcast.
    attn_mask: boolean (True = may attend) or float (added to the scores), broadcastable to (..., L, S).
    is_causal: query i attends to keys 0..i. Like torch, the mask is aligned top-left when L != S (query i sees keys
        0..i even if there are more keys than queries). Given together with attn_mask, both must allow a key
        (torch 2.13's fused CPU kernel does the same; its math fallback, taken with dropout or a value size that
        differs from the query size, raises an error instead).
    scale: defaults to 1/sqrt(D), the paper's 1/sqrt(d_k) (eq. 1).
    A query whose keys are all masked gets an output of zeros (torch does the same), not NaN.

    The common case (no dropout, a mask that needs no gradient, q, k and v with the same leading dimensions) takes the
    fast path below; everything else goes to attention_reference.
    """
    batch = q.shape[:-2]
    scale = 1.0 / math.sqrt(q.size(-1)) if scale is None else scale
    if q.size(-2) == 1 and attn_mask is None and not is_causal and dropout_p == 0.0 and not torch.is_grad_enabled():
        # One query, nothing to mask, no backward (generation's decode step): blocks and saved tensors buy nothing,
        # and eq. 1's three products are all there is to do.
        return attention_reference(q, k, v, scale=scale)  # (..., 1, Dv)
    fast = dropout_p == 0.0 and k.shape[:-2] == batch and v.shape[:-2] == batch
    if attn_mask is not None:  # the mask must not need a gradient, nor add batch dimensions to the output
        fast = fast and not attn_mask.requires_grad and torch.broadcast_shapes(attn_mask.shape[:-2], batch) == batch
    if not fast:
        return attention_reference(q, k, v, attn_mask, dropout_p, is_causal, scale)
    mask, empty_rows = _combine_masks(attn_mask, is_causal, q.size(-2), k.size(-2), q.device)
    # The fast path takes the mask as an additive bias, 0 or -inf: add_ is several times faster than masked_fill_.
    if is_causal and attn_mask is None:
        bias = _causal_bias(q.size(-2), k.size(-2), q.device, q.dtype)  # (L, S), the common case, cached
    elif mask is not None and mask.dtype == torch.bool:
        bias = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill_(~mask, float("-inf"))  # (..., L, S)
    else:
        bias = mask  # None or float already
    return _Attention.apply(q, k, v, bias, empty_rows, is_causal, scale)


@mask_cache(maxsize=32)
def _causal_bias(L: int, S: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """causal_mask(L, S) as a float (L, S) bias: 0 where query i may attend to key j, -inf where it may not."""
    with torch.inference_mode(False):  # as in causal_mask: never cache an inference tensor
        return torch.zeros(L, S, dtype=dtype, device=device).masked_fill_(~causal_mask(L, S, device), float("-inf"))


def _scaled_bmm(x, y, scale):
    """scale * (x @ y) for batches of matrices, scaled inside the product at no cost: baddbmm computes
    beta * input + alpha * (x @ y), and beta=0 ignores the input (any tensor that broadcasts will do)."""
    return torch.baddbmm(x.new_empty(()), x, y, beta=0.0, alpha=scale)  # (BH, n, m)


def _rows(mask, a, b, e):
    """The part of a broadcastable (..., L or 1, S or 1) mask for queries a..b-1 and keys 0..e-1."""
    if mask.size(-2) > 1:
        mask = mask[..., a:b, :]  # (..., b - a, S)
    return mask[..., :e]  # (..., b - a, e)


class _Attention(torch.autograd.Function):
    """Attention with a hand-written backward, one block of queries at a time.

    Forward, per block:  Z = scale Q K^T + bias (the scores),  P = softmax(Z),  O = P V.
    Backward, given dO = dLoss/dO (the chain rule through each line above, bottom to top):
        dV = P^T dO                      dP = dO V^T
        dZ = P * (dP - rowsum(dP * P))   the softmax backward, done in place in the buffer of dP
        dQ = scale dZ K                  dK = scale dZ^T Q
    rowsum(dP * P) = rowsum(dO * O), which costs L x Dv numbers instead of L x S (FlashAttention, Dao et al. 2022,
    section 3.1 / appendix B.2). Against autograd on attention_reference this skips the (L x S) buffers of the masked
    scores, of the softmax gradient and of the masking's gradient: fewer passes over the largest tensors there are.
    The mask arrives as an additive bias (0 or -inf), added in place. Only first derivatives: the reference path is
    the one to use for gradients of gradients.
    """

    @staticmethod
    def forward(ctx, q, k, v, bias, empty_rows, causal, scale):
        *batch, L, D = q.shape
        S, Dv = k.size(-2), v.size(-1)
        ctx.shapes = q.shape, k.shape, v.shape
        # Flatten the batch dimensions so that every product is one batched matmul (bmm) of contiguous matrices.
        q = q.reshape(-1, L, D)  # (BH, L, D)
        k = k.reshape(-1, S, D)  # (BH, S, D)
        v = v.reshape(-1, S, Dv)  # (BH, S, Dv)
        rows = BLOCK_ROWS if causal else L
        probs, outs = [], []
        for a in range(0, L, rows):
            b = min(a + rows, L)
            # Causal: queries a..b-1 attend to no key after b-1. The last block takes every key (the bias masks any
            # it may not see), so that its gradients cover all of dK and dV.
            e = min(b, S) if causal and b < L else S
            att = _scaled_bmm(q[:, a:b], k[:, :e].transpose(1, 2), scale)  # (BH, b - a, e), scale q k^T (eq. 1)
            if bias is not None:
                att.view(*batch, b - a, e).add_(_rows(bias, a, b, e))  # in place, broadcast over the batch dims
            torch.softmax(att, dim=-1, out=att)  # (BH, b - a, e), in place: each row is read before it is written
            if empty_rows is not None:
                att.view(*batch, b - a, e).masked_fill_(_rows(empty_rows, a, b, 1), 0.0)
            # A fresh output per block, then one cat: bmm into a strided slice of `out` would go one matrix at a time.
            outs.append(torch.bmm(att, v[:, :e]))  # (BH, b - a, Dv), O = P V for these rows
            probs.append(att)
        out = torch.cat(outs, dim=1) if len(outs) > 1 else outs[0]  # (BH, L, Dv)
        ctx.save_for_backward(q, k, v, out, *probs)
        ctx.scale, ctx.rows = scale, rows
        return out.view(*batch, L, Dv)  # (..., L, Dv)

    @staticmethod
    @once_differentiable
    def backward(ctx, dout):
        q, k, v, out, *probs = ctx.saved_tensors
        scale, rows = ctx.scale, ctx.rows
        dout = dout.reshape(out.shape)  # (BH, L, Dv)
        delta = (dout * out).sum(dim=-1, keepdim=True)  # (BH, L, 1), rowsum(dO * O) = rowsum(dP * P)
        dqs, dk, dv = [], None, None
        # Largest block (the last) first: each later, smaller dP then fits in the memory the previous one freed, which
        # saves page faults on fresh memory.
        for a, att in reversed(list(zip(range(0, q.size(1), rows), probs))):
            b, e = a + att.size(1), att.size(2)
            dv_part = torch.bmm(att.transpose(1, 2), dout[:, a:b])  # (BH, e, Dv), P^T dO
            dz = torch.bmm(dout[:, a:b], v[:, :e].transpose(1, 2))  # (BH, b - a, e), dP = dO V^T
            dz.sub_(delta[:, a:b]).mul_(att)  # (BH, b - a, e), now dZ; masked keys have P = 0, so dZ = 0 there
            dqs.insert(0, _scaled_bmm(dz, k[:, :e], scale))  # (BH, b - a, D), scale dZ K
            dk_part = _scaled_bmm(dz.transpose(1, 2), q[:, a:b], scale)  # (BH, e, D), scale dZ^T Q
            if dk is None:  # the last block saw every key: its parts start the sums
                dk, dv = dk_part, dv_part  # (BH, S, D), (BH, S, Dv)
            else:  # earlier blocks add to the keys they saw
                dk[:, :e] += dk_part
                dv[:, :e] += dv_part
        dq = torch.cat(dqs, dim=1) if len(dqs) > 1 else dqs[0]  # (BH, L, D)
        q_shape, k_shape, v_shape = ctx.shapes
        return dq.view(q_shape), dk.view(k_shape), dv.view(v_shape), None, None, None, None


class KVCache:
    """The keys and values of the tokens seen so far, for one attention layer.

    Generating token t+1 needs the keys and values of tokens 0..t; they never change (the model is causal), so we
    keep them instead of recomputing them. The buffers are allocated once at full size and filled in place, so
    appending a token copies only that token's keys and values.
    """

    def __init__(self, batch_size: int, num_heads: int, max_len: int, head_size: int, device=None, dtype=None):
        shape = (batch_size, num_heads, max_len, head_size)
        self.k = torch.empty(shape, device=device, dtype=dtype)  # (B, H, max_len, D)
        self.v = torch.empty(shape, device=device, dtype=dtype)  # (B, H, max_len, D)
        self.length = 0

    def append(self, k, v):
        """Store the new positions' keys and values; return the keys and values of every position so far."""
        T = k.size(2)
        if self.length + T > self.k.size(2):
            raise ValueError(f"KV cache overflow: {self.length} + {T} positions > {self.k.size(2)}")
        self.k[:, :, self.length:self.length + T] = k
        self.v[:, :, self.length:self.length + T] = v
        self.length += T
        return self.k[:, :, :self.length], self.v[:, :, :self.length]  # (B, H, length, D) views, no copies

    def reset(self, length: int = 0):
        """Forget every position from `length` on."""
        self.length = length


class Rotary(nn.Module):
    """Rotary position embeddings (RoPE, Su et al. 2021, "RoFormer", section 3.4): position enters attention by
    turning q and k, not by adding a vector to the token embedding.

    Each head's D channels are paired up, channel i with channel i + D/2, and each pair is a point in a plane. At
    position m the pair is rotated by the angle m * theta_i, with theta_i = base^(-2i/D): fast turns in the first
    pairs, slow ones in the last. A score q_m . k_n then depends on the rotations only through m - n (rotating both
    points by the same extra angle leaves their dot product unchanged), so attention sees relative positions, and
    there is no position table to learn or to outgrow. base = 10000 is the paper's (and Llama's) choice.

    The cos and sin of every angle up to max_len are computed once; they are buffers, not parameters, and are not
    saved in checkpoints (persistent=False): they are a function of the shape alone.

    The rotation of a pair (x1, x2) by angle a is (x1 cos a - x2 sin a, x2 cos a + x1 sin a), that is
    x * [cos, cos] + [x2, x1] * [-sin, sin] for both halves at once: turn() below, whose backward is the same turn
    with the angle negated; tests/test_modern.py checks it against the paper's complex-number form.
    """

    def __init__(self, head_size: int, max_len: int, base: float = 10000.0):
        super().__init__()
        if head_size % 2:
            raise ValueError(f"rotary embeddings pair up channels: head size {head_size} must be even")
        theta = base ** (-torch.arange(0, head_size, 2, dtype=torch.float64) / head_size)  # (D/2,)
        angles = torch.arange(max_len, dtype=torch.float64)[:, None] * theta  # (max_len, D/2), position m * theta_i
        cos, sin = angles.cos().float(), angles.sin().float()  # (max_len, D/2) each
        self.register_buffer("cos", torch.cat((cos, cos), dim=-1), persistent=False)  # (max_len, D)
        self.register_buffer("sin", torch.cat((-sin, sin), dim=-1), persistent=False)  # (max_len, D), signed

    def forward(self, x, start: int = 0):
        """x: (B, H, T, D), positions start .. start + T - 1 -> the same shape, every channel pair rotated."""
        T = x.size(-2)
        cos = self.cos[start:start + T].to(x.dtype)  # (T, D): cos(m theta_i) in both halves
        sin = self.sin[start:start + T].to(x.dtype)  # (T, D): -sin(m theta_i) in the first half, +sin in the second
        return _Turn.apply(x, cos, sin)  # (B, H, T, D), each pair turned


def turn(x, cos, sin):
    """x * cos + [x2, x1] * sin, for x (..., T, D) of halves x1, x2 and cos, sin (T, D): Rotary's rotation.

    The swapped [x2, x1] is never built: after the product, each half of the output gets the other half of x's
    multiply-add, in place. That is two passes over x where product, swap (a copy) and multiply-add took three.
    """
    half = x.size(-1) // 2
    out = x * cos  # (..., T, D): x1 cos, x2 cos
    out[..., :half].addcmul_(x[..., half:], sin[:, :half])  # x1 cos - x2 sin (this half of sin is negated)
    out[..., half:].addcmul_(x[..., :half], sin[:, half:])  # x2 cos + x1 sin
    return out


class _Turn(torch.autograd.Function):
    """turn() with its backward written out. A rotation is an orthogonal map: its transpose, which carries the
    gradient back, is the rotation by the opposite angle. So dL/dx is dL/dout turned back, cos unchanged and sin
    negated: two passes again, where autograd through product, swap and multiply-add took twice the time
    (1.6 vs 0.8 ms forward and backward at (16, 4, 128, 32), one thread, an AMD EPYC). The backward is itself made
    of differentiable operations, so gradients of gradients still work."""

    @staticmethod
    def forward(ctx, x, cos, sin):
        ctx.save_for_backward(cos, sin)
        return turn(x, cos, sin)

    @staticmethod
    def backward(ctx, dout):
        cos, sin = ctx.saved_tensors
        return turn(dout, cos, -sin), None, None  # no gradient for the tables: buffers, not parameters


def rms_normalize(x, eps: float = 1e-6):
    """x / RMS(x) over the last dimension, no learned gain: QK-norm's normalisation of each head's q and k."""
    return F.rms_norm(x, (x.size(-1),), eps=eps)


class MultiHeadAttention(nn.Module):
    """Multi-head self-attention (Vaswani et al. section 3.2.2) with the output projection and residual dropout.

    causal=True gives GPT's masked attention (a token sees only itself and the past); causal=False gives BERT's
    bidirectional attention. backend="manual" runs the hand-written function above, "sdpa" torch's fused kernel,
    "flash" flash_attention.py's O(T)-memory FlashAttention; with a KV cache, a single query or dropout in training,
    "flash" does what "manual" does (a cache step is small; flash_attention has no dropout).

    rotary_max_len > 0 turns q and k by their positions (Rotary above) up to that many positions; the KV cache then
    holds keys already turned, and new positions continue from the cache's length. qk_norm scales each head's q and k
    to unit RMS (before the rotation), which bounds every score by sqrt(D): attention logits cannot blow up, one
    cause of loss spikes at high learning rates (Henry et al. 2020; Dehghani et al. 2023, "ViT-22B", section 3.1).
    """

    def __init__(self, embedding_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True,
                 causal: bool = True, backend: str = "manual", rotary_max_len: int = 0, qk_norm: bool = False):
        super().__init__()
        if embedding_dim % num_heads:
            raise ValueError(f"embedding_dim={embedding_dim} is not divisible by num_heads={num_heads}")
        if backend not in ("manual", "sdpa", "flash"):
            raise ValueError(f"backend={backend!r}; use 'manual', 'sdpa' or 'flash'")
        self.num_heads, self.causal, self.backend, self.dropout = num_heads, causal, backend, dropout
        # One matrix makes q, k and v together: a single (C -> 3C) matmul is faster than three (C -> C) ones.
        self.qkv = nn.Linear(embedding_dim, 3 * embedding_dim, bias=bias)
        self.proj = nn.Linear(embedding_dim, embedding_dim, bias=bias)
        self.resid_dropout = nn.Dropout(dropout)
        self.rotary = Rotary(embedding_dim // num_heads, rotary_max_len) if rotary_max_len else None
        self.qk_norm = qk_norm

    def _normalize_and_rotate(self, q, k, start: int):
        """QK-norm and the rotation, when switched on, of q and k: (B, H, T, D) each, at positions start onwards."""
        if self.qk_norm:
            q, k = rms_normalize(q), rms_normalize(k)
        if self.rotary is not None:
            q, k = self.rotary(q, start), self.rotary(k, start)
        return q, k

    def forward(self, x, padding_mask=None, kv_cache: KVCache | None = None):
        """x: (B, T, C) -> (B, T, C).

        padding_mask: optional (B, T) boolean, True for real tokens; no query attends to a padding key.
        kv_cache: optional KVCache; x then holds only the new positions, which attend to every cached one.
        """
        B, T, C = x.shape
        H, D = self.num_heads, C // self.num_heads
        if kv_cache is not None and T == 1 and padding_mask is None and not self.training:
            return self._decode_step(x, kv_cache)  # generation's usual step: one new position
        q, k, v = self.qkv(x).split(C, dim=2)  # 3 x (B, T, C)
        q = q.view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
        k = k.view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
        v = v.view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
        q, k = self._normalize_and_rotate(q, k, kv_cache.length if kv_cache is not None else 0)  # (B, H, T, D) each
        if kv_cache is not None:
            k, v = kv_cache.append(k, v)  # (B, H, S, D), S = cached + new positions
        S = k.size(2)

        # Masks: causal alone goes through is_causal (the fast path); a cache or padding needs an explicit mask.
        mask, is_causal = None, False
        if self.causal and S == T and padding_mask is None:
            is_causal = True
        elif self.causal and T > 1:
            mask = causal_mask(T, S, x.device, S - T)  # (T, S), new queries aligned to the end of the keys
        if padding_mask is not None:
            if kv_cache is not None:
                raise ValueError("padding_mask with a KV cache is not supported")
            keys_ok = padding_mask.view(B, 1, 1, S)  # (B, 1, 1, S)
            mask = keys_ok if mask is None else mask & keys_ok  # (B, 1, T, S)

        dropout_p = self.dropout if self.training else 0.0
        if self.backend == "flash" and kv_cache is None and T > 1 and dropout_p == 0.0:
            keys_ok = None if padding_mask is None else padding_mask.view(B, 1, 1, S)  # (B, 1, 1, S), a key mask
            y = flash_attention(q, k, v, attn_mask=keys_ok, is_causal=self.causal)  # (B, H, T, D), causal AND keys_ok
        else:
            attend = F.scaled_dot_product_attention if self.backend == "sdpa" else scaled_dot_product_attention
            y = attend(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal)  # (B, H, T, D)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, C), heads side by side again
        return self.resid_dropout(self.proj(y))  # (B, T, C)

    def _decode_step(self, x, kv_cache: KVCache):
        """forward() for ONE new position with a cache, in eval mode: x (B, 1, C) -> (B, 1, C), same math.

        What the general path does and one query does not need is left out: with T = 1 the heads are already in
        place (no transposes), the query attends to every key, cached or new (no mask), and there is no dropout.
        tests/test_generate.py proves the logits equal a full forward pass without cache.
        """
        B, _, C = x.shape
        H, D = self.num_heads, C // self.num_heads
        q, k, v = self.qkv(x).view(B, 3, H, 1, D).unbind(1)  # 3 x (B, H, 1, D)
        q, k = self._normalize_and_rotate(q, k, kv_cache.length)  # (B, H, 1, D) each, at the next position
        k, v = kv_cache.append(k, v)  # (B, H, S, D) each, S = cached positions + this one
        attend = F.scaled_dot_product_attention if self.backend == "sdpa" else scaled_dot_product_attention  # flash too
        y = attend(q, k, v)  # (B, H, 1, D)
        return self.proj(y.reshape(B, 1, C))  # (B, 1, C)

    def attention_weights(self, x):
        """x: (B, T, C) -> (B, H, T, T), the weights every head gives each earlier token: what forward() averages the
        values with (no dropout, no cache; causal as the module is). For looking at, not for training."""
        B, T, C = x.shape
        H, D = self.num_heads, C // self.num_heads
        q, k, _ = self.qkv(x).split(C, dim=2)  # 2 x (B, T, C)
        q = q.view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
        k = k.view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
        q, k = self._normalize_and_rotate(q, k, 0)  # (B, H, T, D) each
        return attention_weights(q, k, is_causal=self.causal)  # (B, H, T, T)
